"""``cluster/coordinator/limits.py`` with no I/O: the byte counts of ``CountedReplay`` and the turns
of ``Window``. (Not ``test_limits.py``: pytest needs basenames apart from
``e2e/test_limits.py``.)"""

import asyncio

import pytest

from cluster.coordinator import limits
from pyfora import wire as p
from pyfora.errors import ProtocolError, ResourceLimitError

MiB = 1 << 20


def test_counted_replay_counts_what_it_keeps_and_forgets_it_on_acks():
    replay = limits.CountedReplay()
    replay.record([b"a"], 10)
    replay.record([b"b"], 5 * MiB, fetched=True)
    replay.record([b"c"], 20)
    assert (replay.bytes, replay.fetched, replay.others) == (5 * MiB + 30, 5 * MiB, 30)
    replay.acked(2)
    assert (replay.bytes, replay.fetched, replay.others) == (20, 0, 20)
    assert replay.after(2) == [[b"c"]]
    with pytest.raises(ProtocolError):
        replay.acked(1)         # forgotten already: nothing counted twice
    replay.acked(3)
    assert (replay.bytes, len(replay)) == (0, 0)


async def test_fetches_wait_their_turn_for_room_under_the_limit():
    replay = limits.CountedReplay()
    window = limits.Window(replay, 32 * MiB)
    order = []

    async def fetch(name, size):
        if await window.enter(size):
            order.append(name)
            replay.record([b""], size, fetched=True)
            window.leave(size)

    tasks = [asyncio.ensure_future(fetch(i, 10 * MiB)) for i in range(5)]
    await asyncio.sleep(0)
    assert order == [0, 1, 2]           # 30 MiB sent, the rest wait for an ack
    small = asyncio.ensure_future(fetch("small", 1))
    await asyncio.sleep(0)
    assert order == [0, 1, 2]           # first come, first served: it waits too
    replay.acked(2)
    window.wake()
    await asyncio.gather(*tasks, small)
    assert order == [0, 1, 2, 3, 4, "small"]


async def test_a_value_larger_than_the_limit_goes_alone():
    replay = limits.CountedReplay()
    window = limits.Window(replay, 8 * MiB)
    replay.record([b""], 1000)          # a reply the client may not acknowledge yet
    assert await asyncio.wait_for(window.enter(100 * MiB), 1)
    second = asyncio.ensure_future(window.enter(1))
    await asyncio.sleep(0)
    assert not second.done()
    window.leave(100 * MiB)
    assert await asyncio.wait_for(second, 1)


async def test_waiting_fetches_give_up_when_the_session_ends():
    replay = limits.CountedReplay()
    window = limits.Window(replay, 8 * MiB)
    replay.record([b""], 8 * MiB, fetched=True)
    waiting = asyncio.ensure_future(window.enter(MiB))
    await asyncio.sleep(0)
    window.close()
    assert await asyncio.wait_for(waiting, 1) is False


def test_checks_name_their_flag():
    limits.check_define(0, 4 * MiB, 4 * MiB)
    with pytest.raises(ResourceLimitError, match="--max-session-bytes"):
        limits.check_define(3 * MiB, 2 * MiB, 4 * MiB)
    limits.check_submit(3, 4)
    with pytest.raises(ResourceLimitError, match="4 tasks queued or running.*--max-queued"):
        limits.check_submit(4, 4)
    with pytest.raises(ResourceLimitError, match="--max-sessions"):
        limits.check_session_count(2, 2)
    assert len(limits.UNACKED_CLOSE_REASON) <= 123      # a websocket close reason
    assert limits.MIN_UNACKED_BYTES > p.Replay.ACK_BYTES


async def test_fetches_waiting_for_room_are_capped(monkeypatch):
    """A client that never acknowledges cannot queue fetches without end: past the cap,
    a fetch is refused, and those already waiting still get their turn."""
    monkeypatch.setattr(limits, "MAX_WAITING_FETCHES", 2)
    replay = limits.CountedReplay()
    window = limits.Window(replay, 4 * MiB)
    replay.record([b"v"], 4 * MiB, fetched=True)        # the window is full, unacknowledged
    waiting = [asyncio.ensure_future(window.enter(MiB)) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(ResourceLimitError, match="--max-unacked-bytes"):
        await asyncio.wait_for(window.enter(MiB), 1)      # refused, not queued
    replay.acked(1)
    window.wake()
    assert await asyncio.wait_for(asyncio.gather(*waiting), 1) == [True, True]
