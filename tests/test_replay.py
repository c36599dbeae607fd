"""Session replay with no I/O: ``pyfora.wire.Replay`` (what each end keeps until the
other acknowledges it, and sends again on resume) and the coordinator's byte counts of it,
``cluster.coordinator.limits.CountedReplay`` and ``Window``. Frames are stand-ins (``[b"0"]``, ...):
the replay keeps them, never reads them. (The fetch turns of ``Window`` are covered in
``test_cluster_limits.py``; here only how acknowledgements reach it.)"""

import asyncio

import pytest
from conftest import UNIT

from cluster.coordinator.limits import CountedReplay, Window
from pyfora.errors import ProtocolError
from pyfora.wire import Ack, Replay


def sent(replay: Replay, count: int) -> list[list[bytes]]:
    """Record ``count`` messages of one frame each; return them as recorded."""
    messages = [[b"%d" % i] for i in range(count)]
    for frames in messages:
        replay.record(frames)
    return messages


def test_after_gives_back_in_order_what_the_other_end_missed():
    replay = Replay()
    messages = sent(replay, 5)
    assert replay.after(2) == messages[2:]
    assert replay.after(2) == messages[2:]      # still kept: the resume may break too
    assert replay.after(5) == [] and len(replay) == 0


def test_an_ack_is_due_every_ack_frames_messages_counting_all_received():
    replay = Replay()
    acks = [replay.got(1) for _ in range(2 * Replay.ACK_FRAMES)]
    assert [i for i, ack in enumerate(acks) if ack is not None] == [
        Replay.ACK_FRAMES - 1, 2 * Replay.ACK_FRAMES - 1]
    assert acks[-1] == Ack(count=2 * Replay.ACK_FRAMES)     # a total, not since the last
    assert replay.received == 2 * Replay.ACK_FRAMES


def test_an_ack_is_due_once_ack_bytes_arrived_in_fewer_messages():
    replay = Replay()
    assert replay.got(Replay.ACK_BYTES - 1) is None
    assert replay.got(1) == Ack(count=2)
    assert replay.got(Replay.ACK_BYTES - 1) is None     # the byte count starts again


@pytest.mark.parametrize("count", [4, 1], ids=["never-sent", "already-forgotten"])
def test_an_ack_outside_what_is_kept_raises_protocol_error(count):
    replay = Replay()
    sent(replay, 3)
    replay.acked(2)
    with pytest.raises(ProtocolError, match="expected"):
        replay.acked(count)
    with pytest.raises(ProtocolError):
        replay.after(count)     # a client resuming from such a count is refused too
    assert len(replay) == 1     # and nothing was forgotten by the refusal


def test_counted_replay_forgets_the_bytes_of_what_the_client_had_on_resume():
    replay = CountedReplay()
    replay.record([b"result"], 100)
    replay.record([b"value"], 5000, fetched=True)
    replay.record([b"output"], 20)
    assert (replay.bytes, replay.fetched, replay.others) == (5120, 5000, 120)
    assert replay.after(2) == [[b"output"]]
    assert (replay.bytes, replay.fetched, replay.others) == (20, 0, 20)
    with pytest.raises(ProtocolError):
        replay.acked(1)
    assert (replay.bytes, replay.fetched) == (20, 0)    # a refused ack counts nothing


async def test_an_ack_makes_room_for_a_fetch_waiting_in_the_window():
    replay = CountedReplay()
    window = Window(replay, limit=4 * Replay.ACK_BYTES)
    replay.record([b"big"], 4 * Replay.ACK_BYTES, fetched=True)
    fetch = asyncio.create_task(window.enter(Replay.ACK_BYTES))
    await asyncio.sleep(0)
    assert not fetch.done()             # no room: it waits its turn
    replay.acked(1)
    window.wake()                       # what ClientSession does on an ``ack``
    async with asyncio.timeout(5 * UNIT):
        assert await fetch is True
