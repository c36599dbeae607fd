"""One websocket peer of the coordinator (a client session or a worker): the handshake,
ordered sends, and requests that await their reply.

Sending never awaits, so the dispatcher can send from plain functions: a message is
written at once, or queued behind those still waiting, a message and its buffers' frames
together (``pyfora.aio.sender``). Buffers are relayed as the frames they came in, never
joined or decoded (``protocol.Assembler``).

Runs on the coordinator's event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from pyfora import protocol as p
from pyfora.aio.sender import Sender
from pyfora.errors import ProtocolError, PyforaError
from pyfora.shared_memory import Directory

from .auth import handshake_allowed, token_ok

log = logging.getLogger("cluster")
HANDSHAKE_TIMEOUT = 10.0


async def accept(request: web.Request, role: str, token: str | None, max_frame: int,
                 welcome: p.Welcome | Callable[[web.WebSocketResponse, p.Hello], p.Welcome | p.Error],
                 loopback_bound: bool = False,
                 ) -> tuple[web.WebSocketResponse, p.Hello] | None:
    """Upgrade and check the ``hello``; on failure answer with an error, close, return None.

    ``welcome`` may be a function of the ``hello`` (a client resuming its session gets
    that session's welcome); an ``Error`` it returns refuses the connection.

    A handshake from a foreign web page (``auth.handshake_allowed``) is refused with 403
    before the upgrade.
    """
    if not handshake_allowed(request, loopback_bound):
        raise web.HTTPForbidden(text="cross-origin websocket refused\n")
    ws = web.WebSocketResponse(max_msg_size=max_frame, heartbeat=30.0)
    await ws.prepare(request)
    try:
        msg = await asyncio.wait_for(ws.receive(), HANDSHAKE_TIMEOUT)
        hello = p.decode(msg.data) if msg.type == WSMsgType.BINARY else None
        if not isinstance(hello, p.Hello):
            raise ProtocolError("the first frame must be hello")
        if hello.version != p.VERSION:
            raise ProtocolError(f"protocol version {hello.version} is not supported; this "
                                f"cluster speaks version {p.VERSION}: upgrade pyfora on "
                                "the older side")
        if hello.role != role:
            raise ProtocolError(f"this endpoint is for {role}s, not {hello.role}s")
        if not token_ok(hello.token, token):
            how = "--token" if role == "worker" else "token= to connect()"
            await _refuse(ws, "AuthenticationError", f"the cluster refused the token: pass "
                          f"{how} or set PYFORA_TOKEN", WSCloseCode.POLICY_VIOLATION)
            return None
    except (ProtocolError, asyncio.TimeoutError) as exc:
        await _refuse(ws, "ProtocolError", str(exc) or "no hello in time",
                      WSCloseCode.PROTOCOL_ERROR)
        return None
    reply = welcome(ws, hello) if callable(welcome) else welcome
    if isinstance(reply, p.Error):
        await _refuse(ws, reply.kind, reply.message, WSCloseCode.POLICY_VIOLATION)
        return None
    await ws.send_bytes(p.encode(reply))
    return ws, hello


async def _refuse(ws: web.WebSocketResponse, kind: str, message: str, code: int) -> None:
    await ws.send_bytes(p.encode(p.Error(id=0, kind=kind, message=message)))
    await ws.close(code=code, message=message[:120].encode())


class Link:
    """The coordinator's end of one websocket."""

    def __init__(self, ws: web.WebSocketResponse, name: str, max_size: int = p.MAX_FRAME,
                 shm: Directory | None = None) -> None:
        self.name = name
        self.max_size = max_size        # of one message from the peer, buffers included
        self.shm = shm                  # the peer is on this machine: buffers go there
        self.closed = False
        self.attach(ws)
        self._pending: dict[int, asyncio.Future] = {}
        self._ids = p.RequestIds()

    def attach(self, ws: web.WebSocketResponse) -> None:
        """Send on ``ws`` from now on: from ``serve``, after the handshake's ``welcome``."""
        self.ws = ws
        # Peers accept frames of up to MAX_FRAME: batches are BATCH_BYTES at most.
        self._sender = Sender(ws.send_bytes, (ConnectionError, RuntimeError), paused=True)

    def send(self, message: p.Message) -> None:
        if not self.closed:
            self._sender.send(p.to_frames(message, self.shm))

    def send_error(self, request_id: int, exc: Exception) -> None:
        kind = type(exc).__name__ if isinstance(exc, PyforaError) else "InternalError"
        self.send(p.Error(id=request_id, kind=kind, message=str(exc)))

    async def request(self, message: Any) -> p.Message:
        if self.closed:     # its reply would never come
            raise ConnectionResetError(f"{self.name} went away")
        message.id = self._ids()
        future = asyncio.get_running_loop().create_future()
        self._pending[message.id] = future
        try:
            self.send(message)
            return await future
        finally:
            self._pending.pop(message.id, None)

    def reply(self, message: Any) -> bool:
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
        try:
            async for msg in ws:
                if msg.type not in (WSMsgType.BINARY, WSMsgType.TEXT):
                    continue
                try:
                    arrived = assembler.feed(msg.data)
                except ProtocolError as exc:    # the frames that follow are lost
                    await ws.close(code=exc.close_code or WSCloseCode.PROTOCOL_ERROR,
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
        try:
            self.handle(message)
        except PyforaError as exc:
            self.send_error(getattr(message, "id", 0), exc)
        except Exception as exc:   # a bug here must not take down other sessions
            log.exception("error handling %s from %s", message.op, self.name)
            self.send_error(getattr(message, "id", 0), exc)

    def disconnected(self, ws: web.WebSocketResponse) -> None:
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

    def spawn(self, coro) -> None:
        """Run a request handler that has to await, replying with its error if it fails."""
        task = asyncio.ensure_future(coro)
        _background.add(task)
        task.add_done_callback(_background.discard)


_background: set[asyncio.Task] = set()
