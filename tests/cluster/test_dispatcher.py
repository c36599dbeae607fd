"""``cluster/scheduling/dispatcher.py`` and ``cluster/scheduling/lineage.py`` with no sockets: the dispatcher
drives ``FakeLink``s standing in for ``WorkerLink`` and ``ClientSession``, and each test
plays the worker's or the client's part by calling the dispatcher's own entry points
(``submit``, ``task_done``, ``worker_lost``, ...) and reading what it sent them.

Tests that involve lineage are coroutines: a ``Rebuild`` makes its future on the running
loop. Every wait has a timeout built from ``UNIT``.
"""

import asyncio

import pytest
from conftest import UNIT

from cluster.scheduling.dispatcher import WINDOW, Dispatcher
from cluster.scheduling.lineage import CRASHED, Recipe
from cluster.coordinator.store import ObjectRecord, ObjectStore
from pyfora import wire as p
from pyfora.errors import ProtocolError, WorkerCrashedError


class FakeLink:
    """What the dispatcher uses of a ``WorkerLink`` or a ``ClientSession``: its name, its
    ``send`` (kept in ``sent``), ``closed``, the task it runs and, for a worker holding
    objects, ``request`` (answered from ``values``)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sent: list[p.Message] = []
        self.closed = False
        self.task = None
        self.values: dict[int, bytes] = {}

    def send(self, message: p.Message) -> None:
        self.sent.append(message)

    async def request(self, message: p.Message) -> p.Message:
        return p.Value(id=0, data=self.values[message.oid])

    def of(self, kind: type) -> list:
        """The messages of one type it was sent (load pushes, ``info``, come and go)."""
        return [m for m in self.sent if isinstance(m, kind)]


def make(*worker_names: str) -> tuple[Dispatcher, FakeLink, list[FakeLink]]:
    dispatcher = Dispatcher(ObjectStore())
    workers = [FakeLink(name) for name in worker_names]
    for worker in workers:
        dispatcher.worker_joined(worker)
    return dispatcher, FakeLink("session-1"), workers


def held_object(d: Dispatcher, session: FakeLink, worker: FakeLink, size: int) -> int:
    """An object ``session`` owns, computed earlier and held by ``worker`` only."""
    oid = d.store.new_id()
    d.store.add(ObjectRecord(oid, session, size, holders={worker}))
    return oid


def done(run: p.Run, size: int = 8, error: dict | None = None) -> p.Done:
    """The ``done`` a worker sends when ``run`` finished."""
    return p.Done(id=run.id, oid=run.oid, size=size, type="int", error=error)


def crash_type() -> str:
    return f"pyfora.{WorkerCrashedError.__name__}"


# -- queueing and routing -------------------------------------------------------------

def test_a_task_waits_in_the_queue_until_a_worker_joins():
    d, session, _ = make()
    d.submit(session, p.Submit(id=1, payload=b"f"))
    worker = FakeLink("w1")
    d.worker_joined(worker)
    [run] = worker.of(p.Run)
    assert (run.payload, run.deps) == (b"f", [])


def test_a_task_goes_to_the_worker_holding_most_of_its_inputs():
    d, session, (w1, w2, w3) = make("w1", "w2", "w3")
    small = held_object(d, session, w1, size=10)
    big = held_object(d, session, w2, size=1000)
    d.submit(session, p.Submit(id=1, payload=b"f", deps=[small, big]))
    assert (w1.of(p.Run), w3.of(p.Run)) == ([], [])
    assert [run.deps for run in w2.of(p.Run)] == [[small, big]]


def test_after_a_quick_task_the_window_fills_up_to_its_limit():
    d, session, (worker,) = make("w1")
    for i in range(WINDOW + 3):
        d.submit(session, p.Submit(id=i, payload=b"%d" % i))
    [first] = worker.of(p.Run)      # one at a time until a task shows how long they take
    # As if it took no time at all: the window is sized from the clock, and a loaded
    # machine must not make this test see a slow task.
    worker.task.started += 60.0
    d.task_done(worker, done(first))
    runs = worker.of(p.Run)
    assert len(runs) == 1 + WINDOW
    assert [r.payload for r in runs] == [b"%d" % i for i in range(WINDOW + 1)]   # in order


def test_task_done_records_the_result_and_tells_the_session():
    d, session, (worker,) = make("w1")
    d.submit(session, p.Submit(id=7, payload=b"f"))
    [run] = worker.of(p.Run)
    d.task_done(worker, done(run, size=123))
    [reply] = session.of(p.Done)
    assert (reply.id, reply.oid, reply.size, reply.error) == (7, run.oid, 123, None)
    record = d.store.get(run.oid)
    assert (record.owner, record.size, record.holders) == (session, 123, {worker})


# -- cancellation ---------------------------------------------------------------------

def test_a_cancelled_queued_task_never_runs():
    d, session, _ = make()
    d.submit(session, p.Submit(id=1, payload=b"f"))
    d.cancel(session, 1)
    worker = FakeLink("w1")
    d.worker_joined(worker)
    assert worker.of(p.Run) == [] and d.load()["queued"] == 0


def test_a_cancelled_running_task_is_stopped_and_its_late_result_freed():
    d, session, (worker,) = make("w1")
    d.submit(session, p.Submit(id=1, payload=b"f"))
    [run] = worker.of(p.Run)
    d.cancel(session, 1)
    assert worker.of(p.Cancel) == [p.Cancel(target=run.id)]
    d.task_done(worker, done(run))      # it finished before the cancel arrived
    assert worker.of(p.Free) == [p.Free(oids=[run.oid])]
    assert session.of(p.Done) == [] and d.store.get(run.oid) is None


# -- workers that die -----------------------------------------------------------------

def test_a_task_whose_worker_dies_fails_with_worker_crashed_error():
    d, session, (worker,) = make("w1")
    d.submit(session, p.Submit(id=1, payload=b"f"))
    d.worker_lost(worker, "killed by signal 9")
    [reply] = session.of(p.Done)
    assert reply.id == 1 and reply.error["type"] == crash_type() == CRASHED
    assert (reply.error["message"], reply.error["worker"]) == ("killed by signal 9", "w1")


def test_a_task_with_retries_runs_again_on_another_worker():
    d, session, (w1, w2) = make("w1", "w2")
    d.submit(session, p.Submit(id=1, payload=b"f", retries=1))
    [first] = w1.of(p.Run)
    d.worker_lost(w1, "gone")
    [again] = w2.of(p.Run)
    assert (again.id, again.oid, again.payload) == (first.id, first.oid, b"f")
    d.task_done(w2, done(again))
    assert [(m.id, m.error) for m in session.of(p.Done)] == [(1, None)]


def test_tasks_queued_behind_the_dead_workers_task_run_again_in_order():
    d, session, (w1,) = make("w1")
    for i in range(4):
        d.submit(session, p.Submit(id=i, payload=b"%d" % i))
    w1.task.started += 60.0    # a quick first task opens the window (see above)
    d.task_done(w1, done(w1.of(p.Run)[0]))
    assert len(w1.of(p.Run)) == 4   # 1, 2 and 3 sent to w1, 1 running
    d.worker_lost(w1, "gone")
    w2 = FakeLink("w2")
    d.worker_joined(w2)
    # 1 crashed (no retries); 2 and 3 never started, so they are not failed.
    assert [m.id for m in session.of(p.Done) if m.error is not None] == [1]
    assert [run.payload for run in w2.of(p.Run)] == [b"2"]
    assert [task.request_id for task in d.queue] == [3]


# -- what a worker may send -----------------------------------------------------------

def test_done_for_a_task_another_worker_holds_is_dropped():
    d, session, (w1, w2) = make("w1", "w2")
    d.submit(session, p.Submit(id=1, payload=b"f"))
    [run] = w1.of(p.Run)
    d.task_done(w2, done(run))
    assert session.of(p.Done) == [] and d.store.get(run.oid) is None
    d.task_done(w1, done(run))      # the real one still counts
    assert [m.id for m in session.of(p.Done)] == [1]


def test_output_reaches_the_session_only_from_the_worker_running_the_task():
    d, session, (w1, w2) = make("w1", "w2")
    d.submit(session, p.Submit(id=5, payload=b"f"))
    [run] = w1.of(p.Run)
    d.task_output(w2, p.Output(id=run.id, stream="stdout", text="forged"))
    d.task_output(w1, p.Output(id=run.id, stream="stdout", text="hello"))
    assert session.of(p.Output) == [p.Output(id=5, stream="stdout", text="hello")]


def test_progress_reaches_the_session_only_from_the_worker_running_the_task():
    d, session, (w1, w2) = make("w1", "w2")
    d.submit(session, p.Submit(id=5, payload=b"f"))
    [run] = w1.of(p.Run)
    d.task_progress(w2, p.Progress(target=run.id, done=9, total=10))
    d.task_progress(w1, p.Progress(target=run.id, done=3, total=10))
    assert session.of(p.Progress) == [p.Progress(target=5, done=3, total=10)]


def test_check_get_allows_only_inputs_of_the_workers_own_tasks():
    d, session, (w1, w2) = make("w1", "w2")
    mine = held_object(d, session, w2, size=1)
    other = held_object(d, session, w2, size=1)
    d.submit(session, p.Submit(id=1, payload=b"f", deps=[mine]))
    d.submit(session, p.Submit(id=2, payload=b"g", deps=[other]))
    [run] = w1.of(p.Run)        # w2 held its inputs, but was busy with the first by then
    assert run.deps == [other]
    d.check_get(w1, other)      # no error: it needs it
    with pytest.raises(ProtocolError, match="not an input"):
        d.check_get(w1, mine)


# -- sessions -------------------------------------------------------------------------

def test_a_closed_session_loses_its_tasks_and_objects():
    d, session, (worker,) = make("w1")
    held = held_object(d, session, worker, size=1)
    d.submit(session, p.Submit(id=1, payload=b"running"))
    d.submit(session, p.Submit(id=2, payload=b"queued"))
    [run] = worker.of(p.Run)
    session.closed = True       # as ClientSession.end does before telling the dispatcher
    d.session_closed(session)
    assert worker.of(p.Cancel) == [p.Cancel(target=run.id)]
    assert p.Free(oids=[held]) in worker.of(p.Free) and d.store.records() == []
    d.task_done(worker, done(run))
    assert [r.payload for r in worker.of(p.Run)] == [b"running"]    # "queued" never ran
    assert session.of(p.Done) == [] and d.store.records() == []


# -- lineage --------------------------------------------------------------------------

async def test_a_lost_input_is_computed_again_before_the_task_that_needs_it():
    d, session, (w1, w2) = make("w1", "w2")
    d.submit(session, p.Submit(id=1, payload=b"make"))
    [make_run] = w1.of(p.Run)
    d.task_done(w1, done(make_run, size=50))
    d.worker_lost(w1, "gone")       # the only copy of the result goes with it
    d.submit(session, p.Submit(id=2, payload=b"use", deps=[make_run.oid]))
    [rebuild] = w2.of(p.Run)
    assert (rebuild.payload, rebuild.oid) == (b"make", make_run.oid)   # the same recipe
    d.task_done(w2, done(rebuild, size=50))
    assert [r.payload for r in w2.of(p.Run)] == [b"make", b"use"]
    assert d.store.get(make_run.oid).holders == {w2}


async def test_downloading_a_lost_object_computes_it_again_then_fetches_it():
    d, session, (w1, w2) = make("w1", "w2")
    d.submit(session, p.Submit(id=1, payload=b"make"))
    [make_run] = w1.of(p.Run)
    d.task_done(w1, done(make_run))
    d.worker_lost(w1, "gone")
    w2.values[make_run.oid] = b"the value"
    download = asyncio.create_task(d.object_bytes(make_run.oid, session))
    async with asyncio.timeout(5 * UNIT):
        while not w2.of(p.Run):
            await asyncio.sleep(0)
    [rebuild] = w2.of(p.Run)
    d.task_done(w2, done(rebuild))
    async with asyncio.timeout(5 * UNIT):
        value = await download
    assert value.data == b"the value"


# -- bugs found, not fixed here --------------------------------------------------------

async def test_a_cancelled_task_whose_input_was_lost_does_not_run_again():
    d, session, (w1, w2) = make("w1", "w2")
    oid = d.store.new_id()
    d.store.add(ObjectRecord(oid, session, 50, holders={w1},
                             recipe=Recipe(b"make", (), p.INLINE_LIMIT)))
    d.submit(session, p.Submit(id=1, payload=b"busy"))      # keeps w1 from taking "use"
    d.submit(session, p.Submit(id=2, payload=b"use", deps=[oid]))
    [use] = w2.of(p.Run)
    d.cancel(session, 2)
    d.worker_lost(w1, "gone")
    # w2 was still fetching the input when the cancel came: its fetch failed instead.
    lost = {"type": CRASHED, "message": "input lost", "frames": [], "exc": None, "worker": "w2"}
    d.task_done(w2, done(use, error=lost))
    assert [r.payload for r in w2.of(p.Run)] == [b"use"]
