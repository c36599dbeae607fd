"""The doors as aiohttp serves them: the websocket upgrade of a client or a worker
(``accept``), refusals as HTTP responses, the ``Host`` check on every request, a site
whose connections the guard watches, and an access log without query strings.

The checks themselves are ``cluster.coordinator.auth``'s and ``cluster.coordinator.guard``'s,
which the worker door served by websockets (``cluster.coordinator.ws_door``) applies too.

Runs on the coordinator's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

from aiohttp import abc, web

from cluster.coordinator.auth import Doors, Refusal
from cluster.coordinator.guard import Guard, Watched
from pyfora import wire as p
from pyfora.errors import ProtocolError


def refuse(refusal: Refusal) -> web.Response:
    """An HTTP refusal that the client turns back into ``pyfora.errors``' ``kind``.

    The connection is closed once it is sent: aiohttp keeps whatever follows an upgrade
    request, unbounded, for the websocket it expects to take it over."""
    headers = {"WWW-Authenticate": "Bearer"} if refusal.status == 401 else None
    response = web.Response(status=refusal.status, body=p.refusal(refusal.kind, refusal.message),
                            content_type="application/json", headers=headers)
    response.force_close()
    return response


async def accept(request: web.Request, role: str, doors: Doors, max_frame: int,
                 welcome: Callable[[web.WebSocketResponse, p.Hello], p.Welcome | p.Error],
                 ) -> tuple[web.WebSocketResponse, p.Hello] | web.Response:
    """Check the upgrade request of a ``role`` (its Origin and token: ``Doors``, its
    ``hello``: ``wire.hello_from_header``), then upgrade and send the welcome.

    ``welcome`` makes the welcome from the hello (a client resuming its session gets that
    session's); an ``Error`` it returns refuses the connection. A refusal is an HTTP
    response, returned to be answered, that names the error for the peer to raise
    (``wire.refusal``): nothing is accepted from a peer before it is known.
    """
    refusal = doors.refusal(request, role)
    if refusal is not None:
        return refuse(refusal)
    try:
        hello = p.hello_from_header(request.headers.get(p.HELLO_HEADER))
        if hello.role != role:
            raise ProtocolError(f"this endpoint is for {role}s, not {hello.role}s")
    except ProtocolError as exc:
        return refuse(Refusal(400, "ProtocolError", str(exc)))
    ws = web.WebSocketResponse(max_msg_size=max_frame, heartbeat=30.0)
    reply = welcome(ws, hello)
    if isinstance(reply, p.Error):
        return refuse(Refusal(409, reply.kind, reply.message))
    await ws.prepare(request)
    await ws.send_bytes(p.encode(reply))
    return ws, hello


def check_host(doors: Doors):
    """A middleware that refuses a request whose ``Host`` is not one of the cluster's
    names (``Doors.host_refusal``)."""
    @web.middleware
    async def middleware(request: web.Request, handler):
        refusal = doors.host_refusal(request)
        if refusal is not None:
            return refuse(refusal)
        return await handler(request)
    return middleware


class AccessLogger(abc.AbstractAccessLogger):
    """aiohttp's access log without query strings: ``/api/status?token=...`` is how the
    dashboard may pass the token, and the default format (``%r``) would log it."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info('%s "%s %s" %s %.3fs', request.remote, request.method, request.path,
                         response.status, time)

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


class GuardedSite(web.SockSite):
    """A ``SockSite`` whose connections ``guard`` watches."""

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, guard: Guard,
                 **kwargs) -> None:
        super().__init__(runner, sock, **kwargs)
        self._guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)      # SockSite's own would serve unwatched
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            lambda: Watched(server(), self._guard), sock=self._sock,
            ssl=self._ssl_context, backlog=self._backlog)
