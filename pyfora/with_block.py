"""``with executor.remotely...:``: run a block of the caller's code on the cluster.

The frame and trace tricks live here and nowhere else. ``__enter__`` finds the caller's
frame, reads and compiles the block (``pyfora.aio.with_block``), and arms a trace function
on that frame so the block's first line raises a private exception before any of it runs
here. ``__exit__`` catches it, runs the block remotely through the portal, writes the names
it assigned back into the caller's frame, and re-raises the block's exception, if any, as
its original type with the remote frames in its traceback. Whatever trace function was
installed before (a debugger, coverage) is put back.

Writing function locals: ``PyFrame_LocalsToFast`` up to 3.12; from 3.13 ``frame.f_locals``
is a write-through proxy (PEP 667).

Runs on the caller's thread; the block itself runs on the cluster.
"""

from __future__ import annotations

import ast
import ctypes
import inspect
import sys
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .aio import with_block as core

if TYPE_CHECKING:
    from .executor import Executor

_WRITE_THROUGH_LOCALS = sys.version_info >= (3, 13)


class _BlockEscape(Exception):
    """Raised by the trace function at the block's first line, so it does not run here."""


class WithBlock:
    """What ``executor.remotely`` gives: a context manager that runs its block on the
    cluster. The policy methods return the same object, so they chain, and one object
    can serve several blocks.

    Policies: ``remoteAll()`` (the default: every name the block assigns becomes a
    ``RemotePythonObject``), ``downloadAll()`` (every name is downloaded), and
    ``downloadSmall(bytecount=N)`` (values whose pickle is at most N bytes are
    downloaded, larger ones stay as proxies).
    """

    def __init__(self, executor: Executor) -> None:
        self._executor = executor
        self._aio = core.Remotely(executor._aio)
        self._active: list[tuple[types.FrameType, core.Block, Any, Any]] = []

    def downloadAll(self) -> WithBlock:
        self._aio.downloadAll()
        return self

    def remoteAll(self) -> WithBlock:
        self._aio.remoteAll()
        return self

    def downloadSmall(self, bytecount: int = 100 * 1024) -> WithBlock:
        self._aio.downloadSmall(bytecount)
        return self

    def withStatusCallback(self, callback: Callable[[dict], Any]) -> WithBlock:
        """Call ``callback(status)`` (on pyfora's callback thread) while blocks run;
        ``status["cpus"]`` is the number of busy cores."""
        callbacks = self._executor._portal.callbacks
        self._aio.withStatusCallback(lambda status: callbacks.submit(callback, status))
        return self

    def sequential(self) -> WithBlock:
        """Run comprehensions of the block as plain Python, without splitting them
        across the cluster (for code that mutates shared state inside them)."""
        self._aio.sequential()
        return self

    def interpreted(self) -> WithBlock:
        """Run the block in CPython only, without the compiled tier (same answers; for
        comparing, or for code whose speed should not change)."""
        self._aio.interpreted()
        return self

    def __enter__(self) -> WithBlock:
        frame = sys._getframe(1)
        block = self._compile(frame)
        self._active.append((frame, block, sys.gettrace(), frame.f_trace))
        first_line = block.first_line

        def trace(f, event, arg):
            if f is frame and event == "line" and f.f_lineno >= first_line:
                raise _BlockEscape   # CPython unsets tracing here; __exit__ restores it
            return trace

        sys.settrace(lambda *args: None)   # line events reach frame.f_trace only while tracing
        frame.f_trace = trace
        return self

    def _compile(self, frame: types.FrameType) -> core.Block:
        code = frame.f_code
        f_locals, f_globals = frame.f_locals, frame.f_globals
        if f_locals is f_globals:
            local_names: set[str] = set()
        elif code.co_flags & inspect.CO_OPTIMIZED:
            local_names = set(code.co_varnames + code.co_cellvars + code.co_freevars)
        else:                                     # a class body
            local_names = set(f_locals)
        with_node = core.find_with_node(code.co_filename, frame.f_lineno, f_globals)
        rewrite: Callable[[ast.Module], ast.Module] | None = None
        if self._aio.parallel:
            try:
                from .parallel import rewrite_comprehensions as rewrite
            except ImportError:
                rewrite = None
        return core.compile_block(with_node, code.co_filename, local_names,
                                  lambda n: n in f_locals or n in f_globals, f_globals,
                                  rewrite)

    @staticmethod
    def _restore_trace(frame: types.FrameType, global_trace, frame_trace) -> None:
        """Put back the trace functions that were there before the block.

        Not here and now but at the caller's next event, once ``__exit__`` has returned:
        a tracer that counts calls and returns (coverage's) would otherwise see this
        frame's return without its call. That event is passed on to it.
        """
        if global_trace is None and frame_trace is None:
            sys.settrace(None)
            frame.f_trace = None
            return
        if frame_trace is None and not isinstance(
                global_trace, (types.FunctionType, types.MethodType)):
            # A C-level tracer (coverage's CTracer) traced this frame without f_trace; put
            # back through sys.settrace it sees this frame's lines only as its local trace
            # function (its __call__ exists for this).
            frame_trace = global_trace

        def resume(f, event, arg):
            sys.settrace(global_trace)
            f.f_trace = frame_trace
            return frame_trace(f, event, arg) if frame_trace is not None else None

        sys.settrace(lambda *args: None)
        frame.f_trace = resume

    def __exit__(self, exc_type, exc, tb) -> bool:
        frame, block, *saved = self._active.pop()
        self._restore_trace(frame, *saved)
        if exc_type is not _BlockEscape:
            return False
        f_locals, f_globals = frame.f_locals, frame.f_globals
        args = tuple(f_locals[n] if n in f_locals else f_globals[n] for n in block.params)
        values, error = self._executor._portal.call(self._aio.run(block, args))
        values = {name: self._executor._proxy(v) if isinstance(v, core.RemotePythonObject)
                  else v for name, v in values.items()}
        _write_back(frame, values, block)
        if error is not None:
            raise core.remote_exception(error, self._executor._aio._code_map)
        return True


def _write_back(frame: types.FrameType, values: dict[str, Any], block: core.Block) -> None:
    """Bind the block's names in the caller: module globals directly, class bodies in
    their namespace, function locals through the frame."""
    f_globals = frame.f_globals
    if frame.f_locals is f_globals:
        f_globals.update(values)
        return
    code = frame.f_code
    if not code.co_flags & inspect.CO_OPTIMIZED:
        frame.f_locals.update(values)
        return
    local = set(code.co_varnames + code.co_cellvars + code.co_freevars)
    for name in [n for n in values if n not in local or n in block.globals_declared]:
        f_globals[name] = values.pop(name)
    if not values:
        return
    if _WRITE_THROUGH_LOCALS:
        proxy = frame.f_locals
        for name, value in values.items():
            proxy[name] = value
    else:
        frame.f_locals.update(values)
        ctypes.pythonapi.PyFrame_LocalsToFast(ctypes.py_object(frame), ctypes.c_int(0))

