"""The parallel runtime on a worker's path, in-process: rewritten comprehensions over
cheap elements run as two comprehensions over one iterator (the path of small work), and
must still give exactly what CPython gives; expensive elements still ask for idle workers.

The context here is a real one for this process: it counts the questions and says no
worker is idle, so nothing is ever split (splitting is tested on a cluster, in
``tests/e2e/test_parallel.py``).
"""

from __future__ import annotations

import ast
import time

import pytest

from pyfora.parallel import _runtime, rewrite_comprehensions

SOURCE = '''
def kinds(items):
    return ([x * 2 for x in items if x != 3],
            {x for x in items},
            {k: v for k, v in zip(items, range(len(items)))},
            sum(x for x in items),
            list(x for x in items))


def squares(n):
    return [x * x for x in range(n)]


def gen(items, bad):
    return (1 // (x - bad) for x in items)


def paced(n, seconds):
    return [pause(x, seconds) for x in range(n)]
'''


class NoIdleWorkers:
    name = "test-worker"

    def __init__(self) -> None:
        self.asked = 0

    def idle(self) -> int:
        self.asked += 1
        return 0


def pause(x, seconds):
    if seconds:
        time.sleep(seconds)
    return x


@pytest.fixture
def context(monkeypatch):
    context = NoIdleWorkers()
    monkeypatch.setattr(_runtime, "_context", context)
    return context


def compiled(rewrite: bool) -> dict:
    tree = ast.parse(SOURCE)
    if rewrite:
        tree = rewrite_comprehensions(tree)
    namespace: dict = {"pause": pause}
    exec(compile(tree, "<runtime-test>", "exec"), namespace)
    return namespace


# Equal but not identical elements and keys on both sides of the first batch (16): a
# set keeps the first one seen, a dict the first key, the last value and the first order.
ITEMS = [1.0, 2, 3, 2.0] + list(range(10, 22)) + [1, True, 2, 3.0] + list(range(40, 80)) + [2]


def test_cheap_comprehensions_give_what_cpython_gives(context):
    got, expected = compiled(True)["kinds"](ITEMS), compiled(False)["kinds"](ITEMS)
    assert got == expected
    assert [repr(x) for x in sorted(got[1])] == [repr(x) for x in sorted(expected[1])]
    assert list(got[2].items()) == list(expected[2].items())
    assert [repr(k) for k in got[2]] == [repr(k) for k in expected[2]]
    assert compiled(True)["squares"](1000) == [x * x for x in range(1000)]


@pytest.mark.parametrize("bad", [5, 15, 16, 500])    # in the first batch, at its end, after
def test_a_generator_that_raised_is_finished(context, bad):
    def drain(generator):
        seen = []
        with pytest.raises(ZeroDivisionError):
            for value in generator:
                seen.append(value)
        return seen, list(generator)       # asked again after the error: nothing more
    items = list(range(1000))
    assert drain(compiled(True)["gen"](items, bad)) == drain(compiled(False)["gen"](items, bad))


def test_a_call_site_cheap_once_still_asks_for_workers_when_expensive(context):
    paced = compiled(True)["paced"]
    assert paced(1000, 0) == list(range(1000))
    assert context.asked == 0, "cheap work runs at once"
    assert paced(200, 0.002) == list(range(200))
    assert context.asked > 0
