"""``pyfora.net.recycled``: a ``bytes`` the receiver made is read over only once nothing
else refers to it. (Through shared memory: ``test_shared_memory.py``.)"""

import gc
import sys

import pytest

from pyfora.net import recycled

pytestmark = pytest.mark.skipif(not recycled._LAYOUT_OK, reason="not CPython's layout")


def fresh(fill: bytes, size: int = 1000) -> bytes:
    """A new object (``b"a" * 1000`` is a constant its code object refers to)."""
    return bytes(bytearray(fill) * size)


def test_a_dropped_bytes_is_handed_out_again_with_the_new_length_and_no_stale_hash():
    recycler = recycled.Recycler()
    first = fresh(b"a")
    recycler.keep(first)
    hash(first)
    address = id(first)
    del first
    gc.collect()
    again = recycler.reusable(900)
    assert id(again) == address
    assert len(again) == 900 and sys.getsizeof(again) == sys.getsizeof(b"") + 900
    assert again == b"a" * 900, "its memory is the old object's until it is read over"
    assert hash(again) == hash(b"a" * 900)


@pytest.mark.parametrize("holder", [lambda b: b, memoryview, lambda b: [b]])
def test_a_bytes_something_still_refers_to_is_never_handed_out(holder):
    recycler = recycled.Recycler()
    first = fresh(b"a")
    recycler.keep(first)
    held = holder(first)
    del first
    assert recycler.reusable(1000) is None
    assert bytes(held if not isinstance(held, list) else held[0]) == b"a" * 1000


def test_sizes_far_from_a_kept_objects_and_a_closed_recycler_get_none():
    recycler = recycled.Recycler()
    recycler.keep(fresh(b"a"))
    assert recycler.reusable(1001) is None, "more than its memory holds"
    assert recycler.reusable(700) is None, "a quarter less or more: a new object"
    recycler.close()
    assert recycler.reusable(1000) is None
    recycler.keep(fresh(b"b"))
    assert recycler.reusable(1000) is None


def test_at_most_keep_objects_are_kept(monkeypatch):
    monkeypatch.setattr(recycled, "KEEP", 2)
    recycler = recycled.Recycler()
    for fill in b"abc":
        recycler.keep(fresh(bytes([fill])))
    got = {recycler.reusable(1000)[:1], recycler.reusable(1000)[:1]}
    assert got == {b"b", b"c"} and recycler.reusable(1000) is None
