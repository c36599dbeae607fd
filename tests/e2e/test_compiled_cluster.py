"""The compiled tier on a real cluster (both backends): the seed's block gives the exact
answer with its pieces compiled, the three ways to turn it off keep it off, and code that
cannot compile is counted as a fallback. What ran compiled is read from the workers'
counts in ``status()`` (``"compiled"``), never from timing.
"""

from __future__ import annotations

import time

import pytest

import pyfora

from conftest import UNIT, ClusterProcess, wait_until

TIMEOUT = 60 * UNIT
#: Workers report their counts every second (cluster/worker/stats.py; Dask: heartbeats).
SETTLE = 2.5


def isPrime(p):  # noqa: N802 - the seed's own name
    x = 2
    while x * x <= p:
        if p % x == 0:
            return 0
        x = x + 1
    return 1


def labelled(x):
    return {"x": x}["x"] % 3     # a dict: numba cannot type it, CPython runs it


N = 100_000
PRIMES = 9592 + 2                # primes below 100,000, and 0 and 1 (the seed counts them)


def totals(ufora) -> dict:
    return ufora.status()["compiled"]


def settled(ufora) -> dict:
    """The counts once every worker has reported what it did so far."""
    time.sleep(SETTLE)
    return totals(ufora)


def test_the_seed_block_runs_compiled_with_the_exact_answer(ufora):
    before = totals(ufora)
    with ufora.remotely.downloadAll():
        result = sum(isPrime(x) for x in range(N))
        primes = [x for x in range(N) if isPrime(x)]
    assert result == PRIMES
    assert primes == [x for x in range(N) if isPrime(x)]
    wait_until(lambda: totals(ufora)["runs"] > before["runs"], TIMEOUT, "compiled runs")


def test_an_overflow_is_computed_again_in_cpython(ufora):
    before = totals(ufora)
    with ufora.remotely.downloadAll():
        result = sum(isPrime(x) * x ** 4 * 10 ** 6 for x in range(N))
    assert result == sum(isPrime(x) * x ** 4 * 10 ** 6 for x in range(N))
    assert result > 2 ** 63
    wait_until(lambda: totals(ufora)["reruns"] > before["reruns"], TIMEOUT, "a rerun")


def test_code_numba_cannot_type_falls_back_and_is_counted(ufora):
    before = totals(ufora)
    with ufora.remotely.downloadAll():
        result = sum(labelled(x) + isPrime(x) for x in range(N))
    assert result == sum(labelled(x) + isPrime(x) for x in range(N))
    wait_until(lambda: totals(ufora)["fallbacks"] > before["fallbacks"], TIMEOUT,
               "a counted fallback")


def cube_sum(n):
    total = 0
    for i in range(n):
        total = total + i * i * i
    return total


def test_a_submitted_call_on_numbers_runs_compiled(ufora):
    before = totals(ufora)
    assert ufora.submit(isPrime, 10 ** 9 + 7).result().toLocal().result() == 1
    wait_until(lambda: totals(ufora)["runs"] > before["runs"], TIMEOUT, "a compiled call")
    before = totals(ufora)
    big = ufora.submit(cube_sum, 10 ** 6).result().toLocal().result()
    assert big == sum(i ** 3 for i in range(10 ** 6)) > 2 ** 63
    wait_until(lambda: totals(ufora)["reruns"] > before["reruns"], TIMEOUT, "a rerun")


def test_a_with_block_calling_a_function_on_numbers_runs_it_compiled(ufora):
    before = totals(ufora)
    with ufora.remotely.downloadAll():
        prime = isPrime(10 ** 9 + 7)
        big = cube_sum(10 ** 6)
    assert prime == 1
    assert big == sum(i ** 3 for i in range(10 ** 6))
    wait_until(lambda: totals(ufora)["runs"] > before["runs"] and
               totals(ufora)["reruns"] > before["reruns"], TIMEOUT, "a run and a rerun")


def interpreted_block(ufora) -> int:
    with ufora.remotely.interpreted().downloadAll():
        result = sum(isPrime(x) for x in range(N))
    return result


def plain_block(ufora) -> int:
    with ufora.remotely.downloadAll():
        result = sum(isPrime(x) for x in range(N))
    return result


@pytest.mark.parametrize("how", ["interpreted", "compile=False"])
def test_turned_off_nothing_runs_compiled(ufora, cluster_url, how):
    plain_block(ufora)              # compiled once, so that a later run could only hit
    before = settled(ufora)
    if how == "interpreted":
        assert interpreted_block(ufora) == PRIMES
    else:
        with pyfora.connect(cluster_url, compile=False) as off:
            assert plain_block(off) == PRIMES
    after = settled(ufora)
    assert after["runs"] == before["runs"]
    assert after["compiled"] == before["compiled"]


SCRIPT = '''
import json, time
import pyfora


def isPrime(p):
    x = 2
    while x * x <= p:
        if p % x == 0:
            return 0
        x = x + 1
    return 1


with pyfora.connect(workers=1, progress=False) as ufora:
    with ufora.remotely.downloadAll():
        result = sum(isPrime(x) for x in range(N_ELEMENTS))
    time.sleep(SETTLE)        # the worker reports its counts every second
    print(json.dumps({"result": result, "compiled": ufora.status()["compiled"]}))
'''


@pytest.mark.parametrize("setting", ["0", "1"])
def test_pyfora_compile_in_the_environment(tmp_path, setting):
    """``PYFORA_COMPILE=0`` in the environment of a client and its embedded cluster's
    workers: nothing compiles. ``1`` is the control that shows the counts would see it."""
    import json
    import os
    import subprocess
    import sys
    script = tmp_path / "block.py"
    script.write_text(SCRIPT.replace("N_ELEMENTS", str(N)).replace("SETTLE", str(SETTLE)))
    env = {**os.environ, "PYFORA_COMPILE": setting}
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                         text=True, timeout=TIMEOUT, check=True).stdout
    report = json.loads(out.strip().splitlines()[-1])
    assert report["result"] == PRIMES
    counts = report["compiled"]
    if setting == "0":
        assert counts["compiled"] == counts["runs"] == counts["fallbacks"] == 0
    else:
        assert counts["compiled"] > 0 and counts["runs"] > 0


def _warm_up_seen() -> tuple:
    """Whether this worker's compiled tier has warmed up, and on a thread of its own."""
    from pyfora import compiled
    return compiled._warm.is_set(), compiled._warming is not None


def test_a_pool_worker_warms_up_on_its_task_thread_between_tasks(ufora, backend):
    """Not on a thread of its own, where its imports (numba's of numpy) could race a
    task's and leave it a half-initialized package."""
    if backend != "pool":
        pytest.skip("a Dask worker's tasks run on Dask's threads: it warms up on its own")
    seen: list = []

    def warmed() -> bool:       # every second: the worker needs a moment without tasks
        seen[:] = [ufora.submit(_warm_up_seen).result(TIMEOUT).toLocal().result(TIMEOUT)]
        return seen[0][0]
    wait_until(warmed, TIMEOUT, "a worker to warm its compiled tier up", interval=1.0)
    assert seen == [(True, False)]


def test_a_standalone_clusters_worker_has_warmed_up_before_its_first_task():
    """It warms up before it joins, so that no task of its waits for the warm-up (the
    embedded default's forked workers warm up once idle instead: its first result waits
    for their start)."""
    cluster = ClusterProcess(1)
    try:
        with pyfora.connect(cluster.url) as ex:
            first = ex.submit(_warm_up_seen).result(TIMEOUT).toLocal().result(TIMEOUT)
        assert first == (True, False)
    finally:
        assert cluster.stop() == 0
