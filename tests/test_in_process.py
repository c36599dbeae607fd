"""``cluster.coordinator.in_process``: the embedded session's connection behaves as the websocket it
replaces, as each end's reader sees it (the session's, the coordinator's ``Link``)."""

from __future__ import annotations

import asyncio

import pytest
import websockets
from conftest import UNIT
from websockets.frames import CloseCode

from cluster.coordinator import in_process
from pyfora import wire as p
from pyfora.net.sender import Sender

T = 10 * UNIT


async def read_all(end) -> list:
    return [frame async for frame in end]


async def test_frames_arrive_in_order_each_way_as_copies():
    client, server = in_process.pair()
    buffer = bytearray(b"abc")
    await client.send(b"one")
    await client.send(memoryview(buffer))
    buffer[:] = b"XYZ"              # a socket would have sent it already
    await server.send_bytes(b"back")
    first, second = await asyncio.wait_for(anext(server), T), await anext(server)
    assert (first, second) == (b"one", b"abc")
    assert await asyncio.wait_for(anext(client), T) == b"back"


async def test_a_reader_waits_for_the_next_frame():
    client, server = in_process.pair()
    reading = asyncio.ensure_future(anext(client))
    await asyncio.sleep(0)
    assert not reading.done()
    await server.send_bytes(b"late")
    assert await asyncio.wait_for(reading, T) == b"late"


async def test_the_client_closing_ends_both_readers_after_what_was_queued():
    client, server = in_process.pair()
    await client.send(b"release")       # posted just before the close: still handled
    waiting = asyncio.ensure_future(read_all(client))
    await client.close()
    assert [m for m in await asyncio.wait_for(read_all(server), T)] == [b"release"]
    assert await asyncio.wait_for(waiting, T) == []
    assert server.closed and server.close_code == CloseCode.NORMAL_CLOSURE
    assert client.state is websockets.State.CLOSED
    await client.send(b"dropped")
    await server.send_bytes(b"dropped")
    assert await read_all(server) == [] and await read_all(client) == []


async def test_the_coordinator_going_away_ends_the_session_reader_cleanly():
    client, server = in_process.pair()
    await server.send_bytes(b"last reply")
    assert await server.close(code=CloseCode.GOING_AWAY, message=b"cluster shutting down")
    assert not await server.close()
    assert await asyncio.wait_for(read_all(client), T) == [b"last reply"]
    assert (client.close_code, client.close_reason) == (1001, "cluster shutting down")


async def test_a_close_with_an_error_code_raises_for_the_session_as_websockets_does():
    client, server = in_process.pair()
    await server.close(code=CloseCode.MESSAGE_TOO_BIG, message=b"too big")
    with pytest.raises(websockets.ConnectionClosedError) as caught:
        await asyncio.wait_for(anext(client), T)
    assert caught.value.rcvd.code == 1009 and caught.value.rcvd.reason == "too big"


async def test_the_senders_batches_reach_the_assembler_whole():
    """What both ends of a session run over it: ``Sender`` and ``wire.Assembler``."""
    client, server = in_process.pair()
    sender = Sender.on_websocket(client, p.MAX_FRAME)
    sent = [p.Release(oids=[i]) for i in range(100)]
    for message in sent:
        sender.send(p.to_frames(message))
    await asyncio.wait_for(sender.wait(), T)
    await client.close()
    assembler = p.Assembler(join=False)
    got = [m for msg in await asyncio.wait_for(read_all(server), T)
           for m, _ in assembler.feed(msg)]
    assert [m.oids for m in got] == [m.oids for m in sent]
