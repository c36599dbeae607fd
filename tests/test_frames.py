"""``pyfora.net.frames``: a websockets connection whose messages reach its reader through a
deque, against real ``websockets`` peers on 127.0.0.1; every wait bounded."""

import asyncio

import pytest
import websockets
from conftest import UNIT
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from pyfora.net.frames import HIGH_WATER, Frames, FramesClientConnection

T = 10 * UNIT


class FramesServerConnection(Frames, ServerConnection):
    pass


async def wait(aw):
    return await asyncio.wait_for(aw, T)


async def test_messages_arrive_in_order_as_bytes_whole_and_end_on_a_normal_close():
    async def handler(ws):
        await ws.send(b"one")
        await ws.send("two")                        # text: bytes at the reader too
        await ws.send([b"th", b"r", b"ee"])         # fragments: one message
        await ws.send(b"")
        await ws.close()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}",
                           create_connection=FramesClientConnection) as ws:
            received = await wait(_all(ws))
    assert received == [b"one", b"two", b"three", b""]
    assert all(type(m) is bytes for m in received)


async def test_an_abnormal_close_raises_after_the_messages_before_it():
    async def handler(ws):
        await ws.send(b"kept")
        await ws.close(code=1011, reason="it broke")

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}",
                           create_connection=FramesClientConnection) as ws:
            assert await wait(ws.next_frame()) == b"kept"
            with pytest.raises(websockets.ConnectionClosedError, match="it broke"):
                await wait(ws.next_frame())


async def test_a_reader_behind_stops_the_socket_reading_and_loses_nothing():
    count = 20 * HIGH_WATER
    sent = asyncio.Event()

    async def handler(ws):
        for i in range(count):
            await ws.send(i.to_bytes(4, "big") * 4096)     # 20 MB in all: past the socket buffers
        sent.set()
        await ws.wait_closed()

    # Not compressed (as pyfora's connections): the 20 MB must fill the socket's buffers.
    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", compression=None,
                           create_connection=FramesClientConnection) as ws:
            await wait(_until(lambda: ws._reading_paused))
            assert not sent.is_set()        # the server's sends wait on the paused socket
            held = len(ws._received)
            assert HIGH_WATER < held < count
            received = [await wait(ws.next_frame()) for _ in range(count)]
            await wait(sent.wait())
    assert [int.from_bytes(m[:4], "big") for m in received] == list(range(count))


async def test_write_now_writes_while_open_and_declines_once_closing():
    echoed = []

    async def handler(ws):
        async for message in ws:
            echoed.append(message)
            await ws.send(message)

    async with serve(handler, "127.0.0.1", 0,
                     create_connection=FramesServerConnection) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}",
                           create_connection=FramesClientConnection) as ws:
            assert ws.write_now(b"now")
            assert await wait(ws.next_frame()) == b"now"
            await wait(ws.close())
            assert not ws.write_now(b"late")
    assert echoed == [b"now"]


async def _all(ws):
    return [message async for message in ws]


async def _until(predicate):
    while not predicate():
        await asyncio.sleep(0.005)
