"""With-blocks, minus the frame tricks: turn a block's source into a function, run it on
the cluster, and bring its assignments back under a download policy.

The block::

    with ex.remotely.downloadAll():
        y = f(x)

becomes, compiled with the user's file name and line numbers::

    def <with-block>(__pyfora_out__, __pyfora_assigned__, x):   # x: a local read in it
        try:
            y = f(x)
            __pyfora_assigned__.add('y')
        finally:
            __pyfora_out__.update(locals())

``run_block`` (on the worker) calls it and keeps only the names the block really assigned,
so a name it never assigned is left untouched on the client. The frame tricks that find
the block and write results back are in ``pyfora/with_block.py``.

Runs on the event loop, except ``compile_block`` (pure, any thread) and ``run_block`` /
``pick`` (on a worker's task thread).
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import linecache
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import serialization
from ..compiled import run_interpreted, with_direct_calls
from ..errors import BadWithBlockError, CantGetSourceTextError
from . import progress
from .remote import RemotePythonObject  # noqa: F401 - the facade wraps these

if TYPE_CHECKING:
    from .executor import Executor

BLOCK_NAME = "<with-block>"
_OUT, _ASSIGNED = "__pyfora_out__", "__pyfora_assigned__"
# FunctionDef gained type_params in 3.12; passing it on 3.11 would set a stray attribute.
_TYPE_PARAMS: dict[str, Any] = (
    {"type_params": []} if "type_params" in ast.FunctionDef._fields else {})


# -- compiling a block (client, any thread) ------------------------------------------

@dataclasses.dataclass
class Block:
    """A with-block compiled into a function of the caller's locals it reads."""
    function: types.FunctionType
    params: list[str]          # locals of the caller passed in, in order
    assigned: set[str]         # every name the block may bind
    globals_declared: set[str]  # names the block declares ``global``
    first_line: int            # where the body starts: the trace trick stops it there


_parsed: dict[tuple[str, int], ast.Module] = {}


def find_with_node(filename: str, lineno: int, module_globals: dict) -> ast.With:
    """The innermost ``with`` statement whose header spans ``lineno`` in ``filename``.

    Raises:
        CantGetSourceTextError: no source for the file (``python -c``, a bare REPL).
    """
    lines = linecache.getlines(filename, module_globals)
    if not lines:
        raise CantGetSourceTextError(
            f"cannot read the source of {filename!r}, so its with-block cannot be sent; "
            "put the code in a file (or a notebook cell) and run it from there")
    source = "".join(lines)
    key = (filename, hash(source))
    tree = _parsed.get(key)
    if tree is None:
        tree = _parsed[key] = ast.parse(source, filename)
    best = None
    for node in ast.walk(tree):
        if isinstance(node, ast.With) and node.lineno <= lineno < node.body[0].lineno:
            if best is None or node.lineno >= best.lineno:
                best = node
    if best is None:
        raise CantGetSourceTextError(
            f"cannot find the with-statement at {filename}:{lineno} in its source; was the "
            "file edited after it was loaded?")
    return best


class _Names(ast.NodeVisitor):
    """Names a block reads and binds in its own scope (not inside nested functions or
    classes, whose bodies run later in their own scopes)."""

    def __init__(self) -> None:
        self.loaded: set[str] = set()
        self.bound: set[str] = set()
        self.globals: set[str] = set()

    def visit_Name(self, node: ast.Name) -> None:
        (self.loaded if isinstance(node.ctx, ast.Load) else self.bound).add(node.id)

    def _scope(self, node, name: str | None) -> None:
        if name is not None:
            self.bound.add(name)
        for child in ast.walk(node):     # free names of nested code may come from the block
            if isinstance(child, ast.Name) and isinstance(child.ctx, ast.Load):
                self.loaded.add(child.id)
        for deco in getattr(node, "decorator_list", []):
            self.visit(deco)

    def visit_FunctionDef(self, node) -> None:
        self._scope(node, node.name)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node) -> None:
        self._scope(node, node.name)

    def visit_Lambda(self, node) -> None:
        self._scope(node, None)

    def visit_comprehension_scope(self, node) -> None:
        for child in ast.walk(node):
            if isinstance(child, ast.NamedExpr):
                self.bound.add(child.target.id)
            elif isinstance(child, ast.Name) and isinstance(child.ctx, ast.Load):
                self.loaded.add(child.id)

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = \
        visit_comprehension_scope

    def visit_Import(self, node) -> None:
        for alias in node.names:
            self.bound.add(alias.asname or alias.name.partition(".")[0])

    visit_ImportFrom = visit_Import

    def visit_ExceptHandler(self, node) -> None:
        if node.name:
            self.bound.add(node.name)
        self.generic_visit(node)

    def visit_Global(self, node) -> None:
        self.globals.update(node.names)

    def visit_MatchAs(self, node) -> None:
        if node.name:
            self.bound.add(node.name)
        self.generic_visit(node)

    def visit_MatchStar(self, node) -> None:
        if node.name:
            self.bound.add(node.name)

    def visit_MatchMapping(self, node) -> None:
        if node.rest:
            self.bound.add(node.rest)
        self.generic_visit(node)


def _check_no_escape(body: list[ast.stmt], filename: str) -> None:
    """``return``/``yield``/``await`` directly in a block would leave the function that
    contains it, which a block run elsewhere cannot do."""
    def walk(node: ast.AST):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
                                  ast.Lambda)):
                continue
            yield child
            yield from walk(child)

    for stmt in body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        for node in [stmt, *walk(stmt)]:
            if isinstance(node, (ast.Return, ast.Yield, ast.YieldFrom, ast.Await)):
                what = type(node).__name__.lower().replace("yieldfrom", "yield from")
                raise BadWithBlockError(
                    f"{filename}:{node.lineno}: `{what}` directly inside a with-block cannot "
                    "run remotely; move it after the block (inside functions defined in the "
                    "block it is fine)")


class _Instrument:
    """After each statement that binds names, record them in ``__pyfora_assigned__``; for
    a loop target, ``with ... as``, ``except ... as`` or a ``case`` pattern, at the start of
    the body it binds for. Nested functions and classes are left alone."""

    _COMPOUND = (ast.For, ast.AsyncFor, ast.While, ast.If, ast.With, ast.AsyncWith, ast.Try,
                 ast.Match, getattr(ast, "TryStar", ast.Try))

    def _mark(self, names: set[str], at: ast.AST) -> list[ast.stmt]:
        if not names:
            return []
        call = ast.Expr(ast.Call(
            ast.Attribute(ast.Name(_ASSIGNED, ast.Load()), "update", ast.Load()),
            [ast.Tuple([ast.Constant(n) for n in sorted(names)], ast.Load())], []))
        return [ast.copy_location(call, at)]

    @staticmethod
    def _bound(*nodes: ast.AST | None) -> set[str]:
        names = _Names()
        for node in nodes:
            if node is not None:
                names.visit(node)
        return names.bound

    def body(self, stmts: list[ast.stmt]) -> list[ast.stmt]:
        out: list[ast.stmt] = []
        for stmt in stmts:
            if isinstance(stmt, ast.Global):
                continue   # the client writes these names to the caller's globals
            if isinstance(stmt, self._COMPOUND):
                out.append(self._compound(stmt))
            else:
                out.append(stmt)
                out.extend(self._mark(self._bound(stmt), stmt))
        return out or [ast.copy_location(ast.Pass(), stmts[0])] if stmts else out

    def _compound(self, node: Any) -> ast.stmt:
        header: set[str] = set()     # walrus targets in tests and iterables
        if isinstance(node, (ast.If, ast.While)):
            header = self._bound(node.test)
        elif isinstance(node, (ast.For, ast.AsyncFor)):
            header = self._bound(node.iter, node.target)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            header = self._bound(*(i.context_expr for i in node.items),
                                 *(i.optional_vars for i in node.items))
        elif isinstance(node, ast.Match):
            header = self._bound(node.subject)
        for field in ("body", "orelse", "finalbody"):
            stmts = getattr(node, field, None)
            if stmts:
                setattr(node, field, self.body(stmts))
        if header:
            node.body[:0] = self._mark(header, node)
            if isinstance(node, (ast.If, ast.While)):
                node.orelse[:0] = self._mark(header, node)
        for handler in getattr(node, "handlers", ()):
            handler.body = self._mark({handler.name} if handler.name else set(), handler) + \
                self.body(handler.body)
        for case in getattr(node, "cases", ()):
            case.body = self._mark(self._bound(case.pattern), case.pattern) + self.body(case.body)
        return node


def compile_block(with_node: ast.With, filename: str, local_names: set[str],
                  available: Callable[[str], bool], module_globals: dict,
                  rewrite: Callable[[ast.Module], ast.Module] | None = None) -> Block:
    """Compile a with-statement's body into a ``Block``.

    Args:
        with_node: the statement, from ``find_with_node``.
        filename: its file, for line numbers in remote tracebacks.
        local_names: the caller's local variable names (empty at module level).
        available: whether a name is bound in the caller right now.
        module_globals: the caller's globals: the function's globals, so the names it
            reads there are shipped with it.
        rewrite: a transformation of the module (automatic parallelism), if any.

    Raises:
        BadWithBlockError: ``return``, ``yield`` or ``await`` directly in the block.
    """
    body = with_node.body
    _check_no_escape(body, filename)
    names = _Names()
    for stmt in body:
        names.visit(stmt)
    assigned = names.bound - names.globals
    # Locals of the caller that the block reads, and (for module-level code) globals it
    # rebinds: inside the function both would otherwise be unbound locals.
    params = sorted(n for n in (names.loaded | names.bound)
                    if available(n) and (n in local_names or n in assigned))
    # A block run again (a loop, a notebook cell run twice) is compiled once: rewriting
    # it for automatic parallelism costs more than the whole round trip of small work.
    key = (with_node, filename, frozenset(local_names), tuple(params), id(module_globals),
           rewrite)
    block = _compiled.get(key)
    if block is not None and block.function.__globals__ is module_globals:
        return block
    block = _compile(with_node, filename, names, assigned, params, module_globals, rewrite)
    if len(_compiled) >= COMPILED_KEPT:
        del _compiled[next(iter(_compiled))]
    _compiled[key] = block
    return block


#: Compiled blocks kept for running again, the oldest dropped first.
COMPILED_KEPT = 256
_compiled: dict[tuple, Block] = {}


def _compile(with_node: ast.With, filename: str, names: _Names, assigned: set[str],
             params: list[str], module_globals: dict,
             rewrite: Callable[[ast.Module], ast.Module] | None) -> Block:
    body = with_node.body
    instrumented = _Instrument().body(body)
    first = with_node
    args = [ast.arg(_OUT), ast.arg(_ASSIGNED)] + [ast.arg(n) for n in params]
    collect = ast.Expr(ast.Call(
        ast.Attribute(ast.Name(_OUT, ast.Load()), "update", ast.Load()),
        [ast.Call(ast.Name("locals", ast.Load()), [], [])], []))
    function = ast.FunctionDef(
        name="__pyfora_with_block__",
        args=ast.arguments(posonlyargs=[], args=args, kwonlyargs=[], kw_defaults=[],
                           defaults=[]),
        body=[ast.Try(body=instrumented, handlers=[], orelse=[], finalbody=[collect])],
        decorator_list=[], returns=None, **_TYPE_PARAMS)
    module = ast.Module(body=[function], type_ignores=[])
    for node in ast.walk(module):
        if "lineno" in node._attributes and not hasattr(node, "lineno"):
            ast.copy_location(node, first)
    ast.fix_missing_locations(module)
    if rewrite is not None:
        module = ast.fix_missing_locations(rewrite(module))
    namespace: dict[str, Any] = {}
    exec(compile(module, filename, "exec"), module_globals, namespace)
    fn = namespace["__pyfora_with_block__"]
    fn.__code__ = fn.__code__.replace(co_name=BLOCK_NAME, co_qualname=BLOCK_NAME)
    return Block(fn, params, assigned | names.globals, names.globals, body[0].lineno)


# -- running a block (worker side) ---------------------------------------------------

@dataclasses.dataclass
class Outcome:
    """What a block left: the names it bound, and its exception if it raised."""
    values: dict
    error: dict | None


def run_block(fn: Callable, args: tuple) -> Outcome:
    """Worker side: run the block function; keep the names it really bound."""
    out: dict = {}
    assigned: set = set()
    error = None
    try:
        with_direct_calls(fn)(out, assigned, *args)
    except BaseException as exc:   # noqa: B036 - reported to the client, raised there
        error = serialization.describe_exception(exc, skip=1)
    return Outcome({k: out[k] for k in assigned if k in out}, error)


def describe(outcome: Outcome) -> tuple[list[str], dict | None]:
    return sorted(outcome.values), outcome.error


def pick(outcome: Outcome, name: str) -> Any:
    return outcome.values[name]


# -- policies (client, event loop) ---------------------------------------------------

class Remotely:
    """The settings of a with-block: download policy, status callback, parallelism.

    The sync facade's ``ex.remotely`` holds one; each setter returns it, so they chain.
    """

    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        self.policy = "remoteAll"
        self.bytecount: int | None = None
        self.status_callback: Callable[[dict], Any] | None = None
        self.parallel = True
        self.compiled = True

    def downloadAll(self) -> Remotely:
        self.policy, self.bytecount = "downloadAll", None
        return self

    def remoteAll(self) -> Remotely:
        self.policy, self.bytecount = "remoteAll", None
        return self

    def downloadSmall(self, bytecount: int = 100 * 1024) -> Remotely:
        if not isinstance(bytecount, int) or bytecount < 0:
            raise ValueError("bytecount must be a non-negative int")
        self.policy, self.bytecount = "downloadSmall", bytecount
        return self

    def withStatusCallback(self, callback: Callable[[dict], Any]) -> Remotely:
        self.status_callback = callback
        return self

    def sequential(self) -> Remotely:
        """Do not split comprehensions of the block across the cluster (for code that
        mutates shared state inside them)."""
        self.parallel = False
        return self

    def interpreted(self) -> Remotely:
        """Run the block in CPython only, without the compiled tier (``pyfora.compiled``)."""
        self.compiled = False
        return self

    async def run(self, block: Block, args: tuple) -> tuple[dict, dict | None]:
        """Run a compiled block on the cluster.

        Returns:
            The names it bound, as values or ``RemotePythonObject``s per the policy, and
            its exception's description if it raised (``raise_remote`` turns it into the
            original exception).

        Cancelling it cancels the block on the cluster.
        """
        async with progress.track(self.executor, "with-block"):
            return await self._run(block, args)

    async def _run(self, block: Block, args: tuple) -> tuple[dict, dict | None]:
        remove = None
        if self.status_callback is not None:
            remove = self.executor.addStatusCallback(self.status_callback)
        try:
            if self.compiled:
                outcome = await self.executor.submit(run_block, block.function, args)
            else:
                outcome = await self.executor.submit(run_interpreted, run_block,
                                                     block.function, args)
            if self.policy == "downloadAll":
                result = await outcome.toLocal()
                return result.values, result.error
            names, error = await (await self.executor.submit(describe, outcome)).toLocal()
            proxies = await asyncio.gather(
                *(self.executor.submit(pick, outcome, name) for name in names))
            values = dict(zip(names, proxies, strict=True))
            if self.policy == "downloadSmall":
                for name, proxy in values.items():
                    if proxy.size <= self.bytecount:
                        values[name] = await proxy.toLocal()
            return values, error
        finally:
            if remove is not None:
                remove()


def remote_exception(error: dict, code_map: serialization.CodeMap) -> BaseException:
    """The exception a block raised, rebuilt locally with its remote frames as its
    traceback; a ``ComputationError`` when its type cannot be rebuilt here."""
    exc = serialization.computation_error(error, code_map)
    original = exc.remoteException
    if original is None:
        return exc
    return original.with_traceback(serialization.remote_traceback(error, code_map))

