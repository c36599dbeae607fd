"""``cluster.coordinator.ws_door``: the worker door served by websockets makes the checks
the aiohttp door makes, with the same refusals: the Host, the Origin and the workers'
token before the upgrade, the hello, and the bounds on connections that have not
authenticated (``cluster.coordinator.guard``). A coordinator on this loop, raw TCP
connections on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from conftest import UNIT, async_wait_until

from cluster.coordinator import ws_door
from cluster.coordinator.coordinator import Config, Coordinator
from cluster.coordinator.guard import MAX_BYTES
from pyfora import wire as p

T = 10 * UNIT
CLIENTS, WORKERS = "the-clients-token-0123456789", "the-workers-token-0123456789"
#: The port of the cluster's own pages (its aiohttp app), which Origin is checked against.
PAGES = 8123


@pytest.fixture
async def door():
    config = Config(host="127.0.0.1", port=PAGES, workers=0, token=CLIENTS,
                    worker_token=WORKERS, auth_timeout=0.5, max_unauthenticated=3,
                    shared_memory=False)
    coordinator = Coordinator(config)
    coordinator.doors.port = PAGES
    listening = socket.create_server(("127.0.0.1", 0))
    server = await ws_door.start(coordinator, listening)
    yield coordinator, listening.getsockname()[1]
    server.close()
    await server.wait_closed()
    await coordinator.backend.close()


def request(port: int, *, path: str = ws_door.PATH, token: str | None = WORKERS,
            role: str = "worker", hello: bool = True, **headers: str) -> bytes:
    """A worker's upgrade request, with ``headers`` (``Host`` among them) replacing its
    own."""
    fields = {"Host": f"127.0.0.1:{port}", "Upgrade": "websocket", "Connection": "Upgrade",
              "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    if hello:
        fields.update(p.upgrade_headers(p.Hello(version=p.VERSION, role=role), None))
    if token is not None:
        fields["Authorization"] = f"Bearer {token}"
    fields.update(headers)
    lines = "".join(f"{name}: {value}\r\n" for name, value in fields.items())
    return f"GET {path} HTTP/1.1\r\n{lines}\r\n".encode()


async def answer(port: int, data: bytes) -> tuple[int, dict, bytes]:
    """The status, headers and body of the response to ``data``, up to the close that
    follows a refusal (after a 101: the first frame's bytes, as they come)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T)
        status_line, *lines = head.decode().split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines if line)
        if int(status_line.split()[1]) == 101:
            body = await asyncio.wait_for(reader.read(2), T)
        else:
            body = await asyncio.wait_for(reader.read(), T)     # and then it closes
        return int(status_line.split()[1]), headers, body
    finally:
        writer.close()


async def refused(port: int, data: bytes) -> tuple[int, str, dict]:
    status, headers, body = await answer(port, data)
    assert headers["Content-Type"] == "application/json"
    return status, json.loads(body)["kind"], headers


async def test_a_worker_with_the_workers_token_is_welcomed(door):
    coordinator, port = door
    status, _, frame_start = await answer(port, request(port))
    assert status == 101 and frame_start[:1] == b"\x82"     # a binary frame: the welcome
    assert len(coordinator.doors.guard) == 0                 # no longer watched


async def test_its_connections_do_not_wait_to_fill_a_segment(door):
    """TCP_NODELAY, as aiohttp's connections have: asyncio's own loop does not set it on
    the sockets a ``socket.create_server`` socket accepts."""
    coordinator, port = door
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request(port))
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T)
        await async_wait_until(lambda: coordinator.worker_links, T, "the worker's link")
        link = next(iter(coordinator.worker_links))
        sock = link.ws._connection.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        writer.close()


@pytest.mark.parametrize("token", [None, "wrong", CLIENTS])
async def test_without_the_workers_token_the_upgrade_is_refused(door, token):
    coordinator, port = door
    status, kind, headers = await refused(port, request(port, token=token))
    assert (status, kind, headers["WWW-Authenticate"]) == (401, "AuthenticationError", "Bearer")
    assert not coordinator.backend.workers


@pytest.mark.parametrize("origin", ["https://evil.example", "null",
                                    f"http://127.0.0.1:{PAGES + 1}", "http://127.0.0.1"])
async def test_a_foreign_web_page_is_refused(door, origin):
    _, port = door
    assert (await refused(port, request(port, Origin=origin)))[:2] == (403, "AuthenticationError")


async def test_the_clusters_own_page_may_open_it(door):
    _, port = door
    status, _, _ = await answer(port, request(port, Origin=f"http://127.0.0.1:{PAGES}"))
    assert status == 101


async def test_dns_rebinding_is_refused(door):
    _, port = door
    host = f"rebind.evil.example:{port}"
    assert (await refused(port, request(port, Host=host)))[:2] == (403, "AuthenticationError")


@pytest.mark.parametrize("path", ["/api/session", "/api/status", "/"])
async def test_it_serves_the_worker_door_only(door, path):
    _, port = door
    assert (await refused(port, request(port, path=path)))[:2] == (404, "ProtocolError")


async def test_a_hello_missing_or_not_a_workers_is_refused(door):
    _, port = door
    assert (await refused(port, request(port, hello=False)))[:2] == (400, "ProtocolError")
    assert (await refused(port, request(port, role="client")))[:2] == (400, "ProtocolError")


async def test_what_an_unauthenticated_peer_sends_is_bounded(door):
    coordinator, port = door
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET " + b"a" * (MAX_BYTES + 1))     # never a whole request line
        assert await asyncio.wait_for(reader.read(), T) == b""     # closed, unanswered
    finally:
        writer.close()
    assert coordinator.doors.guard.closed["oversized"] == 1


async def test_a_request_never_finished_is_closed_at_the_deadline(door):
    coordinator, port = door
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request(port)[:40])
        assert await asyncio.wait_for(reader.read(), T) == b""
    finally:
        writer.close()
    assert coordinator.doors.guard.closed["expired"] == 1


async def test_idle_connections_cannot_lock_workers_out(door):
    coordinator, port = door
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
    try:
        assert await asyncio.wait_for(idle[0][0].read(), T) == b""     # the oldest went
        assert (await answer(port, request(port)))[0] == 101
        assert coordinator.doors.guard.closed["evicted"] >= 1
    finally:
        for _, writer in idle:
            writer.close()
