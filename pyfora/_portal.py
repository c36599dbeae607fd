"""The bridge from synchronous code to the async core: the only module that touches threads.

One background thread per process runs an event loop (uvloop where installed) inside an
``asyncio.Runner``. Sync calls schedule coroutines on it and get a ``pyfora.Future``;
``call`` blocks for the result. Nothing here uses ``asyncio.run`` on the caller's thread,
so it works where another loop is already running (Jupyter).

Guards: a blocking call made on the loop thread raises ``PyforaUsageError`` instead of
deadlocking; after ``fork`` the child gets a fresh portal (the parent's loop thread does
not exist there); at interpreter exit every executor still open is closed, stopping the
clusters it owns.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import os
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from .errors import PyforaUsageError
from .future import Future

EXIT_TIMEOUT = 10.0


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


class Portal:
    """An event loop on a daemon thread, and the ways to run coroutines on it."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._ready = threading.Event()
        self.closeables: weakref.WeakSet = weakref.WeakSet()
        # Calls waiting for the loop to start them. Waking the loop is a write to its
        # self-pipe and an iteration: one wake-up starts all the calls made meanwhile.
        self._starts: list[Callable[[], None]] = []
        self._starts_lock = threading.Lock()
        self.callbacks = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="pyfora-callback")
        self._thread = threading.Thread(target=self._run, name="pyfora-loop", daemon=True)
        self._thread.start()
        self._ready.wait()

    def _run(self) -> None:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(self._main())

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self._ready.set()
        await self._stopped.wait()

    def on_loop_thread(self) -> bool:
        return threading.get_ident() == self._thread.ident

    def check_blocking_allowed(self) -> None:
        if self.on_loop_thread():
            raise PyforaUsageError(
                "a blocking pyfora call was made on pyfora's event loop thread (from a done "
                "callback or a coroutine?); there it would deadlock: use pyfora.aio instead")
        if os.getpid() != self.pid:
            raise PyforaUsageError(
                "this executor was created before os.fork(); call pyfora.connect() again "
                "in the child process")

    def submit(self, coro: Awaitable, wrap: Callable[[Any], Any] | None = None) -> Future:
        """Run ``coro`` on the loop; its result (passed through ``wrap``) lands in the
        returned Future. Cancelling the Future cancels the coroutine. Any thread."""
        future = Future(self)
        loop = self.loop
        assert loop is not None, "the loop thread sets it before Portal() returns"

        def start() -> None:
            if future.cancelled():
                _discard(coro)
                return
            try:
                task = asyncio.ensure_future(coro, loop=loop)
            except BaseException as exc:
                future.set_exception(exc)
                return
            task.add_done_callback(lambda t: _settle(future, t, wrap))
            _running(future, task.cancel)

        self._schedule(start, coro)
        return future

    def start(self, begin: Callable[[Callable[[Any], None]], Callable[[], None]],
              wrap: Callable[[Any], Any] | None = None) -> Future:
        """As ``submit``, for an operation started by a plain function rather than a
        coroutine: on the loop, ``begin(settle)`` starts it and returns the function that
        cancels it, and ``settle`` is later called with its result or exception. No task
        is made for it. Any thread."""
        future = Future(self)
        settle = _Settle(future, wrap)

        def start() -> None:
            if future.cancelled():
                return
            try:
                stop = begin(settle)
            except BaseException as exc:
                future.set_exception(exc)
                return
            _running(future, stop)

        self._schedule(start)
        return future

    def call_soon(self, fn: Callable[[], Any]) -> None:
        """Call ``fn()`` on the loop. Any thread; a no-op once the loop has stopped."""
        if self.loop is not None and os.getpid() == self.pid:
            try:
                self.loop.call_soon_threadsafe(fn)
            except RuntimeError:
                pass

    def _schedule(self, start: Callable[[], None], coro: Awaitable | None = None) -> None:
        """Run ``start`` on the loop, with the other calls made meanwhile."""
        if os.getpid() != self.pid:
            # The parent's loop thread does not exist here, and waking its loop would write
            # to a self-pipe shared with the parent.
            if coro is not None:
                _discard(coro)
            raise PyforaUsageError(
                "this executor was created before os.fork(); call pyfora.connect() again "
                "in the child process")
        loop = self.loop
        assert loop is not None, "the loop thread sets it before Portal() returns"
        with self._starts_lock:
            self._starts.append(start)
            try:
                if len(self._starts) == 1:
                    loop.call_soon_threadsafe(self._start_calls)
            except RuntimeError:
                self._starts.clear()
                if coro is not None:
                    _discard(coro)
                raise PyforaUsageError(
                    "pyfora's event loop has stopped (interpreter exiting?)") from None

    def _start_calls(self) -> None:
        with self._starts_lock:
            starts, self._starts = self._starts, []
        for start in starts:
            start()

    def call(self, coro: Awaitable, timeout: float | None = None) -> Any:
        """Run ``coro`` on the loop and block for its result. Not from the loop thread."""
        self.check_blocking_allowed()
        return self.submit(coro).result(timeout)

    def stop(self) -> None:
        if self.loop is not None and self._stopped is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(EXIT_TIMEOUT)
        self.callbacks.shutdown(wait=False)


def _discard(coro: Awaitable) -> None:
    if asyncio.iscoroutine(coro):
        coro.close()


def _running(future: Future, stop: Callable[[], Any]) -> None:
    """Give ``future`` the function that stops its operation, now started; if the future
    was cancelled meanwhile, stop it now (``Future.cancel`` may have found none yet: a
    second call of ``stop`` must be harmless)."""
    future._stop = stop
    if future.cancelled():
        future._stop = None
        stop()


class _Settle:
    """A started operation's ``settle``: sets the future's outcome from what it ends with
    (its result, or an exception). An object of two slots where a closure would make four:
    thousands of these are alive at once, and each costs the garbage collector a visit."""

    __slots__ = ("future", "wrap")

    def __init__(self, future: Future, wrap: Callable[[Any], Any] | None) -> None:
        self.future, self.wrap = future, wrap

    def __call__(self, outcome: Any) -> None:
        self.future._stop = None
        if isinstance(outcome, BaseException):
            _resolve(self.future, self.wrap, error=outcome)
        else:
            _resolve(self.future, self.wrap, outcome)


def _settle(future: Future, task: asyncio.Task, wrap: Callable[[Any], Any] | None) -> None:
    future._stop = None
    if task.cancelled():
        future.cancel()
    elif task.exception() is not None:
        _resolve(future, wrap, error=task.exception())
    else:
        _resolve(future, wrap, task.result())


def _resolve(future: Future, wrap: Callable[[Any], Any] | None, result: Any = None,
             error: BaseException | None = None) -> None:
    """Set ``future``'s outcome: ``error``, else ``result`` passed through ``wrap``."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(wrap(result) if wrap is not None else result)
    except concurrent.futures.InvalidStateError:
        pass   # cancelled by its owner meanwhile
    except BaseException as exc:   # wrap failed
        future.set_exception(exc)


_portal: Portal | None = None
_portal_lock = threading.Lock()


def get_portal() -> Portal:
    """This process's portal, started on first use (and again after fork)."""
    global _portal
    with _portal_lock:
        if _portal is None or _portal.pid != os.getpid():
            _portal = Portal()
        return _portal


@atexit.register
def _close_at_exit() -> None:
    portal = _portal
    if portal is None or portal.pid != os.getpid():
        return
    for closeable in list(portal.closeables):
        try:
            closeable.close(timeout=EXIT_TIMEOUT)
        except Exception:
            pass
    portal.stop()
