"""The parallel runtime on a worker's path, in-process: rewritten comprehensions over
cheap elements run as two comprehensions over one iterator (the path of small work), and
must still give exactly what CPython gives; expensive elements still ask for idle workers.

The context here is a real one for this process: it counts the questions and says no
worker is idle, so nothing is ever split (splitting is tested on a cluster, in
``tests/e2e/test_parallel.py``).
"""

from __future__ import annotations

import ast
import enum
import math
import sys
import time
import traceback
from fractions import Fraction

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


def total_of(items, f):
    return sum(f(x) for x in items)


def paced_sum(n, seconds):
    return sum(pause(x, seconds) for x in range(n))


def shadowed(items, sum=max):
    return sum(x for x in items)


def table(pairs, f):
    return {k: f(v) for k, v in pairs}
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


# -- sum() of a generator expression: the first elements summed, then the rest from there --

class Text:
    """``0 + Text()`` is ``"t"``: ``sum`` goes on from a str, which it refuses as a start."""

    def __radd__(self, other):
        return "t"


class Flag(enum.IntEnum):
    ON = 1


FLOATS = [math.sin(x) * 10.0 ** (x % 9 - 4) for x in range(1000)]
SUMS = {
    "ints": list(range(1000)),
    "floats": FLOATS,
    "ints and floats": [x if x % 3 else x / 7 for x in range(1000)],
    "ints, then floats": list(range(16)) + FLOATS,
    "beyond a C long and back, then floats": [2 ** 62] * 4 + [-2 ** 62] * 4 + FLOATS,
    "an IntEnum, then floats": [Flag.ON] + list(range(15)) + FLOATS,
    "bools": [x % 3 == 0 for x in range(1000)],
    "fractions": [Fraction(1, x + 1) for x in range(200)],
    "a user type, then a str": [Text()] * 40,
    "complex": [complex(x, -x) / 3 for x in range(200)],
}


@pytest.mark.parametrize("compensated", [False, True])
@pytest.mark.parametrize("name", SUMS)
@pytest.mark.parametrize("over_range", [False, True])
def test_sum_of_a_generator_is_the_sequential_sum(context, monkeypatch, name, compensated,
                                                  over_range):
    # ``compensated``: the path taken where sum() compensates float rounding (3.12 on),
    # forced on 3.11 too, where both paths must give 3.11's plain left fold.
    # ``over_range``: a comprehension the compiled tier may take, whose path is its own.
    if not compensated and sys.version_info >= (3, 12):
        pytest.skip("the plain path is for 3.11, whose sum() is a plain left fold")
    monkeypatch.setattr(_runtime, "_COMPENSATED", compensated)
    values = SUMS[name]
    items, f = (range(len(values)), values.__getitem__) if over_range else (values, lambda x: x)
    got = compiled(True)["total_of"](items, f)
    expected = compiled(False)["total_of"](items, f)
    assert type(got) is type(expected) and repr(got) == repr(expected)


def test_a_float_sum_is_not_a_plain_left_fold_everywhere():
    # What the test above guards against from 3.12 on: there the partial sum of the
    # first elements does not hold all of sum()'s state.
    assert not _runtime._long_ints([0.5] + list(range(15)))
    assert not _runtime._long_ints([Flag.ON, 2])
    assert not _runtime._long_ints([2 ** 62, 2 ** 62, -2 ** 62])
    assert _runtime._long_ints([True, 2, -3, 2 ** 40])


def test_sum_is_looked_up_where_it_was_written(context):
    assert compiled(True)["shadowed"](list(range(100))) == 99


def test_an_expensive_sum_still_asks_for_workers(context):
    assert compiled(True)["paced_sum"](200, 0.002) == sum(range(200))
    assert context.asked > 0


def raised(fn, *args):
    with pytest.raises(Exception) as info:
        fn(*args)
    frames = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    return type(info.value), str(info.value), frames[-1]


def at(bad, text=None):
    """An element function: 1 // 0 at ``bad``, a str at ``text`` (which ``+`` refuses)."""
    return lambda x: "a" if x == text else 1 // (x - bad)


# In the first elements, at their end, just after, in the rest; a str added before.
@pytest.mark.parametrize("f", [at(5), at(15), at(16), at(500), at(5, text=3), at(500, text=3),
                               at(500, text=300)])
def test_the_first_error_of_a_sum_is_the_sequential_one(context, f):
    items = list(range(1000))
    got = raised(compiled(True)["total_of"], items, f)
    expected = raised(compiled(False)["total_of"], items, f)
    assert got[:2] == expected[:2]
    # An element's error ends in the element's frame; a refused ``+`` in the frame that
    # called sum, the runtime's here.
    assert got[0] is TypeError or got[2] == expected[2] == "<lambda>"


def test_a_dict_keeps_the_first_key_the_last_value_and_the_first_order(context):
    # Equal keys in the first 16 elements and after them; 1, 1.0 and True are one key.
    pairs = [(k % 20, k) for k in range(1000)] + [(1.0, "float"), (True, "bool")]
    got = compiled(True)["table"](pairs, lambda v: v)
    expected = compiled(False)["table"](pairs, lambda v: v)
    assert list(got.items()) == list(expected.items())
    assert [repr(k) for k in got] == [repr(k) for k in expected]


@pytest.mark.parametrize("bad", [5, 16, 500])
def test_the_first_error_of_a_dict_comprehension_is_the_sequential_one(context, bad):
    pairs = [(k, k) for k in range(1000)]
    got = raised(compiled(True)["table"], pairs, at(bad))
    assert got == raised(compiled(False)["table"], pairs, at(bad))
