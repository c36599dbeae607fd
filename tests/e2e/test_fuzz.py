"""Fuzzing both websocket endpoints with random and mutated frames (hypothesis), against
a real coordinator: it never crashes, a session running real work alongside sees no
error, and every frame this version cannot decode is answered with an error or a close.
Frames over the configured maximum are refused with a clear close reason, and so are
messages whose out-of-band buffers add up to more, or whose buffers' frames do not fit
the sizes their envelope gave.

The bounded run here tries a few hundred inputs; ``benchmarks/fuzz_endpoints.py`` runs
the same generators for 10,000 and more (figures in docs/reliability.md)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import os
import threading

import msgpack
import pytest
from conftest import UNIT, ClusterProcess, http_status, messages_of, upgrade_headers, ws_endpoint
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

import pyfora
from pyfora import aio
from pyfora import wire as p

T = 10 * UNIT
EXAMPLES = int(os.environ.get("PYFORA_FUZZ_EXAMPLES", "300"))
#: The fuzzed coordinator's --max-frame: a generated envelope declaring buffers of at most
#: this much gets them sent (else its frames would swallow the probe); more is refused.
FUZZ_MAX = 1 << 20

SAMPLES = [p.encode(m) for m in (
    p.Submit(id=7, payload=b"\x80\x05N.", deps=[1, 2]), p.Define(id=8, payload=b"x"),
    p.Fetch(id=9, oid=3), p.Release(oids=[1, 99]), p.Cancel(target=7), p.Status(id=10),
    p.Hello(version=p.VERSION, role="client", name="n"), p.Done(id=1, oid=2, size=3, type=""),
    p.Get(id=4, oid=5), p.Run(id=1, oid=2, payload=b"", deps=[]),
    p.Submit(id=11, payload=b"\x80\x05N.", oob=[[3, True], [0, False], [5, False]]),
    p.Batch(envelopes=[p.encode(p.Status(id=12)), p.encode(p.Cancel(target=7))]))]
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)


@st.composite
def mutated(draw) -> bytes:
    frame = bytearray(draw(st.sampled_from(SAMPLES)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        at = draw(st.integers(0, max(len(frame) - 1, 0)))
        if kind == "flip" and frame:
            frame[at] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            del frame[at:]
        elif kind == "insert":
            frame[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif frame:
            del frame[at]
    return bytes(frame)


@st.composite
def structured(draw) -> bytes:
    """msgpack maps with real op names and field names, and values of any type."""
    fields = sorted({f for op in p._FIELDS.values() for f in op} | {"op", "junk"})
    data = draw(st.dictionaries(st.sampled_from(fields), VALUES, max_size=6))
    data["op"] = draw(st.sampled_from([*p._FIELDS, "nope", 3, None]))
    return msgpack.packb(data, use_bin_type=True)


@st.composite
def with_buffers(draw) -> bytes:
    """Valid envelopes of messages that carry buffers, declaring buffers of any size up to
    twice the limit (the prober sends those under it)."""
    message = dataclasses.replace(draw(st.sampled_from([
        p.Submit(id=21, payload=b"\x80\x05N."), p.Define(id=22, payload=b"x"),
        p.Value(id=23, data=b""), p.Piece(id=24, payload=b"")])))
    message.oob = draw(st.lists(st.tuples(st.integers(0, 2 * FUZZ_MAX), st.booleans())
                                .map(list), max_size=3))
    return p.encode(message)


FRAMES = st.one_of(st.binary(max_size=300), mutated(), structured(), with_buffers(),
                   st.text(max_size=50))


def decoded(frame) -> p.Message | None:
    try:
        return p.decode(frame)
    except pyfora.ProtocolError:
        return None


class Prober:
    """A raw session: send a frame, then a ``status`` probe; what came back before the
    probe's answer is the answer to the frame."""

    def __init__(self, url: str, path: str, hello: bool) -> None:
        self.url = ws_endpoint(url, path)
        # A handshake's fuzzed hello rides in its upgrade request, with the clients'
        # token: the worker endpoint must refuse every one of them.
        self.headers = upgrade_headers(url)
        self.hello = hello
        self.ws = None
        self.probe_id = 1 << 40
        self.stats = {"frames": 0, "errors": 0, "closes": 0, "accepted": 0}

    def _open(self) -> None:
        self.ws = connect(self.url, open_timeout=T, close_timeout=1, max_size=None,
                          additional_headers=self.headers)
        self.ws.__enter__()
        assert isinstance(p.decode(self.ws.recv(T)), p.Welcome)

    def handshake(self, frame) -> None:
        """Open a connection whose hello is ``frame``: it is refused, or welcomed."""
        if isinstance(frame, str):
            frame = frame.encode()
        headers = {**self.headers, p.HELLO_HEADER: base64.urlsafe_b64encode(frame).decode()}
        try:
            with connect(self.url, open_timeout=T, close_timeout=1,
                         additional_headers=headers) as ws:
                assert isinstance(p.decode(ws.recv(T)), p.Welcome)
                self.stats["accepted"] += 1
        except InvalidStatus as exc:
            assert exc.response.status_code in (400, 401), exc.response.status_code
            assert isinstance(p.refused(exc.response.body), pyfora.PyforaError)
            self.stats["errors"] += 1

    def check(self, frame) -> None:
        if not self.hello:
            self.stats["frames"] += 1
            return self.handshake(frame)
        if self.ws is None:
            self._open()
        self.stats["frames"] += 1
        message = decoded(frame)
        bad = message is None
        try:
            self.ws.send(frame)
            sizes = [size for size, _ in getattr(message, "oob", ())]
            if self.hello and sum(sizes) <= FUZZ_MAX - len(frame):
                for size in filter(None, sizes):    # the buffers the envelope declared
                    self.ws.send(b"\xab" * size)
            self.probe_id += 1
            self.ws.send(p.encode(p.Status(id=self.probe_id)))
            answered = probed = False
            while not probed:
                for reply in messages_of(self.ws.recv(T)):
                    probed |= isinstance(reply, p.Info) and reply.id == self.probe_id
                    answered |= isinstance(reply, p.Error)
            assert answered or not bad, f"no error for undecodable frame {frame!r}"
            self.stats["errors" if answered else "accepted"] += 1
        except ConnectionClosed:
            self.stats["closes"] += 1
            self.ws = None


def run_with_bystander(url: str, fuzz) -> dict:
    """Run ``fuzz()`` (blocking) while another session computes; return its figures."""
    async def bystander(done: threading.Event) -> int:
        count = 0
        async with aio.connect(url) as ex:
            while not done.is_set() or count < 5:
                proxy = await asyncio.wait_for(ex.submit(pow, count, 2), T)
                assert await proxy.toLocal() == count * count
                count += 1
        return count

    done = threading.Event()
    result: list = []
    thread = threading.Thread(target=lambda: result.append(asyncio.run(bystander(done))))
    thread.start()
    try:
        fuzz()
    finally:
        done.set()
        thread.join(60 * UNIT)
    assert result, "the bystander session failed"
    return {"bystander_tasks": result[0]}


@pytest.fixture(scope="module")
def fuzz_cluster():
    cluster = ClusterProcess(1, "--max-frame", str(FUZZ_MAX))
    yield cluster
    assert cluster.proc.poll() is None, "the coordinator crashed"
    cluster.stop()


def test_fuzz_session_endpoint(fuzz_cluster):
    prober = Prober(fuzz_cluster.url, "/api/session", hello=True)

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(FRAMES)
    def fuzz(frame):
        prober.check(frame)

    figures = run_with_bystander(fuzz_cluster.url, fuzz)
    assert prober.stats["frames"] >= EXAMPLES
    assert fuzz_cluster.proc.poll() is None
    assert len(http_status(fuzz_cluster.url)["workers"]) == 1
    print("session fuzz:", prober.stats, figures)


@pytest.mark.parametrize("path", ["/api/session", "/api/worker"])
def test_fuzz_handshakes(fuzz_cluster, path):
    prober = Prober(fuzz_cluster.url, path, hello=False)

    @settings(max_examples=EXAMPLES // 3, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(FRAMES)
    def fuzz(frame):
        prober.check(frame)

    run_with_bystander(fuzz_cluster.url, fuzz)
    stats = prober.stats
    assert stats["errors"] + stats["accepted"] == stats["frames"] >= EXAMPLES // 3
    if path == "/api/worker":       # the clients' token opens no worker door
        assert stats["accepted"] == 0
    assert len(http_status(fuzz_cluster.url)["workers"]) == 1      # no intruder joined
    print(f"handshake fuzz {path}:", prober.stats)


@pytest.fixture(scope="module")
def small_frames():
    """A coordinator that accepts frames and messages of at most 64 KiB."""
    cluster = ClusterProcess(1, "--max-frame", "64KiB")
    yield cluster
    cluster.stop()


@contextlib.contextmanager
def raw_session(url: str):
    """A websocket on ``url``'s session endpoint, past its welcome."""
    with connect(ws_endpoint(url), open_timeout=T, max_size=None,
                 additional_headers=upgrade_headers(url)) as ws:
        ws.recv(T)
        yield ws


def test_frames_over_the_maximum_are_refused_clearly(small_frames):
    with raw_session(small_frames.url) as ws:
        ws.send(b"\x00" * 100_000)
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(T)
    assert info.value.rcvd.code == 1009          # MESSAGE_TOO_BIG
    with pyfora.connect(small_frames.url) as ex:               # others carry on
        assert ex.submit(pow, 3, 2).result(T).toLocal().result(T) == 9
        # out of band, in frames under the limit, but more than it in all
        with pytest.raises(pyfora.ConnectionError,
                           match=r"submit of 100,\d+ bytes is over its size limit of "
                                 r"65,536 bytes \(pyfora-cluster --max-frame\)"):
            ex.submit(len, b"x" * 100_000).result(T)


def test_buffers_over_the_maximum_are_refused_before_they_are_buffered(small_frames):
    """A peer cannot make the coordinator hold more than --max-frame for one message:
    an envelope declaring more is refused at once, however small its frames."""
    with raw_session(small_frames.url) as ws:
        ws.send(p.encode(p.Submit(id=1, payload=b"", oob=[[1 << 40, True]])))
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(T)
    assert info.value.rcvd.code == 1009
    assert "over its size limit of 65,536 bytes" in info.value.rcvd.reason
    with raw_session(small_frames.url) as ws:
        ws.send(p.encode(p.Submit(id=1, payload=b"", oob=[[10, True]])))
        ws.send(b"x" * 11)          # more than the buffer it belongs to
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(T)
    assert info.value.rcvd.code == 1002          # PROTOCOL_ERROR
    assert "do not fit" in info.value.rcvd.reason
    with pyfora.connect(small_frames.url) as ex:               # others carry on
        assert ex.submit(pow, 3, 2).result(T).toLocal().result(T) == 9


def test_batches_stay_under_a_frame_limit_below_their_size():
    """A burst of submits shares ``batch`` frames of at most the coordinator's
    --max-frame (it says it in ``welcome``), here under the usual batch size: none is
    refused, and every result comes back."""
    cluster = ClusterProcess(1, "--max-frame", str(p.BATCH_BYTES // 4))
    try:
        with raw_session(cluster.url) as ws:
            ws.send(b"\x00" * (p.BATCH_BYTES // 2))      # a frame over it is refused
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(T)
        assert info.value.rcvd.code == 1009
        with pyfora.connect(cluster.url) as ex:
            futures = [ex.submit(pow, i, 2) for i in range(500)]
            proxies = [f.result(T) for f in futures]
            assert [x.toLocal().result(T) for x in proxies[::50]] == [
                i * i for i in range(0, 500, 50)]
    finally:
        assert cluster.stop() == 0


def test_a_batch_may_not_hold_a_message_whose_buffers_follow(small_frames):
    with raw_session(small_frames.url) as ws:
        ws.send(p.encode(p.Batch(envelopes=[
            p.encode(p.Submit(id=1, payload=b"", oob=[[10, True]]))])))
        with pytest.raises(ConnectionClosed) as info:
            ws.send(b"x" * 10)      # its frames: the refusal may have closed it already
            ws.recv(T)
    assert info.value.rcvd.code == 1002
    assert "a batch holds submit with buffers" in info.value.rcvd.reason
