"""Direct calls in the compiled tier (``pyfora.compiled._direct``): a function that loops,
called on numbers, runs compiled with CPython's answer, or again in CPython when the
compiled call raises. What ran compiled is read from the counts, never from timing.
"""

from __future__ import annotations

import pickle
import time

import cloudpickle
import pytest

pytest.importorskip("numba")

from pyfora import compiled  # noqa: E402
from pyfora.compiled import _direct  # noqa: E402


def isPrime(p):  # noqa: N802 - the seed's own name
    x = 2
    while x * x <= p:
        if p % x == 0:
            return 0
        x = x + 1
    return 1


def cube_sum(n):
    total = 0
    for i in range(n):
        total = total + i * i * i
    return total


def countdown(n):
    while n > 0:
        n = n - 1
    return 10 // n          # n is 0: ZeroDivisionError


def halves(x):
    steps = 0
    while x > 1:
        x = x / 2
        steps = steps + 1
    return steps


def twice(x):
    return 2 * x


def spin(n):
    while n > 0:
        n = n - 1
        time.sleep(0)
    return n


def test_a_function_reading_what_compiled_code_cannot_is_not_tried():
    before = compiled.counts()
    assert compiled.call(spin, (3,), {}) == 0
    after = compiled.counts()
    assert after["runs"] == before["runs"] and after["fallbacks"] == before["fallbacks"]


def counted(fn, *args):
    before = compiled.counts()
    value = compiled.call(fn, args, {})
    after = compiled.counts()
    return value, {k: after[k] - before[k] for k in ("runs", "reruns", "compiled")}


def test_a_looping_function_on_ints_runs_compiled():
    value, delta = counted(isPrime, 10 ** 9 + 7)
    assert value == 1 and delta["runs"] == 1
    value, delta = counted(isPrime, 10 ** 9 + 9)
    assert value == 1 and delta["runs"] == 1 and delta["compiled"] == 0     # kept


def test_an_overflow_is_computed_again_in_cpython():
    value, delta = counted(cube_sum, 10 ** 4)
    assert value == sum(i ** 3 for i in range(10 ** 4)) and value < 2 ** 63
    assert delta["runs"] == 1
    value, delta = counted(cube_sum, 10 ** 6)
    assert value == sum(i ** 3 for i in range(10 ** 6)) > 2 ** 63
    assert delta["reruns"] == 1 and delta["runs"] == 0


def test_an_exception_is_cpythons_own_and_not_chained():
    with pytest.raises(ZeroDivisionError, match="integer division or modulo by zero") as info:
        compiled.call(countdown, (5,), {})
    assert info.value.__context__ is None
    assert info.traceback[-1].name == "countdown"      # raised by CPython, in the user's code


def down(x):
    total = x * 0
    while x > 1:
        x = x - 3
        total = total + x
    return total


def test_each_argument_type_is_its_own_compile_with_cpythons_result_type():
    value, delta = counted(down, 1000.5)
    assert value == down(1000.5) and type(value) is float and delta["runs"] == 1
    value, delta = counted(down, 1000)
    assert value == down(1000) and type(value) is int and delta["runs"] == 1
    value, delta = counted(halves, 1000.0)
    assert value == halves(1000.0) and type(value) is int and delta["runs"] == 1
    # an int argument makes ``x`` an int, then a float: refused, CPython's answer
    value, delta = counted(halves, 1000)
    assert value == halves(1000) and delta["runs"] == 0


@pytest.mark.parametrize("fn,args", [(twice, (3,)), (isPrime, (2 ** 70,)),
                                     (isPrime, ("7",)), (isPrime, ([7],))])
def test_no_loop_or_not_numbers_stays_in_cpython(fn, args):
    before = compiled.counts()
    try:
        expected = fn(*args)
    except TypeError:
        with pytest.raises(TypeError):
            compiled.call(fn, args, {})
    else:
        assert compiled.call(fn, args, {}) == expected
    assert compiled.counts()["runs"] == before["runs"]


def test_keyword_arguments_stay_in_cpython():
    before = compiled.counts()
    assert compiled.call(isPrime, (), {"p": 97}) == 1
    assert compiled.counts()["runs"] == before["runs"]


def block(out, assigned):
    out["direct"] = isPrime(10 ** 9 + 7)
    out["inner"] = list(isPrime(x) for x in range(10))     # its own frame
    assigned.update(("direct", "inner"))


def test_a_with_block_calls_compiled_only_what_it_calls_itself():
    fn = compiled.with_direct_calls(block)
    assert fn is not block
    out: dict = {}
    before = compiled.counts()
    fn(out, set())
    assert out == {"direct": 1, "inner": [isPrime(x) for x in range(10)]}
    # one compiled call: the generator's calls go to the function itself (a list
    # comprehension is inlined into the block's frame from 3.12 on, PEP 709; in a real
    # block, the rewrite has made it a piece with a frame of its own)
    assert compiled.counts()["runs"] - before["runs"] == 1


def test_a_block_without_direct_calls_is_left_alone():
    def plain(out, assigned):
        out["y"] = twice(3)
    assert compiled.with_direct_calls(plain) is plain


def test_the_wrapper_pickles_as_the_function():
    wrapped = _direct._Direct(isPrime, block.__code__)
    assert pickle.loads(cloudpickle.dumps(wrapped))(97) == 1
    assert wrapped.__name__ == "isPrime"


def test_interpreted_turns_direct_calls_off():
    before = compiled.counts()
    assert compiled.run_interpreted(compiled.call, isPrime, (97,), {}) == 1
    assert compiled.counts()["runs"] == before["runs"]
