"""Websocket connections that pass pyfora's frames to their reader, and write them, without
the per-message machinery of ``websockets``' asyncio layer.

pyfora speaks in whole binary messages, one reader per connection, and writes from the
event loop only. ``websockets``' asyncio connection serves every use (text and bytes,
fragments sent from async iterators, several readers and writers at once): each message
received goes through a queue of its own, with futures, to a ``recv()`` coroutine, and
each message sent through an async context manager. For a tiny task's round trip, that
was about 50 µs per side on this project's 2-core machine; its sans-I/O protocol (frame
parsing, masking, pings, the close handshake) takes about 3 µs a frame.

``Frames`` keeps that protocol and the connection's life (handshake, keepalive, close,
flow control) and replaces only the two paths: a received message is appended to a
deque its reader pops, and ``write_now`` writes a frame at once when the connection is
open and not flow-controlled (else the caller uses ``send``, which waits).

Runs on the connection's event loop.
"""

from __future__ import annotations

import asyncio
import collections

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.connection import Connection
from websockets.exceptions import ConnectionClosedOK
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.typing import BytesLike

#: Messages queued past this stop the transport's reading until the reader catches up,
#: as ``websockets``' own queue does.
HIGH_WATER = 64


class Frames(Connection):
    """Mixed into a ``websockets`` asyncio connection (client or server) ahead of it.

    ``async for message in connection`` gives each message received as bytes (a text
    message too), and ends as ``websockets``' does: quietly after a normal close, with
    its ``ConnectionClosedError`` otherwise. ``next_frame()`` is ``recv(decode=False)``.
    ``recv`` itself must not be used: messages no longer reach its queue.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._received: collections.deque[bytes] = collections.deque()
        self._fragments: list[BytesLike] | None = None
        self._reader: asyncio.Future | None = None
        self._reading_paused = False

    # -- receiving --------------------------------------------------------------------

    def process_event(self, event) -> None:
        if not isinstance(event, Frame) or event.opcode not in _DATA:
            super().process_event(event)    # the handshake, pings' pongs
            return
        if event.opcode is Opcode.CONT:
            assert self._fragments is not None, "the protocol checks fragments' order"
            self._fragments.append(event.data)
            if not event.fin:
                return
            data, self._fragments = b"".join(self._fragments), None
        elif not event.fin:
            self._fragments = [event.data]
            return
        else:
            # The parser gives a bytearray for a frame that was not masked (from a
            # server): bytes, as ``recv`` gives, and a copy of it as ``recv`` makes.
            data = bytes(event.data)
        self._received.append(data)
        if len(self._received) > HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._wake()

    def _wake(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.set_result(None)

    async def next_frame(self) -> bytes:
        """The next message; raises ``ConnectionClosed`` once the connection has ended
        and every message received before is read."""
        while not self._received:
            if self.connection_lost_waiter.done():
                raise self.close_exc
            self._reader = self.loop.create_future()
            await self._reader
        if self._reading_paused and len(self._received) <= HIGH_WATER // 2:
            self._reading_paused = False
            self.transport.resume_reading()
        return self._received.popleft()

    def __aiter__(self) -> Frames:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.next_frame()
        except ConnectionClosedOK:
            raise StopAsyncIteration from None

    # -- sending ----------------------------------------------------------------------

    def write_now(self, data) -> bool:
        """Write ``data`` as one binary message now; False when it cannot be written
        without waiting (closing, or flow-controlled): ``send`` it then. (pyfora sends
        no fragmented message, which would have to be waited for too.)"""
        if self.protocol.state is not State.OPEN or self.paused:
            return False
        self.protocol.send_binary(data)
        self.send_data()
        return True


_DATA = (Opcode.TEXT, Opcode.BINARY, Opcode.CONT)


class FramesClientConnection(Frames, ClientConnection):
    """``websockets.asyncio.client.connect``'s connection (``create_connection=``), for a
    worker and for a client's session to a URL."""
