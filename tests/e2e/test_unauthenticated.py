"""What a peer without the token can make the coordinator do: next to nothing. Its
upgrade is refused before a frame is read, what it sends meanwhile is not buffered, a
request it never finishes is closed at the deadline, and idle connections cannot pile up
(``cluster.coordinator.guard``). Real coordinators, raw TCP connections on this machine."""

from __future__ import annotations

import asyncio
import time

import psutil
import pytest
from conftest import UNIT, ClusterProcess, http_status, wait_until

import pyfora
from pyfora import aio

T = 30 * UNIT
MiB = 1 << 20


@pytest.fixture(scope="module")
def guarded():
    """No worker (the coordinator alone is measured), a short deadline and a small cap."""
    cluster = ClusterProcess(0, "--auth-timeout", "1", "--max-unauthenticated", "4")
    yield cluster
    assert cluster.stop() == 0


def port_of(url: str) -> int:
    return int(url.rstrip("/").rsplit(":", 1)[1])


def upgrade(port: int, token: str | None = None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (f"GET /api/session HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{auth}\r\n").encode()


async def flood(port: int, total: int, token: str | None) -> int:
    """Send an upgrade request, then a websocket frame header announcing ``total`` bytes
    and as much of them as the coordinator takes; return how many it took."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = 0
    chunk = b"\xab" * MiB
    try:
        # A masked binary frame of ``total`` bytes: 127 means a 64-bit length follows.
        writer.write(upgrade(port, token) + b"\x82\xff" + total.to_bytes(8, "big") + b"mask")
        while sent < total:
            writer.write(chunk)
            await asyncio.wait_for(writer.drain(), 2 * UNIT)
            sent += len(chunk)
    except (ConnectionError, TimeoutError):
        pass        # refused and closed, or no longer read: both stop the flood
    finally:
        writer.transport.abort()
    return sent


async def test_unauthenticated_floods_do_not_grow_the_coordinator(guarded):
    coordinator = psutil.Process(guarded.pid)
    port = port_of(guarded.url)
    before = coordinator.memory_info().rss
    sent = await asyncio.gather(*(flood(port, 256 * MiB, "wrong") for _ in range(3)))
    grown = coordinator.memory_info().rss - before
    print(f"3 unauthenticated floods: {sum(sent) / MiB:.0f} MiB written, RSS "
          f"{grown / MiB:+.1f} MiB")
    assert grown < 8 * MiB, f"the coordinator grew by {grown / MiB:.1f} MiB"
    async with aio.connect(guarded.url) as ex:      # and it still serves its clients
        assert (await asyncio.wait_for(ex.status(), T))["workers"] == []


async def test_a_request_never_finished_is_closed_at_the_deadline(guarded):
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(guarded.url))
    try:
        writer.write(upgrade(port_of(guarded.url))[:40])      # headers cut short
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), T) == b""     # closed, unanswered
        assert time.monotonic() - started >= 0.5
        assert http_status(guarded.url)["unauthenticated"]["expired"] >= 1
    finally:
        writer.close()


async def test_idle_connections_cannot_lock_clients_out(guarded):
    """Over the cap, the connection that has waited longest is closed: a client that
    authenticates at once always gets in."""
    port = port_of(guarded.url)
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
    try:
        first_reader = idle[0][0]
        assert await asyncio.wait_for(first_reader.read(), T) == b""   # the oldest went
        async with aio.connect(guarded.url) as ex:
            status = await asyncio.wait_for(ex.status(), T)
            # The client's own connection, once authenticated, is not one of them.
            assert status["unauthenticated"]["waiting"] <= 4
            assert status["unauthenticated"]["evicted"] >= 1
    finally:
        for _, writer in idle:
            writer.close()
    wait_until(lambda: http_status(guarded.url)["unauthenticated"]["waiting"] == 0, T,
               "the idle connections to be forgotten")


def test_without_the_token_nothing_is_served(guarded):
    with pytest.raises(pyfora.AuthenticationError):
        pyfora.connect(guarded.url, token="wrong")
