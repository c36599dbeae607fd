"""One websocket peer of the coordinator (a client session or a worker): ordered sends,
requests that await their reply, and the frames read (the handshake is the door's:
``cluster.coordinator.web_doors``, ``cluster.coordinator.ws_door``).

Sending never awaits, so the dispatcher can send from plain functions: a message is
written at once, or queued behind those still waiting, a message and its buffers' frames
together (``pyfora.net.sender``). Buffers are relayed as the frames they came in, never
joined or decoded (``wire.Assembler``).

Runs on the coordinator's event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Protocol

from websockets.frames import CloseCode, Opcode

from cluster.scheduling.peers import Request
from pyfora import wire as p
from pyfora.errors import ProtocolError, PyforaError
from pyfora.net.sender import Sender
from pyfora.net.shared_memory import Directory

log = logging.getLogger("cluster")
#: The types of aiohttp's messages that carry data: theirs are the frames' opcodes.
_DATA = (Opcode.BINARY, Opcode.TEXT)


class Socket(Protocol):
    """What a ``Link`` uses of its websocket: aiohttp's ``WebSocketResponse``, the worker
    door's connection (``ws_door``), or the coordinator's end of an in-process connection
    (``in_process.ServerEnd``). Reading it gives aiohttp's messages, or frames as bytes,
    or (in process) messages as they are."""

    @property
    def closed(self) -> bool: ...

    @property
    def close_code(self) -> int | None: ...

    async def send_bytes(self, data: bytes) -> None: ...

    async def close(self, *, code: int = ..., message: bytes = ...) -> bool: ...

    def __aiter__(self) -> AsyncIterator[Any]: ...


class Link:
    """The coordinator's end of one websocket."""

    def __init__(self, ws: Socket, name: str, max_size: int = p.MAX_FRAME,
                 shm: Directory | None = None) -> None:
        self.name = name
        self.max_size = max_size        # of one message from the peer, buffers included
        self.shm = shm                  # the peer is on this machine: buffers go there
        self.closed = False
        self.attach(ws)
        self._pending: dict[int, asyncio.Future[p.Message]] = {}
        self._ids = p.RequestIds()

    def attach(self, ws: Socket) -> None:
        """Send on ``ws`` from now on: from ``serve``, after the handshake's ``welcome``."""
        self.ws = ws
        # Peers accept frames of up to MAX_FRAME: batches are BATCH_BYTES at most.
        self._sender = Sender(ws.send_bytes, (ConnectionError, RuntimeError), paused=True,
                              write_now=getattr(ws, "write_now", None))
        # An in-process connection (``in_process``) takes messages as they are, at once.
        self._direct: Callable[[Any], None] | None = getattr(ws, "send_direct", None)

    def send(self, message: p.Message) -> None:
        if not self.closed:
            self._sender.send(p.to_frames(message, self.shm))

    def send_error(self, request_id: int, exc: Exception) -> None:
        kind = type(exc).__name__ if isinstance(exc, PyforaError) else "InternalError"
        self.send(p.Error(id=request_id, kind=kind, message=str(exc)))

    async def request(self, message: Request) -> p.Message:
        if self.closed:     # its reply would never come
            raise ConnectionResetError(f"{self.name} went away")
        message.id = self._ids()
        future: asyncio.Future[p.Message] = asyncio.get_running_loop().create_future()
        self._pending[message.id] = future
        try:
            self.send(message)
            return await future
        finally:
            self._pending.pop(message.id, None)

    def reply(self, message: p.Message) -> bool:
        """Resolve a pending request with its reply; False if nothing waits for it."""
        future = self._pending.get(getattr(message, "id", 0))
        if future is None or future.done():
            return False
        if isinstance(message, p.Error):
            future.set_exception(p.error_for(message))
        else:
            future.set_result(message)
        return True

    async def serve(self) -> None:
        """Read frames until the peer goes away; ``handle`` each one."""
        ws, sender = self.ws, self._sender
        sender.start()
        assembler = p.Assembler(join=False, max_size=self.max_size, shm=self.shm)
        # None between frames (below).
        arrived: list[tuple[p.Message | ProtocolError, int]] | None
        message: p.Message | ProtocolError | None
        try:
            async for msg in ws:
                if type(msg) is not bytes:
                    if isinstance(msg, p.Message):      # handed over as is: not counted
                        self._handle(msg)
                        continue
                    if msg.type not in _DATA:        # aiohttp's ping, pong, error
                        continue
                    msg = msg.data
                try:
                    arrived = assembler.feed(msg)
                except ProtocolError as exc:    # the frames that follow are lost
                    await ws.close(code=exc.close_code or CloseCode.PROTOCOL_ERROR,
                                   message=str(exc)[:120].encode())
                    break
                for message, size in arrived:
                    if isinstance(message, ProtocolError):
                        self.arrived(None, size)
                        self.send_error(message.request_id, message)
                    else:
                        self._take(message, size)
                # Held until the next frame otherwise: a buffer in shared memory is
                # released when its message is.
                arrived = message = None
        finally:
            self.disconnected(ws)
            await sender.wait()

    def _take(self, message: p.Message, size: int) -> None:
        self.arrived(message, size)
        self._handle(message)

    def _handle(self, message: p.Message) -> None:
        try:
            self.handle(message)
        except PyforaError as exc:
            self.send_error(getattr(message, "id", 0), exc)
        except Exception as exc:   # a bug here must not take down other sessions
            log.exception("error handling %s from %s", message.op, self.name)
            self.send_error(getattr(message, "id", 0), exc)

    def disconnected(self, ws: Socket) -> None:
        """The socket ``ws`` ended: nothing more can be sent or awaited on this link."""
        self.closed = True
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionResetError(f"{self.name} went away"))

    def arrived(self, message: p.Message | None, size: int) -> None:
        """A message of ``size`` bytes arrived (``message`` None: it could not be
        decoded)."""

    def handle(self, message: p.Message) -> None:
        raise NotImplementedError

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a request handler that has to await, replying with its error if it fails."""
        task = asyncio.ensure_future(coro)
        _background.add(task)
        task.add_done_callback(_background.discard)


_background: set[asyncio.Task] = set()
