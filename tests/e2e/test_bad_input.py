"""Bad input over a real websocket (the ``websockets`` client, no pyfora client): every bad
frame gets an error reply naming the problem, and the session that sent it, and every other
session, carry on."""

import asyncio

import msgpack
import pytest
import websockets
from conftest import UNIT, messages_of, upgrade_headers

import pyfora
from pyfora.net import local_tokens
from pyfora import wire as p

T = 30 * UNIT


def ws_url(cluster_url, path="api/session"):
    return cluster_url.replace("http://", "ws://") + path


_received: dict = {}     # ws -> messages received in a batch, not returned yet


async def recv(ws, timeout=T):
    pending = _received.setdefault(ws, [])
    if not pending:
        pending.extend(messages_of(await asyncio.wait_for(ws.recv(), timeout)))
    return pending.pop(0)


async def raw_session(cluster_url):
    ws = await websockets.connect(ws_url(cluster_url), open_timeout=T,
                                  additional_headers=upgrade_headers(cluster_url))
    assert isinstance(await recv(ws), p.Welcome)
    return ws


async def refusal(url, headers, **kwargs):
    """The error named by the cluster's refusal of an upgrade with ``headers``."""
    with pytest.raises(websockets.InvalidStatus) as info:
        await websockets.connect(url, open_timeout=T, additional_headers=headers, **kwargs)
    return info.value.response.status_code, p.refused(info.value.response.body)


async def reply_to(ws, frame):
    """Send a frame and return the next reply: not pushed output, not a pushed status
    (an ``info`` with id 0)."""
    await ws.send(frame)
    while True:
        message = await recv(ws)
        if not isinstance(message, p.Output) and not (
                isinstance(message, p.Info) and message.id == 0):
            return message


def square(x):
    return x * x


BAD_FRAMES = [
    ("not msgpack", b"\xc1\xc1", 0, "not valid msgpack"),
    ("not a map", msgpack.packb([1, 2, 3]), 0, "must be a map, got list"),
    ("no op", msgpack.packb({"id": 3}), 3, "unknown operation None"),
    ("unknown op", msgpack.packb({"op": "frobnicate", "id": 4}), 4,
     "unknown operation 'frobnicate'"),
    ("missing field", msgpack.packb({"op": "fetch", "id": 5}), 5, "fetch:"),
    ("extra field", msgpack.packb({"op": "status", "id": 6, "x": 1}), 6, "unknown fields"),
    ("wrong type", msgpack.packb({"op": "submit", "id": 7, "payload": "text"}), 7,
     "field 'payload' has type str"),
    ("worker-only op", p.encode(p.Done(id=8, oid=1, size=0, type="")), 8,
     "a client may not send 'done'"),
    ("unknown object", p.encode(p.Fetch(id=9, oid=10**9)), 9, "not on this cluster"),
    ("unknown dependency", p.encode(p.Submit(id=10, payload=b"", deps=[10**9])), 10,
     "not on this cluster"),
    ("bad message in a batch", p.encode(p.Batch(envelopes=[
        msgpack.packb({"op": "fetch", "id": 11}), p.encode(p.Release(oids=[]))])), 11, "fetch:"),
    ("batch in a batch", p.encode(p.Batch(envelopes=[p.encode(p.Batch(envelopes=[]))])), 0,
     "a batch inside a batch"),
]


@pytest.mark.parametrize("name, frame, reply_id, words", BAD_FRAMES,
                         ids=[b[0] for b in BAD_FRAMES])
async def test_bad_frame_gets_an_error_reply_and_the_session_goes_on(
        cluster_url, aex, name, frame, reply_id, words):
    ws = await raw_session(cluster_url)
    try:
        error = await reply_to(ws, frame)
        assert isinstance(error, p.Error), error
        assert error.id == reply_id
        assert words in error.message
        assert error.kind in ("ProtocolError", "PyforaUsageError")
        # the same session still answers
        info = await reply_to(ws, p.encode(p.Status(id=99)))
        assert isinstance(info, p.Info) and info.id == 99
    finally:
        await ws.close()
    # and another session carries on undisturbed
    assert await asyncio.wait_for((await aex.submit(square, 11)).toLocal(), T) == 121


async def test_text_frame(cluster_url):
    ws = await raw_session(cluster_url)
    try:
        await ws.send("hello?")
        error = await recv(ws)
        assert isinstance(error, p.Error) and "binary frame" in error.message
        assert isinstance(await reply_to(ws, p.encode(p.Status(id=1))), p.Info)
    finally:
        await ws.close()


async def test_payload_that_is_not_a_pickle_fails_its_task_only(cluster_url, aex):
    ws = await raw_session(cluster_url)
    try:
        done = await reply_to(ws, p.encode(p.Submit(id=1, payload=b"garbage")))
        assert isinstance(done, p.Done) and done.id == 1
        assert done.error is not None and done.error["type"]   # an unpickling error
        # a worker survived it: a real task runs
        assert await asyncio.wait_for((await aex.submit(square, 2)).toLocal(), T) == 4
        info = await reply_to(ws, p.encode(p.Status(id=2)))
        assert len(info.info["workers"]) == 2
    finally:
        await ws.close()


async def test_another_sessions_object_is_refused(cluster_url, aex):
    theirs = await aex.define([1, 2])
    ws = await raw_session(cluster_url)
    try:
        error = await reply_to(ws, p.encode(p.Fetch(id=1, oid=theirs.oid)))
        assert isinstance(error, p.Error) and error.kind == "ForeignProxyError"
        error = await reply_to(ws, p.encode(p.Submit(id=2, payload=b"", deps=[theirs.oid])))
        assert isinstance(error, p.Error) and error.kind == "ForeignProxyError"
        # releasing someone else's object does nothing
        await ws.send(p.encode(p.Release(oids=[theirs.oid])))
        assert isinstance(await reply_to(ws, p.encode(p.Status(id=3))), p.Info)
    finally:
        await ws.close()
    assert await asyncio.wait_for(theirs.toLocal(), T) == [1, 2]


def _b64(frame: bytes) -> str:
    import base64
    return base64.urlsafe_b64encode(frame).decode()


@pytest.mark.parametrize("hello, words", [
    (None, "no Pyfora-Hello header"),
    ("%%%", "not base64"),
    (_b64(b"\xc1"), "not valid msgpack"),
    (_b64(p.encode(p.Status(id=1))), "holds 'status', not hello"),
    (_b64(p.encode(p.Hello(version=999, role="client"))), "protocol version 999"),
    (_b64(p.encode(p.Hello(version=p.VERSION, role="worker"))), "for clients, not workers"),
])
async def test_bad_hello_is_refused_before_the_upgrade(cluster_url, aex, hello, words):
    headers = upgrade_headers(cluster_url)
    if hello is None:
        del headers[p.HELLO_HEADER]
    else:
        headers[p.HELLO_HEADER] = hello
    status, error = await refusal(ws_url(cluster_url), headers)
    assert status == 400 and isinstance(error, pyfora.ProtocolError), (status, error)
    assert words in str(error)
    assert await asyncio.wait_for((await aex.submit(square, 3)).toLocal(), T) == 9


async def test_client_token_on_the_worker_endpoint_is_refused(cluster_url):
    # the worker endpoint has a token of its own, which a client does not know
    status, error = await refusal(ws_url(cluster_url, "api/worker"),
                                  upgrade_headers(cluster_url, role="worker",
                                                  token=local_tokens.find(cluster_url)))
    assert status == 401 and isinstance(error, pyfora.AuthenticationError)
    assert "worker token" in str(error)


async def test_version_skew_through_the_client_is_a_clear_error(cluster_url, monkeypatch):
    from pyfora import aio
    monkeypatch.setattr(p, "VERSION", 999)
    with pytest.raises(pyfora.ProtocolError, match="version 999"):
        await asyncio.wait_for(aio.connect(cluster_url), T)


async def test_cross_origin_handshake_is_refused(cluster_url):
    status, error = await refusal(ws_url(cluster_url), upgrade_headers(cluster_url),
                                  origin="https://evil.example")
    assert status == 403 and isinstance(error, pyfora.AuthenticationError)
