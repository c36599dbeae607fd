"""The synchronous ``Executor``: the async core's executor, driven from any thread.

Each method is one delegation through the portal. ``submit`` pickles its call on the
caller's thread (``aio.Executor.prepare``), so an argument that cannot be sent raises
right there and nothing is sent; the rest happens on the loop thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from . import aio
from ._portal import Portal
from .future import Future
from .remote import RemotePythonObject
from .with_block import WithBlock


class Executor:
    """A live connection to a cluster: ``pyfora.connect(url)`` makes one.

    Use it as a context manager, or ``close()`` it; either releases what it holds on the
    cluster and stops the embedded cluster it started, if any.
    """

    def __init__(self, twin: aio.Executor, portal: Portal) -> None:
        self._aio = twin
        self._portal = portal

    def submit(self, fn: Callable, /, *args: Any, retries: int = 0,
               timeout: float | None = None, **kwargs: Any) -> Future:
        """Run ``fn(*args, **kwargs)`` on the cluster.

        Args:
            retries: run it again, up to this many times, if its worker dies.
            timeout: seconds from now until the result must be computed; past it the
                computation is cancelled on the cluster and the Future fails with
                ``PyforaTimeoutError``. (``future.result(timeout=...)`` only bounds one
                wait: the computation goes on.) See ``pyfora.aio.Executor.submit``.

        Returns:
            A Future of a ``RemotePythonObject`` for the result (``toLocal()`` it).
            Cancelling the Future cancels the computation on the cluster.

        Raises:
            PythonToForaConversionError: an argument cannot be pickled; it is named.
            ExecutorClosedError: the executor is closed.
        """
        call = self._aio.prepare(fn, args, kwargs)
        return self._portal.start(
            lambda settle: self._aio.startPrepared(call, settle, retries, timeout), self._proxy)

    def map(self, fn: Callable, iterable: Any, /, timeout: float | None = None) -> Iterator:
        """``fn`` applied to every item of ``iterable`` on the cluster, in parallel across
        idle workers: an iterator of the results, in order. The call is sent now; iterating
        waits for it (``timeout`` seconds at most, then ``PyforaTimeoutError``).

        Raises (when iterated):
            ComputationError: ``fn`` raised; the first failing item in order is reported.
        """
        future = self._portal.submit(self._aio.map(fn, iterable).list())
        return _results(future, timeout)

    def define(self, obj: Any) -> Future:
        """Send ``obj`` to the cluster: a Future of a proxy of it."""
        return self._portal.submit(self._aio.define(obj), self._proxy)

    @property
    def remotely(self) -> WithBlock:
        """A with-block context: ``with executor.remotely.downloadAll(): ...`` runs the
        block on the cluster (see ``pyfora.with_block``). Each access makes a new one."""
        return WithBlock(self)

    def getWorkerCount(self) -> int:
        """How many workers the cluster has now. Blocks."""
        return self._portal.call(self._aio.getWorkerCount())

    def status(self) -> dict:
        """The cluster's status: workers, tasks queued and running, objects held. Blocks."""
        return self._portal.call(self._aio.status())

    def isClosed(self) -> bool:
        return self._aio.isClosed()

    def close(self, timeout: float | None = None) -> None:
        """Close the session and stop the embedded cluster, if any. Idempotent; blocks."""
        self._portal.call(self._aio.close(), timeout)

    def _proxy(self, twin: aio.RemotePythonObject) -> RemotePythonObject:
        return RemotePythonObject(twin, self)

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _results(future: Future, timeout: float | None) -> Iterator:
    yield from future.result(timeout)
