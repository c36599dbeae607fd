"""Large values end to end: their buffers travel out of band, in frames of at most
``wire.CHUNK`` bytes, relayed by the coordinator without decoding
(``pyfora/wire/``, ``pyfora/serialization.py``), or, between processes of this
machine, as files in shared memory (``pyfora/net/shared_memory.py``). Each round trip runs
both ways: on the shared clusters (shared memory) and on a ``--no-shared-memory`` one.
Real coordinator, real workers."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import (UNIT, ClusterProcess, http_status, messages_of, upgrade_headers, wait_idle,
                      wait_until, ws_endpoint)
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

import pyfora
from pyfora import aio
from pyfora.net import shared_memory
from pyfora import wire as p

T = 60 * UNIT
MB = 1 << 20


def identity(value):
    return value


def digest(value) -> str:
    return hashlib.sha256(memoryview(value).cast("B")).hexdigest()


def pid_and_array(n: int, delay: float):
    import time
    time.sleep(delay)       # both producers run at once, so on different workers
    return os.getpid(), np.arange(n, dtype=np.float64)


def pids_and_sums(a, b) -> tuple:
    return a[0], b[0], float(a[1].sum()), float(b[1].sum())


@pytest.fixture(scope="module")
def wire_cluster(backend):
    cluster = ClusterProcess(2, "--backend", backend, "--no-shared-memory")
    yield cluster
    assert cluster.stop() == 0


@pytest.fixture(params=["shared-memory", "wire"])
async def tex(request, cluster_url):
    """An executor on a shared cluster (buffers through shared memory) or on one whose
    buffers all go over the websockets."""
    url = cluster_url if request.param == "shared-memory" else \
        request.getfixturevalue("wire_cluster").url
    await asyncio.to_thread(wait_idle, url)
    assert (http_status(url)["shared_memory"] is None) == (request.param == "wire")
    async with aio.connect(url) as executor:
        yield executor


async def test_large_bytes_and_arrays_round_trip_intact(tex):
    aex = tex
    blob = os.urandom(24 * MB)
    array = np.random.default_rng(0).random(3 * MB)            # 24 MB of float64
    for value in (blob, array, bytearray(blob[:9 * MB])):
        proxy = await asyncio.wait_for(aex.submit(identity, value), T)
        assert proxy.size > len(memoryview(value).cast("B"))
        # the worker saw the same bytes
        remote_digest = await asyncio.wait_for(aex.submit(digest, proxy), T)
        assert await remote_digest.toLocal() == digest(value)
        back = await asyncio.wait_for(proxy.toLocal(), T)
        assert type(back) is type(value)
        if isinstance(value, np.ndarray):
            assert back.dtype == value.dtype and back.shape == value.shape
            assert np.array_equal(back, value)
            assert back.flags.writeable      # a writable buffer came back writable
        else:
            assert back == value


async def test_a_large_defined_value_round_trips_and_feeds_tasks(tex):
    aex = tex
    array = np.arange(2 * p.CHUNK // 8 + 3, dtype=np.int64)
    proxy = await asyncio.wait_for(aex.define(array), T)
    assert np.array_equal(await asyncio.wait_for(proxy.toLocal(), T), array)
    total = await asyncio.wait_for(aex.submit(np.sum, proxy), T)
    assert await total.toLocal() == int(array.sum())


async def test_a_value_over_the_chunk_size_passes_between_workers_as_a_proxy(tex):
    aex = tex
    n = 3 * p.CHUNK // 8 + 5         # over three chunks of float64
    first, second = await asyncio.wait_for(asyncio.gather(
        aex.submit(pid_and_array, n, 0.5 * UNIT), aex.submit(pid_and_array, n + 1, 0.5 * UNIT)), T)
    assert first.size > 3 * p.CHUNK and second.size > 3 * p.CHUNK
    # one of the two is not where the consumer runs: it is relayed through the coordinator
    result = await asyncio.wait_for(aex.submit(pids_and_sums, first, second), T)
    pid_a, pid_b, sum_a, sum_b = await result.toLocal()
    assert pid_a != pid_b, "the two producers ran on the same worker"
    assert (sum_a, sum_b) == (n * (n - 1) / 2, (n + 1) * n / 2)


async def test_a_burst_of_tiny_submits_around_large_arguments_arrives_whole_and_in_order(tex):
    """Submits made in one go are sent together: the tiny ones share ``batch`` frames, each
    one with a large out-of-band argument goes as its own frames between them (or, in
    shared memory, is an envelope alone like the others). Every one arrives whole and in
    the order made (the coordinator numbers results as submits arrive), and every result
    comes back right."""
    aex = tex
    blobs = {i: os.urandom(p.CHUNK + 1000 * i) for i in (40, 41, 300, 599)}
    calls = [aex.submit(digest, blobs[i]) if i in blobs else aex.submit(pow, i, 2)
             for i in range(600)]
    proxies = await asyncio.wait_for(asyncio.gather(*calls), T)
    oids = [proxy.oid for proxy in proxies]
    assert oids == sorted(oids), "submits arrived out of order"
    values = await asyncio.wait_for(asyncio.gather(*(x.toLocal() for x in proxies)), T)
    assert values == [digest(blobs[i]) if i in blobs else i * i for i in range(600)]


def length_when_set(data: bytes, path: str) -> int:
    """``len(data)`` once the file ``path`` exists: the test holds the task running."""
    import time
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return len(data)


def test_large_arguments_go_through_shared_memory_and_nothing_is_left(cluster_url, backend,
                                                                     tmp_path):
    wait_idle(cluster_url)
    data = os.urandom(8 * MB)
    release = tmp_path / "release"

    def usage():
        return http_status(cluster_url)["shared_memory"]

    assert usage()["files"] == 0
    with pyfora.connect(cluster_url) as ex:
        running = ex.submit(length_when_set, data, str(release))
        # While its task runs, the pool's coordinator holds the argument as one file (to
        # run it again if the worker dies); the worker has taken its own link to it. (The
        # Dask backend reads it and hands it to Dask.) The client's warm name for the same
        # file (``shared_memory``: warm files) is not a buffer's, and counts apart. A
        # ``bytes``' file starts with the head it is mapped under.
        alone = {"files": 1, "bytes": 8 * MB + shared_memory.BYTES_HEAD}
        wait_until(lambda: backend == "dask" or {k: usage()[k] for k in alone} == alone, T,
                   lambda: f"the argument alone in shared memory: {usage()}")
        release.touch()
        proxy = running.result(T)
        assert proxy.toLocal().result(T) == 8 * MB
        back = ex.submit(identity, data).result(T)
        assert back.toLocal().result(T) == data
        del back, proxy
        wait_until(lambda: usage()["files"] == 0, T, "shared memory to be empty")
    wait_until(lambda: usage()["files"] == 0, T, "shared memory to be empty")


@contextlib.contextmanager
def hello(url: str, host: str | None):
    """A raw session on ``url`` from a peer on ``host``: the websocket and its welcome."""
    with connect(ws_endpoint(url), open_timeout=T, max_size=None,
                 additional_headers=upgrade_headers(url, host=host)) as ws:
        yield ws, p.decode(ws.recv(T))


def test_only_a_peer_on_this_machine_is_offered_shared_memory(cluster_url):
    with hello(cluster_url, shared_memory.host_id()) as (_, welcome):
        assert welcome.shm == http_status(cluster_url)["shared_memory"]["path"]
    for host in (None, "another-machine"):
        with hello(cluster_url, host) as (_, welcome):
            assert welcome.shm is None


@pytest.mark.parametrize("host, name, why", [
    (None, "1-2-abcdef", "this end shares no memory with its peer"),
    ("local", "../../etc/passwd", "not a shared buffer name"),
    ("local", "1-2-abcdef", "No such file"),
])
def test_a_bad_shared_buffer_closes_that_connection_only(cluster_url, host, name, why):
    wait_idle(cluster_url)
    with hello(cluster_url, shared_memory.host_id() if host == "local" else None) as (ws, _):
        ws.send(p.encode(p.Submit(id=1, payload=b"", oob=[[10, False, name]])))
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(T)
    assert info.value.rcvd.code == 1002
    assert "submit: its buffer in shared memory cannot be used" in info.value.rcvd.reason
    assert why in info.value.rcvd.reason
    assert os.path.exists("/etc/passwd")
    with pyfora.connect(cluster_url) as ex:            # others carry on
        assert ex.submit(len, b"x" * (2 * MB)).result(T).toLocal().result(T) == 2 * MB


# -- buffers nobody will take are reclaimed (``shared_memory``: who owns a name) ------------

KILLED_CLIENT = """
import os, signal, sys
sys.path[:0] = sys.argv[2:]
from test_transfer import hello
from pyfora.net import shared_memory
with hello(sys.argv[1], shared_memory.host_id()) as (ws, welcome):
    name = shared_memory.Directory.offered(welcome.shm).put(b"x" * (2 << 20))
    print(name, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)    # before the message naming it is sent
"""


def shm_files(cluster_url) -> int:
    return http_status(cluster_url)["shared_memory"]["files"]


def test_a_buffer_written_by_a_client_killed_before_sending_it_is_reclaimed(cluster_url):
    wait_idle(cluster_url)
    here = os.path.dirname(__file__)
    killed = subprocess.run([sys.executable, "-c", KILLED_CLIENT, cluster_url, here,
                             os.path.dirname(here)],
                            capture_output=True, text=True, timeout=T)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert shared_memory._NAME.match(killed.stdout.strip()), killed.stdout
    wait_until(lambda: shm_files(cluster_url) == 0, 10 * UNIT,
               lambda: f"the killed client's buffer to be reclaimed: {shm_files(cluster_url)}")


def test_a_buffer_written_for_a_client_that_never_took_it_is_reclaimed(cluster_url):
    wait_idle(cluster_url)
    with hello(cluster_url, shared_memory.host_id()) as (ws, welcome):
        name = shared_memory.Directory.offered(welcome.shm).put(b"d" * (2 * MB))
        ws.send(p.encode(p.Define(id=1, payload=b"not decoded here",
                                  oob=[[2 * MB, False, name]])))
        done = next_reply(ws, 1)
        assert isinstance(done, p.Done) and done.error is None, done
        ws.send(p.encode(p.Fetch(id=2, oid=done.oid)))
        value = next_reply(ws, 2)
        # The coordinator linked a name for us, which we leave untaken.
        assert isinstance(value, p.Value) and len(value.oob[0]) == 3, value
        assert shm_files(cluster_url) == 2         # the defined value's, and the link
    wait_until(lambda: shm_files(cluster_url) == 0, 10 * UNIT,
               lambda: f"the untaken buffer to be reclaimed: {shm_files(cluster_url)}")


def next_reply(ws, request_id: int):
    """The next message with ``request_id`` a raw session receives (pushes skipped)."""
    while True:
        for message in messages_of(ws.recv(T)):
            if getattr(message, "id", None) == request_id:
                return message
