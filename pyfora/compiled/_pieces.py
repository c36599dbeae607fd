"""One compiled loop per piece of a comprehension, and the run that falls back to CPython.

A piece of ``sum(E for x in range(a, b) if C)`` becomes, once per worker and per shape::

    def _pyfora_piece(_pyfora_a, _pyfora_b, _pyfora_s):
        _pyfora_acc = 0
        for x in range(_pyfora_a, _pyfora_b, _pyfora_s):
            if C:
                _pyfora_acc = _pyfora_acc + (E)
        return _pyfora_acc

compiled by ``_translate`` with every function ``E`` and ``C`` call: one native loop, no
Python call per element. Its result goes back as ``[acc]``: the runtime folds the pieces'
lists in order with ``sum`` as before, and a sum of ints is the same whatever the
grouping. Floats are not: when ``E`` is a float (``_translate`` refuses ``_pyfora_acc``
holding an int and a float), the piece is the list form below and the runtime's one
sequential ``sum`` over all elements stays the only fold, with CPython's compensated
summation from 3.12 on. ``[E for x in range(a, b) if C]`` is the list form::

        _pyfora_out = []
        for x in range(...):
            if C:
                _pyfora_out.append(E)
        return _pyfora_out

Compiled pieces are kept for the worker's life, keyed by the shape and the values of
the names it reads (down through the functions it calls: numba freezes globals), and so
are refusals: a shape that cannot compile is tried once. Both are also kept on disk under
the same key (``_disk``), where a new worker finds them. A compile runs under one lock,
so two threads (Dask) never compile the same shape twice.

Runs on a worker's task thread (or a Dask worker's threads).
"""

from __future__ import annotations

import ast
import builtins
import os
import threading
import time
import types
from collections.abc import Callable
from typing import Any

from . import compiled_once, count, log
from ._direct import _Direct, unwrap

_NAMES = {"_pyfora_a", "_pyfora_b", "_pyfora_s", "_pyfora_acc", "_pyfora_out"}
_SUM = """def _pyfora_piece(_pyfora_a, _pyfora_b, _pyfora_s):
    _pyfora_acc = 0
    for {target} in range(_pyfora_a, _pyfora_b, _pyfora_s):
        if {cond}:
            _pyfora_acc = _pyfora_acc + ({elt})
    return _pyfora_acc
"""
_LIST = """def _pyfora_piece(_pyfora_a, _pyfora_b, _pyfora_s):
    _pyfora_out = []
    for {target} in range(_pyfora_a, _pyfora_b, _pyfora_s):
        if {cond}:
            _pyfora_out.append({elt})
    return _pyfora_out
"""
_INT64 = (-2 ** 63, 2 ** 63 - 1)

_compiled: dict = {}        # key -> compiled callable (a, b, s) -> list, or None: refused
_lock = threading.RLock()


class Piece:
    """A comprehension over a ``range``: compiled where it can, ``fallback`` otherwise.
    Pickles as its parts: the worker that unpickles it finds or compiles its own."""

    __slots__ = ("kind", "src", "names", "fallback", "_fn", "_key")

    def __init__(self, kind: str, src: str, names: dict, fallback: Callable) -> None:
        self.kind = kind
        self.src = src
        self.names = names
        self.fallback = fallback
        self._fn: Any = _compiled       # not looked up yet
        self._key: Any = None

    def __reduce__(self):
        return Piece, (self.kind, self.src, self.names, self.fallback)

    def _interpreted(self, part: Any) -> list:
        result = self.fallback(part)
        return result if type(result) is list else list(result)

    def ready(self, compile_now: bool = True) -> bool:
        """Whether it runs compiled; compiles first if needed and ``compile_now``."""
        if self._fn is _compiled:
            fn = _lookup(self, compile_now)
            if fn is _compiled:
                return False
            self._fn = fn
        return self._fn is not None

    def __call__(self, part: Any) -> list:
        fn = self._fn
        if fn is _compiled:
            fn = self._fn = _lookup(self, True)
        if fn is None or type(part) is not range:
            return self._interpreted(part)
        try:
            result = fn(part.start, part.stop, part.step)
        except Exception as exc:
            # An overflow, a division by zero, the user's own exception: CPython computes
            # the piece again and gives the big int, or raises its own exception.
            count("reruns")
            log.debug("compiled piece raised %s: %s; running it in CPython",
                      type(exc).__name__, exc)
            return self._interpreted(part)
        count("runs")
        return result


def names_of(fn: Any, src: str) -> dict:
    """The values of the names ``src`` reads, as ``fn`` sees them: its closure cells,
    its globals (builtins are left to the compiled function's own)."""
    wanted = {n.id for n in ast.walk(ast.parse(src, mode="eval")) if isinstance(n, ast.Name)}
    code = fn.__code__
    found = {}
    for name, cell in zip(code.co_freevars, fn.__closure__ or (), strict=False):
        if name in wanted:
            try:
                found[name] = cell.cell_contents
            except ValueError:      # an empty cell: CPython raises NameError
                pass
    for name in wanted - found.keys():
        if name in fn.__globals__:
            found[name] = unwrap(fn.__globals__[name])
    return found


def _lookup(piece: Piece, compile_now: bool) -> Any:
    """The compiled callable, None when refused, ``_compiled`` when not compiled yet
    and not ``compile_now``."""
    from . import enabled
    if not enabled():
        return None
    try:
        key = (piece.kind, piece.src, _key(piece.names, set()))
    except TypeError as exc:
        count("fallbacks", reason=str(exc))
        log.debug("not compiled: %s", exc)
        return None
    if not compile_now and key not in _compiled:
        return _compiled
    return compiled_once(_compiled, _lock, key, lambda: _compile(piece, key))


def _key(value: Any, seen: set) -> Any:
    """What compiled code depends on in ``value``: for a function, its code, defaults
    and the values of the globals and closure cells it reads."""
    if type(value) is _Direct:
        value = value.fn
    if type(value) is dict:
        return tuple(sorted((name, _key(v, seen)) for name, v in value.items()))
    if type(value) is types.FunctionType:
        code = value.__code__
        if id(code) in seen:
            return ("fn", code)
        seen.add(id(code))
        from ._translate_names import names
        reads = tuple(sorted((n, _key(value.__globals__[n], seen))
                             for n in names(code) if n in value.__globals__))
        cells = tuple(_key(c.cell_contents, seen) for c in value.__closure__ or ())
        return ("fn", code, _key(value.__defaults__, seen), reads, cells)
    if type(value) in (int, float, bool, str, type(None)):
        return (type(value), value)
    if type(value) is tuple:
        return tuple(_key(v, seen) for v in value)
    if isinstance(value, types.ModuleType):
        return ("module", value.__name__)
    if isinstance(value, (types.BuiltinFunctionType, type)):
        return ("builtin", getattr(value, "__module__", ""), value.__qualname__)
    raise TypeError(f"reads a {type(value).__name__}")


def _compile(piece: Piece, key: Any) -> Callable | None:
    from . import _disk, _translate
    path = _disk.directory(key)
    reason = _disk.refused(path)
    if reason is not None:
        count("fallbacks", reason=reason)
        count("cache_hits")
        log.debug("not compiled (refused before, kept in %s): %s", path, reason)
        return None
    t0 = time.perf_counter()
    try:
        fn, loaded = _build(piece, _translate, path)
    except Exception as exc:            # Unsupported, or numba's typing error
        reason = _translate.explain(exc)
        count("fallbacks", reason=reason)
        log.debug("not compiled: %s: %s", piece.src, reason)
        _disk.refuse(path, reason)
        return None
    finally:
        count("compile_s", time.perf_counter() - t0)
    count("compiled")
    if loaded:
        count("cache_hits")
    return fn


def _build(piece: Piece, translate: Any, path: str | None) -> tuple[Callable, bool]:
    """The compiled piece, and whether it came from the disk cache (``path``)."""
    tree = ast.parse(piece.src, mode="eval").body
    if not isinstance(tree, (ast.GeneratorExp, ast.ListComp)) or len(tree.generators) != 1:
        raise translate.Unsupported("not one loop")
    gen = tree.generators[0]
    if not isinstance(gen.target, ast.Name) or gen.is_async:
        raise translate.Unsupported("the loop target is not a name")
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in _NAMES or \
                (node is not tree and isinstance(node, (ast.Lambda, ast.ListComp,
                                                        ast.GeneratorExp, ast.SetComp,
                                                        ast.DictComp, ast.NamedExpr))):
            raise translate.Unsupported("a nested comprehension or lambda")
    parts = {"target": gen.target.id,
             "cond": " and ".join(f"({ast.unparse(c)})" for c in gen.ifs) or "True",
             "elt": ast.unparse(tree.elt)}
    scope: dict[str, Any] = {"__builtins__": builtins}
    for name in {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} - {gen.target.id}:
        if name in piece.names:
            scope[name] = piece.names[name]
    if piece.kind == "sum":
        try:
            dispatcher = _jit(_SUM.format(**parts), scope, translate, path, "sum")
            return _wrap(dispatcher, list_result=False), _loaded(dispatcher)
        except Exception as exc:
            log.debug("sum of %s not compiled as one sum (%s): compiling its elements",
                      piece.src, translate.explain(exc))
    dispatcher = _jit(_LIST.format(**parts), scope, translate, path, "list")
    return _wrap(dispatcher, list_result=True), _loaded(dispatcher)


def _jit(source: str, scope: dict, translate: Any, path: str | None, form: str) -> Any:
    namespace = dict(scope)
    exec(compile(source, "<pyfora piece>", "exec"), namespace)
    # The sum and list forms of one piece have the same name and line: numba's index
    # file is named by those, so each form gets a directory of its own.
    dispatcher = translate.jit(namespace["_pyfora_piece"],
                               cache_dir=None if path is None else os.path.join(path, form))
    dispatcher.compile("(int64, int64, int64)")     # typing errors here, not per call
    return dispatcher


def _loaded(dispatcher: Any) -> bool:
    """Whether numba loaded ``dispatcher``'s code from the disk cache."""
    return sum(dispatcher.stats.cache_hits.values()) > 0


def _wrap(dispatcher: Any, list_result: bool) -> Callable:
    low, high = _INT64

    def run(a: int, b: int, s: int) -> list:
        if not (low <= a <= high and low <= b <= high and low <= s <= high):
            raise OverflowError("range bounds outside int64")
        return dispatcher(a, b, s) if list_result else [dispatcher(a, b, s)]
    return run


def warm_up() -> None:
    """Import numba, start LLVM and type our helpers once (what the first compile of a
    worker's life would otherwise pay)."""
    from . import _translate

    def _pyfora_warm(n):
        total = 0
        for i in range(n):
            if i % 3 == 0:
                total = total + i * i - (i // 2)
        return total
    dispatcher = _translate.jit(_pyfora_warm)
    dispatcher(10)
