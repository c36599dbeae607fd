"""The worker door (``/api/worker``) served by websockets, on a socket of its own: how the
embedded default's workers join before aiohttp, whose import takes a few tenths of a
second of the client's CPU, is loaded (``cluster.coordinator.embedded``).

Every check is the one the aiohttp door makes (``cluster.coordinator.auth``: Host, Origin,
the workers' token, before the upgrade; ``cluster.coordinator.guard``: what a connection
may send, for how long, how many at once, until it has authenticated), and a refusal has
the same status and body (``wire.refusal``). The guard's deadline is the handshake's
only one.

Runs on the coordinator's event loop.
"""

from __future__ import annotations

import functools
import http
import socket
import urllib.parse
from collections.abc import Mapping

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from cluster.coordinator.auth import Refusal
from cluster.coordinator.coordinator import Coordinator
from cluster.coordinator.guard import Guard, Watch
from pyfora import wire as p
from pyfora.errors import ProtocolError
from pyfora.net.frames import Frames

PATH = "/api/worker"
#: Seconds between pings, and to wait for a pong: aiohttp's ``heartbeat=30.0``.
PING_INTERVAL, PING_TIMEOUT = 30.0, 15.0


async def start(coordinator: Coordinator, listening: socket.socket) -> Server:
    """Serve ``coordinator``'s worker door on the ``listening`` socket."""
    config = coordinator.config

    def check(connection: ServerConnection, request: Request) -> Response | None:
        assert isinstance(connection, _Connection)
        return _check(coordinator, connection, request)

    async def handle(connection: ServerConnection) -> None:
        assert isinstance(connection, _Connection) and connection.hello is not None
        assert connection.welcome is not None, "welcomed by check, before the upgrade"
        ws = _Socket(connection)
        await ws.send_bytes(p.encode(connection.welcome))
        await coordinator.serve_worker(ws, connection.hello,
                                       f"worker@{connection.remote_address[0]}")

    return await serve(
        handle, sock=listening, process_request=check, compression=None,
        max_size=config.max_frame, open_timeout=None, ping_interval=PING_INTERVAL,
        ping_timeout=PING_TIMEOUT, server_header=None,
        create_connection=functools.partial(  # type: ignore[arg-type] # a subclass's maker
            _Connection, guard=coordinator.doors.guard))


def _check(coordinator: Coordinator, connection: _Connection,
           request: Request) -> Response | None:
    """The refusal of a worker's upgrade request, or None once it is welcomed."""
    upgrade = _Upgrade(connection, request)
    doors = coordinator.doors
    refusal = doors.host_refusal(upgrade)
    if refusal is None and upgrade.path != PATH:
        refusal = Refusal(404, "ProtocolError", f"this port serves {PATH} only")
    refusal = refusal or doors.refusal(upgrade, "worker")
    if refusal is not None:
        return _refuse(refusal)
    try:
        hello = p.hello_from_header(upgrade.headers.get(p.HELLO_HEADER))
        if hello.role != "worker":
            raise ProtocolError(f"this endpoint is for workers, not {hello.role}s")
    except ProtocolError as exc:
        return _refuse(Refusal(400, "ProtocolError", str(exc)))
    welcome = coordinator.worker_welcome(hello)
    if isinstance(welcome, p.Error):
        return _refuse(Refusal(409, welcome.kind, welcome.message))
    connection.hello, connection.welcome = hello, welcome
    return None


def _refuse(refusal: Refusal) -> Response:
    """The response of ``web_doors.refuse``; websockets closes the connection after it."""
    body = p.refusal(refusal.kind, refusal.message)
    headers = Headers([("Connection", "close"), ("Content-Type", "application/json"),
                       ("Content-Length", str(len(body)))])
    if refusal.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return Response(refusal.status, http.HTTPStatus(refusal.status).phrase, headers, body)


class _Headers(dict):
    """A request's headers, the first of each name, looked up in any case."""

    def get(self, name: str, default=None):
        return super().get(name.lower(), default)


class _Upgrade:
    """An upgrade request as the checks read it (``auth.Request``)."""

    def __init__(self, connection: ServerConnection, request: Request) -> None:
        headers = _Headers()
        for name, value in request.headers.raw_items():
            headers.setdefault(name.lower(), value)
        self.headers: Mapping[str, str] = headers
        target = urllib.parse.urlsplit(request.path)
        self.path = target.path
        self.query = dict(reversed(urllib.parse.parse_qsl(target.query)))   # the first wins
        self.host: str | None = headers.get("host")
        self.transport = connection.transport


class _Connection(Frames, ServerConnection):
    """A connection that the guard watches until it authenticates (``guard.Watch``),
    with the hello and welcome of its upgrade once they are known."""

    def __init__(self, *args, guard: Guard, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._watch = Watch(guard)
        self.hello: p.Hello | None = None
        self.welcome: p.Welcome | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        # Small frames, each awaited by the peer: without TCP_NODELAY, Nagle's algorithm
        # holds one back until the last is acknowledged, which a delayed ACK defers. aiohttp
        # sets it on its connections; asyncio's own loop does only for sockets made with
        # IPPROTO_TCP, which ``socket.create_server``'s are not.
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._watch.opened(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._watch.ended()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._watch.admits(data):
            super().data_received(data)


class _Socket:
    """A worker's connection as its ``Link`` uses it (``link.Socket``): frames read as
    bytes, and a connection's end as the end of reading and as a ``ConnectionError``
    when sending, as with aiohttp."""

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection

    @property
    def closed(self) -> bool:
        return self._connection.state is not State.OPEN

    @property
    def close_code(self) -> int | None:
        return self._connection.close_code

    def write_now(self, data) -> bool:
        return self._connection.write_now(data)

    async def send_bytes(self, data) -> None:
        try:
            await self._connection.send(data)
        except ConnectionClosed as exc:
            raise ConnectionResetError(str(exc)) from None

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        if self.closed:
            return False
        await self._connection.close(code, message.decode(errors="replace"))
        return True

    def __aiter__(self) -> _Socket:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._connection.next_frame()
        except ConnectionClosed:
            raise StopAsyncIteration from None
