"""Automatic parallelism inside Dask workers (``cluster/worker/dask_parallel.py``), on a real
``distributed.LocalCluster`` with worker processes of one thread each.

Each test submits ``run_rewritten`` to Dask, as the Dask backend's task function would:
it installs the context and runs a function whose comprehensions were rewritten
(``rewrite_function``) and pickled as the client pickles a call. Elements mostly "cost"
by sleeping (``slow``), so whether work is worth splitting does not depend on how loaded
the machine is; elements that record ``where()`` show which Dask worker computed them.
"""

from __future__ import annotations

import math
import queue
import time

import pytest

distributed = pytest.importorskip("distributed", reason="dask[distributed] is not installed "
                                  "(pip install -e '.[dask]')")

from pyfora import serialization  # noqa: E402
from pyfora.errors import PyforaUsageError  # noqa: E402
from pyfora.parallel import _runtime, rewrite_function  # noqa: E402

from cluster.worker.dask_parallel import (TAKE_BACK, TOPIC, current_task,  # noqa: E402
                                   install_parallel_context)
from conftest import UNIT  # noqa: E402

TIMEOUT = 120 * UNIT

# Each LocalCluster's scheduler serves HTTP (health, metrics) even without a dashboard;
# the second one finds 8787 taken and says so.
pytestmark = pytest.mark.filterwarnings("ignore:Port 8787 is already in use")


def where():
    return distributed.get_worker().address


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


# -- functions run on Dask (rewritten) -----------------------------------------------

def count_primes(n):
    return sum(is_prime(x) for x in range(n))


def primes_with_workers(n):
    return [(x, where()) for x in range(n) if slow(is_prime(x))]


def uneven(n):
    """The upper half costs 8x the lower: the root finishes its half first and must
    steal from the piece running the upper half."""
    return where(), [(x, where()) for x in range(n) if slow(x, 0.004 if 2 * x >= n else 0.0005)
                     is not None]


def float_terms(n):
    return sum(slow(math.sin(x) * 10.0 ** (x % 9 - 4)) for x in range(n))


def boom(x, bad):
    slow(x)
    if x in bad:
        raise ValueError(f"element {x}")
    return x


def first_failure(n, bad):
    return [boom(x, bad) for x in range(n)]


def fail_early_log_late(n, fail_at, log):
    """Fails at ``fail_at`` in the root's part; elements of the upper half are slow and
    append themselves to ``log``, so the test can count what ran after the failure."""
    def element(x):
        if x == fail_at:
            raise ValueError(f"element {x}")
        if 2 * x < n:
            return slow(x)
        with open(log, "a") as f:
            f.write(f"{x}\n")
        return slow(x, 0.004)
    return [element(x) for x in range(n)]


def nested(n, step):
    def inner(k):
        return sum(slow(is_prime(y), 0.0005) for y in range(k, k + step))
    return [inner(k) for k in range(0, n, step)]


def expected_nested(n, step):
    return [sum(is_prime(y) for y in range(k, k + step)) for k in range(0, n, step)]


# -- the task function (what the backend's task function does) -----------------------

def run_rewritten(payload, tid=None):
    install_parallel_context()
    fn, args, kwargs = serialization.loads(payload)
    with current_task(tid):
        return fn(*args, **kwargs)


def submit(client, fn, *args, tid=None):
    payload, _ = serialization.dumps_call(rewrite_function(fn), args, {})
    return client.submit(run_rewritten, payload, tid, pure=False)


def run(client, fn, *args):
    return submit(client, fn, *args).result(timeout=TIMEOUT)


def engine_told_idle(n, seconds):
    """The runtime's engine told that one worker is idle when none may be (a stale count):
    its pieces queue behind busy workers, and it must take them back to finish."""
    context = install_parallel_context()
    def gen_fn(it):
        return (slow(x, seconds) for x in it)
    return list(_runtime._Engine(range(n), 0, gen_fn, context, seconds, 1).results())


def take_back_by_hand():
    """On a one-worker cluster a piece queues behind the task that sent it: ``split``
    takes it back once it has waited ``TAKE_BACK``, and the reply says "compute it"."""
    context = install_parallel_context()
    replies: queue.SimpleQueue = queue.SimpleQueue()
    payload, _ = serialization.dumps((slow, (1,), {}))
    rid = context.start_piece(payload, replies.put)
    early = context.split(rid)
    time.sleep(2 * TAKE_BACK)
    late = context.split(rid)
    reply = replies.get(timeout=30)
    return early, late, type(reply).__name__, reply.id == rid


# -- fixtures ------------------------------------------------------------------------

def _cluster(workers):
    cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1,
                                       processes=True, dashboard_address=None)
    client = distributed.Client(cluster)
    client.wait_for_workers(workers, timeout=TIMEOUT)
    return cluster, client


@pytest.fixture(scope="module")
def dask2():
    cluster, client = _cluster(2)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def dask1():
    cluster, client = _cluster(1)
    yield client
    client.close()
    cluster.close()


# -- tests ---------------------------------------------------------------------------

def test_sum_of_primes_is_exact(dask2):
    assert run(dask2, count_primes, 250_000) == count_primes(250_000)


def test_list_comprehension_in_order_on_both_workers(dask2):
    result = run(dask2, primes_with_workers, 2000)
    assert [x for x, _ in result] == [x for x in range(2000) if is_prime(x)]
    assert len({w for _, w in result}) == 2


def test_root_steals_from_a_running_piece(dask2):
    root, result = run(dask2, uneven, 1200)
    assert [x for x, _ in result] == list(range(1200))
    upper = {w for x, w in result if x >= 900}
    # the last quarter starts on the other worker, and the root takes part of it
    assert root in upper and len(upper) == 2


def test_first_exception_in_order_is_raised(dask2):
    future = submit(dask2, first_failure, 2000, {1300, 1700, 1900})
    with pytest.raises(ValueError, match=r"^element 1300$"):
        future.result(timeout=TIMEOUT)


def test_a_failure_stops_the_running_pieces_after_it(dask2, tmp_path):
    log = tmp_path / "upper.txt"
    future = submit(dask2, fail_early_log_late, 1000, 400, str(log))
    with pytest.raises(ValueError, match=r"^element 400$"):
        future.result(timeout=TIMEOUT)
    # a cancelled Dask task keeps its worker's thread until it returns: these run after
    for worker in dask2.scheduler_info()["workers"]:
        dask2.submit(time.time, workers=[worker], pure=False).result(timeout=TIMEOUT)
    # the upper half (~500 elements, 2 s) started on the other worker; once the root
    # failed at 400 (after ~0.4 s), that piece stops at its next batch
    ran = log.read_text().split() if log.exists() else []
    assert 0 < len(ran) < 250


def test_float_sum_equals_sequential_sum(dask2):
    assert run(dask2, float_terms, 1500) == float_terms(1500)


def test_nested_comprehensions_finish(dask2):
    assert run(dask2, nested, 4000, 200) == expected_nested(4000, 200)


def test_two_roots_at_once_finish(dask2):
    futures = [submit(dask2, primes_with_workers, 1500) for _ in range(2)]
    expected = [x for x in range(1500) if is_prime(x)]
    for future in futures:
        assert [x for x, _ in future.result(timeout=TIMEOUT)] == expected


def test_two_roots_told_a_worker_is_idle_take_their_pieces_back(dask2):
    futures = [dask2.submit(engine_told_idle, 400, 0.002, pure=False) for _ in range(2)]
    for future in futures:
        assert future.result(timeout=TIMEOUT) == list(range(400))


def test_one_worker_runs_alone(dask1):
    result = run(dask1, primes_with_workers, 1000)
    assert [x for x, _ in result] == [x for x in range(1000) if is_prime(x)]
    assert run(dask1, count_primes, 50_000) == count_primes(50_000)


def test_one_worker_takes_back_its_queued_pieces(dask1):
    assert dask1.submit(engine_told_idle, 300, 0.002, pure=False).result(
        timeout=TIMEOUT) == list(range(300))
    early, late, reply, same = dask1.submit(take_back_by_hand, pure=False).result(
        timeout=TIMEOUT)
    assert (early, late, reply, same) == (None, None, "Error", True)


def test_map_progress_and_pieces_are_logged_under_the_task_id(dask2):
    def pmap_task(n):
        install_parallel_context()
        with current_task("task-7"):
            return _runtime.pmap(slow_square, range(n))
    assert dask2.submit(pmap_task, 1000, pure=False).result(timeout=TIMEOUT) == [
        x * x for x in range(1000)]
    events = [msg for _, msg in dask2.get_events(TOPIC) if msg["task"] == "task-7"]
    roots = [e for e in events if e["kind"] == "progress" and e["piece"] is None]
    assert roots and all(e["total"] == 1000 for e in roots)
    assert [e["done"] for e in roots] == sorted(e["done"] for e in roots)
    counted = {e["piece"] for e in events if e["kind"] == "progress" and e["piece"]}
    started = [e["piece"] for e in events if e["kind"] == "piece" and e["running"]]
    ended = [e["piece"] for e in events if e["kind"] == "piece" and not e["running"]]
    assert counted and counted <= set(started) and sorted(started) == sorted(ended)
    # a piece's events are in order: started, its counts, ended
    for piece in counted:
        mine = [e for e in events if e["piece"] == piece]
        assert mine[0]["kind"] == "piece" and mine[0]["running"]
        assert mine[-1]["kind"] == "piece" and not mine[-1]["running"]


def slow_square(x):
    return slow(x, 0.002) * x


def test_install_outside_a_dask_task_says_where_to_call_it():
    with pytest.raises(PyforaUsageError, match="inside a Dask task"):
        install_parallel_context()
