"""Python's arithmetic for compiled code: each operator as a helper numba compiles.

``_translate`` replaces every operator of a user function's numba IR with a call of one
of the helpers below, and every call of ``int``, ``abs``, ``min``, ``max`` and the few
``math`` functions it allows with its checked twin. A helper either computes exactly what
CPython computes for the operand types numba gives it, or raises ``_Inexact`` (an
``ArithmeticError``) where the answer would differ (an int64 overflow, a comparison of an
int beyond 2**53 with a float, ``2 ** -1``, ``math.sqrt(-1)``); any exception makes the
runner compute the piece again in CPython, which gives the exact big int, the float, or
CPython's own exception. A helper with no implementation for its operand types (``max(3,
2.0)``, an unsigned int) fails typing, and the function runs in CPython.

Why helpers and not numba's own operators: numba's int64 ``+ - *`` wrap around silently,
``int**int`` with a negative exponent and ``int(nan)`` give garbage, ``float ** int``
multiplies (another rounding than ``pow``), mixed int/float comparisons round the int, and
``max`` unifies its arguments' types. Overflow checks use LLVM's ``*.with.overflow``
intrinsics: a flag from the add itself, which costs nothing measurable on isPrime.

Floats use plain IEEE operations and no fast-math flags, so results are bit-identical to
CPython's (which does the same operations in the same order).

Imports numba: imported only in worker processes, by ``_translate``. Runs on the thread
that compiles (the task thread), and inside compiled code.
"""

from __future__ import annotations

import math
import operator

from llvmlite import ir as llir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

#: Ints of at most this magnitude convert to float exactly.
EXACT_FLOAT_INT = 2 ** 53
_INT64_MIN = -2 ** 63


class _Inexact(ArithmeticError):
    """Compiled code cannot give CPython's answer here; CPython computes it."""


def _signed(t) -> bool:
    """An int64-or-narrower signed int, or a bool (Python adds bools as ints)."""
    # numba's stubs leave out Integer's ``signed`` and ``bitwidth`` (set in its __init__).
    return isinstance(t, types.Boolean) or (
        isinstance(t, types.Integer) and t.signed  # type: ignore[attr-defined]
        and t.bitwidth <= 64)  # type: ignore[attr-defined]


def _float(t) -> bool:
    return isinstance(t, types.Float) and t.bitwidth == 64


def _number(t) -> bool:
    return _signed(t) or _float(t)


def _checked_intrinsic(name: str):
    method = {"add": "sadd_with_overflow", "sub": "ssub_with_overflow",
              "mul": "smul_with_overflow"}[name]

    @intrinsic
    def checked(typingctx, a, b):
        if not (_signed(a) and _signed(b)):
            return None
        sig = types.int64(a, b)

        def codegen(context, builder, signature, args):
            x = context.cast(builder, args[0], signature.args[0], types.int64)
            y = context.cast(builder, args[1], signature.args[1], types.int64)
            pair = getattr(builder, method)(x, y)
            with builder.if_then(builder.extract_value(pair, 1), likely=False):
                context.call_conv.return_user_exc(builder, _Inexact, ("int64 overflow",))
            return builder.extract_value(pair, 0)
        return sig, codegen
    return checked


_sadd = _checked_intrinsic("add")
_ssub = _checked_intrinsic("sub")
_smul = _checked_intrinsic("mul")


@intrinsic
def _as_float(typingctx, a):
    """``float(a)`` for an int (sitofp rounds to nearest, ties to even: as CPython)."""
    if not _number(a):
        return None

    def codegen(context, builder, signature, args):
        return context.cast(builder, args[0], signature.args[0], types.float64)
    return types.float64(a), codegen


@intrinsic
def _raise_inexact(typingctx, what):
    def codegen(context, builder, signature, args):
        context.call_conv.return_user_exc(builder, _Inexact, ("inexact",))
        return cgutils.get_null_value(llir.IntType(1))
    return types.boolean(what), codegen


# -- the helpers: plain Python functions, so that a global naming one can be typed -----

def add(a, b):
    return a + b


def sub(a, b):
    return a - b


def mul(a, b):
    return a * b


def truediv(a, b):
    return a / b


def floordiv(a, b):
    return a // b


def mod(a, b):
    return a % b


def power(a, b):
    return a ** b


def lshift(a, b):
    return a << b


def rshift(a, b):
    return a >> b


def neg(a):
    return -a


def pos(a):
    return +a


def invert(a):
    return ~a


def compare_lt(a, b):
    return a < b


def compare_le(a, b):
    return a <= b


def compare_gt(a, b):
    return a > b


def compare_ge(a, b):
    return a >= b


def compare_eq(a, b):
    return a == b


def compare_ne(a, b):
    return a != b


def to_int(a):
    return int(a)


def to_abs(a):
    return abs(a)


def max2(a, b):
    return max(a, b)


def min2(a, b):
    return min(a, b)


def sqrt(a):
    return math.sqrt(a)


def fabs(a):
    return math.fabs(a)


def _both_ints(a, b) -> bool:
    return _signed(a) and _signed(b)


def _mixed(a, b) -> bool:
    return _number(a) and _number(b) and not _both_ints(a, b)


@overload(add)
def _ol_add(a, b):
    if _both_ints(a, b):
        return lambda a, b: _sadd(a, b)
    if _mixed(a, b):
        return lambda a, b: _as_float(a) + _as_float(b)


@overload(sub)
def _ol_sub(a, b):
    if _both_ints(a, b):
        return lambda a, b: _ssub(a, b)
    if _mixed(a, b):
        return lambda a, b: _as_float(a) - _as_float(b)


@overload(mul)
def _ol_mul(a, b):
    if _both_ints(a, b):
        return lambda a, b: _smul(a, b)
    if _mixed(a, b):
        return lambda a, b: _as_float(a) * _as_float(b)


@overload(truediv)
def _ol_truediv(a, b):
    if _both_ints(a, b):
        def int_div(a, b):
            # Exact operands make IEEE division the correctly rounded quotient, which is
            # what CPython's int / int returns; past 2**53 CPython computes it otherwise.
            if a > EXACT_FLOAT_INT or a < -EXACT_FLOAT_INT or \
                    b > EXACT_FLOAT_INT or b < -EXACT_FLOAT_INT:
                raise _Inexact("int / int beyond 2**53")
            if b == 0:
                raise ZeroDivisionError("division by zero")
            return _as_float(a) / _as_float(b)
        return int_div
    if _mixed(a, b):
        def float_div(a, b):
            if _as_float(b) == 0.0:
                raise ZeroDivisionError("float division by zero")
            return _as_float(a) / _as_float(b)
        return float_div


@overload(floordiv)
def _ol_floordiv(a, b):
    if _both_ints(a, b):
        def int_floordiv(a, b):
            if b == 0:
                raise ZeroDivisionError("integer division or modulo by zero")
            if a == _INT64_MIN and b == -1:
                raise _Inexact("int64 overflow")
            return _int64(a) // _int64(b)       # numba's int // floors, as Python's
        return int_floordiv
    if _mixed(a, b):
        def float_floordiv(a, b):
            if _as_float(b) == 0.0:
                raise ZeroDivisionError("float floor division by zero")
            return _as_float(a) // _as_float(b)  # numba ports CPython's float_divmod
        return float_floordiv


@overload(mod)
def _ol_mod(a, b):
    if _both_ints(a, b):
        def int_mod(a, b):
            if b == 0:
                raise ZeroDivisionError("integer modulo by zero")
            if b == -1:
                return 0                         # also INT64_MIN % -1, which traps in C
            return _int64(a) % _int64(b)
        return int_mod
    if _mixed(a, b):
        def float_mod(a, b):
            if _as_float(b) == 0.0:
                raise ZeroDivisionError("float modulo")
            return _as_float(a) % _as_float(b)
        return float_mod


@intrinsic
def _int64(typingctx, a):
    if not _signed(a):
        return None

    def codegen(context, builder, signature, args):
        return context.cast(builder, args[0], signature.args[0], types.int64)
    return types.int64(a), codegen


@overload(power)
def _ol_power(a, b):
    if _both_ints(a, b):
        def int_power(a, b):
            if b < 0:
                raise _Inexact("int ** negative int is a float in Python")
            result = 1
            base = _int64(a)
            e = _int64(b)
            while e > 0:
                if e & 1:
                    result = _smul(result, base)
                e >>= 1
                if e > 0:
                    base = _smul(base, base)
            return result
        return int_power
    if _mixed(a, b):
        def float_power(a, b):
            x, y = _as_float(a), _as_float(b)
            r = math.pow(x, y)
            # CPython raises (ZeroDivisionError, OverflowError) or returns a complex
            # number where pow gives inf or nan from finite, non-nan operands.
            if (math.isnan(r) and not (math.isnan(x) or math.isnan(y))) or \
                    (math.isinf(r) and math.isfinite(x) and math.isfinite(y)):
                raise _Inexact("float power outside the reals or the floats")
            return r
        return float_power


@overload(lshift)
def _ol_lshift(a, b):
    if _both_ints(a, b):
        def int_lshift(a, b):
            if b < 0:
                raise ValueError("negative shift count")
            x = _int64(a)
            if x == 0:
                return x
            if b >= 63:
                raise _Inexact("int64 overflow")
            r = x << _int64(b)
            if (r >> _int64(b)) != x:
                raise _Inexact("int64 overflow")
            return r
        return int_lshift


@overload(rshift)
def _ol_rshift(a, b):
    if _both_ints(a, b):
        def int_rshift(a, b):
            if b < 0:
                raise ValueError("negative shift count")
            return _int64(a) >> min(_int64(b), 63)
        return int_rshift


@overload(neg)
def _ol_neg(a):
    if _signed(a):
        return lambda a: _ssub(0, a)
    if _float(a):
        return lambda a: -a


@overload(pos)
def _ol_pos(a):
    if _signed(a):
        return lambda a: _int64(a)
    if _float(a):
        return lambda a: a


@overload(invert)
def _ol_invert(a):
    if _signed(a):
        return lambda a: ~_int64(a)


def _comparison(helper, op):
    @overload(helper)
    def _ol(a, b):
        if _both_ints(a, b):
            return lambda a, b: op(_int64(a), _int64(b))
        if _float(a) and _float(b):
            return lambda a, b: op(a, b)
        if _float(a) and _signed(b):
            def float_int(a, b):
                # CPython compares an int with a float exactly; the conversion is exact
                # only up to 2**53.
                if b > EXACT_FLOAT_INT or b < -EXACT_FLOAT_INT:
                    raise _Inexact("int beyond 2**53 compared with a float")
                return op(a, _as_float(b))
            return float_int
        if _signed(a) and _float(b):
            def int_float(a, b):
                if a > EXACT_FLOAT_INT or a < -EXACT_FLOAT_INT:
                    raise _Inexact("int beyond 2**53 compared with a float")
                return op(_as_float(a), b)
            return int_float


for _helper, _op in ((compare_lt, operator.lt), (compare_le, operator.le),
                     (compare_gt, operator.gt), (compare_ge, operator.ge),
                     (compare_eq, operator.eq), (compare_ne, operator.ne)):
    _comparison(_helper, _op)


@overload(to_int)
def _ol_to_int(a):
    if _signed(a):
        return lambda a: _int64(a)
    if _float(a):
        def float_to_int(a):
            # nan and inf raise in CPython; past int64 CPython gives a big int.
            if not (a > -9.223372036854775808e18 and a < 9.223372036854775808e18):
                raise _Inexact("int(float) outside int64")
            return _int64(int(a))
        return float_to_int


@overload(to_abs)
def _ol_abs(a):
    if _signed(a):
        def int_abs(a):
            x = _int64(a)
            return _ssub(0, x) if x < 0 else x
        return int_abs
    if _float(a):
        return lambda a: abs(a)


def _same_type(a, b) -> bool:
    return (_both_ints(a, b) and not (isinstance(a, types.Boolean) or
                                      isinstance(b, types.Boolean))) or \
        (_float(a) and _float(b))


@overload(max2)
def _ol_max2(a, b):
    # CPython's max keeps the first of equal items and returns it as it is: with mixed
    # types (max(3, 2.0) is the int 3) numba would unify them, so those fail typing.
    if _same_type(a, b):
        return lambda a, b: b if b > a else a


@overload(min2)
def _ol_min2(a, b):
    if _same_type(a, b):
        return lambda a, b: b if b < a else a


@overload(sqrt)
def _ol_sqrt(a):
    if _number(a):
        def checked_sqrt(a):
            x = _as_float(a)
            if x < 0.0:
                raise ValueError("math domain error")
            return math.sqrt(x)
        return checked_sqrt


@overload(fabs)
def _ol_fabs(a):
    if _number(a):
        return lambda a: math.fabs(_as_float(a))


#: Operators of numba's IR (``binop``/``inplace_binop`` ``fn``) -> helper.
BINOPS = {
    operator.add: add, operator.iadd: add, operator.sub: sub, operator.isub: sub,
    operator.mul: mul, operator.imul: mul, operator.truediv: truediv,
    operator.itruediv: truediv, operator.floordiv: floordiv, operator.ifloordiv: floordiv,
    operator.mod: mod, operator.imod: mod, operator.pow: power, operator.ipow: power,
    operator.lshift: lshift, operator.ilshift: lshift, operator.rshift: rshift,
    operator.irshift: rshift, operator.lt: compare_lt, operator.le: compare_le,
    operator.gt: compare_gt, operator.ge: compare_ge, operator.eq: compare_eq,
    operator.ne: compare_ne,
}
#: ``&``, ``|``, ``^`` are exact on int64 and bools: numba's own are kept.
PLAIN_BINOPS = {operator.and_, operator.or_, operator.xor, operator.iand, operator.ior,
                operator.ixor}
UNARY = {operator.neg: neg, operator.pos: pos, operator.invert: invert}
#: Builtins and math functions a user function may call -> the helper called instead.
CALLS = {int: to_int, abs: to_abs, max: max2, min: min2, math.sqrt: sqrt,
         math.fabs: fabs}
#: Called as they are: numba computes them as CPython does for int64 and float operands.
PLAIN_CALLS = {range, float, bool, math.isnan, math.isinf, math.isfinite}
HELPERS = frozenset(BINOPS.values()) | frozenset(UNARY.values()) | frozenset(CALLS.values())
