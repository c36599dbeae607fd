"""Automatic parallelism on a real cluster: comprehensions in submitted functions and in
with-blocks split across idle workers, with sequential CPython's answers.

Elements "cost" by sleeping (``slow``), so that whether work is worth splitting does not
depend on how loaded the test machine is; each element reports the worker process that
computed it, so tests can see the split.
"""

from __future__ import annotations

import asyncio
import functools
import math
import operator
import os
import threading
import time

import pytest

import pyfora
from pyfora import aio
from pyfora.parallel import sequential

from conftest import UNIT, wait_until

TIMEOUT = 60 * UNIT


def slow(x, seconds=0.001):
    time.sleep(seconds)
    return x


def is_prime(p):
    if p < 2:
        return False
    d = 2
    while d * d <= p:
        if p % d == 0:
            return False
        d += 1
    return True


def pid_of(x):
    slow(x)
    return x, os.getpid()


def primes_with_pids(n):
    return [(x, os.getpid()) for x in range(n) if slow(is_prime(x))]


def sum_of_slow(n):
    return sum(slow(x) for x in range(n))


def elements_elsewhere(n):
    here = os.getpid()
    return sum(slow(os.getpid() != here) for x in range(n))


def float_terms(n):
    return sum(slow(math.sin(x) * 10.0 ** (x % 9 - 4)) for x in range(n))


def boom(x, bad):
    slow(x)
    if x in bad:
        raise ValueError(f"element {x}")
    return x


def first_failure(n, bad):
    return [boom(x, bad) for x in range(n)]


def any_stops(n):
    return any(slow(x == 3, 0.01) for x in range(n))


def all_stops(n, stop_at):
    return all(slow(x != stop_at, 0.002) for x in range(n))


def any_before_error(n):
    return any(boom(x, set(range(2000, n))) == 5 for x in range(n))


def kinds(n):
    items = list(range(n))
    return ({x: slow(x * x) for x in items if x % 3},
            {slow(x) % 97 for x in tuple(items)},
            list(slow(x) for x in range(n) if x % 2),
            [(x, y) for x in range(n // 10) if slow(x) for y in range(2)])


def nested(n, step):
    def inner(k):
        return sum(slow(is_prime(y), 0.0005) for y in range(k, k + step))
    return [inner(k) for k in range(0, n, step)]


@sequential
def sequential_pids(n):
    return {pid_of(x)[1] for x in range(n)}


def expected_nested(n, step):
    return [sum(is_prime(y) for y in range(k, k + step)) for k in range(0, n, step)]


def run(ex, fn, *args):
    return ex.submit(fn, *args).result(TIMEOUT).toLocal().result(TIMEOUT)


# -- splitting, ordering ------------------------------------------------------------------

def test_submitted_comprehension_runs_on_every_worker_in_order(ufora):
    result = run(ufora, primes_with_pids, 2000)
    assert [x for x, _ in result] == [x for x in range(2000) if is_prime(x)]
    assert len({pid for _, pid in result}) == 2


def cheap_then_slow(n):
    def pids(seconds):
        return [(x, os.getpid()) for x in range(n) if seconds is None or slow(x, seconds) >= 0]
    return pids(None), pids(0.002)


def test_a_call_site_cheap_once_still_splits_when_expensive(ufora):
    cheap, expensive = run(ufora, cheap_then_slow, 2000)
    assert [x for x, _ in cheap] == [x for x, _ in expensive] == list(range(2000))
    assert len({pid for _, pid in cheap}) == 1
    assert len({pid for _, pid in expensive}) == 2


def test_generator_sum_is_the_sequential_sum(ufora):
    assert run(ufora, sum_of_slow, 2000) == sum(range(2000))


def test_a_generator_sum_splits_across_workers(ufora):
    # sum() of a generator expression sums its first elements, then the rest from there:
    # the rest still goes parallel.
    assert 0 < run(ufora, elements_elsewhere, 2000) < 2000


def test_float_sum_equals_the_sequential_sum(ufora):
    expected = sum(math.sin(x) * 10.0 ** (x % 9 - 4) for x in range(2000))
    assert run(ufora, float_terms, 2000) == expected
    terms = [math.sin(x) * 10.0 ** (x % 9 - 4) for x in range(2000)]
    # sum() is compensated from 3.12 on; a plain left fold shows the rounding is real
    assert functools.reduce(operator.add, terms) != math.fsum(terms), \
        "the terms must be ones whose sum depends on how it is computed"


def test_set_dict_filters_and_inner_loops(ufora):
    got, expected = run(ufora, kinds, 1200), kinds(1200)
    assert got == expected
    assert list(got[0]) == list(expected[0]), "dict insertion order"


def test_first_exception_in_iteration_order_with_remote_traceback(ufora):
    with pytest.raises(pyfora.ComputationError) as info:
        run(ufora, first_failure, 2000, {700, 1800})
    assert isinstance(info.value.remoteException, ValueError)
    assert str(info.value.remoteException) == "element 700"
    assert "in boom" in info.value.remoteTraceback
    assert 'raise ValueError(f"element {x}")' in info.value.remoteTraceback


def test_exception_from_a_remote_piece(ufora):
    # 1900 is past the root's own first segment: another worker computes it.
    with pytest.raises(pyfora.ComputationError) as info:
        run(ufora, first_failure, 2000, {1900})
    assert str(info.value.remoteException) == "element 1900"
    assert "in boom" in info.value.remoteTraceback


def test_any_and_all_stop_early(ufora):
    start = time.monotonic()
    assert run(ufora, any_stops, 5000) is True            # 50 s sequentially
    assert run(ufora, all_stops, 20000, 1500) is False    # 40 s sequentially
    assert time.monotonic() - start < 20 * UNIT
    assert run(ufora, any_before_error, 4000) is True     # the error comes after the True


def with_unpicklable_closure(n):
    lock = threading.Lock()

    def locked(x):
        with lock:
            return slow(x)
    return [locked(x) for x in range(n)]


def test_comprehension_that_cannot_be_shipped_runs_locally(ufora):
    assert run(ufora, with_unpicklable_closure, 1000) == list(range(1000))


# -- no deadlock --------------------------------------------------------------------------

def test_one_worker_runs_everything_itself(one_worker):
    with pyfora.connect(one_worker.url) as ex:
        result = run(ex, primes_with_pids, 1000)
        assert [x for x, _ in result] == [x for x in range(1000) if is_prime(x)]
        assert len({pid for _, pid in result}) == 1
        assert run(ex, nested, 4000, 500) == expected_nested(4000, 500)


def test_nested_parallel_comprehensions_finish(ufora):
    assert run(ufora, nested, 8000, 500) == expected_nested(8000, 500)


async def test_several_clients_with_all_workers_busy(cluster_url):
    async with aio.connect(cluster_url) as a, aio.connect(cluster_url) as b:
        jobs = [a.submit(primes_with_pids, 1500), b.submit(primes_with_pids, 1500),
                a.submit(sum_of_slow, 1500), b.submit(nested, 4000, 500)]
        proxies = await asyncio.wait_for(asyncio.gather(*jobs), TIMEOUT)
        values = await asyncio.gather(*(p.toLocal() for p in proxies))
    expected = [x for x in range(1500) if is_prime(x)]
    assert [x for x, _ in values[0]] == expected and [x for x, _ in values[1]] == expected
    assert values[2] == sum(range(1500))
    assert values[3] == expected_nested(4000, 500)


# -- with-blocks, opt-out, status ---------------------------------------------------------

def test_with_block_comprehension_is_parallel(ufora):
    with ufora.remotely.downloadAll():
        found = [pid_of(x) for x in range(1500)]
    assert [x for x, _ in found] == list(range(1500))
    assert len({pid for _, pid in found}) == 2


def test_with_block_sequential_opt_out(ufora):
    with ufora.remotely.sequential().downloadAll():
        pids = {pid_of(x)[1] for x in range(1500)}
    assert len(pids) == 1


def test_the_same_with_block_parallel_then_sequential(ufora):
    counts = []
    for remotely in (lambda: ufora.remotely, lambda: ufora.remotely.sequential()) * 2:
        with remotely().downloadAll():
            found = [pid_of(x) for x in range(1500)]
        assert [x for x, _ in found] == list(range(1500))
        counts.append(len({pid for _, pid in found}))
    assert counts == [2, 1, 2, 1]


def test_sequential_decorator_opts_out_of_submit(ufora):
    assert len(run(ufora, sequential_pids, 1500)) == 1


async def test_status_pushes_report_every_cpu_busy(aex):
    seen: list[int] = []
    remove = aex.addStatusCallback(lambda status: seen.append(status["cpus"]))
    try:
        proxy = await asyncio.wait_for(aex.submit(sum_of_slow, 3000), TIMEOUT)
    finally:
        remove()
    assert await proxy.toLocal() == sum(range(3000))
    assert max(seen) == await aex.getWorkerCount() == 2


def test_with_block_status_callback_sees_all_cpus(ufora):
    seen: list[int] = []
    lock = threading.Lock()

    def callback(status):
        with lock:
            seen.append(status["cpus"])
    with ufora.remotely.withStatusCallback(callback).downloadAll():
        total = sum(slow(x) for x in range(3000))
    assert total == sum(range(3000))
    wait_until(lambda: seen, 10 * UNIT, "a status report")
    assert max(seen) == 2


# -- map ----------------------------------------------------------------------------------

def test_sync_map_is_an_iterator_in_order_across_workers(ufora):
    results = ufora.map(pid_of, range(1500), timeout=TIMEOUT)
    assert iter(results) is results
    results = list(results)
    assert [x for x, _ in results] == list(range(1500))
    assert len({pid for _, pid in results}) == 2


def test_sync_map_raises_the_first_failure(ufora):
    with pytest.raises(pyfora.ComputationError) as info:
        list(ufora.map(lambda x: boom(x, {900, 1400}), range(1500), timeout=TIMEOUT))
    assert str(info.value.remoteException) == "element 900"


async def test_async_map_awaited_and_iterated(aex):
    assert await asyncio.wait_for(aex.map(is_prime, range(100)), TIMEOUT) == \
        [is_prime(x) for x in range(100)]
    got = [x async for x in aex.map(slow, [1, 2, 3])]
    assert got == [1, 2, 3]
    proxy = await aex.define(list(range(50)))
    assert await aex.map(is_prime, proxy) == [is_prime(x) for x in range(50)]


# -- cancellation -------------------------------------------------------------------------

async def test_cancelling_a_parallel_task_stops_its_pieces(aex, cluster_url):
    from conftest import async_wait_until, is_idle
    seen: list[int] = []
    remove = aex.addStatusCallback(lambda status: seen.append(status["cpus"]))
    job = asyncio.ensure_future(aex.submit(sum_of_slow, 100_000))     # 100 s sequentially
    try:
        await async_wait_until(lambda: seen and seen[-1] == 2, 30 * UNIT, "both workers busy")
    finally:
        remove()
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    await async_wait_until(lambda: asyncio.to_thread(is_idle, cluster_url), 30 * UNIT,
                           "every worker idle again")
