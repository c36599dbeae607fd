"""A connection that never leaves the process: the embedded default's client session.

``pyfora.connect()`` with no URL runs the coordinator on the client's own event loop.
Over a websocket, every message between the two would still be framed, written to a
TCP socket, read back on the same thread and parsed: on this project's 2-core benchmark
machine that was two socket writes and reads per round trip, a third of the loop
thread's time for tiny tasks. Here each frame is handed to the other end's queue.

Both ends speak only as much of their library's API as their user calls: ``ClientEnd``
that of a ``websockets`` client connection (``pyfora.aio.session.Session``), ``ServerEnd``
that of an aiohttp ``WebSocketResponse`` (``cluster.coordinator.link.Link``), but for the
frames it reads, which are bytes (as the worker door's are). So the protocol above
the frames (batches, acks, shared memory, close codes) is the same code on either
transport. The connection cannot break without a close; a session on it is never
resumed.

Each end also has ``send_direct``, which the session and its ``Link`` use when they find
it: a message with no buffers is handed over as the object itself, neither encoded nor
decoded, batched, counted or kept for a resume (a tiny task's most expensive steps on
this transport), and a message with buffers as its frames; each at once, so the two kinds
keep their order.

Runs on one event loop, the client's and the coordinator's.
"""

from __future__ import annotations

import asyncio
import collections

import websockets
from websockets.frames import Close, CloseCode

from pyfora.wire import Message

#: Close codes a ``websockets`` connection ends on without raising.
_OK_CODES = (CloseCode.NORMAL_CLOSURE, CloseCode.GOING_AWAY)


class _End:
    """One end: frames from the other end are queued here until read."""

    def __init__(self) -> None:
        self.peer: _End
        self._inbox: collections.deque = collections.deque()
        self._waiter: asyncio.Future | None = None
        self.close_code: int | None = None
        self.close_reason = ""

    def _deliver(self, frame) -> None:
        # A frame may be a view of the caller's buffer: the other end keeps a copy, as a
        # socket would have, not the view (only small buffers: large ones go through
        # shared memory).
        self._inbox.append(frame if type(frame) is bytes else bytes(frame))
        self._wake()

    def send_direct(self, item: Message | bytes | memoryview) -> None:
        """Hand the other end a message as it is (one with no buffers: the receiver gets
        that very object, so the sender must not change it afterwards), or one frame."""
        if self.close_code is None:
            if isinstance(item, Message):
                self.peer._inbox.append(item)
                self.peer._wake()
            else:
                self.peer._deliver(item)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _shut(self, code: int, reason: str) -> None:
        """Both ends stop: what was queued is still read, then reading ends."""
        for end in (self, self.peer):
            if end.close_code is None:
                end.close_code, end.close_reason = code, reason
            end._wake()

    async def _next(self):
        while not self._inbox:
            if self.close_code is not None:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._inbox.popleft()

    def __aiter__(self):
        return self


class ClientEnd(_End):
    """The client's end, as ``websockets.asyncio.client.ClientConnection``."""

    @property
    def state(self) -> websockets.State:
        return websockets.State.OPEN if self.close_code is None else websockets.State.CLOSED

    async def send(self, frame) -> None:
        if self.close_code is None:
            self.peer._deliver(frame)

    async def __anext__(self) -> bytes | Message:
        try:
            return await self._next()
        except StopAsyncIteration:
            code = self.close_code      # set: reading ends only on a close
            if code is None or code in _OK_CODES:
                raise
            # As websockets: a close with an error code raises where the session reads.
            raise websockets.ConnectionClosedError(
                Close(code, self.close_reason), None) from None

    async def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        self._shut(code, reason)


class ServerEnd(_End):
    """The coordinator's end, as aiohttp's ``WebSocketResponse``."""

    @property
    def closed(self) -> bool:
        return self.close_code is not None

    async def send_bytes(self, data) -> None:
        if self.close_code is None:
            self.peer._deliver(data)

    async def __anext__(self) -> bytes | Message:
        return await self._next()

    async def close(self, *, code: int = CloseCode.NORMAL_CLOSURE, message: bytes = b"") -> bool:
        if self.close_code is not None:
            return False
        self._shut(code, message.decode(errors="replace"))
        return True


def pair() -> tuple[ClientEnd, ServerEnd]:
    client, server = ClientEnd(), ServerEnd()
    client.peer, server.peer = server, client
    return client, server
