"""Quick tasks on the worker's own loop thread (``cluster/worker/main.py``, ``INLINE_BELOW``):
a function that ran quickly on a worker runs there next time, without the task thread,
and nothing a task can see changes: its printed lines still come before its result, it
may run an event loop of its own, and it may raise. A function whose comprehensions were
made parallel never runs there (its next input may be worth splitting). Both backends;
which thread runs a task is only the pool's.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from conftest import UNIT

import pyfora

T = 30 * UNIT


def thread_name(_: int) -> str:
    return threading.current_thread().name


def nap(seconds: float) -> str:
    time.sleep(seconds)
    return threading.current_thread().name


def say(i: int) -> int:
    print(f"line {i}")
    return i


async def _doubled(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


def doubled_on_a_loop(x: int) -> int:
    return asyncio.run(_doubled(x))


def refuse(x: int) -> int:
    raise ValueError(f"no {x}")


def names_in_a_comprehension(n: int) -> str:
    return [threading.current_thread().name for _ in range(n)][0]


def run(ufora, fn, *args):
    return ufora.submit(fn, *args).result(timeout=T).toLocal().result(timeout=T)


def test_a_quick_function_runs_on_the_loop_thread_once_it_has_run(ufora, backend):
    if backend != "pool":
        pytest.skip("a Dask worker runs every task on Dask's threads")
    names = [run(ufora, thread_name, i) for i in range(8)]
    assert names[0] == "pyfora-task"            # never seen on that worker: not known quick
    assert "MainThread" in names[2:], names     # each of the two workers has seen it
    assert {run(ufora, nap, 0.01) for _ in range(4)} == {"pyfora-task"}   # 10 ms: not quick


def test_a_quick_tasks_lines_come_before_its_result(ufora, capfd):
    capfd.readouterr()
    for i in range(20):
        assert run(ufora, say, i) == i
        assert f"line {i}\n" in capfd.readouterr().out


def test_a_quick_task_may_run_an_event_loop_of_its_own(ufora):
    assert [run(ufora, doubled_on_a_loop, i) for i in range(8)] == [2 * i for i in range(8)]


def test_a_quick_function_that_raises_is_reported_each_time(ufora):
    for i in range(6):
        with pytest.raises(pyfora.ComputationError, match=f"no {i}"):
            run(ufora, refuse, i)


def test_a_function_made_parallel_never_runs_on_the_loop_thread(ufora, backend):
    if backend != "pool":
        pytest.skip("a Dask worker runs every task on Dask's threads")
    assert {run(ufora, names_in_a_comprehension, 3) for _ in range(8)} == {"pyfora-task"}
