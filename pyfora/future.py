"""``pyfora.Future``: the result of a remote operation in the synchronous API.

A ``concurrent.futures.Future``, so ``wait`` and ``as_completed`` work; also awaitable on
any event loop (through ``asyncio.wrap_future``). ``result()`` waits in short slices so
Ctrl-C is seen at once: it cancels the remote operation, then re-raises. Callbacks run
on pyfora's callback thread, never on its event loop.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import PyforaTimeoutError

if TYPE_CHECKING:
    from ._portal import Portal

_SLICE = 0.1


class Future(concurrent.futures.Future):
    """The pending result of a remote operation.

    ``cancel()`` returns True until the result has arrived, and cancels the computation
    on the cluster; ``result()`` then raises ``pyfora.CancelledError``.
    """

    def __init__(self, portal: Portal) -> None:
        # concurrent.futures.Future.__init__'s fields, with a lighter condition; a test
        # checks that this sets every field the base class sets.
        self._condition = _Condition()
        self._state = concurrent.futures._base.PENDING
        self._result: Any = None
        self._exception: BaseException | None = None
        self._waiters: list = []
        self._done_callbacks: list = []
        self._portal = portal
        # While the operation runs: the function that stops it, called on the loop. Set
        # and cleared by the portal; held here rather than in a done callback, which
        # would keep it (and what it holds) for as long as the future lives.
        self._stop: Callable[[], Any] | None = None

    def cancel(self) -> bool:
        """Cancel the operation, on the cluster too; False once its result has arrived."""
        if not super().cancel():
            return False
        stop, self._stop = self._stop, None
        if stop is not None:
            self._portal.call_soon(stop)
        return True

    def result(self, timeout: float | None = None) -> Any:
        """Block until the result arrives.

        Args:
            timeout: seconds to wait; the computation goes on after a timeout.

        Raises:
            PyforaTimeoutError: not done within ``timeout``.
            CancelledError: the operation was cancelled.
            ComputationError, PyforaConnectionError, ...: what the operation raised.

        Any thread but pyfora's event loop thread.
        """
        self._wait(timeout)
        return super().result(timeout=0)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """As ``result``, but returns the exception instead of raising it."""
        self._wait(timeout)
        return super().exception(timeout=0)

    def _wait(self, timeout: float | None) -> None:
        if self.done():
            return
        self._portal.check_blocking_allowed()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            with self._condition:   # notified on every state change; no waiter objects
                while not self.done():
                    step = _SLICE if deadline is None else min(_SLICE, deadline - time.monotonic())
                    if step <= 0:
                        raise PyforaTimeoutError(
                            f"not done after {timeout} s; the operation goes on: cancel() the "
                            "future to stop it")
                    self._condition.wait(step)
        except KeyboardInterrupt:
            self.cancel()
            raise

    def add_done_callback(self, fn: Callable[[Future], Any]) -> None:
        """Call ``fn(future)`` on pyfora's callback thread once this is done."""
        callbacks = self._portal.callbacks
        super().add_done_callback(lambda _: callbacks.submit(fn, self))

    def __await__(self):
        return asyncio.wrap_future(self).__await__()


class _Condition(threading.Condition):
    """A ``threading.Condition`` over its own ``RLock`` that binds none of the lock's
    methods to itself. The stock one keeps five bound methods per instance, one instance
    per future, and thousands of futures pending at once make each of those objects a
    visit at every pass of the garbage collector."""

    def __init__(self) -> None:     # deliberately not the base's: it binds them
        self._lock: Any = threading.RLock()     # its private methods are untyped
        self._waiters: collections.deque = collections.deque()

    def acquire(self, *args: Any) -> bool:
        return self._lock.acquire(*args)

    def release(self) -> None:
        self._lock.release()

    def _release_save(self) -> Any:
        return self._lock._release_save()

    def _acquire_restore(self, state: Any) -> None:
        self._lock._acquire_restore(state)

    def _is_owned(self) -> bool:
        return self._lock._is_owned()
