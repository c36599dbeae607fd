"""Large values end to end: their buffers travel out of band, in frames of at most
``protocol.CHUNK`` bytes, relayed by the coordinator without decoding
(``pyfora/protocol.py``, ``pyfora/serialization.py``). Real coordinator, real workers."""

from __future__ import annotations

import asyncio
import hashlib
import os

import numpy as np
from conftest import UNIT

from pyfora import protocol as p

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


async def test_large_bytes_and_arrays_round_trip_intact(aex):
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


async def test_a_large_defined_value_round_trips_and_feeds_tasks(aex):
    array = np.arange(2 * p.CHUNK // 8 + 3, dtype=np.int64)
    proxy = await asyncio.wait_for(aex.define(array), T)
    assert np.array_equal(await asyncio.wait_for(proxy.toLocal(), T), array)
    total = await asyncio.wait_for(aex.submit(np.sum, proxy), T)
    assert await total.toLocal() == int(array.sum())


async def test_a_value_over_the_chunk_size_passes_between_workers_as_a_proxy(aex):
    n = 3 * p.CHUNK // 8 + 5         # over three chunks of float64
    first, second = await asyncio.wait_for(asyncio.gather(
        aex.submit(pid_and_array, n, 0.5 * UNIT), aex.submit(pid_and_array, n + 1, 0.5 * UNIT)), T)
    assert first.size > 3 * p.CHUNK and second.size > 3 * p.CHUNK
    # one of the two is not where the consumer runs: it is relayed through the coordinator
    result = await asyncio.wait_for(aex.submit(pids_and_sums, first, second), T)
    pid_a, pid_b, sum_a, sum_b = await result.toLocal()
    assert pid_a != pid_b, "the two producers ran on the same worker"
    assert (sum_a, sum_b) == (n * (n - 1) / 2, (n + 1) * n / 2)


async def test_a_burst_of_tiny_submits_around_large_arguments_arrives_whole_and_in_order(aex):
    """Submits made in one go are sent together: the tiny ones share ``batch`` frames, each
    one with a large out-of-band argument goes as its own frames between them. Every one
    arrives whole and in the order made (the coordinator numbers results as submits
    arrive), and every result comes back right."""
    blobs = {i: os.urandom(p.CHUNK + 1000 * i) for i in (40, 41, 300, 599)}
    calls = [aex.submit(digest, blobs[i]) if i in blobs else aex.submit(pow, i, 2)
             for i in range(600)]
    proxies = await asyncio.wait_for(asyncio.gather(*calls), T)
    oids = [proxy.oid for proxy in proxies]
    assert oids == sorted(oids), "submits arrived out of order"
    values = await asyncio.wait_for(asyncio.gather(*(x.toLocal() for x in proxies)), T)
    assert values == [digest(blobs[i]) if i in blobs else i * i for i in range(600)]
