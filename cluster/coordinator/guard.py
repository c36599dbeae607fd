"""Connections that have not authenticated yet: how much they may send, for how long, and
how many at once.

The token is checked on a request (``auth.authorized``), so a peer without it is
refused before its connection is upgraded to a websocket. Until then, though, aiohttp
reads whatever the peer sends: the headers of its request (bounded by aiohttp), and after
an upgrade request everything that follows, kept unbounded for the websocket expected to
take it over. So a connection that has not made a request with the token
(``Guard.authenticated``, called by the handlers once it has) may send ``MAX_BYTES``, far
more than any request's headers; one more byte closes it. It has
``Config.auth_timeout`` seconds to authenticate: a request sent a byte at a time, or
never finished, would otherwise hold a socket forever. And at most
``Config.max_unauthenticated`` connections may be waiting at once: one more closes the
one that has waited longest. (Refusing the newcomer instead would let a few idle
connections, renewed as they expire, lock every client out; evicting the oldest, an
attacker has to open connections faster than a client takes to authenticate, a few
milliseconds.) Authenticated connections (sessions, workers, the dashboard's keep-alive
polling) are no longer watched.

Each connection is a ``Watch`` until it authenticates. aiohttp has no hook for a
connection before its first request, so its site (``cluster.coordinator.web_doors``) wraps
the protocol each accepted connection gets in a ``Watched``; once the connection has
authenticated, its transport is handed aiohttp's own protocol back, so the frames of
sessions and workers go through no extra call. The worker door served by websockets
(``cluster.coordinator.ws_door``) makes its connections watch themselves.

Runs on the coordinator's event loop.
"""

from __future__ import annotations

import asyncio
import logging
from typing import cast

log = logging.getLogger("cluster")
#: What a connection may send before it authenticates.
MAX_BYTES = 64 * 1024


class Guard:
    """The connections still to authenticate."""

    def __init__(self, limit: int, timeout: float) -> None:
        self.limit = limit
        self.timeout = timeout
        self.closed = {"evicted": 0, "expired": 0, "oversized": 0}
        self._waiting: dict[asyncio.Transport, Watch] = {}

    def opened(self, transport: asyncio.Transport, watched: Watch) -> None:
        if len(self._waiting) >= self.limit:
            self.drop(next(iter(self._waiting)), "evicted")
            if self.closed["evicted"] in (1, 1000) or self.closed["evicted"] % 10000 == 0:
                log.warning("%d connections closed: more than %d at once were still to "
                            "authenticate (--max-unauthenticated)", self.closed["evicted"],
                            self.limit)
        loop = asyncio.get_running_loop()
        watched.deadline = loop.call_later(self.timeout, self.drop, transport, "expired")
        self._waiting[transport] = watched

    def authenticated(self, transport: asyncio.Transport | None) -> None:
        """The connection has made a request with the token: it is no longer watched."""
        watched = self._waiting.pop(transport, None) if transport is not None else None
        if transport is not None and watched is not None:
            watched.trusted()
            if watched.handler is not None:
                transport.set_protocol(watched.handler)

    def forget(self, transport: asyncio.Transport | None) -> None:
        """The connection has ended."""
        watched = self._waiting.pop(transport, None) if transport is not None else None
        if watched is not None:
            watched.trusted()

    def drop(self, transport: asyncio.Transport, why: str) -> None:
        watched = self._waiting.pop(transport, None)
        if watched is not None:
            watched.trusted()       # its deadline, if that is not what fires
        self.closed[why] += 1
        transport.abort()       # close() would wait on a peer that does not read

    def __len__(self) -> int:
        return len(self._waiting)


class Watch:
    """What one connection has sent, counted until it authenticates.

    ``handler``: the protocol its transport is handed back to once it has (None: the
    transport's protocol is the watching one)."""

    def __init__(self, guard: Guard, handler: asyncio.Protocol | None = None) -> None:
        self.handler = handler
        self._guard = guard
        self._transport: asyncio.Transport | None = None
        self._received: int | None = 0       # None once authenticated
        self.deadline: asyncio.TimerHandle | None = None

    def trusted(self) -> None:
        self._received = None
        if self.deadline is not None:
            self.deadline.cancel()

    def opened(self, transport: asyncio.BaseTransport) -> None:
        # A stream protocol's transport, which typeshed types as any transport.
        self._transport = cast(asyncio.Transport, transport)
        self._guard.opened(self._transport, self)

    def ended(self) -> None:
        self._guard.forget(self._transport)

    def admits(self, data: bytes) -> bool:
        """Whether ``data`` may be read: False once the connection is dropped for it."""
        if self._received is not None:
            self._received += len(data)
            if self._received > MAX_BYTES and self._transport is not None:
                self._guard.drop(self._transport, "oversized")
                return False
        return True


class Watched(asyncio.Protocol):
    """A protocol for one connection, with what it receives counted (``Watch``) until it
    authenticates."""

    def __init__(self, handler: asyncio.Protocol, guard: Guard) -> None:
        self.handler = handler
        self._watch = Watch(guard, handler)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.handler.connection_made(transport)
        self._watch.opened(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._watch.ended()
        self.handler.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._watch.admits(data):
            self.handler.data_received(data)

    def eof_received(self) -> bool | None:
        return self.handler.eof_received()

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()
