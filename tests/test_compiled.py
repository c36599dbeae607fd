"""The compiled tier in-process: every exactness rule of ``pyfora.compiled`` as a test.

Each rule's test compares compiled code with CPython on the inputs where numba alone
differs; it fails when the rule's check is removed (an unchecked int64 multiply wraps
around, ``2 ** -1`` gives 0, ``max(3, 2.0)`` gives 3.0, and so on). "Exact" means: the
same value of the same type, or the piece raises and ``Piece`` computes it in CPython,
giving CPython's value or exception.
"""

from __future__ import annotations

import importlib
import math
import sys

import pytest

numba = pytest.importorskip("numba")

from pyfora import compiled  # noqa: E402
from pyfora.compiled import _pieces, _translate  # noqa: E402

INT64_MAX = 2 ** 63 - 1


def exact(fn, *args):
    """What the tier gives for ``fn(*args)``: the compiled value, or CPython's when the
    compiled code raises or refuses; and whether it ran compiled."""
    try:
        return _translate.jit(fn)(*args), True
    except Exception:
        return fn(*args), False


def same(a, b) -> bool:
    return type(a) is type(b) and (a == b or (a != a and b != b)) and repr(a) == repr(b)


def check(fn, *args):
    try:
        expected = fn(*args)
    except Exception as exc:
        with pytest.raises(type(exc)):
            exact(fn, *args)
        return
    got, _ = exact(fn, *args)
    assert same(got, expected), (fn.__name__, args, got, expected)


def mul(a, b):
    return a * b


def add(a, b):
    return a + b


def sub(a, b):
    return a - b


def neg(a):
    return -a


def absolute(a):
    return abs(a)


def floordiv(a, b):
    return a // b


def mod(a, b):
    return a % b


def power(a, b):
    return a ** b


def shift(a, b):
    return a << b


def rshift(a, b):
    return a >> b


def to_int(x):
    return int(x)


def truediv(a, b):
    return a / b


def root(x):
    return math.sqrt(x)


def biggest(a, b):
    return max(a, b)


def smallest(a, b):
    return min(a, b)


def literal(x):
    return x + 9223372036854775808


def mixed(x):
    y = 1
    if x > 0:
        y = 2.5
    return y


def mixed_return(x):
    if x > 0:
        return 1
    return 1.5


def less(a, b):
    return a < b


def equal(a, b):
    return a == b


def with_dict(x):
    return {"x": x}["x"]


def with_str(x):
    return len(str(x))


def float_sum(n):
    total = 0.0
    for i in range(n):
        total += 1.0 / (i + 1)
    return total


# -- integer overflow: checked, and CPython's big int when it overflows --------------

@pytest.mark.parametrize("fn,args", [
    (mul, (2 ** 40, 2 ** 40)), (mul, (2 ** 62, 2)), (mul, (-2 ** 62, -2)),
    (add, (INT64_MAX, 1)), (add, (-2 ** 63, -1)), (sub, (-2 ** 63, 1)),
    (neg, (-2 ** 63,)), (absolute, (-2 ** 63,)), (floordiv, (-2 ** 63, -1)),
    (power, (3, 40)), (power, (2, 63)), (shift, (1, 63)), (shift, (3, 62)),
    (shift, (-1, 64)), (to_int, (1e19,)), (to_int, (-1e300,)),
])
def test_int64_overflow_gives_the_big_int(fn, args):
    check(fn, *args)
    with pytest.raises(ArithmeticError):
        _translate.jit(fn)(*args)


@pytest.mark.parametrize("fn,args", [
    (mul, (3, 7)), (add, (-5, 9)), (floordiv, (-7, 2)), (floordiv, (7, -2)),
    (mod, (-7, 3)), (mod, (7, -3)), (mod, (-2 ** 63, -1)), (power, (7, 0)),
    (power, (-3, 5)), (rshift, (-5, 100)), (rshift, (5, 70)), (shift, (0, 200)),
    (absolute, (-5,)), (neg, (5,)), (mul, (-2 ** 62, 2)), (power, (-2, 63)),
])
def test_int_operators_in_range_run_compiled_and_exact(fn, args):
    got, ran = exact(fn, *args)
    assert ran
    assert same(got, fn(*args))


# -- what numba computes differently --------------------------------------------------

@pytest.mark.parametrize("fn,args", [
    (power, (2, -1)),                      # a float in CPython
    (to_int, (float("nan"),)), (to_int, (float("inf"),)),
    (root, (-1.0,)), (root, (-1,)),
    (biggest, (3, 2.0)), (smallest, (2.0, 3)), (biggest, (True, 1)),
    (truediv, (2 ** 53 + 1, 3)), (truediv, (3, 2 ** 60 + 1)),
    (less, (2 ** 53 + 1, float(2 ** 53))), (equal, (2 ** 53 + 1, float(2 ** 53))),
    (less, (float(2 ** 53), 2 ** 53 + 1)), (equal, (float(2 ** 53), 2 ** 53 + 1)),
    (power, (-8.0, 1 / 3)), (power, (0.0, -1.0)), (power, (10.0, 400)),
    (mixed, (1,)), (mixed, (-1,)), (mixed_return, (1,)),
    (shift, (1, -1)), (floordiv, (1, 0)), (mod, (1.0, 0.0)), (truediv, (1, 0)),
])
def test_numba_differences_give_cpythons_answer_or_exception(fn, args):
    check(fn, *args)


@pytest.mark.parametrize("fn,args,expected", [
    (less, (float(2 ** 53), 2 ** 53 + 1), True), (equal, (float(2 ** 53), 2 ** 53 + 1), False),
    (less, (2 ** 53 + 1, float(2 ** 53)), False), (equal, (2 ** 53 + 1, float(2 ** 53)), False),
])
def test_a_float_compared_with_a_big_int_is_not_rounded(fn, args, expected):
    # float(2**53 + 1) rounds to 2**53: a comparison through that conversion would give
    # the opposite answer. The compiled code must raise (CPython compares exactly).
    assert fn(*args) is expected
    with pytest.raises(ArithmeticError):
        _translate.jit(fn)(*args)


def test_int_literals_beyond_int64_are_refused():
    with pytest.raises(Exception, match="outside int64"):
        _translate.jit(literal)(1)


@pytest.mark.parametrize("fn", [mixed, mixed_return])
def test_a_variable_holding_an_int_and_a_float_is_refused(fn):
    with pytest.raises(Exception, match="unify"):
        _translate.jit(fn)(1)


@pytest.mark.parametrize("fn", [with_dict, with_str])
def test_dicts_and_strings_stay_in_cpython(fn):
    with pytest.raises(Exception):
        _translate.jit(fn)(1)


@pytest.mark.parametrize("a,b", [(0.1, 0.2), (1e308, 1e308), (-7.5, 2.0), (7.5, -2.0),
                                 (5, 0.3), (-0.0, 3.0), (1e-320, 3.0), (2.0, 0.5)])
def test_float_operators_are_bit_identical(a, b):
    for fn in (add, sub, mul, truediv, floordiv, mod, power, less, equal, biggest):
        check(fn, a, b)
        if type(a) is type(b) and fn is not power and not math.isinf(fn(a, b)):
            assert exact(fn, a, b)[1], fn.__name__


def test_a_float_loop_is_bit_identical():
    got, ran = exact(float_sum, 10 ** 5)
    assert ran and got.hex() == float_sum(10 ** 5).hex()


# -- pieces: one compiled loop, the fold unchanged -------------------------------------

def isPrime(p):  # noqa: N802 - the seed's own name
    x = 2
    while x * x <= p:
        if p % x == 0:
            return 0
        x = x + 1
    return 1


def piece(kind, src, **names):
    fallback = eval(f"lambda _pyfora_it: {src}", dict(names))
    made = compiled.piece(kind, src, fallback, names)
    assert made is not None, compiled.counts()["reasons"]
    return made, fallback


def test_a_sum_piece_is_one_partial_sum_of_ints():
    made, fallback = piece("sum", "(isPrime(x) for x in _pyfora_it)", isPrime=isPrime)
    assert made(range(0, 10 ** 4)) == [sum(fallback(range(0, 10 ** 4)))]


def test_a_float_sum_piece_keeps_every_element_for_the_sequential_fold():
    made, fallback = piece("sum", "(1.0 / (x + 1) for x in _pyfora_it)")
    values = made(range(10 ** 4))
    assert len(values) == 10 ** 4
    # the runtime's fold: one sum over the elements, compensated from 3.12 on
    assert sum(values).hex() == sum(fallback(range(10 ** 4))).hex()


def test_a_list_piece_filters_like_the_comprehension():
    made, fallback = piece("list", "[x for x in _pyfora_it if isPrime(x)]", isPrime=isPrime)
    assert made(range(5, 5000, 3)) == fallback(range(5, 5000, 3))


def test_an_overflowing_piece_is_computed_again_in_cpython():
    made, fallback = piece("sum", "(x * x * x * 1000 for x in _pyfora_it)")
    before = compiled.counts()["reruns"]
    part = range(10 ** 6, 10 ** 6 + 3000)
    assert made(part) == list(fallback(part))
    assert sum(made(part)) == sum(fallback(part)) > 2 ** 63
    assert compiled.counts()["reruns"] > before


def test_an_exception_is_cpythons_own():
    made, fallback = piece("list", "[10 // (x - 7) for x in _pyfora_it]")
    with pytest.raises(ZeroDivisionError, match="integer division or modulo by zero"):
        made(range(20))


def test_a_refusal_is_counted_with_its_reason_and_remembered():
    before = compiled.counts()["fallbacks"]
    names = {"with_str": with_str}
    src = "[with_str(x) for x in _pyfora_it]"
    fallback = eval(f"lambda _pyfora_it: {src}", dict(names))
    assert compiled.piece("list", src, fallback, names) is None
    assert compiled.counts()["fallbacks"] == before + 1
    assert compiled.piece("list", src, fallback, names) is None     # not tried again
    assert compiled.counts()["fallbacks"] == before + 1


def test_the_cache_key_follows_the_globals_values():
    k1 = _pieces._key({"f": isPrime}, set())
    g = {"isPrime": isPrime}
    exec("def uses(x):\n    return isPrime(x) + LIMIT", g)
    g["LIMIT"] = 1
    k2 = _pieces._key({"f": g["uses"]}, set())
    g["LIMIT"] = 2
    assert _pieces._key({"f": g["uses"]}, set()) != k2 != k1


def test_interpreted_turns_the_tier_off():
    assert compiled.run_interpreted(lambda: compiled.piece("list", "[x for x in _pyfora_it]",
                                                           list, {})) is None


def test_pyfora_compile_0_turns_it_off(monkeypatch):
    monkeypatch.setenv("PYFORA_COMPILE", "0")
    module = importlib.reload(compiled)
    try:
        assert not module.default_on() and not module.enabled()
    finally:
        monkeypatch.delenv("PYFORA_COMPILE")
        importlib.reload(compiled)
    assert compiled.enabled()


def test_the_client_does_not_import_numba():
    import subprocess
    code = "import pyfora, sys; assert 'numba' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
