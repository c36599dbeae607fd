"""Functions called directly on numbers: a submitted call, a call in a with-block's body.

``ufora.submit(isPrime, 10**9 + 7)`` runs ``isPrime`` compiled (``call``), and so does
``isPrime(10**9 + 7)`` written in a with-block (``with_direct_calls``), when every
argument is an int in int64, a float or a bool, and the function loops or recurses
(itself or through the functions it calls: without a loop, the call costs less than
numba's dispatch). It is compiled for the arguments' types, through ``_translate`` like a
piece, and kept for the worker's life by its ``_pieces._key`` and those types, and on
disk (``_disk``); a refusal is kept the same way.

Exactness: whatever the compiled call raises (an int64 overflow, a division by zero, an
exception of the user's) makes the call run again in CPython, which gives the big int or
CPython's own exception and traceback. Compiled code can only read numbers and call
functions like itself (``_translate``), so it has no effect to repeat.

A with-block calls its functions through its globals, so ``with_direct_calls`` gives the
block a copy of them where each function the block's own code names (not its
comprehensions': those are pieces) is a ``_Direct``, which calls it compiled when called
from the block's own frame and as it is from anywhere else. (A list comprehension the
parallel rewrite left alone, e.g. under ``remotely.sequential()``, runs in the block's
frame from Python 3.12 on, PEP 709: its calls are compiled calls too, one by one.) It
pickles as the function.

Runs on a worker's task thread (or a Dask worker's threads).
"""

from __future__ import annotations

import dis
import sys
import threading
import time
import types
import weakref
from collections.abc import Callable
from typing import Any, cast

from . import compiled_once, count, log
from ._translate_names import names as _names

_INT64 = (-2 ** 63, 2 ** 63 - 1)
_NUMBA_TYPE = {int: "int64", float: "float64", bool: "boolean"}
_JUMPS = set(dis.hasjrel) | set(dis.hasjabs)

_compiled: dict = {}        # (key, signature) -> dispatcher, or None: refused
_lock = threading.RLock()


def scalars(args: tuple) -> bool:
    """Whether every argument is one compiled code takes as CPython does."""
    for arg in args:
        kind = type(arg)
        if kind is int:
            if not _INT64[0] <= arg <= _INT64[1]:
                return False
        elif kind is not float and kind is not bool:
            return False
    return True


def worth(fn: types.FunctionType) -> bool:
    """Whether ``fn`` or a function it calls loops or recurses, and all of them read only
    what compiled code may read: a quick look, with no numba, that spares a compile
    attempt (and its import) to most functions that would be refused (``time.sleep``,
    ``print``, a dict). ``_translate`` still decides.

    Remembered per function, since a worker is handed the same function task after task:
    a global that changes afterwards costs at worst a compile attempt that ``_translate``
    refuses, or a call left to CPython, never a different answer."""
    known = _worth.get(fn)
    if known is None:
        loops = [False]
        known = _worth[fn] = _readable(fn, set(), loops) and loops[0]
    return known


_worth: weakref.WeakKeyDictionary[types.FunctionType, bool] = weakref.WeakKeyDictionary()


#: Builtins compiled code may call (``_checked.CALLS`` and ``PLAIN_CALLS``).
_BUILTINS = {"range", "int", "float", "bool", "abs", "min", "max"}


def _readable(fn: types.FunctionType, seen: set, loops: list) -> bool:
    code = fn.__code__
    if code in seen:
        loops[0] = True         # recursion
        return True
    seen.add(code)
    if not loops[0] and _loops(code):
        loops[0] = True
    found = cast(Any, fn).__builtins__      # a dict, or the module (typeshed lacks it)
    builtins = found if isinstance(found, dict) else vars(found)
    for name in _names(code):
        if name in fn.__globals__:
            value = fn.__globals__[name]
            kind = type(value)
            if kind is types.FunctionType:
                if not _readable(value, seen, loops):
                    return False
            elif not (kind in (int, float, bool, type(None)) or
                      (kind is types.ModuleType and value.__name__ == "math") or
                      (kind is types.BuiltinFunctionType and value.__module__ == "math")):
                return False
        elif name in builtins and name not in _BUILTINS and not (
                isinstance(builtins[name], type) and
                issubclass(builtins[name], BaseException)):
            return False
    return True


def _loops(code: types.CodeType) -> bool:
    found = _loops_in.get(code)
    if found is None:
        found = any(_backwards(ins) for ins in dis.get_instructions(code)) or any(
            _loops(c) for c in code.co_consts if type(c) is types.CodeType)
        if len(_loops_in) < 4096:
            _loops_in[code] = found
    return found


_loops_in: dict[types.CodeType, bool] = {}      # code -> whether it loops


def _backwards(ins: dis.Instruction) -> bool:
    """A jump back: a loop (its opcodes differ from one Python version to the next)."""
    return ins.opcode in _JUMPS and type(ins.argval) is int and ins.argval <= ins.offset


def call(fn: types.FunctionType, args: tuple) -> Any:
    """``fn(*args)``: compiled when it can be, else (or again, when compiled code raised)
    in CPython."""
    dispatcher = _dispatcher(fn, args)
    if dispatcher is None:
        return fn(*args)
    try:
        result = dispatcher(*args)
    except Exception as exc:
        count("reruns")
        log.debug("compiled call of %s raised %s: %s; calling it in CPython",
                  fn.__qualname__, type(exc).__name__, exc)
    else:
        count("runs")
        return result
    # Outside the handler: CPython's exception, if any, is not chained to ours.
    return fn(*args)


def _dispatcher(fn: types.FunctionType, args: tuple) -> Any:
    from . import _pieces
    try:
        key = (_pieces._key(fn, set()), tuple(_NUMBA_TYPE[type(a)] for a in args))
    except TypeError as exc:
        count("fallbacks", reason=f"{fn.__qualname__} {exc}")
        return None
    return compiled_once(_compiled, _lock, key, lambda: _compile(fn, key))


def _compile(fn: types.FunctionType, key: tuple) -> Any:
    from . import _disk, _translate
    path = _disk.directory(("direct",) + key)
    reason = _disk.refused(path)
    if reason is not None:
        count("fallbacks", reason=reason)
        count("cache_hits")
        return None
    t0 = time.perf_counter()
    try:
        dispatcher = _translate.jit(fn, cache_dir=path)
        dispatcher.compile("(" + ", ".join(key[1]) + (",)" if len(key[1]) == 1 else ")"))
    except Exception as exc:            # Unsupported, or numba's typing error
        reason = f"{fn.__qualname__}: {_translate.explain(exc)}"
        count("fallbacks", reason=reason)
        log.debug("not compiled: %s", reason)
        _disk.refuse(path, reason)
        return None
    finally:
        count("compile_s", time.perf_counter() - t0)
    count("compiled")
    if sum(dispatcher.stats.cache_hits.values()):
        count("cache_hits")
    return dispatcher


def _same(fn: Callable) -> Callable:
    return fn


class _Direct:
    """A function of a with-block's globals: compiled when the block itself calls it on
    numbers, the function itself otherwise."""

    __slots__ = ("fn", "block")

    def __init__(self, fn: types.FunctionType, block: types.CodeType) -> None:
        self.fn = fn
        self.block = block

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not kwargs and sys._getframe(1).f_code is self.block and scalars(args):
            from . import enabled
            if enabled():
                return call(self.fn, args)
        return self.fn(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fn, name)

    def __reduce__(self):
        return _same, (self.fn,)


def unwrap(value: Any) -> Any:
    """The function a ``_Direct`` stands for; any other value as it is."""
    return value.fn if type(value) is _Direct else value


def with_direct_calls(block: types.FunctionType) -> types.FunctionType:
    """``block`` itself, or a copy whose globals call compiled what it calls directly."""
    code = block.__code__
    found = {name: value for name in code.co_names
             if type(value := block.__globals__.get(name)) is types.FunctionType
             and worth(value)}
    if not found:
        return block
    scope = dict(block.__globals__)
    for name, fn in found.items():
        scope[name] = _Direct(fn, code)
    copy = types.FunctionType(code, scope, block.__name__, block.__defaults__,
                              block.__closure__)
    copy.__kwdefaults__ = block.__kwdefaults__
    copy.__qualname__ = block.__qualname__
    return copy
