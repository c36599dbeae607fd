"""The compiled tier: the loops of split comprehensions and maps, at native speed.

A piece of a comprehension over a ``range`` (``sum(isPrime(x) for x in range(a, b))``,
``[x for x in range(a, b) if isPrime(x)]``, a ``map`` of a function over a range) runs as
one loop compiled by numba, together with every function it calls; the parallel runtime
(``pyfora.parallel._runtime``) asks ``piece`` for it when the work is worth compiling, and
splits, steals and folds exactly as it does for CPython pieces. A function that loops,
called directly on numbers (a submitted call, ``call``; a call in a with-block's body,
``with_direct_calls``), runs compiled too (``_direct``).

What it computes is what CPython computes: compiled code may only do what ``_checked``
and ``_translate`` know to be exact, and whatever raises in it (an int64 overflow, a
division by zero, an exception of the user's) is computed again, piece by piece, in
CPython, which gives the big int or CPython's own exception and traceback. Code numba
cannot type, or can type only differently from CPython, runs in CPython: the reason is
logged (debug, logger ``pyfora.compiled``) and counted (``counts``, which workers report
to the dashboard and ``status()``).

Off: ``PYFORA_COMPILE=0`` (in the client: its tasks; in a worker: everything it runs),
``pyfora.connect(..., compile=False)`` and ``with ex.remotely.interpreted():``, which run
their tasks through ``run_interpreted``.

This module imports no numba (``import pyfora`` stays fast and the client never needs
it): ``_pieces`` and ``_translate`` import it, in workers, on first use or in ``warm_up``.
Runs on a worker's task thread (or a Dask worker's threads); ``counts`` on any thread.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from types import FunctionType
from typing import Any

log = logging.getLogger("pyfora.compiled")

#: What a worker reports: pieces compiled, run compiled, run again in CPython (``reruns``:
#: an exception or overflow in compiled code), refused (``fallbacks``: code that stays in
#: CPython), seconds spent compiling, and how many of the compiled pieces and refusals
#: were found in the disk cache (``cache_hits``: loaded, not compiled; see ``_disk``).
_counts = {"compiled": 0, "runs": 0, "reruns": 0, "fallbacks": 0, "compile_s": 0.0,
           "cache_hits": 0}
_counts_lock = threading.Lock()
#: The last few refusal reasons, for the dashboard.
_reasons: list[str] = []
_local = threading.local()
_env_on = os.environ.get("PYFORA_COMPILE", "1").strip().lower() not in ("0", "false", "no",
                                                                        "off")
_warm = threading.Event()
_warming: threading.Thread | None = None


def default_on() -> bool:
    """What ``$PYFORA_COMPILE`` says (on unless 0, false, no or off)."""
    return _env_on


def enabled() -> bool:
    """Whether code on this thread may run compiled."""
    return _env_on and not getattr(_local, "off", False)


def count(name: str, amount: float = 1, reason: str | None = None) -> None:
    with _counts_lock:
        _counts[name] += amount
        if reason is not None:
            _reasons.append(reason)
            del _reasons[:-5]


def counts() -> dict:
    """A copy of this process's counts, and the last refusal reasons."""
    with _counts_lock:
        out: dict[str, Any] = dict(_counts)
        out["compile_s"] = round(out["compile_s"], 3)
        out["reasons"] = list(_reasons)
    return out


def run_interpreted(fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` with the compiled tier off for this call (on this thread;
    the pieces it sends to other workers are plain CPython functions, so they stay off)."""
    before = getattr(_local, "off", False)
    _local.off = True
    try:
        return fn(*args, **kwargs)
    finally:
        _local.off = before


def piece(kind: str, src: str | None, fallback: Callable, names: dict | None = None,
          compile_now: bool = True) -> Callable | None:
    """A picklable callable over a ``range`` that runs compiled where it can and as
    ``fallback`` where not; None when the tier is off or the piece cannot compile.

    Args:
        kind: ``"sum"`` (the piece returns a list whose ``sum`` is the sum of its
            elements) or ``"list"`` (the list of elements).
        src: the comprehension's source (see ``_pieces``); None: not one we compile.
        fallback: the comprehension itself, as a function of its iterable.
        names: the values of the names ``src`` reads; by default those ``fallback``
            reads (its closure cells and globals).
        compile_now: compile if it is not compiled yet; else only use a compiled one.
    """
    if src is None or not enabled():
        return None
    from . import _pieces
    if names is None:
        names = _pieces.names_of(fallback, src)
    made = _pieces.Piece(kind, src, names, fallback)
    return made if made.ready(compile_now) else None


def call(fn: Callable, args: tuple, kwargs: dict) -> Any:
    """``fn(*args, **kwargs)``, compiled when ``fn`` is a plain function that loops,
    called on numbers (see ``_direct``): how a worker runs a submitted call."""
    if kwargs or type(fn) is not FunctionType or not enabled():
        return fn(*args, **kwargs)
    from . import _direct
    if not _direct.scalars(args) or not _direct.worth(fn):
        return fn(*args)
    return _direct.call(fn, args)


def with_direct_calls(block: Callable) -> Callable:
    """A with-block's function, calling compiled the functions it calls directly on
    numbers (see ``_direct``); ``block`` itself when it calls none or the tier is off."""
    if type(block) is not FunctionType or not enabled():
        return block
    from . import _direct
    return _direct.with_direct_calls(block)


#: The interpreter's switch interval (seconds) while ``warm_up`` runs.
WARM_SWITCH_INTERVAL = 0.0005


def warm_up() -> None:
    """Import numba and compile a small function through our pipeline, so that the first
    task that compiles does not pay for LLVM's start. Once per process; call it where no
    other thread imports meanwhile (a worker's task thread between tasks), or through
    ``start_warm_up``."""
    if not _env_on or _warm.is_set():
        return
    # Importing numba holds the GIL for long stretches, and a task that arrives meanwhile
    # waits a whole switch interval (5 ms by default) at each turn: a shorter one while
    # it lasts keeps tiny tasks' round trips near their usual time.
    interval = sys.getswitchinterval()
    warm_interval = min(interval, WARM_SWITCH_INTERVAL)
    sys.setswitchinterval(warm_interval)
    try:
        from . import _pieces
        _pieces.warm_up()
    except Exception:       # no numba, or a broken one: every piece stays in CPython
        log.debug("compiled tier unavailable", exc_info=True)
    finally:
        if sys.getswitchinterval() == warm_interval:    # unless a task changed it since
            sys.setswitchinterval(interval)
        _warm.set()


def _warm_up_behind() -> None:
    try:
        # Below the task thread and the other processes: a task that arrives meanwhile
        # should not wait for a compile it may never need (Linux sets this per thread).
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass
    warm_up()


def start_warm_up() -> threading.Thread | None:
    """``warm_up`` on a daemon thread, once per process (a Dask worker calls this with its
    first task: its tasks run on Dask's threads, where none can be handed the warm-up)."""
    global _warming
    if not _env_on or _warming is not None:
        return _warming
    _warming = threading.Thread(target=_warm_up_behind, name="pyfora-compile-warmup",
                                daemon=True)
    _warming.start()
    return _warming


def wait_warm() -> None:
    """Wait for ``warm_up`` if one was started. The first compile would pay the same
    import and LLVM start, under the same import lock, so waiting costs nothing."""
    if _warming is not None:
        _warm.wait()


def compiled_once(table: dict, lock: Any, key: Any, make: Callable[[], Any]) -> Any:
    """``table[key]``, made by ``make()`` (after the warm-up) under ``lock`` the first
    time any thread asks, so a compile is never paid twice. ``lock`` is also the
    marker of a key not made yet: it is never a value."""
    found = table.get(key, lock)
    if found is lock:
        wait_warm()
        with lock:
            found = table.get(key, lock)
            if found is lock:
                found = table[key] = make()
    return found
