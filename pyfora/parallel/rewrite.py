"""Compile comprehensions into calls of the parallel runtime.

``rewrite_comprehensions(tree)`` turns every list, set and dict comprehension and every
generator expression of a module into a call of ``pyfora.parallel._runtime``::

    [E for T in IT if C for U in IT2]
    # becomes
    _pyfora_rt.listcomp(IT, lambda _pyfora_it: [E for T in _pyfora_it if C for U in IT2])

A dict comprehension's lambda runs over each of the iterables it is given in turn
(``{K: V for _pyfora_part in _pyfora_it for T in _pyfora_part ...}``), and
``sum(<generator expression>)`` becomes ``_pyfora_rt.sum_genexp(sum, IT, lambda ...)``
(see ``_runtime``: both take their elements straight from the iterator).

The outermost iterable ``IT`` is evaluated where it always was (in the enclosing scope);
everything else runs in a lambda scope, which is what a comprehension scope is. The one
lambda is both the sequential path (over everything, or over the first elements and then
the rest) and what parallel pieces run over their ranges. Every new node takes the
location of the node it replaces, so tracebacks point at the user's lines. Nested
comprehensions keep running sequentially inside the outermost one ("parallelize the
outermost loop").

The runtime is reached without any name in the user's globals. Inside a top-level
function without decorators (a with-block's body, a submitted function: where the
cost of small comprehensions matters), ``_pyfora_rt`` is a closure cell holding the
runtime module, set once when the function is defined: an ``__import__`` at every
comprehension cost more than the rest of the machinery. Elsewhere (module level, class
bodies, decorated functions) it is ``__import__('pyfora.parallel._runtime')
.parallel._runtime``, which keeps those definitions exactly as they were.

Left alone: async comprehensions, comprehensions containing ``await``, ``yield`` or an
assignment expression (``:=`` binds in the enclosing scope, a lambda would change that).

``rewrite_function(fn)`` does the same for a function whose source is available, and
recompiles it with the same globals, closure, defaults and name; otherwise it returns
``fn`` itself.

Runs on any thread; pure functions of their input.
"""

from __future__ import annotations

import ast
import functools
import inspect
import os
import pathlib
import sys
import textwrap
import threading
import types
import weakref
from typing import Any

from . import _runtime

_IT = "_pyfora_it"
_RT = _runtime.CELL
_FN = "_pyfora_fn"
_PART = "_pyfora_part"
_COMPS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
_KIND = {ast.ListComp: "listcomp", ast.SetComp: "setcomp", ast.DictComp: "dictcomp",
         ast.GeneratorExp: "genexp"}


def _imported_runtime(node: ast.AST) -> ast.expr:
    """``__import__('pyfora.parallel._runtime').parallel._runtime``"""
    call = ast.Call(ast.Name("__import__", ast.Load()),
                    [ast.Constant("pyfora.parallel._runtime")], [])
    ref = ast.Attribute(ast.Attribute(call, "parallel", ast.Load()), "_runtime", ast.Load())
    for sub in ast.walk(ref):
        ast.copy_location(sub, node)
    return ref


def _closure_runtime(node: ast.AST) -> ast.expr:
    """``_pyfora_rt``: a cell set when the enclosing top-level function is defined."""
    return ast.copy_location(ast.Name(_RT, ast.Load()), node)


def _unsupported(node: Any) -> bool:
    for gen in node.generators:
        if gen.is_async:
            return True
    for sub in ast.walk(node):
        if isinstance(sub, (ast.Await, ast.Yield, ast.YieldFrom, ast.NamedExpr)):
            return True
    return False


def _compilable(node: Any) -> bool:
    """Whether the compiled tier may take ``node``: one loop over a name, nothing nested
    (it refuses the rest; their source would only weigh on the payload)."""
    return len(node.generators) == 1 and isinstance(node.generators[0].target, ast.Name) \
        and not any(isinstance(sub, (*_COMPS, ast.Lambda)) for sub in ast.walk(node)
                    if sub is not node)


def _with_iter(node: Any, iter_node: ast.expr) -> ast.expr:
    """A copy of comprehension ``node``, its outermost loop over ``iter_node``; a dict
    comprehension's over each of the iterables in ``iter_node`` in turn (see
    ``_runtime.dictcomp``)."""
    first = node.generators[0]
    outer = ast.comprehension(first.target, iter_node, first.ifs, 0)
    gens = [outer] + node.generators[1:]
    if isinstance(node, ast.DictComp):
        part = ast.copy_location(ast.Name(_PART, ast.Load()), iter_node)
        outer.iter = part
        parts = ast.comprehension(ast.copy_location(ast.Name(_PART, ast.Store()), iter_node),
                                  iter_node, [], 0)
        gens.insert(0, ast.copy_location(parts, first))
        new = ast.DictComp(node.key, node.value, gens)
    else:
        new = type(node)(node.elt, gens)
    ast.copy_location(new, node)
    ast.copy_location(outer, first)
    return new


def _lambda(body: ast.expr, node: ast.AST) -> ast.Lambda:
    args = ast.arguments(posonlyargs=[], args=[ast.arg(_IT)], vararg=None, kwonlyargs=[],
                         kw_defaults=[], kwarg=None, defaults=[])
    lam = ast.Lambda(args, body)
    ast.copy_location(lam, node)
    ast.copy_location(args.args[0], node)
    return lam


class _Rewriter(ast.NodeTransformer):
    def __init__(self, runtime) -> None:
        self.runtime = runtime      # node -> the expression that reaches the runtime
        self.count = 0

    def _rewrite(self, node, kind: str | None = None, before: list | None = None):
        if _unsupported(node):
            return self.generic_visit(node)
        first = node.generators[0]
        kind = kind or _KIND[type(node)]
        # The source of the comprehensions the compiled tier can run (``pyfora.compiled``),
        # over the lambda's iterable: a constant of the code, nothing at run time.
        src = ast.unparse(_with_iter(node, ast.Name(_IT, ast.Load()))) \
            if kind in ("listcomp", "sum_genexp") and _compilable(node) else None
        outer_iter = self.visit(first.iter)   # evaluated in the enclosing scope: rewrite it too
        it = ast.copy_location(ast.Name(_IT, ast.Load()), first.iter)
        fn = _lambda(_with_iter(node, it), node)
        keywords = [] if src is None else [ast.keyword("src", ast.Constant(src))]
        call = ast.Call(ast.Attribute(self.runtime(node), kind, ast.Load()),
                        (before or []) + [outer_iter, fn], keywords)
        ast.copy_location(call.func, node)
        self.count += 1
        return ast.copy_location(call, node)

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _rewrite

    def visit_Call(self, node: ast.Call):
        """``sum(<generator expression>)`` becomes ``sum_genexp(sum, IT, fn)``: ``sum``
        is still looked up where it was (it may not be the builtin), before ``IT``."""
        if isinstance(node.func, ast.Name) and node.func.id == "sum" and \
                len(node.args) == 1 and not node.keywords and \
                isinstance(node.args[0], ast.GeneratorExp) and not _unsupported(node.args[0]):
            call = self._rewrite(node.args[0], "sum_genexp", [node.func])
            return ast.copy_location(call, node)
        return self.generic_visit(node)


def _closing_over_runtime(fdef: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.stmt]:
    """``def f(_pyfora_rt): <fdef>; f.__qualname__ = 'f'; return f`` then
    ``f = f(<the runtime>)``: ``fdef`` with the runtime in a closure cell, its name and
    qualified name unchanged."""
    name = fdef.name
    qualname = ast.Assign([ast.Attribute(ast.Name(name, ast.Load()), "__qualname__",
                                         ast.Store())], ast.Constant(name))
    wrapper = ast.FunctionDef(
        name, ast.arguments(posonlyargs=[], args=[ast.arg(_RT)], vararg=None, kwonlyargs=[],
                            kw_defaults=[], kwarg=None, defaults=[]),
        [fdef, qualname, ast.Return(ast.Name(name, ast.Load()))], [], None)
    define = ast.Assign([ast.Name(name, ast.Store())],
                        ast.Call(ast.Name(name, ast.Load()), [_imported_runtime(fdef)], []))
    return [ast.copy_location(wrapper, fdef), ast.copy_location(define, fdef)]


def _copy(node: Any) -> Any:
    """A deep copy of an AST (``copy.deepcopy`` costs three times as much)."""
    if isinstance(node, ast.AST):
        # Fields as arguments: a node made without its required fields is deprecated (3.13).
        return node.__class__(**{name: _copy(getattr(node, name))
                                 for name in node._fields + node._attributes
                                 if hasattr(node, name)})
    if isinstance(node, list):
        return [_copy(item) for item in node]
    return node


def _names_itself(fdef: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Whether ``fdef`` uses its own name (a recursive call): inside the closure of the
    runtime that name would be the wrapper's local, no longer the global it is."""
    return any(isinstance(n, ast.Name) and n.id == fdef.name for n in ast.walk(fdef))


def rewrite_comprehensions(tree: ast.Module) -> ast.Module:
    """A copy of ``tree`` with its comprehensions rewritten into parallel runtime calls
    (``tree`` itself when it has none).

    ``tree`` itself is left as it was: the with-block machinery caches parsed sources, and
    rewriting them in place made a later run of the same block rewrite its own output
    again (runtime calls nested one level deeper each run) and made ``.sequential()``
    after a parallel run still call the runtime. Line numbers are kept; compile the
    result as usual.
    """
    if not has_comprehension(tree):
        return tree
    tree = _copy(tree)
    body: list[ast.stmt] = []
    for stmt in tree.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                not stmt.decorator_list and not _names_itself(stmt):
            rewriter = _Rewriter(_closure_runtime)
            stmt = rewriter.visit(stmt)
            body.extend(_closing_over_runtime(stmt) if rewriter.count else [stmt])
        else:
            body.append(_Rewriter(_imported_runtime).visit(stmt))
    tree.body = body
    ast.fix_missing_locations(tree)
    return tree


def has_comprehension(tree: ast.AST) -> bool:
    return any(isinstance(n, _COMPS) for n in ast.walk(tree))


# -- functions ------------------------------------------------------------------------

_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_cache_lock = threading.Lock()
_NO = object()


def rewrite_function(fn: Any) -> Any:
    """``fn`` with its comprehensions parallel, or ``fn`` itself when that cannot be done
    (not a plain function, no source, no comprehension, a closure that does not match).

    The result has ``fn``'s globals, closure cells, defaults, name and attributes.
    """
    if type(fn) is not types.FunctionType or getattr(fn, "__pyfora_sequential__", False):
        return fn
    # What the rewrite is made from, besides the source: IPython's autoreload replaces a
    # function's code in place, and defaults can be assigned.
    made_from = (fn.__code__, fn.__defaults__)
    with _cache_lock:
        cached = _cache.get(fn, None)
    if cached is not None and cached[0] == made_from:
        return fn if cached[1] is _NO else cached[1]
    try:
        new = _recompile(fn)
    except Exception:
        new = None
    with _cache_lock:
        _cache[fn] = (made_from, _NO if new is None else new)
    return fn if new is None else new


def _recompile(fn: types.FunctionType) -> types.FunctionType | None:
    code = fn.__code__
    if code.co_name == "<lambda>" or code.co_flags & (inspect.CO_COROUTINE | inspect.CO_GENERATOR
                                                      | inspect.CO_ASYNC_GENERATOR):
        return None
    try:
        lines, first = inspect.getsourcelines(fn)
    except (OSError, TypeError):
        return None
    source = textwrap.dedent("".join(lines))
    tree = ast.parse(source)
    if not tree.body or not isinstance(tree.body[0], ast.FunctionDef) or \
            tree.body[0].name != code.co_name or not has_comprehension(tree.body[0]):
        return None
    fdef = tree.body[0]
    fdef.decorator_list = []
    # Renamed, so that its own name (a recursive call) stays what it was, not a local of
    # the enclosing function; the code object gets its name back below.
    fdef.name = _FN
    ast.increment_lineno(tree, first - 1)
    rewriter = _Rewriter(_closure_runtime)
    fdef = rewriter.visit(fdef)
    if not rewriter.count:
        return None
    # Declare the free names and the runtime in an enclosing function, so they are free
    # (closure cells) in the function.
    freevars = code.co_freevars
    outer = ast.FunctionDef(
        "_pyfora_outer", ast.arguments(posonlyargs=[], args=[ast.arg(n) for n in freevars]
                                       + [ast.arg(_RT)], vararg=None, kwonlyargs=[],
                                       kw_defaults=[], kwarg=None, defaults=[]),
        [fdef, ast.Return(ast.Name(fdef.name, ast.Load()))], [], None)
    ast.copy_location(outer, fdef)
    tree.body = [outer]
    ast.fix_missing_locations(tree)
    module_code = compile(tree, code.co_filename, "exec", dont_inherit=True)
    new_code = _find_code(module_code, "_pyfora_outer")
    new_code = new_code and _find_code(new_code, _FN)
    if new_code is None or set(new_code.co_freevars) - {_RT} != set(freevars):
        return None
    cells = dict(zip(freevars, fn.__closure__ or (), strict=False))
    cells[_RT] = types.CellType(_runtime)
    closure = tuple(cells[name] for name in new_code.co_freevars) or None
    new_code = _requalify(new_code, f"_pyfora_outer.<locals>.{_FN}", code.co_qualname)
    new = types.FunctionType(new_code.replace(co_name=code.co_name), fn.__globals__,
                             fn.__name__, fn.__defaults__, closure)
    new.__kwdefaults__ = fn.__kwdefaults__
    new.__dict__.update(fn.__dict__)
    new.__qualname__ = fn.__qualname__
    new.__module__ = fn.__module__
    new.__doc__ = fn.__doc__
    new.__annotations__ = fn.__annotations__
    return new


def _requalify(code: types.CodeType, old: str, new: str) -> types.CodeType:
    """``code`` and the functions and classes in it named ``new...`` where the compiler
    named them ``old...`` (a class keeps its ``__qualname__`` as a constant)."""
    def fix(name: str) -> str:
        return new + name[len(old):] if name.startswith(old) else name
    consts = tuple(_requalify(c, old, new) if isinstance(c, types.CodeType)
                   else fix(c) if isinstance(c, str) else c for c in code.co_consts)
    return code.replace(co_consts=consts, co_qualname=fix(code.co_qualname))


def _find_code(code: types.CodeType, name: str) -> types.CodeType | None:
    for const in code.co_consts:
        if isinstance(const, types.CodeType) and const.co_name == name:
            return const
    return None


def is_user_function(fn: Any) -> bool:
    """Whether ``fn`` is the user's own code (``__main__``, a script's sibling, a test
    module, a project installed in development mode), not the standard library's, an
    installed package's (one under ``site-packages``) or pyfora's: only those are
    rewritten on ``submit``."""
    if type(fn) is not types.FunctionType:
        return False
    module = getattr(fn, "__module__", None) or "__main__"
    if module == "__main__":
        return True
    top = module.partition(".")[0]
    if top in sys.stdlib_module_names or top in sys.builtin_module_names \
            or top in ("pyfora", "cluster"):
        return False
    return not _installed(top)


@functools.cache
def _installed(top: str) -> bool:
    """Whether the top-level module ``top`` lies in an installation directory. Asked of
    its file, not of the installed distributions' metadata, which would be read on the
    first submit of every session, on the path to its first result."""
    found = sys.modules.get(top)
    path = getattr(found, "__file__", None) or next(iter(getattr(found, "__path__", ())), None)
    if path is None:
        return True         # built in, or nothing to tell by: not the user's to rewrite
    parts = pathlib.PurePath(os.path.realpath(path)).parts
    return "site-packages" in parts or "dist-packages" in parts
