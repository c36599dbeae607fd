"""Quick tasks on the worker's own loop thread (``cluster/worker/main.py``, ``INLINE_BELOW``):
a function that ran quickly on a worker runs there next time, without the task thread,
and nothing a task can see changes: its printed lines still come before its result, it
may run an event loop of its own, it may raise, and a comprehension it makes parallel
elsewhere gives the same answer there (run as CPython runs it). Both backends; which
thread runs a task is only the pool's.
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


def squares(n: int) -> int:
    return sum(x * x for x in range(n))


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


def test_a_quick_function_given_a_large_input_gives_the_same_answer(ufora):
    for _ in range(6):
        assert run(ufora, squares, 10) == 285
    n = 300_000
    assert run(ufora, squares, n) == sum(x * x for x in range(n))
