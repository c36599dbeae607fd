"""Compile comprehensions into calls of the parallel runtime.

``rewrite_comprehensions(tree)`` turns every list, set and dict comprehension and every
generator expression of a module into a call of ``pyfora.parallel._runtime``::

    [E for T in IT if C for U in IT2]
    # becomes
    __import__('pyfora.parallel._runtime').parallel._runtime.listcomp(
        IT,
        lambda _pyfora_it: (E for T in _pyfora_it if C for U in IT2),    # parallel pieces
        lambda _pyfora_it: [E for T in _pyfora_it if C for U in IT2])    # sequential path

The outermost iterable ``IT`` is evaluated where it always was (in the enclosing scope);
everything else runs in a lambda scope, which is what a comprehension scope is. The
runtime is reached through ``__import__``, so the rewritten code needs no name in the
user's globals; every new node takes the location of the node it replaces, so tracebacks
point at the user's lines. Nested comprehensions keep running sequentially inside the
outermost one ("parallelize the outermost loop").

Left alone: async comprehensions, comprehensions containing ``await``, ``yield`` or an
assignment expression (``:=`` binds in the enclosing scope, a lambda would change that).

``rewrite_function(fn)`` does the same for a function whose source is available, and
recompiles it with the same globals, closure, defaults and name; otherwise it returns
``fn`` itself.

Runs on any thread; pure functions of their input.
"""

from __future__ import annotations

import ast
import inspect
import sys
import textwrap
import threading
import types
import weakref
from typing import Any

_IT = "_pyfora_it"
_COMPS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
_KIND = {ast.ListComp: "listcomp", ast.SetComp: "setcomp", ast.DictComp: "dictcomp",
         ast.GeneratorExp: "genexp"}


def _runtime_ref(node: ast.AST) -> ast.expr:
    """``__import__('pyfora.parallel._runtime').parallel._runtime``"""
    call = ast.Call(ast.Name("__import__", ast.Load()),
                    [ast.Constant("pyfora.parallel._runtime")], [])
    ref = ast.Attribute(ast.Attribute(call, "parallel", ast.Load()), "_runtime", ast.Load())
    for sub in ast.walk(ref):
        ast.copy_location(sub, node)
    return ref


def _unsupported(node: Any) -> bool:
    for gen in node.generators:
        if gen.is_async:
            return True
    for sub in ast.walk(node):
        if isinstance(sub, (ast.Await, ast.Yield, ast.YieldFrom, ast.NamedExpr)):
            return True
    return False


def _with_iter(node: Any, cls: type, iter_node: ast.expr) -> ast.expr:
    """A copy of comprehension ``node`` as ``cls``, its outermost loop over ``iter_node``."""
    first = node.generators[0]
    gens = [ast.comprehension(first.target, iter_node, first.ifs, 0)] + node.generators[1:]
    if isinstance(node, ast.DictComp):
        if cls is ast.DictComp:
            new = ast.DictComp(node.key, node.value, gens)
        else:
            pair = ast.copy_location(ast.Tuple([node.key, node.value], ast.Load()), node.key)
            new = cls(pair, gens)
    else:
        new = cls(node.elt, gens)
    ast.copy_location(new, node)
    ast.copy_location(gens[0], first)
    return new


def _lambda(body: ast.expr, node: ast.AST) -> ast.Lambda:
    args = ast.arguments(posonlyargs=[], args=[ast.arg(_IT)], vararg=None, kwonlyargs=[],
                         kw_defaults=[], kwarg=None, defaults=[])
    lam = ast.Lambda(args, body)
    ast.copy_location(lam, node)
    ast.copy_location(args.args[0], node)
    return lam


class _Rewriter(ast.NodeTransformer):
    def __init__(self) -> None:
        self.count = 0

    def _rewrite(self, node):
        if _unsupported(node):
            return self.generic_visit(node)
        first = node.generators[0]
        outer_iter = self.visit(first.iter)   # evaluated in the enclosing scope: rewrite it too
        it = ast.copy_location(ast.Name(_IT, ast.Load()), first.iter)
        gen_fn = _lambda(_with_iter(node, ast.GeneratorExp, it), node)
        args = [outer_iter, gen_fn]
        if not isinstance(node, ast.GeneratorExp):
            it2 = ast.copy_location(ast.Name(_IT, ast.Load()), first.iter)
            args.append(_lambda(_with_iter(node, type(node), it2), node))
        call = ast.Call(ast.Attribute(_runtime_ref(node), _KIND[type(node)], ast.Load()),
                        args, [])
        ast.copy_location(call.func, node)
        self.count += 1
        return ast.copy_location(call, node)

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _rewrite


def rewrite_comprehensions(tree: ast.Module) -> ast.Module:
    """Rewrite ``tree``'s comprehensions (in place) into parallel runtime calls; return it.

    Line numbers are kept; compile the result as usual.
    """
    tree = _Rewriter().visit(tree)
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
    ast.increment_lineno(tree, first - 1)
    rewrite_comprehensions(tree)
    freevars = code.co_freevars
    if freevars:
        # Declare the free names in an enclosing function, so they stay free (closure cells).
        outer = ast.FunctionDef(
            "_pyfora_outer", ast.arguments(posonlyargs=[], args=[ast.arg(n) for n in freevars],
                                           vararg=None, kwonlyargs=[], kw_defaults=[],
                                           kwarg=None, defaults=[]),
            [fdef, ast.Return(ast.Name(fdef.name, ast.Load()))], [], None)
        ast.copy_location(outer, fdef)
        tree.body = [outer]
    ast.fix_missing_locations(tree)
    module_code = compile(tree, code.co_filename, "exec", dont_inherit=True)
    new_code = _find_code(module_code, "_pyfora_outer" if freevars else code.co_name)
    if freevars and new_code is not None:
        new_code = _find_code(new_code, code.co_name)
    if new_code is None or set(new_code.co_freevars) != set(freevars):
        return None
    cells = dict(zip(freevars, fn.__closure__ or ()))
    closure = tuple(cells[name] for name in new_code.co_freevars) or None
    new = types.FunctionType(new_code.replace(co_qualname=code.co_qualname), fn.__globals__,
                             fn.__name__, fn.__defaults__, closure)
    new.__kwdefaults__ = fn.__kwdefaults__
    new.__dict__.update(fn.__dict__)
    new.__qualname__ = fn.__qualname__
    new.__module__ = fn.__module__
    new.__doc__ = fn.__doc__
    new.__annotations__ = fn.__annotations__
    return new


def _find_code(code: types.CodeType, name: str) -> types.CodeType | None:
    for const in code.co_consts:
        if isinstance(const, types.CodeType) and const.co_name == name:
            return const
    return None


_installed: set[str] | None = None


def is_user_function(fn: Any) -> bool:
    """Whether ``fn`` is the user's own code (``__main__``, a script's sibling, a test
    module), not the standard library's, an installed package's or pyfora's: only those
    are rewritten on ``submit``."""
    global _installed
    if type(fn) is not types.FunctionType:
        return False
    module = getattr(fn, "__module__", None) or "__main__"
    top = module.partition(".")[0]
    if module == "__main__":
        return True
    if _installed is None:
        import importlib.metadata
        _installed = set(importlib.metadata.packages_distributions())
    return not (top in _installed or top in sys.stdlib_module_names
                or top in sys.builtin_module_names or top in ("pyfora", "cluster"))
