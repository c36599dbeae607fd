"""Fuzzing both websocket endpoints with random and mutated frames (hypothesis), against
a real coordinator: it never crashes, a session running real work alongside sees no
error, and every frame this version cannot decode is answered with an error or a close.
Frames over the configured maximum are refused with a clear close reason.

The bounded run here tries a few hundred inputs; ``benchmarks/fuzz_endpoints.py`` runs
the same generators for 10,000 and more (figures in docs/reliability.md)."""

from __future__ import annotations

import asyncio
import os
import threading

import msgpack
import pytest
from conftest import UNIT, ClusterProcess, http_status, messages_of
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

import pyfora
from pyfora import aio
from pyfora import protocol as p

T = 10 * UNIT
EXAMPLES = int(os.environ.get("PYFORA_FUZZ_EXAMPLES", "300"))

SAMPLES = [p.encode(m) for m in (
    p.Submit(id=7, payload=b"\x80\x05N.", deps=[1, 2]), p.Define(id=8, payload=b"x"),
    p.Fetch(id=9, oid=3), p.Release(oids=[1, 99]), p.Cancel(target=7), p.Status(id=10),
    p.Hello(version=p.VERSION, role="client", token="t"), p.Done(id=1, oid=2, size=3, type=""),
    p.Get(id=4, oid=5), p.Run(id=1, oid=2, payload=b"", deps=[]))]
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


FRAMES = st.one_of(st.binary(max_size=300), mutated(), structured(),
                   st.text(max_size=50))


def decodable(frame) -> bool:
    try:
        p.decode(frame)
    except pyfora.ProtocolError:
        return False
    return True


class Prober:
    """A raw session: send a frame, then a ``status`` probe; what came back before the
    probe's answer is the answer to the frame."""

    def __init__(self, url: str, path: str, hello: bool) -> None:
        self.url = url.replace("http", "ws", 1).rstrip("/") + path
        self.hello = hello
        self.ws = None
        self.probe_id = 1 << 40
        self.stats = {"frames": 0, "errors": 0, "closes": 0, "accepted": 0}

    def _open(self) -> None:
        self.ws = connect(self.url, open_timeout=T, close_timeout=1, max_size=None)
        self.ws.__enter__()
        if self.hello:
            self.ws.send(p.encode(p.Hello(version=p.VERSION, role="client")))
            assert isinstance(p.decode(self.ws.recv(T)), p.Welcome)

    def check(self, frame) -> None:
        if self.ws is None:
            self._open()
        self.stats["frames"] += 1
        bad = not decodable(frame)
        try:
            self.ws.send(frame)
            if not self.hello:        # a handshake: the first frame is all there is
                reply = p.decode(self.ws.recv(T))
                assert isinstance(reply, (p.Error, p.Welcome))
                self.stats["errors" if isinstance(reply, p.Error) else "accepted"] += 1
                self.ws.close()
                self.ws = None
                return
            self.probe_id += 1
            self.ws.send(p.encode(p.Status(id=self.probe_id)))
            answered = False
            probed = False
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
    cluster = ClusterProcess(1)
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
    assert prober.stats["errors"] + prober.stats["closes"] >= prober.stats["frames"] - 1
    assert len(http_status(fuzz_cluster.url)["workers"]) == 1      # no intruder joined
    print(f"handshake fuzz {path}:", prober.stats)


def test_frames_over_the_maximum_are_refused_clearly():
    cluster = ClusterProcess(1, "--max-frame", "64KiB")
    try:
        ws_url = cluster.url.replace("http", "ws", 1) + "api/session"
        with connect(ws_url, open_timeout=T, max_size=None) as ws:
            ws.send(p.encode(p.Hello(version=p.VERSION, role="client")))
            ws.recv(T)
            ws.send(b"\x00" * 100_000)
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(T)
        assert info.value.rcvd.code == 1009          # MESSAGE_TOO_BIG
        with pyfora.connect(cluster.url) as ex:                    # others carry on
            assert ex.submit(pow, 3, 2).result(T).toLocal().result(T) == 9
            with pytest.raises(pyfora.ConnectionError, match="over its size limit"):
                ex.submit(len, b"x" * 100_000).result(T)
    finally:
        cluster.stop()
