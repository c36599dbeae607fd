"""``cluster/coordinator/store.py`` on its own: ids, owners, references, holders and the bytes each
owner has defined. No dispatcher: ``on_free`` / ``on_drop`` are recorded instead of
telling workers, so each test sees exactly what the store would have asked for."""

from cluster.scheduling.lineage import Recipe
from cluster.coordinator.store import ObjectRecord, ObjectStore


class Owner:
    """A session, as the store sees one: only its identity matters."""


def make_store() -> tuple[ObjectStore, list, list]:
    """A store whose ``on_free`` / ``on_drop`` calls are kept, as lists of object ids."""
    store = ObjectStore()
    freed: list[int] = []
    dropped: list[int] = []
    store.on_free = lambda record: freed.append(record.oid)
    store.on_drop = lambda record: dropped.append(record.oid)
    return store, freed, dropped


def computed(store: ObjectStore, owner, deps=(), holders=(), size=10) -> ObjectRecord:
    """A record made by a task over ``deps``, the way the dispatcher keeps it."""
    record = ObjectRecord(store.new_id(), owner, size, holders=set(holders),
                          recipe=Recipe(b"payload", tuple(deps), 1024))
    store.add_children(list(deps))
    store.add(record)
    return record


def defined(store: ObjectStore, owner, size: int) -> ObjectRecord:
    record = ObjectRecord(store.new_id(), owner, size, data=b"x" * size, defined=True)
    store.add(record)
    return record


def test_ids_are_distinct_and_records_are_found_by_id():
    store, _, _ = make_store()
    first, second = defined(store, Owner(), 1), defined(store, Owner(), 1)
    assert first.oid != second.oid
    assert store.get(first.oid) is first and store.get(second.oid) is second
    assert store.get(second.oid + 1000) is None


def test_only_the_owner_may_release_and_only_once():
    store, _, dropped = make_store()
    owner = Owner()
    record = computed(store, owner)
    store.incref(record.oid)            # a task uses it: it must outlive the proxy
    store.release(record.oid, Owner())  # another session's release is ignored
    assert record.refs == 2
    store.release(record.oid, owner)
    store.release(record.oid, owner)    # a second release must not take the task's ref
    assert record.refs == 1 and store.get(record.oid) is record and dropped == []
    store.decref(record.oid)            # the task ended
    assert store.get(record.oid) is None and dropped == [record.oid]


def test_last_reference_frees_the_value_on_its_holders():
    store, freed, _ = make_store()
    record = computed(store, Owner(), holders={"worker-1"})
    store.release(record.oid, record.owner)
    assert freed == [record.oid]
    assert record.holders == set()


def test_forget_holder_returns_only_records_left_with_no_copy():
    store, _, _ = make_store()
    owner = Owner()
    only_here = computed(store, owner, holders={"w1"})
    also_elsewhere = computed(store, owner, holders={"w1", "w2"})
    with_data = defined(store, owner, 5)
    with_data.holders.add("w1")         # a worker fetched it; the coordinator keeps a copy
    lost = store.forget_holder("w1")
    assert lost == [only_here]
    assert also_elsewhere.holders == {"w2"} and with_data.holders == set()


def test_defined_bytes_are_counted_per_owner_and_only_for_defined_values():
    store, _, _ = make_store()
    alice, bob = Owner(), Owner()
    defined(store, alice, 100)
    defined(store, alice, 20)
    defined(store, bob, 7)
    computed(store, alice, size=5000)   # a result is not what the limit is about
    assert (store.defined_bytes(alice), store.defined_bytes(bob)) == (120, 7)
    assert store.defined_bytes(Owner()) == 0


def test_a_released_defined_input_counts_until_the_result_made_from_it_is_released():
    store, freed, dropped = make_store()
    owner = Owner()
    value = defined(store, owner, 100)
    result = computed(store, owner, deps=[value.oid])
    store.release(value.oid, owner)
    # Dormant: kept (with its bytes) as the recipe's input, but no longer an object.
    assert store.defined_bytes(owner) == 100 and store.get(value.oid) is value
    assert store.records() == [result] and len(store) == 1 and store.record_count() == 2
    store.release(result.oid, owner)
    assert store.defined_bytes(owner) == 0 and store.record_count() == 0
    assert sorted(dropped) == sorted([value.oid, result.oid])


def test_records_is_a_snapshot_of_live_records_only():
    store, _, _ = make_store()
    owner = Owner()
    kept, released = defined(store, owner, 1), defined(store, owner, 1)
    store.release(released.oid, owner)
    snapshot = store.records()
    defined(store, owner, 1)            # a later change must not show in the snapshot
    assert snapshot == [kept]
    assert store.total_bytes() == 2


def test_release_owned_by_releases_that_owner_only():
    store, _, _ = make_store()
    leaving, staying = Owner(), Owner()
    defined(store, leaving, 3)
    used = computed(store, leaving)
    store.incref(used.oid)              # a running task still uses it
    other = defined(store, staying, 4)
    store.release_owned_by(leaving)
    assert store.records() == [used, other]
    assert not used.held and used.refs == 1
    assert store.defined_bytes(leaving) == 0 and store.defined_bytes(staying) == 4
