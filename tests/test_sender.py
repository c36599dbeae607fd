"""``pyfora.net.sender``: messages through a real websocket on 127.0.0.1, as the peer sees
them (its frames, and the messages ``wire.Assembler`` makes of them)."""

from __future__ import annotations

import asyncio
import contextlib

import websockets
from conftest import UNIT
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

from pyfora import wire as p
from pyfora.net.sender import Sender
from pyfora.errors import ProtocolError

T = 10 * UNIT


@contextlib.asynccontextmanager
async def peer(close_at_once: bool = False):
    """A websocket server that keeps every frame it receives; yields (frames, client)."""
    frames: list[bytes] = []

    async def handler(ws) -> None:
        if close_at_once:
            await ws.close()
            return
        async for frame in ws:
            frames.append(frame)

    async with serve(handler, "127.0.0.1", 0, max_size=None, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", max_size=None,
                           compression=None) as client:
            yield frames, client


def sender_of(ws, limit: int = p.BATCH_BYTES) -> Sender:
    return Sender(ws.send, (websockets.ConnectionClosed,),
                  lambda: ws.state is websockets.State.OPEN, limit=limit)


def tiny(i: int) -> list:
    return p.to_frames(p.Cancel(target=i))


def with_buffer(i: int, size: int) -> list:
    return p.to_frames(p.Submit(id=i, payload=b"", oob=[[size, False]],
                                frames=[bytes([i % 256]) * size]))


async def received(frames: list, count: int) -> list:
    """The messages in ``frames`` (what the peer got), once there are ``count``."""
    async with asyncio.timeout(T):
        while True:
            assembler = p.Assembler(join=True)
            messages = [m for frame in list(frames) for m, _ in assembler.feed(frame)]
            if len(messages) >= count:
                return messages
            await asyncio.sleep(0.01)


def label(message) -> int:
    return message.target if isinstance(message, p.Cancel) else message.id


def batches(frames: list) -> list:
    """The ``batch`` frames among ``frames``, decoded, with their sizes."""
    found = []
    for frame in frames:
        try:
            message = p.decode(frame)
        except ProtocolError:
            continue        # a buffer's frame
        if isinstance(message, p.Batch):
            found.append((len(frame), message))
    return found


async def test_a_lone_message_goes_alone_and_a_burst_shares_frames_in_order():
    async with peer() as (frames, ws):
        sender = sender_of(ws)
        sender.send(tiny(0))
        assert [label(m) for m in await received(frames, 1)] == [0]
        assert len(frames) == 1 and not batches(frames)
        # A burst, with messages carrying buffers (one over a chunk) in the middle of it.
        sizes = {250: 100, 500: p.CHUNK + 10, 750: 100, 1000: 100}
        for i in range(1, 1001):
            sender.send(with_buffer(i, sizes[i]) if i in sizes else tiny(i))
        await sender.wait()
        got = (await received(frames, 1001))[1:]
        assert [label(m) for m in got] == list(range(1, 1001))
        assert [b"".join(m.frames) for m in got if isinstance(m, p.Submit)] == [
            bytes([i % 256]) * size for i, size in sizes.items()]
        # The first written at once, then batches between the four messages with buffers
        # (each its envelope and its buffer's frames, never in a batch).
        assert 1 + 4 + 5 + 4 <= len(frames) - 1 < 40
        assert sum(len(b.envelopes) for _, b in batches(frames)) >= 990


async def test_batches_stay_under_the_limit_and_never_hold_buffers():
    async with peer() as (frames, ws):
        sender = sender_of(ws, limit=500)
        for i in range(300):
            sender.send(with_buffer(i, 10) if i % 7 == 0 else tiny(i))
        await sender.wait()
        assert [label(m) for m in await received(frames, 300)] == list(range(300))
    found = batches(frames)
    assert found and all(size <= 500 for size, _ in found)
    assert all(isinstance(p.decode(e), p.Cancel) for _, b in found for e in b.envelopes)


async def test_what_is_sent_after_the_connection_ended_is_dropped():
    async with peer(close_at_once=True) as (frames, ws):
        sender = sender_of(ws)
        with contextlib.suppress(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), T)       # the peer's close
        for i in range(10):
            sender.send(tiny(i))        # never raises
        await asyncio.wait_for(sender.wait(), T)
        assert sender.closed and not frames
