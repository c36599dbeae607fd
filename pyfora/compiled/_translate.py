"""User functions to numba dispatchers that compute what CPython computes, or refuse.

``jit(fn)`` returns a numba dispatcher for a plain Python function, compiled lazily per
argument types through ``_Pipeline``: numba's own nopython pipeline with two passes of
ours.

* ``_CheckedOps`` (on the untyped IR, so it works from bytecode: cloudpickled functions
  have no source) replaces every operator by a call of its helper in ``_checked`` and
  every call of ``int``/``abs``/``min``/``max``/``math.sqrt``/``math.fabs`` by its
  checked twin, and refuses int constants outside int64 (numba would make them uint64).
* ``_ExactTypes`` (after type inference) refuses what numba types differently from
  CPython: a variable or return value that holds an int on one path and a float or bool
  on another (numba unifies them into one type, so ``1`` would come back as ``1.0``),
  and any call that is not a helper, an allowed builtin, or another function of ours.
  The allowed calls are a short list on purpose: every one is a function whose numba
  implementation was checked against CPython's; the rest runs in CPython.

Functions a user function calls (globals and closure cells holding plain functions) are
jitted the same way and put in the place of the originals in a copy of the globals that
holds only the names the code reads: numba freezes globals when it compiles, which is why
``_cache`` keys compiled code by the values of those globals.

Failing to type is ``Unsupported`` with numba's reason cut to one line.

Imports numba. Runs on the thread that compiles (a worker's task thread).
"""

from __future__ import annotations

import builtins
import types as pytypes
from collections.abc import Callable
from typing import Any, NoReturn

import numba
from numba import types
from numba.core import ir
from numba.core.compiler import CompilerBase, DefaultPassBuilder
from numba.core.compiler_machinery import FunctionPass, register_pass
from numba.core.ir_utils import build_definitions, mk_unique_var
from numba.core.typed_passes import NopythonTypeInference
from numba.core.untyped_passes import InlineClosureLikes

from . import _checked, _direct, _disk
from ._translate_names import names as _names

_INT64 = (-2 ** 63, 2 ** 63 - 1)
#: Values a compiled function may read from its globals or closure.
_SCALARS = (int, float, bool, type(None))


class Unsupported(Exception):
    """This function cannot be compiled with CPython's semantics; it runs in CPython."""


#: Dispatchers made here: the only functions compiled code may call besides the helpers.
_ours: set = set()


def _refuse(reason: str) -> NoReturn:
    raise Unsupported(reason)


@register_pass(mutates_CFG=False, analysis_only=False)
class _CheckedOps(FunctionPass):
    _name = "pyfora_checked_ops"

    def __init__(self) -> None:
        FunctionPass.__init__(self)

    def run_pass(self, state) -> bool:
        func_ir = state.func_ir
        modules = {stmt.target.name for block in func_ir.blocks.values()
                   for stmt in block.body if isinstance(stmt, ir.Assign)
                   and isinstance(stmt.value, (ir.Global, ir.FreeVar))
                   and isinstance(stmt.value.value, pytypes.ModuleType)}
        for block in func_ir.blocks.values():
            body = []
            for stmt in block.body:
                if isinstance(stmt, ir.Assign):
                    body.extend(_rewrite(stmt, block.scope, modules))
                body.append(stmt)
            block.body = body
        func_ir._definitions = build_definitions(func_ir.blocks)
        return True


def _helper_var(helper: Any, scope: ir.Scope, loc: ir.Loc) -> tuple[ir.Var, ir.Assign]:
    var = ir.Var(scope, mk_unique_var("$pyfora_op"), loc)
    return var, ir.Assign(ir.Global(helper.__name__, helper, loc), var, loc)


def _rewrite(stmt: ir.Assign, scope: ir.Scope, modules: set[str]) -> list[ir.Assign]:
    """Rewrite ``stmt`` in place; return the statements to put before it."""
    value, loc = stmt.value, stmt.loc
    if isinstance(value, (ir.Const, ir.Global, ir.FreeVar)):
        const = value.value
        if type(const) is int and not _INT64[0] <= const <= _INT64[1]:
            _refuse(f"int constant {const} is outside int64")
        if isinstance(value, (ir.Global, ir.FreeVar)):
            helper = _checked.CALLS.get(const) if _hashable(const) else None
            if helper is not None:
                stmt.value = ir.Global(helper.__name__, helper, loc)
        return []
    if not isinstance(value, ir.Expr):
        return []
    if value.op in ("binop", "inplace_binop"):
        fn = value.fn
        if fn in _checked.PLAIN_BINOPS:
            return []
        helper = _checked.BINOPS.get(fn)
        if helper is None:
            _refuse(f"operator {getattr(fn, '__name__', fn)}")
        var, assign = _helper_var(helper, scope, loc)
        stmt.value = ir.Expr.call(var, [value.lhs, value.rhs], (), loc)
        return [assign]
    if value.op == "unary":
        helper = _checked.UNARY.get(value.fn)
        if helper is None:
            return []           # ``not``: a bool, as in CPython
        var, assign = _helper_var(helper, scope, loc)
        stmt.value = ir.Expr.call(var, [value.value], (), loc)
        return [assign]
    if value.op == "getattr" and value.value.name in modules:
        # ``math.sqrt``: the module is a global, its function an attribute of it.
        import math
        found = getattr(math, value.attr, None)
        helper = _checked.CALLS.get(found) if _hashable(found) else None
        if helper is not None:
            stmt.value = ir.Global(helper.__name__, helper, loc)
    return []               # other calls are checked after typing


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


@register_pass(mutates_CFG=False, analysis_only=True)
class _ExactTypes(FunctionPass):
    _name = "pyfora_exact_types"

    def __init__(self) -> None:
        FunctionPass.__init__(self)

    def run_pass(self, state) -> bool:
        typemap = state.typemap
        for name, t in typemap.items():
            if not _allowed(t):
                _refuse(f"{name.split('.')[0]} is a {t}")
        for block in state.func_ir.blocks.values():
            for stmt in block.body:
                if isinstance(stmt, ir.Assign):
                    _check_assign(stmt, typemap, state.return_type)
        return False


#: Types compiled code may hold: numbers, bools, None, ranges, tuples and lists of those,
#: and what it takes to call the allowed functions. Not dicts, sets, strings, arrays or
#: objects: numba has them, but not always with CPython's behaviour (iteration order,
#: repr, hashing), so code using them stays in CPython.
_PLAIN = (types.Integer, types.Float, types.Boolean, types.NoneType, types.Omitted,
          types.RangeType, types.RangeIteratorType, types.Function, types.Dispatcher,
          types.Module, types.NumberClass, types.ExceptionClass, types.RecursiveCall,
          types.BoundFunction, types.ExceptionInstance)


def _allowed(t) -> bool:
    t = types.unliteral(t)
    if isinstance(t, _PLAIN):
        return True
    if isinstance(t, (types.UniTuple, types.Tuple)):
        return all(_allowed(x) for x in t.types)
    if isinstance(t, types.Pair):            # what a for loop's iterator yields
        return _allowed(t.first_type) and _allowed(t.second_type)
    if isinstance(t, types.List):
        return _allowed(t.dtype)
    if isinstance(t, types.ListIter):
        return _allowed(t.container)
    return False


def _kind(t) -> str | None:
    t = types.unliteral(t)
    if isinstance(t, types.Boolean):
        return "bool"
    if isinstance(t, types.Integer):
        return "int"
    if isinstance(t, types.Float):
        return "float"
    return None


def _check_assign(stmt: ir.Assign, typemap: dict, return_type) -> None:
    value = stmt.value
    target = typemap.get(stmt.target.name)
    sources: list = []
    if isinstance(value, ir.Var):
        sources = [value]
    elif isinstance(value, ir.Expr) and value.op == "phi":
        sources = list(value.incoming_values)
    elif isinstance(value, ir.Expr) and value.op == "cast":
        sources, target = [value.value], return_type
    elif isinstance(value, ir.Expr) and value.op == "call":
        _check_call(typemap.get(value.func.name))
    for src in sources:
        if not isinstance(src, ir.Var) or src.name not in typemap:
            continue
        a, b = _kind(typemap[src.name]), _kind(target)
        if a != b and (a or b) and not (a is None and target is not None and
                                         isinstance(types.unliteral(typemap[src.name]),
                                                    types.NoneType)):
            _refuse(f"{stmt.target.name.split('.')[0]} holds a {a or typemap[src.name]} "
                    f"and a {b or target}: numba would unify them")


def _check_call(fntype) -> None:
    if isinstance(fntype, types.RecursiveCall):
        fntype = fntype.dispatcher_type
    if isinstance(fntype, types.Dispatcher):
        if fntype.dispatcher not in _ours:
            _refuse("calls a numba function compiled elsewhere")
        return
    if isinstance(fntype, types.Function):
        key = fntype.typing_key
        if key in _checked.HELPERS or (_hashable(key) and key in _checked.PLAIN_CALLS):
            return
        _refuse(f"calls {getattr(key, '__name__', key)}")
    if isinstance(fntype, (types.BoundFunction,)):
        if fntype.typing_key in ("list.append",) or str(fntype.typing_key).endswith(
                ".append"):
            return
        _refuse(f"calls method {fntype.typing_key}")
    if isinstance(fntype, types.NumberClass):
        _refuse(f"calls {fntype}")
    if isinstance(fntype, (types.ExceptionClass,)):
        return          # raise ValueError(...): raising makes the piece run in CPython
    if fntype is not None and not isinstance(fntype, (types.Function, types.Dispatcher)):
        _refuse(f"calls a {fntype}")


class _Pipeline(CompilerBase):
    def define_pipelines(self):
        pm = DefaultPassBuilder.define_nopython_pipeline(self.state)
        pm.add_pass_after(_CheckedOps, InlineClosureLikes)
        pm.add_pass_after(_ExactTypes, NopythonTypeInference)
        pm.finalize()
        return [pm]


def jit(fn: Callable[..., Any], memo: dict | None = None, cache_dir: str | None = None):
    """A lazily compiling dispatcher for ``fn`` (and, through it, the functions it calls).

    Args:
        cache_dir: keep ``fn``'s compiled code in this directory of the disk cache
            (``_disk``), and load it from there when it is already compiled. The functions
            it calls are compiled into it, so only the outermost one needs a directory.

    Raises:
        Unsupported: ``fn`` is not a plain Python function, or it reads a global or
            closure value that is neither a number, a bool, None, the ``math`` module,
            nor a plain function.
    """
    if not isinstance(fn, pytypes.FunctionType):
        _refuse(f"{fn!r} is not a plain Python function")
    memo = {} if memo is None else memo
    if fn in memo:
        return memo[fn]
    code = fn.__code__
    if code.co_flags & (0x20 | 0x80 | 0x200 | 0x04 | 0x08):    # generators, *args, **kw
        _refuse(f"{fn.__name__} is a generator, a coroutine or takes *args/**kwargs")
    # ``__name__``: numba's cached code names the module whose globals it runs in, and
    # imports it when loaded; this one is always importable where the code runs.
    scope: dict[str, Any] = {"__builtins__": builtins, "__name__": __name__}
    dispatcher = numba.njit(pipeline_class=_Pipeline, error_model="python",
                            cache=cache_dir is not None)
    memo[fn] = None                 # placeholder while its callees are jitted
    for name in _names(code):
        if name in fn.__globals__:
            scope[name] = _frozen(fn.__globals__[name], name, memo)
    closure = None
    if fn.__closure__:
        closure = tuple(pytypes.CellType(_frozen(cell.cell_contents, name, memo))
                        for name, cell in zip(code.co_freevars, fn.__closure__, strict=True))
    fake = pytypes.FunctionType(code, scope, fn.__name__, fn.__defaults__, closure)
    if cache_dir is not None:
        _disk.install()
        setattr(fake, _disk.ATTRIBUTE, cache_dir)
    for default in fn.__defaults__ or ():
        if type(default) not in _SCALARS:
            _refuse(f"{fn.__name__} has a default of type {type(default).__name__}")
    result = dispatcher(fake)
    _ours.add(result)
    memo[fn] = result
    for name, value in list(scope.items()):
        if value is None and name in fn.__globals__ and \
                type(fn.__globals__[name]) is pytypes.FunctionType:
            scope[name] = memo[fn.__globals__[name]]     # a recursive call
    return result


def _frozen(value: Any, name: str, memo: dict) -> Any:
    """What compiled code sees for a global or free variable ``name``."""
    value = _direct.unwrap(value)
    if type(value) is pytypes.FunctionType:
        if value in memo and memo[value] is None:
            return None         # being jitted further up: patched in by ``jit``
        return jit(value, memo)
    if type(value) in _SCALARS:
        return value
    if isinstance(value, pytypes.ModuleType) and value.__name__ == "math":
        return value
    if value in _checked.CALLS or value in _checked.PLAIN_CALLS:
        return value
    _refuse(f"reads {name}, a {type(value).__name__}")


def explain(exc: BaseException) -> str:
    """numba's reason for refusing, on one line."""
    text = str(exc).strip().splitlines()
    lines = [line.strip() for line in text if line.strip()]
    for line in lines:
        if "pyfora" in line or "Unsupported" in line:
            return line[:300]
    return (f"{type(exc).__name__}: " + (lines[0] if lines else ""))[:300]
