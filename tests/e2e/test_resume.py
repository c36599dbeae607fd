"""A client whose connection breaks resumes its session (``pyfora/aio/session.py``,
``cluster/coordinator/session.py``): a real coordinator and workers, the client's websocket through a
small TCP proxy on 127.0.0.1 that the tests sever (both sockets aborted, no close frame)
and can make refuse connections for a while, as a network outage would."""

from __future__ import annotations

import asyncio
import os
from typing import Self

import pytest
from conftest import UNIT, ClusterProcess, async_wait_until, busy, http_status

import pyfora
from pyfora import aio
from pyfora.net import local_tokens
from pyfora import wire as p

T = 30 * UNIT


def square(x):
    return x * x


class Proxy:
    """Forwards TCP connections from its own port to ``target``'s."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.refusing = False           # abort new connections at once (an outage)
        # "up" (client to cluster) or "down" -> bytes after which to sever, once
        self.cut_after: dict[str, int] = {}
        self.accepted = 0
        self.keep_upstream = False
        self.upstream_closed = asyncio.Event()
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self.sever()
        assert self._server is not None
        self._server.close()
        await asyncio.wait_for(self._server.wait_closed(), T)

    @property
    def url(self) -> str:
        """The cluster's address through this proxy, with the cluster's token (which
        a client finds by itself only for the port the cluster serves on)."""
        token = local_tokens.find(f"http://127.0.0.1:{self.target_port}/")
        return f"http://127.0.0.1:{self.port}/?token={token}"

    def sever(self, client_side_only: bool = False) -> None:
        """Cut every forwarded connection: both ends see the TCP connection end, with no
        websocket close frame. With ``client_side_only``, the coordinator's side stays
        open (half-open, as when a cut goes unnoticed there): the connection to it is
        left as it is until the coordinator closes it."""
        self.keep_upstream = client_side_only
        for a, b in list(self._pairs):
            a.transport.abort()
            if not client_side_only:
                b.transport.abort()
        self._pairs.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        self.accepted += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        pair = (writer, up_writer)
        self._pairs.add(pair)
        try:
            await asyncio.gather(
                _pipe(reader, up_writer, lambda: not self.keep_upstream, self._counter("up")),
                _pipe(up_reader, writer, lambda: True, self._counter("down")))
        finally:
            self._pairs.discard(pair)
            writer.transport.abort()
            up_writer.transport.abort()
            self.upstream_closed.set()


    def _counter(self, direction: str):
        """Counts one direction's bytes; severs once they pass ``cut_after[direction]``."""
        seen = 0

        def count(n: int) -> None:
            nonlocal seen
            seen += n
            if seen >= self.cut_after.get(direction, seen + 1):
                del self.cut_after[direction]
                self.sever()
        return count


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                propagate, count) -> None:
    """Forward ``reader`` to ``writer`` until ``reader`` ends. Once ``writer`` is cut, what
    comes is dropped, but ``reader`` is still read to its end: a coordinator's side left
    half-open (``sever(client_side_only=True)``) stays open until the coordinator closes
    it, whatever it sends meanwhile."""
    try:
        while data := await reader.read(1 << 16):
            if not writer.transport.is_closing():
                writer.write(data)
                try:
                    await writer.drain()
                except ConnectionError:
                    pass
            count(len(data))
    except (ConnectionError, OSError):
        pass
    finally:
        if propagate():
            writer.transport.abort()


def port_of(url: str) -> int:
    return int(url.rstrip("/").rsplit(":", 1)[1])


async def status(url: str) -> dict:
    return await asyncio.to_thread(http_status, url)


async def wait(awaitable, timeout: float = T):
    return await asyncio.wait_for(awaitable, timeout)


@pytest.fixture(scope="module")
def resumable():
    """One worker, the default grace period (30 s)."""
    cluster = ClusterProcess(1)
    yield cluster
    assert cluster.stop() == 0


@pytest.fixture(scope="module")
def resumable_wire():
    """As ``resumable``, with every buffer over the websocket (where a cut can fall)."""
    cluster = ClusterProcess(1, "--no-shared-memory")
    yield cluster
    assert cluster.stop() == 0


@pytest.fixture(scope="module")
def short_grace():
    cluster = ClusterProcess(1, "--session-grace", "1")
    yield cluster
    assert cluster.stop() == 0


async def test_a_result_computed_while_cut_off_arrives_after_the_session_resumes(resumable):
    url = resumable.url
    async with Proxy(port_of(url)) as proxy, aio.connect(proxy.url) as ex:
        before = (await status(url))["tasks"]["done"]
        pending = asyncio.ensure_future(ex.submit(busy, 1.0))
        await async_wait_until(lambda: http_status(url)["tasks"]["running"] == 1, T,
                               "the task to start")
        proxy.refusing = True
        proxy.sever()
        # The coordinator keeps the detached session; the task finishes meanwhile.
        await async_wait_until(lambda: http_status(url)["sessions"] == 0, T, "the detach")
        await async_wait_until(lambda: http_status(url)["tasks"]["done"] == before + 1, T,
                               "the task to finish while the client is away")
        assert not pending.done()
        proxy.refusing = False
        result = await wait(pending)
        assert await wait(result.toLocal()) == "finished"
        assert proxy.accepted == 2           # the first connection and one resume
        assert (await status(url))["sessions"] == 1


async def test_proxies_and_requests_sent_during_the_cut_work_after_it(resumable):
    url = resumable.url
    async with Proxy(port_of(url)) as proxy, aio.connect(proxy.url) as ex:
        before = (await status(url))["tasks"]["done"]
        defined = await wait(ex.define(list(range(100_000))))    # held by the coordinator
        computed = await wait(ex.submit(square, 12))
        big = await wait(ex.submit(bytes, 200_000))             # held by the worker only
        proxy.refusing = True
        proxy.sever()
        await async_wait_until(lambda: http_status(url)["sessions"] == 0, T, "the detach")
        # Requests made while cut off wait for the resume, then are sent once.
        during = asyncio.ensure_future(ex.submit(square, computed))
        fetch = asyncio.ensure_future(defined.toLocal())
        blob = os.urandom(3 * p.CHUNK)      # goes through shared memory
        large = asyncio.ensure_future(ex.submit(sha256, blob))
        await asyncio.sleep(0.2 * UNIT)      # give them time to be (not) sent
        assert not during.done() and not fetch.done() and not large.done()
        proxy.refusing = False
        assert await wait(fetch) == list(range(100_000))
        assert await wait((await wait(during)).toLocal()) == 144 ** 2
        assert await wait(computed.toLocal()) == 144
        assert await wait(big.toLocal()) == bytes(200_000)
        assert await wait((await wait(ex.submit(len, defined))).toLocal()) == 100_000
        assert await wait((await wait(large)).toLocal()) == sha256(blob)
        # Each of the five tasks ran exactly once: nothing was lost or run twice.
        assert (await status(url))["tasks"]["done"] == before + 5
        assert proxy.accepted == 2
        assert (await status(url))["shared_memory"]["files"] == 0


def sha256(data: bytes) -> str:
    import hashlib
    return hashlib.sha256(data).hexdigest()


async def test_a_large_message_cut_in_the_middle_is_sent_again_whole(resumable_wire):
    """A message and its buffers' frames are one unit for ``wire.Replay``: a cut
    inside the buffers (of a submit going up, of a value coming down) loses the part
    that came, and the whole message is sent again after the resume."""
    url = resumable_wire.url
    blob = os.urandom(3 * p.CHUNK + 12345)
    async with Proxy(port_of(url)) as proxy, aio.connect(proxy.url) as ex:
        before = (await status(url))["tasks"]["done"]
        proxy.cut_after["up"] = p.CHUNK + 1000
        digest = await wait(ex.submit(sha256, blob))
        assert await wait(digest.toLocal()) == sha256(blob)
        assert proxy.accepted == 2 and "up" not in proxy.cut_after
        same = await wait(ex.submit(bytes, blob))       # kept on the worker, not inline
        proxy.cut_after["down"] = 2 * p.CHUNK
        assert await wait(same.toLocal()) == blob
        assert proxy.accepted == 3 and "down" not in proxy.cut_after
        assert (await status(url))["tasks"]["done"] == before + 2     # each ran once


async def test_a_resume_takes_over_a_connection_the_coordinator_still_thinks_open(resumable):
    url = resumable.url
    async with Proxy(port_of(url)) as proxy, aio.connect(proxy.url) as ex:
        kept = await wait(ex.submit(square, 5))
        pending = asyncio.ensure_future(ex.submit(busy, 0.5))
        await async_wait_until(lambda: http_status(url)["tasks"]["running"] == 1, T,
                               "the task to start")
        proxy.upstream_closed.clear()
        proxy.sever(client_side_only=True)
        assert (await status(url))["sessions"] == 1      # still attached, on the old socket
        assert await wait((await wait(pending)).toLocal()) == "finished"
        assert await wait(kept.toLocal()) == 25
        await wait(proxy.upstream_closed.wait())          # the coordinator closed the old one
        assert proxy.accepted == 2
        assert (await status(url))["sessions"] == 1


async def test_past_the_grace_period_everything_is_released_and_futures_fail(short_grace):
    url = short_grace.url
    base = (await status(url))["objects"]["count"]
    async with Proxy(port_of(url)) as proxy:
        ex = await wait(aio.connect(proxy.url))
        try:
            kept = [await wait(ex.define(bytes(1000 + i))) for i in range(3)]
            assert (await status(url))["objects"]["count"] == base + 3
            pending = asyncio.ensure_future(ex.submit(busy, 60))
            await async_wait_until(lambda: http_status(url)["tasks"]["running"] == 1, T,
                                   "the task to start")
            proxy.refusing = True            # an outage longer than the grace period
            proxy.sever()
            with pytest.raises(pyfora.ConnectionError, match="could not be resumed"):
                await wait(pending, 10 * UNIT)
            with pytest.raises(pyfora.SessionLost):
                await wait(ex.submit(int))
            await async_wait_until(
                lambda: http_status(url)["objects"]["count"] == base
                and http_status(url)["tasks"]["running"] == 0, 10 * UNIT,
                "the session's objects and task to be released")
            del kept
        finally:
            await wait(ex.close())


async def test_a_session_that_comes_back_too_late_is_refused(short_grace):
    url = short_grace.url
    base = (await status(url))["objects"]["count"]
    async with Proxy(port_of(url)) as proxy:
        ex = await wait(aio.connect(proxy.url))
        try:
            kept = await wait(ex.define(b"x" * 1000))
            session = ex._session
            # The client keeps trying for longer than the coordinator keeps the session.
            session.welcome.grace = 30.0
            proxy.refusing = True
            proxy.sever()
            await async_wait_until(lambda: http_status(url)["objects"]["count"] == base,
                                   10 * UNIT, "the grace period to pass")
            proxy.refusing = False
            with pytest.raises(pyfora.SessionLost, match="could not be resumed"):
                await wait(ex.submit(int), 10 * UNIT)
            del kept
        finally:
            await wait(ex.close())


async def test_a_client_close_releases_at_once_without_waiting_for_the_grace(resumable):
    url = resumable.url
    base = (await status(url))["objects"]["count"]
    async with aio.connect(url) as ex:
        kept = await wait(ex.define(b"y" * 1000))
        assert (await status(url))["objects"]["count"] == base + 1
    await async_wait_until(lambda: http_status(url)["objects"]["count"] == base,
                           5 * UNIT, "the release")
    del kept
