"""One persistent websocket session to a coordinator.

The handshake, a reader task that routes replies to the requests awaiting them and
pushed messages (task output) to a callback, ordered sends (``sender``), and close semantics:
when the connection ends, every pending request fails with ``SessionClosedOK`` or
``SessionLost``, so no future ever hangs.

A connection that breaks without a close frame (a network cut: not ``close()``, not the
cluster shutting down with GOING_AWAY) is not the end of the session: the coordinator
keeps it for the grace period it announced in ``welcome``, and the reader reconnects with
backoff within it, presenting the session's resume secret. Pending requests stay pending;
both ends send again what the other missed (``pyfora.wire.Replay``), so a reply that
came while the client was away arrives, and a request lost in the cut is handled once.
A refused TCP connection means nothing listens there any more (the cluster is gone), so
it ends the attempt at once; so does the coordinator saying the session has ended. Only
then, or past the grace period, do pending requests fail with ``SessionLost``.

Runs on the event loop that opened it; only ``call_threadsafe`` may be called from other
threads.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import os
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

import websockets

from .. import wire as p
from ..errors import (
    AuthenticationError,
    ExecutorClosedError,
    ProtocolError,
    PyforaConnectionError,
    SessionClosedOK,
    SessionLost,
)
from ..net import local_tokens, shared_memory
from ..net.sender import Sender
from ..net.tls import client_context

log = logging.getLogger("pyfora")
OPEN_TIMEOUT = 20.0
#: Not a websocket close code: marks a session the client closed itself.
CLOSED_BY_CLIENT = -1


def redacted(url: str) -> str:
    """``url`` with its ``?token=`` hidden, fit for error messages and logs."""
    parts = urllib.parse.urlsplit(url)
    if "token" not in urllib.parse.parse_qs(parts.query):
        return url
    query = [(k, "***" if k == "token" else v) for k, v in urllib.parse.parse_qsl(parts.query)]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query, safe="*")))


class Session:
    """The client's end of the websocket. Create it with ``await Session.open(...)``, or
    on the connection and welcome of an embedded coordinator's ``connect_local()``."""

    def __init__(self, ws, welcome: p.Welcome,
                 on_push: Callable[[p.Message], None] = lambda m: None,
                 reconnect: Callable[[p.Hello], Awaitable[Any]] | None = None) -> None:
        self._ws = ws
        self.welcome = welcome
        self.on_push = on_push
        self._reconnect = reconnect     # opens a new websocket to the same endpoint
        # On the cluster's machine, large buffers go through shared memory.
        self._shm = shared_memory.Directory.offered(welcome.shm)
        self._replay = p.Replay()
        self._resuming = False
        # What each request waiting for its reply calls with it (``start_request``).
        self._pending: dict[int, Callable[[Any], None]] = {}
        # The context of each request's caller: output a task prints is written in it, so
        # that in Jupyter (whose output streams route by a context variable) it lands in
        # the cell that made the call, not in the cell that opened the session.
        self._contexts: dict[int, contextvars.Context] = {}
        self._sender = Sender.on_websocket(ws, welcome.max_frame)
        # An in-process connection (the embedded default's) takes messages as they are,
        # each at once: nothing to encode, batch or keep, since it is never resumed.
        self._direct: Callable[[Any], None] | None = getattr(ws, "send_direct", None)
        self._ids = p.RequestIds()
        self.loop = asyncio.get_running_loop()
        self._closed: PyforaConnectionError | None = None
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, url: str, token: str | None = None,
                   on_push: Callable[[p.Message], None] = lambda m: None,
                   ssl_context: ssl.SSLContext | None = None) -> Session:
        """Connect and say hello.

        Args:
            url: the cluster's address (see ``wire.endpoint_url``).
            token: the token (default: ``?token=`` in ``url``, else ``$PYFORA_TOKEN``, else
                for a loopback URL the one a local ``pyfora-cluster`` left for its user,
                see ``pyfora.net.local_tokens``).
            on_push: called with each message pushed by the cluster.
            ssl_context: for ``https``/``wss`` URLs (default: verify against the system's
                authorities; see ``pyfora.net.tls``).

        Raises:
            PyforaConnectionError: the cluster cannot be reached, or its certificate
                cannot be verified.
            AuthenticationError: it refused the token.
            ProtocolError: it speaks another protocol version.
        """
        # Here, not at the top: the embedded default's session is in-process and never
        # needs the websockets client.
        from websockets.asyncio.client import connect as ws_connect

        from ..net.frames import FramesClientConnection
        ws_url, url_token = p.endpoint_url(url, "/api/session")
        token = (token or url_token or os.environ.get("PYFORA_TOKEN")
                 or local_tokens.find(ws_url))
        url = redacted(url)     # the token must not reach error messages or logs
        tls: dict[str, Any] = (
            {"ssl": ssl_context or client_context()} if ws_url.startswith("wss:") else {})
        connect = functools.partial(ws_connect, ws_url, max_size=p.MAX_FRAME,
                                    compression=None, open_timeout=OPEN_TIMEOUT,
                                    ping_interval=20, ping_timeout=60, close_timeout=2,
                                    create_connection=FramesClientConnection, **tls)

        def reconnect(hello: p.Hello):
            return connect(additional_headers=p.upgrade_headers(hello, token))

        hello = p.Hello(version=p.VERSION, role="client", host=shared_memory.host_id())
        try:
            ws = await reconnect(hello)
        except websockets.InvalidStatus as exc:
            raise _refusal(exc, url) from None
        except ssl.SSLCertVerificationError as exc:
            raise PyforaConnectionError(
                f"the TLS certificate of the cluster at {url} could not be verified "
                f"({exc.verify_message}): pass cafile= with the cluster's certificate or "
                "its authority (or verify=False, which trusts anyone)") from None
        except (OSError, TimeoutError, websockets.InvalidHandshake, websockets.InvalidURI) as exc:
            raise PyforaConnectionError(
                f"cannot reach the cluster at {url}: {exc}; is it running? "
                "(start one with `pyfora-cluster`, or call pyfora.connect() with no URL)") from None
        try:
            reply = p.decode(await asyncio.wait_for(ws.next_frame(), OPEN_TIMEOUT))
        except (websockets.ConnectionClosed, TimeoutError) as exc:
            await ws.close()
            raise PyforaConnectionError(
                f"the cluster at {url} closed the handshake: {exc}") from None
        if not isinstance(reply, p.Welcome):
            await ws.close()
            raise ProtocolError(f"the cluster opened with {reply.op!r}, not welcome")
        return cls(ws, reply, on_push, reconnect)

    @property
    def closed(self) -> bool:
        return self._closed is not None

    def check_open(self) -> None:
        """Raise unless the session is open: ``ExecutorClosedError`` after ``close()``, else
        the ``ConnectionError`` that ended it, so code that reconnects on
        ``ConnectionError`` sees it on every later call too."""
        failure = self._closed
        if failure is None:
            return
        if failure.code == CLOSED_BY_CLIENT:
            raise ExecutorClosedError("this executor is closed; connect again with connect()")
        raise type(failure)(f"{failure}; connect again", failure.code, failure.reason)

    def next_id(self) -> int:
        return self._ids()

    async def request(self, message: Any) -> Any:
        """Send a request and await its reply. Cancelling the caller stops the wait only:
        the caller decides whether the cluster must be told (``Cancel``)."""
        future = self.loop.create_future()
        self.start_request(message, functools.partial(_settle, future))
        try:
            return await future
        finally:
            self.forget(message.id)

    def start_request(self, message: Any, on_reply: Callable[[Any], None]) -> None:
        """Send a request; ``on_reply`` is called once, on the loop, with its reply, or
        with the exception it ends with (an ``error`` reply's, or the session's end),
        unless ``forget`` comes first. For callers that are not coroutines: no task nor
        future is made for it."""
        self.check_open()
        self._pending[message.id] = on_reply
        self._contexts[message.id] = contextvars.copy_context()
        self._send(message)

    def forget(self, request_id: int) -> bool:
        """Stop waiting for a request's reply; False if it had come already."""
        self._contexts.pop(request_id, None)
        return self._pending.pop(request_id, None) is not None

    def post(self, message: p.Message) -> None:
        """Send a message that wants no reply. Loop thread only."""
        if self._closed is None:
            self._send(message)

    def call_threadsafe(self, fn: Callable[[], Any]) -> None:
        """Call ``fn()`` on the session's loop, from any thread, finalizers included; a
        no-op once the loop is gone."""
        try:
            self.loop.call_soon_threadsafe(fn)
        except RuntimeError:
            pass

    def _send(self, message: p.Message) -> None:
        direct = self._direct
        if direct is not None and not getattr(message, "frames", None):
            direct(message)     # neither counted nor kept, at either end
            return
        frames = p.to_frames(message, self._shm)
        self._replay.record(frames)     # kept until acked: sent again on resuming
        if direct is None:
            self._sender.send(frames)
        else:           # at once, so that it keeps its place among the direct ones
            for frame in frames:
                direct(frame)

    async def _read(self) -> None:
        while True:
            failure, broken = await self._read_socket(self._ws)
            if not broken or self._closed is not None or not self.welcome.resume:
                break
            try:
                resumed = await self._resume()
            except Exception:       # a bug, or garbage in answer: fail, never hang
                log.exception("pyfora: resuming the session failed")
                resumed = False
            if not resumed:
                failure = SessionLost(
                    f"{failure}, and the session could not be resumed within "
                    f"{self.welcome.grace:g} s", failure.code, failure.reason)
                break
        self._shut(failure)

    async def _read_socket(self, ws) -> tuple[PyforaConnectionError, bool]:
        """Read ``ws`` until it ends; return the failure it ends with, and whether it
        broke without a close frame (the session may be resumed)."""
        assembler = p.Assembler(join=True, shm=self._shm)
        try:
            async for frame in ws:
                self._arrived(frame, assembler)
            return self._closed_error(ws, SessionClosedOK), False
        except websockets.ConnectionClosedOK:
            return self._closed_error(ws, SessionClosedOK), False
        except websockets.ConnectionClosed as exc:
            return self._closed_error(ws, SessionLost), exc.rcvd is None
        except Exception as exc:   # a protocol bug: fail loudly, never hang
            log.exception("pyfora session reader failed")
            return SessionLost(f"session failed: {exc!r}"), False

    def _arrived(self, frame: bytes | p.Message, assembler: p.Assembler) -> None:
        if isinstance(frame, p.Message):    # handed over as is (``_direct``): not counted
            self._dispatch(frame)
            return
        for message, size in assembler.feed(frame):
            if isinstance(message, ProtocolError):
                raise message       # the cluster sent what this version cannot read
            if isinstance(message, p.Ack):
                self._replay.acked(message.count)
                continue
            ack = self._replay.got(size)
            if ack is not None:
                self._sender.send([p.encode(ack)])      # acks are neither counted nor kept
            self._dispatch(message)

    async def _resume(self) -> bool:
        """Reconnect with backoff until the grace period ends; True once resumed."""
        assert self._reconnect is not None
        log.warning("pyfora: the connection to the cluster broke; resuming the session")
        self._resuming = True
        deadline = self.loop.time() + self.welcome.grace
        delay = 0.05
        try:
            while self._closed is None and (left := deadline - self.loop.time()) > 0:
                try:
                    async with asyncio.timeout(left):
                        ws = await self._reconnect(p.Hello(
                            version=p.VERSION, role="client", resume=self.welcome.resume,
                            received=self._replay.received, host=shared_memory.host_id()))
                        reply = await _first(ws)
                except ConnectionRefusedError:
                    return False        # nothing listens there: the cluster is gone
                except websockets.InvalidStatus as exc:     # the session has ended
                    log.warning("pyfora: %s", _refusal(exc, "the cluster"))
                    return False
                except (OSError, TimeoutError, websockets.WebSocketException):
                    await asyncio.sleep(min(delay, max(0.0, deadline - self.loop.time())))
                    delay = min(2 * delay, 1.0)
                    continue
                if not isinstance(reply, p.Welcome):
                    await ws.close()
                    return False
                try:
                    missed = self._replay.after(reply.received)
                except ProtocolError:
                    await ws.close()
                    return False
                self._sender.close()
                self._ws, self._sender, self.welcome = (
                    ws, Sender.on_websocket(ws, reply.max_frame), reply)
                for frames in missed:
                    self._sender.send(frames)
                log.warning("pyfora: the session was resumed")
                return True
            return False
        finally:
            self._resuming = False

    def _closed_error(self, ws, cls: type[PyforaConnectionError]) -> PyforaConnectionError:
        code, reason = ws.close_code, ws.close_reason or ""
        if code == 1009 and not reason:     # aiohttp sends MESSAGE_TOO_BIG without one
            reason = ("the cluster refused a frame over its size limit (pyfora-cluster "
                      "--max-frame): send large values as several smaller ones")
        what = "closed" if cls is SessionClosedOK else "lost"
        detail = f" ({reason})" if reason else ""
        return cls(f"the connection to the cluster was {what}{detail}", code, reason)

    def _dispatch(self, message: p.Message) -> None:
        request_id = getattr(message, "id", 0)
        if isinstance(message, p.Output) or request_id not in self._pending:
            context = self._contexts.get(request_id)
            if isinstance(message, p.Error):
                log.warning("pyfora: the cluster reported: %s", message.message)
            elif isinstance(message, p.Output) and context is not None:
                context.run(self.on_push, message)
            else:
                self.on_push(message)
        else:
            on_reply = self._pending.pop(request_id)
            self._contexts.pop(request_id, None)
            on_reply(p.error_for(message) if isinstance(message, p.Error) else message)

    def _shut(self, failure: PyforaConnectionError) -> None:
        if self._closed is not None:
            return
        self._closed = failure
        if self._shm is not None:
            self._shm.close()
        pending, self._pending = self._pending, {}
        for on_reply in pending.values():
            on_reply(failure)

    async def close(self) -> None:
        """Close the session; pending requests fail with ``SessionClosedOK``."""
        self._shut(SessionClosedOK("the session was closed by the client", CLOSED_BY_CLIENT))
        if self._resuming:
            self._reader.cancel()       # no socket to close: stop reconnecting
        self._sender.flush()            # what was posted last (releases) goes before the close
        await self._ws.close()
        await asyncio.gather(self._reader, self._sender.wait(), return_exceptions=True)


def _settle(future: asyncio.Future, reply: Any) -> None:
    if not future.done():
        if isinstance(reply, BaseException):
            future.set_exception(reply)
        else:
            future.set_result(reply)


async def _first(ws) -> p.Message:
    """The first message on a new connection (its welcome); closes it on failure."""
    try:
        return p.decode(await ws.next_frame())
    except BaseException:
        await ws.close()
        raise


def _refusal(exc: websockets.InvalidStatus, url: str) -> Exception:
    """The error a cluster's refusal of the upgrade stands for: the one it names
    (``AuthenticationError``, ``ProtocolError``, ``SessionLost``, ...), else by status."""
    response = exc.response
    error = p.refused(response.body or b"")
    if error is not None:
        return error
    code = response.status_code
    cls = AuthenticationError if code in (401, 403) else PyforaConnectionError
    return cls(f"the cluster at {url} refused the connection (HTTP {code})")
