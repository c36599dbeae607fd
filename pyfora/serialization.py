"""cloudpickle in and out: the only place that turns user values into bytes and back.

Proxies (``RemotePythonObject``) never travel as values: while ``dumps`` runs, a proxy's
``__reduce__`` asks this module for a reference, which records its object id as a
dependency of the payload; on the worker, ``loads`` resolves each reference to the value
the worker holds. The coordinator forwards the bytes without unpickling them.

Given a ``buffers`` list, ``dumps`` pickles large buffers out of band (protocol 5): numpy
arrays, ``bytearray``, ``memoryview``, and ``bytes`` that are the value itself, an
element of a tuple value, or an argument of a call (pickle calls no hook for ``bytes`` and
``bytearray`` nested deeper, so those stay in the pickle). The list gets views of the
value's own memory, sent as they are (``pyfora.wire``); ``loads`` rebuilds the value
around the buffers it is given, without copying them.

cloudpickle ships functions of ``__main__`` and of modules workers cannot import by value,
with ``co_filename`` set to ``<dynamic-code>``; ``CodeMap`` remembers where each shipped
function came from so that remote tracebacks point at the user's source.

Pickling a function by value is most of the cost of a small call, and submitting the same
function thousands of times is common; ``dumps_call`` keeps the pickle of a function whose
pickle cannot change unseen (``_Shipped``), and pickles only the arguments per call.

Runs on any thread: the per-call context is thread-local.
"""

from __future__ import annotations

import csv
import dis
import functools
import io
import linecache
import operator
import os
import pickle
import sys
import threading
import traceback
import types
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import cloudpickle

from .errors import (
    ComputationError,
    ForeignProxyError,
    PythonToForaConversionError,
    WorkerCrashedError,
)
from .wire.messages import INLINE_LIMIT, MAX_FRAME

PROTOCOL = 5
_local = threading.local()
_FRAME_OVERHEAD = 4096
#: Buffers smaller than this stay in the pickle: below it, a frame of its own costs more
#: than the copy saved. It equals ``INLINE_LIMIT``, so a value small enough to ride along
#: with its ``done`` reply never has out-of-band buffers.
OOB_MIN = INLINE_LIMIT


class CodeMap:
    """(qualified name, first line) of every function shipped by value -> its file name."""

    def __init__(self) -> None:
        self._files: dict[tuple[str, int], str] = {}
        self._seen: set[int] = set()

    def add(self, code: types.CodeType) -> None:
        if id(code) in self._seen:
            return
        self._seen.add(id(code))
        self._files[(code.co_qualname, code.co_firstlineno)] = code.co_filename
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                self.add(const)

    def filename(self, qualname: str, firstlineno: int) -> str | None:
        return self._files.get((qualname, firstlineno))


_by_value_checked: dict[str, bool] = {}
_installed_packages: set[str] | None = None


def _ship_module_by_value(name: str | None) -> None:
    """Modules of the user's own (scripts' siblings, test files, notebooks' helpers) are not
    importable on workers: make cloudpickle ship them by value. Installed distributions
    (editable ones included) and the standard library are imported by the worker."""
    global _installed_packages
    if not name or name in _by_value_checked:
        return
    top = name.partition(".")[0]
    module = sys.modules.get(name)
    own = (module is not None and name != "__main__"
           and top not in sys.stdlib_module_names and top not in sys.builtin_module_names
           and getattr(module, "__file__", None) is not None)
    if own:
        if _installed_packages is None:
            _installed_packages = _installed_top_level_names()
        own = top not in _installed_packages
    _by_value_checked[name] = own
    if own:
        cloudpickle.register_pickle_by_value(module)


def _installed_top_level_names() -> set[str]:
    """The keys of ``importlib.metadata.packages_distributions()``: each distribution's
    ``top_level.txt``, else the top level of the ``.py`` files its RECORD (or SOURCES.txt)
    lists. Read here with plain string operations: the standard library's version parses
    every distribution's metadata headers and makes a path object per file it installed,
    which made the first submit of a session cost a tenth of a second."""
    import importlib.metadata  # here: a worker's imports, and a client's, skip it
    names: set[str] = set()
    for dist in importlib.metadata.distributions():
        declared = (dist.read_text("top_level.txt") or "").split()
        if declared:
            names.update(declared)
            continue
        record = dist.read_text("RECORD")
        if record:
            lines = record.splitlines()
        else:   # egg-info: paths may hold commas, so each line is one quoted field
            lines = [f'"{line}"' for line in (dist.read_text("SOURCES.txt") or "").splitlines()]
        for row in csv.reader(lines):
            if row and row[0].endswith(".py"):
                top, nested, _ = row[0].partition("/")
                names.add(top if nested else top[:-3])
    return names


class _OutOfBand:
    """A ``bytes`` or ``bytearray`` to pickle out of band: the pickler dispatches those
    types before any hook, so ``_out_of_band`` wraps them first."""
    __slots__ = ("value",)

    def __init__(self, value: bytes | bytearray) -> None:
        self.value = value

    def __reduce__(self):
        return _rebuild, (type(self.value), pickle.PickleBuffer(self.value))


def _rebuild(kind: type, buffer: Any) -> Any:
    """The ``bytes``, ``bytearray`` or ``memoryview`` pickled as ``buffer``: the buffer
    object itself when it has that type already (``wire.Assembler`` gives read-only
    buffers as ``bytes`` and writable ones as ``memoryview``), else a copy."""
    return buffer if type(buffer) is kind else kind(buffer)


def _out_of_band(value: Any) -> Any:
    if type(value) in (bytes, bytearray) and len(value) >= OOB_MIN:
        return _OutOfBand(value)
    return value


def _keep_large(buffers: list, buffer: pickle.PickleBuffer) -> bool:
    """The pickler's ``buffer_callback``: large buffers go to ``buffers``, out of band (a
    false return); small ones stay in the pickle."""
    view = buffer.raw()
    if view.nbytes < OOB_MIN:
        return True
    buffers.append(view)
    return False


class _Pickler(cloudpickle.Pickler):
    def __init__(self, file, code_map: CodeMap | None, buffers: list | None = None):
        # Not a bound method: a pickler holding a callback that holds the pickler is a
        # cycle that CPython 3.11's garbage collector crashed on (in tests/test_serialization).
        super().__init__(file, protocol=PROTOCOL, buffer_callback=None if buffers is None
                         else functools.partial(_keep_large, buffers))
        self._code_map = code_map

    def reducer_override(self, obj):
        kind = type(obj)
        if kind is memoryview and obj.c_contiguous:
            return _rebuild, (memoryview, pickle.PickleBuffer(obj))
        if kind is types.FunctionType:
            _ship_module_by_value(obj.__module__)
            if self._code_map is not None:
                self._code_map.add(obj.__code__)
        elif isinstance(obj, type):
            _ship_module_by_value(obj.__module__)
        elif kind is types.ModuleType:
            _ship_module_by_value(obj.__name__)
        return super().reducer_override(obj)


def dumps(obj: Any, owner: Any = None, code_map: CodeMap | None = None,
          buffers: list | None = None) -> tuple[bytes, list[int]]:
    """Pickle ``obj`` for the cluster.

    Args:
        obj: any value; proxies inside it become references.
        owner: the executor proxies must belong to (checked by the proxy's ``__reduce__``).
        code_map: where to record the functions shipped by value.
        buffers: if given, large buffers are pickled out of band and appended to it (as
            views of ``obj``'s memory: send them before changing ``obj``).

    Returns:
        The bytes and the object ids of the proxies they reference.

    Raises:
        PythonToForaConversionError: ``obj`` cannot be pickled, or is over the frame limit.
        ForeignProxyError: a proxy in ``obj`` belongs to another executor.
    """
    if buffers is not None:
        obj = tuple(map(_out_of_band, obj)) if type(obj) is tuple else _out_of_band(obj)
    try:
        return _dumps(obj, owner, code_map, buffers)
    except (PythonToForaConversionError, ForeignProxyError):
        raise
    except Exception as exc:
        raise PythonToForaConversionError(
            f"a value of type {type(obj).__qualname__} cannot be sent to the cluster: "
            f"{type(exc).__name__}: {exc}") from exc


def _dumps(obj: Any, owner: Any, code_map: CodeMap | None,
           buffers: list | None = None) -> tuple[bytes, list[int]]:
    """``dumps`` letting pickling errors through, for ``dumps_call`` to name the culprit."""
    _local.owner, _local.refs = owner, []
    start = len(buffers) if buffers is not None else 0
    try:
        buf = io.BytesIO()
        _Pickler(buf, code_map, buffers).dump(obj)
        data = buf.getvalue()
        refs = _local.refs
    finally:
        _local.owner = _local.refs = None
    buffered = sum(view.nbytes for view in (buffers or ())[start:])
    return _within_limit(data, buffered), refs


def _within_limit(data: bytes, buffered: int = 0) -> bytes:
    size = len(data) + buffered
    if size > MAX_FRAME - _FRAME_OVERHEAD:
        raise PythonToForaConversionError(
            f"value is {size:,} bytes pickled, over the {MAX_FRAME:,}-byte frame limit; "
            "build large values on the cluster instead of sending them")
    return data


def dumps_call(fn: Callable, args: tuple, kwargs: dict, owner: Any = None,
               code_map: CodeMap | None = None,
               buffers: list | None = None) -> tuple[bytes, list[int]]:
    """Pickle a call; when that fails, name the argument that cannot be pickled.
    ``buffers``: as for ``dumps``, the arguments' large buffers go there."""
    if buffers is not None:
        wrapped: dict[int, Any] = {}        # one buffer for a value passed twice
        args = tuple(wrapped.setdefault(id(a), _out_of_band(a)) for a in args)
        kwargs = {k: wrapped.setdefault(id(v), _out_of_band(v)) for k, v in kwargs.items()}
    try:
        shipped = _Shipped.of(fn, code_map)
        if shipped is not None and _PLAIN.issuperset(map(type, args)) \
                and _PLAIN.issuperset(map(type, kwargs.values())):
            return _within_limit(pickle.dumps((shipped, args, kwargs), protocol=PROTOCOL)), []
        return _dumps((shipped or fn, args, kwargs), owner, code_map, buffers)
    except (PythonToForaConversionError, ForeignProxyError):
        raise
    except Exception as exc:
        parts = [("the function", fn)] + [(f"argument {i}", a) for i, a in enumerate(args)]
        parts += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
        for label, value in parts:
            try:
                cloudpickle.dumps(value, protocol=PROTOCOL)
            except Exception as inner:
                raise PythonToForaConversionError(
                    f"{label} ({type(value).__qualname__}) cannot be sent to the cluster: "
                    f"{type(inner).__name__}: {inner}") from inner
        # Pickled one by one, every part went through: name the call as a whole.
        raise PythonToForaConversionError(
            f"the call cannot be sent to the cluster: {type(exc).__name__}: {exc}") from exc


#: Values whose pickle is their value: they cannot change after being pickled (and need
#: no cloudpickle).
_PLAIN = frozenset({type(None), bool, int, float, complex, str, bytes})


class _Shipped:
    """A function's pickle, kept while nothing it would pickle can have changed: unpickles
    as the function.

    Only for functions that cloudpickle pickles by value (those of the user's own
    modules) and whose pickle depends on nothing mutable: the code, name, defaults,
    closure and referenced globals are checked by identity on every use, and each of
    those values must be plain (``_PLAIN``, or tuples of them), so that identity means
    same pickle. A function redefined (a notebook cell run again) is a new object; one
    whose code was replaced (autoreload), or whose global changed, fails the check and is
    pickled again. A function that names another function, a module or a mutable global
    is pickled whole every time.
    """

    __slots__ = ("data",)
    _cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
    _lock = threading.Lock()

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce__(self) -> tuple:
        return (_shipped_function, (self.data,))

    @classmethod
    def of(cls, fn: Any, code_map: CodeMap | None) -> _Shipped | None:
        if type(fn) is not types.FunctionType or fn.__module__ not in _by_value_checked:
            return None     # not looked at by a pickle yet: see _ship_module_by_value
        if not (_by_value_checked[fn.__module__] or fn.__module__ == "__main__"):
            return None     # pickled by reference: small already
        state = _function_state(fn)
        if state is None:
            return None
        with cls._lock:
            cached = cls._cache.get(fn)
        if cached is not None and len(cached[0]) == len(state) \
                and all(map(operator.is_, cached[0], state)):
            if code_map is not None:
                code_map.add(fn.__code__)
            return cached[1]
        shipped = cls(_dumps(fn, None, code_map)[0])
        with cls._lock:
            cls._cache[fn] = (state, shipped)
        return shipped


#: Functions shipped by value, by their pickle: a worker is handed the same one task after
#: task, and unpickling it (its code, its globals) is most of a tiny task's own cost.
#: None marks a pickle to unpickle afresh every time (see ``_reusable``).
_unpickled: dict[bytes, Any] = {}
_UNPICKLED_MAX = 256


def _shipped_function(data: bytes) -> Any:
    """The function a ``_Shipped`` pickle holds: the same object for the same pickle when
    no call of it can tell (``_reusable``), else a new one."""
    fn = _unpickled.get(data, _unpickled)
    if fn is _unpickled or fn is None:
        made = pickle.loads(data)
        if fn is _unpickled:
            if len(_unpickled) >= _UNPICKLED_MAX:
                _unpickled.clear()
            _unpickled[data] = made if _reusable(made.__code__) else None
        return made
    return fn


#: Opcodes that change a function's globals or its closure's cells, and names through
#: which its code could reach its globals: a function using none of them behaves the same
#: on every call when shared, as its globals and defaults are plain values (``_Shipped``).
_CHANGES_STATE = frozenset(dis.opmap[name] for name in (
    "STORE_GLOBAL", "DELETE_GLOBAL", "STORE_DEREF", "DELETE_DEREF", "STORE_NAME",
    "DELETE_NAME"))
_REACHES_GLOBALS = frozenset({"globals", "vars", "locals", "exec", "eval", "__import__",
                              "sys", "inspect", "__globals__", "f_globals", "func_globals"})


def _reusable(code: types.CodeType) -> bool:
    if not _REACHES_GLOBALS.isdisjoint(code.co_names):
        return False
    if any(op in _CHANGES_STATE for op in code.co_code[::2]):
        return False
    return all(_reusable(const) for const in code.co_consts
               if isinstance(const, types.CodeType))


def _function_state(fn: types.FunctionType) -> tuple | None:
    """What the pickle of ``fn`` depends on, as objects to compare by identity (the
    entry holds them, so no identity is reused); None when some of it could change in
    place."""
    if fn.__dict__ or fn.__kwdefaults__ or fn.__annotations__:
        return None
    code = fn.__code__
    names = _names_in(code)
    own = (code, fn.__name__, fn.__qualname__, fn.__module__, fn.__doc__)
    if not names and fn.__closure__ is None and fn.__defaults__ is None:
        return own
    found = [n for n in names if n in fn.__globals__]
    values = [fn.__globals__[n] for n in found]
    try:
        values += [c.cell_contents for c in fn.__closure__ or ()]
    except ValueError:      # an empty cell (a name assigned later in the outer function)
        return None
    values += fn.__defaults__ or ()
    if not all(map(_plain, values)):
        return None
    return (*own, *found, *values)


@functools.lru_cache(maxsize=1024)
def _names_in(code: types.CodeType) -> tuple[str, ...]:
    """The names ``code`` and the code nested in it may look up, sorted (computed once
    per code object: this runs on every call of a cached function)."""
    names: set[str] = set()
    _global_names(code, names)
    return tuple(sorted(names))


def _global_names(code: types.CodeType, names: set[str]) -> None:
    names.update(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _global_names(const, names)


def _plain(value: Any) -> bool:
    if type(value) is tuple or type(value) is frozenset:
        return all(map(_plain, value))
    return type(value) in _PLAIN


def reduce_ref(oid: int, owner: Any) -> tuple:
    """What a proxy's ``__reduce__`` returns: a reference the worker resolves.

    Raises the owner's error when the proxy is pickled for an executor it does not belong
    to; outside ``dumps`` (plain ``pickle.dumps(proxy)``) the reference is still made.
    """
    refs = getattr(_local, "refs", None)
    if refs is not None:
        current = _local.owner
        if current is not None and owner is not current:
            raise ForeignProxyError(
                "a proxy from another executor (or cluster) was passed to this one; "
                "download it with toLocal() first, or use it with the executor that made it")
        refs.append(oid)
    return (_load_ref, (oid,))


def _load_ref(oid: int) -> Any:
    resolve = getattr(_local, "resolve", None)
    if resolve is None:
        raise pickle.UnpicklingError(
            f"a pyfora proxy (object {oid}) can only be unpickled on the cluster")
    return resolve(oid)


def loads(data: bytes, resolve: Callable[[int], Any] | None = None,
          buffers: Sequence = ()) -> Any:
    """Unpickle ``data`` with its out-of-band ``buffers``, which the value may keep (not
    copy); ``resolve(oid)`` turns references into values (worker side)."""
    previous = getattr(_local, "resolve", None)
    _local.resolve = resolve
    try:
        return pickle.loads(data, buffers=buffers)
    finally:
        _local.resolve = previous


# -- remote exceptions ----------------------------------------------------------------

#: The attribute of an exception re-raised from a parallel piece that holds the frames of
#: the worker that raised it (set by ``pyfora.parallel``), appended to its traceback.
REMOTE_FRAMES = "_pyfora_frames"

_INTERNAL_DIRS = tuple(
    os.path.dirname(os.path.abspath(p)) + os.sep
    for p in (__file__, cloudpickle.__file__))


def describe_exception(exc: BaseException, worker: str | None = None,
                       skip: int = 0) -> dict:
    """Worker side: an exception as a ``done`` error payload.

    ``skip`` drops the runner's own outermost frames. Frames of pyfora and of the worker
    are trimmed too unless ``PYFORA_KEEP_INTERNAL_STACK`` is set.
    """
    frames = []
    keep_internal = bool(os.environ.get("PYFORA_KEEP_INTERNAL_STACK"))
    tb = exc.__traceback__
    for _ in range(skip):
        tb = tb.tb_next if tb is not None else None
    for frame, lineno in traceback.walk_tb(tb):
        code = frame.f_code
        if not keep_internal and code.co_filename.startswith(_INTERNAL_DIRS + _cluster_dirs()):
            continue
        line = linecache.getline(code.co_filename, lineno).strip() or None
        frames.append([code.co_filename, lineno, code.co_qualname, code.co_firstlineno, line])
    # A parallel piece raised it on another worker and this task re-raised it there
    # (pyfora.parallel): that worker's frames come after ours.
    frames.extend(list(f) for f in getattr(exc, REMOTE_FRAMES, None) or ())
    try:
        pickled = cloudpickle.dumps(exc, protocol=PROTOCOL)
    except Exception:
        pickled = None
    return {"type": type_name(type(exc)), "message": str(exc), "frames": frames,
            "exc": pickled, "worker": worker}


def _cluster_dirs() -> tuple[str, ...]:
    mod = sys.modules.get("cluster")
    return tuple(os.path.dirname(os.path.abspath(p)) + os.sep for p in getattr(mod, "__path__", ()))


def type_name(cls: type) -> str:
    """A type's name as users write it: builtins bare, others with their module."""
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _remote_frames(error: dict, code_map: CodeMap | None):
    """(file, line, qualified name, source line) of each remote frame, with file names
    mapped back to this machine's files where cloudpickle hid them."""
    for filename, lineno, name, firstlineno, line in error.get("frames", ()):
        if code_map is not None and filename.startswith("<"):
            filename = code_map.filename(name, firstlineno) or filename
        yield filename, lineno, name, line or linecache.getline(filename, lineno).strip()


def remote_traceback(error: dict, code_map: CodeMap | None = None) -> types.TracebackType | None:
    """Client side: a real traceback object made of the remote frames, so that an
    exception re-raised here prints them. tblib builds traceback objects from frame
    descriptions (dask uses it for the same job); writing that by hand means compiling
    stub code objects ourselves."""
    from tblib import Traceback
    tb = None
    for filename, lineno, name, _ in reversed(list(_remote_frames(error, code_map))):
        tb = {"tb_frame": {"f_globals": {"__name__": "<remote>", "__file__": filename},
                           "f_locals": {}, "f_lineno": lineno,
                           "f_code": {"co_filename": filename, "co_name": name.rsplit(".", 1)[-1]}},
              "tb_lineno": lineno, "tb_next": tb}
    return Traceback.from_dict(tb).as_traceback() if tb is not None else None


def format_remote_traceback(error: dict, code_map: CodeMap | None = None) -> str:
    """Client side: the remote traceback as text, with file names and source lines from
    this machine where the worker could not know them."""
    lines = ["Traceback (most recent call last):"]
    for filename, lineno, name, line in _remote_frames(error, code_map):
        lines.append(f'  File "{filename}", line {lineno}, in {name.rsplit(".", 1)[-1]}')
        if line:
            lines.append(f"    {line}")
    message = error.get("message", "")
    lines.append(f"{error['type']}: {message}" if message else error["type"])
    return "\n".join(lines) + "\n"


def remote_exception_object(error: dict) -> BaseException | None:
    """The exception a ``done`` error payload carries, or None when it cannot be
    unpickled here (its type is not importable on this side)."""
    if error.get("exc") is None:
        return None
    try:
        exc = pickle.loads(error["exc"])
    except Exception:
        return None
    return exc if isinstance(exc, BaseException) else None


def computation_error(error: dict, code_map: CodeMap | None = None) -> ComputationError:
    """Client side: the ``ComputationError`` for a ``done`` error payload."""
    remote = remote_exception_object(error)
    cls = WorkerCrashedError if error["type"] == "pyfora.WorkerCrashedError" else ComputationError
    return cls(remote, error["type"], error.get("message", ""),
               format_remote_traceback(error, code_map), error.get("worker"))
