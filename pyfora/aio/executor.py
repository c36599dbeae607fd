"""The asynchronous ``Executor``: submit, define, download, release, close.

This is where every remote operation is implemented; the synchronous ``pyfora.Executor``
only bridges to it.

Runs on one event loop (the caller's own, or the sync facade's loop thread), except the
methods documented as thread-safe.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import sys
from collections.abc import Callable
from typing import Any

from .. import serialization
from .. import wire as p
from ..compiled import run_interpreted
from ..errors import ExecutorClosedError, PyforaTimeoutError, PyforaUsageError
from ..parallel import is_user_function, rewrite_function
from ..parallel._runtime import pmap
from . import progress
from .remote import RemotePythonObject
from .session import Session

log = logging.getLogger("pyfora")


#: How long the release of a dead proxy may wait for others to go with it. Telling the
#: cluster costs a message to it and one to the worker holding the value: paid per
#: proxy, it would weigh on every round trip whose result is dropped at once.
RELEASE_DELAY = 0.02


def _identity(value: Any) -> Any:
    return value


class PreparedCall:
    """A call already pickled: made by ``Executor.prepare`` on any thread. ``buffers``
    are views of the arguments' large buffers (sent out of band, not copied)."""

    __slots__ = ("payload", "deps", "buffers")

    def __init__(self, payload: bytes, deps: list[int], buffers: list) -> None:
        self.payload = payload
        self.deps = deps
        self.buffers = buffers


class Executor:
    """A live connection to a cluster. Make one with ``await pyfora.aio.connect(url)``;
    use it as an async context manager, or ``await close()`` it."""

    def __init__(self, session: Session, cluster: Any = None) -> None:
        self._session = session
        session.on_push = self._on_push
        self._cluster = cluster        # the embedded cluster this executor owns, if any
        self._code_map = serialization.CodeMap()
        self._closed = False
        self._released: collections.deque[int] = collections.deque()   # not sent yet
        self._release_due = False
        self._status_callbacks: list[Callable[[dict], Any]] = []
        # Progress lines of running maps, by submit id: the cluster's ``progress`` pushes
        # (elements done) go to the line of the request they name.
        self._counted: dict[int, progress.Progress] = {}
        #: Show a progress line for long calls: True, False, or None for "when stderr is
        #: a terminal or a Jupyter cell" (see ``pyfora.aio.progress``). Set by ``connect``.
        self.progress: bool | None = False
        #: Let the workers compile this executor's tasks (``pyfora.compiled``). Set by
        #: ``connect``; when False, every task runs through ``run_interpreted``.
        self.compile = True

    # -- remote operations ------------------------------------------------------------

    def prepare(self, fn: Callable, args: tuple = (), kwargs: dict | None = None,
                parallel: bool = True) -> PreparedCall:
        """Pickle a call. Thread-safe, does no I/O.

        With ``parallel``, a function of the user's own whose source is available has its
        comprehensions compiled for automatic parallelism (``pyfora.parallel``).

        Raises:
            PythonToForaConversionError: an argument cannot be pickled; it is named.
            ForeignProxyError: a proxy belongs to another executor.
            ExecutorClosedError: this executor is closed.
        """
        self._check_open()
        if parallel and is_user_function(fn):
            fn = rewrite_function(fn)
        if not self.compile:
            fn, args = run_interpreted, (fn, *args)
        buffers: list = []
        payload, deps = serialization.dumps_call(fn, args, kwargs or {}, self, self._code_map,
                                                 buffers)
        return PreparedCall(payload, deps, buffers)

    def map(self, fn: Callable, iterable: Any, /) -> MapResult:
        """``fn`` applied to every item of ``iterable``, on the cluster, in parallel: the
        task splits itself across idle workers as a comprehension would.

        ``await ex.map(fn, items)`` is the list of results, in order; ``async for`` over
        it yields them. The call is pickled here (errors raise at once); it runs when
        first awaited or iterated. ``iterable`` may be a proxy of a list, tuple or range.

        Raises (when awaited):
            ComputationError: ``fn`` raised; the first failing item in order is reported.
        """
        if not isinstance(iterable, (range, list, tuple, RemotePythonObject)):
            iterable = list(iterable)
        if is_user_function(fn):
            fn = rewrite_function(fn)
        total = None if isinstance(iterable, RemotePythonObject) else len(iterable)
        return MapResult(self, self.prepare(pmap, (fn, iterable), parallel=False), total)

    def addStatusCallback(self, callback: Callable[[dict], Any]) -> Callable[[], None]:
        """Call ``callback(status)`` on the event loop whenever the cluster reports its
        load while this executor has tasks running (at most every 20 ms):
        ``{"cpus": busy workers, "workers": workers, "queued": tasks waiting}``.

        Returns a function that removes the callback. Thread-safe.
        """
        self._status_callbacks.append(callback)

        def remove() -> None:
            try:
                self._status_callbacks.remove(callback)
            except ValueError:
                pass
        return remove

    def submit(self, fn: Callable, /, *args: Any, retries: int = 0,
               timeout: float | None = None, **kwargs: Any) -> asyncio.Future[RemotePythonObject]:
        """Run ``fn(*args, **kwargs)`` on the cluster. The call is sent now; ``await`` the
        future returned for the proxy of its result.

        Args:
            retries: run it again, up to this many times, if the worker running it dies
                (a crash, a kill, over its memory limit). Exceptions ``fn`` raises are
                never retried.
            timeout: seconds from now until the result must be computed, waiting in the
                queue included; past it the computation is cancelled on the cluster and
                the future fails with ``PyforaTimeoutError``. (``retries`` and ``timeout``
                are taken by ``submit``: to pass arguments of those names to ``fn``, bind
                them with ``functools.partial``.)

        Returns:
            A future of a proxy of the result, once it is computed. If ``fn`` raised, the
            proxy's ``toLocal()`` raises ``ComputationError``; if its worker died (and no
            retry was left), ``WorkerCrashedError`` saying how. Cancelling the future, or
            the task awaiting it, cancels the computation on the cluster.

        Raises:
            PythonToForaConversionError: an argument cannot be pickled; it is named.
            ExecutorClosedError: this executor is closed.
            PyforaUsageError: called outside this executor's event loop.
        """
        return self.submitPrepared(self.prepare(fn, args, kwargs), retries, timeout)

    def submitPrepared(self, call: PreparedCall, retries: int = 0,
                       timeout: float | None = None) -> asyncio.Future[RemotePythonObject]:
        """Send a call made by ``prepare``; otherwise as ``submit``."""
        return self._send_call(call, retries, timeout)

    def _send_call(self, call: PreparedCall, retries: int = 0,
                   timeout: float | None = None) -> _Submitted:
        session = self._session
        if asyncio._get_running_loop() is not session.loop:
            raise PyforaUsageError(
                "pyfora.aio.Executor.submit runs on the executor's event loop; from "
                "another thread, use the synchronous pyfora.connect() instead")
        message = self._message(call, retries)
        submitted = _Submitted(self, message.id)
        session.start_request(message, submitted)
        if timeout is not None:
            submitted.time_out_in(timeout)
        return submitted

    def startPrepared(self, call: PreparedCall, on_done: Callable[[Any], None],
                      retries: int = 0, timeout: float | None = None) -> Callable[[], None]:
        """``submitPrepared`` for callers that are not coroutines (the synchronous facade's
        ``submit``, thousands at a time): the call is sent now, and ``on_done`` is called
        once, on the loop, with the proxy of the result or with the exception, unless it is
        cancelled first. Returns the function that cancels it, on the cluster too. Loop
        thread."""
        message = self._message(call, retries)
        started = _Started(self, message.id, on_done)
        self._session.start_request(message, started)
        if timeout is not None:
            started.time_out_in(timeout)
        return started.cancel

    def _message(self, call: PreparedCall, retries: int) -> p.Submit:
        return p.Submit(id=self._session.next_id(), payload=call.payload, deps=call.deps,
                        retries=retries, oob=p.oob_layout(call.buffers), frames=call.buffers)

    async def _submit_counted(self, call: PreparedCall,
                              line: progress.Progress | None) -> RemotePythonObject:
        """``submitPrepared``; with ``line``, the cluster's reports for this request (a
        ``map``'s elements done) feed that progress line while it runs."""
        submitted = self._send_call(call)
        if line is not None:
            self._counted[submitted.request_id] = line
        try:
            return await submitted
        finally:
            self._counted.pop(submitted.request_id, None)

    async def define(self, obj: Any) -> RemotePythonObject:
        """Send ``obj`` to the cluster and return a proxy of it."""
        self._check_open()
        buffers: list = []
        payload, deps = serialization.dumps(obj, self, self._code_map, buffers)
        if deps:
            # The coordinator keeps defined values as opaque bytes and a worker loading them
            # would not know to fetch the proxies inside: build such a value on a worker,
            # where they resolve, as the result of a task that lists them as dependencies.
            return await self.submit(_identity, obj)
        done = await self._session.request(p.Define(
            id=self._session.next_id(), payload=payload, type=serialization.type_name(type(obj)),
            oob=p.oob_layout(buffers), frames=buffers))
        return RemotePythonObject(self, done)

    async def getWorkerCount(self) -> int:
        """How many workers the cluster has now."""
        return len((await self.status())["workers"])

    async def status(self) -> dict:
        """The cluster's status: workers, tasks queued and running, objects held."""
        self._check_open()
        reply = await self._session.request(p.Status(id=self._session.next_id()))
        return reply.info

    async def _download(self, proxy: RemotePythonObject) -> Any:
        self._check_open()   # even for values that came inline: the proxy's executor is gone
        if proxy._error is not None:
            raise serialization.computation_error(proxy._error, self._code_map)
        if proxy._inline is not None:
            return serialization.loads(proxy._inline)
        async with progress.track(self, f"toLocal ({proxy.size:,} bytes)", poll=False):
            reply = await self._session.request(
                p.Fetch(id=self._session.next_id(), oid=proxy.oid))
            return serialization.loads(reply.data, buffers=reply.frames)

    def _release(self, oid: int) -> None:
        """A proxy died: tell the cluster, in ``RELEASE_DELAY`` at most, in one message
        with those that die meanwhile. Thread-safe, takes no lock: called from
        finalizers, which may run in the middle of the loop's own code."""
        if self._closed:
            return
        self._released.append(oid)
        if not self._release_due:
            self._release_due = True
            self._session.call_threadsafe(self._release_soon)

    def _release_soon(self) -> None:
        asyncio.get_running_loop().call_later(RELEASE_DELAY, self._send_releases)

    def _send_releases(self) -> None:
        # Cleared before the oids are taken: one released after this line either is taken
        # below or finds it cleared and schedules another send.
        self._release_due = False
        oids = []
        while self._released:
            oids.append(self._released.popleft())
        if oids:
            self._session.post(p.Release(oids=oids))

    def _on_push(self, message: p.Message) -> None:
        if isinstance(message, p.Done):
            # The result of a request given up on (cancelled, timed out) arrived anyway:
            # no proxy will ever hold it, so release it at once.
            self._session.post(p.Release(oids=[message.oid]))
        elif isinstance(message, p.Output):
            stream = sys.stderr if message.stream == "stderr" else sys.stdout
            stream.write(message.text)
            stream.flush()
        elif isinstance(message, p.Progress):
            line = self._counted.get(message.target)
            if line is not None:
                line.count(message.done, message.total)
        elif isinstance(message, p.Info):
            for callback in list(self._status_callbacks):
                try:
                    callback(message.info)
                except Exception:
                    log.exception("pyfora: a status callback raised")

    # -- lifetime ---------------------------------------------------------------------

    def isClosed(self) -> bool:
        return self._closed or self._session.closed

    def _check_open(self) -> None:
        if self._closed:
            raise ExecutorClosedError("this executor is closed; connect again with connect()")
        self._session.check_open()

    async def close(self) -> None:
        """Close the session (the cluster releases everything it held) and stop the
        embedded cluster, if this executor started one. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._session.close()
        if self._cluster is not None:
            await self._cluster.stop()

    async def __aenter__(self) -> Executor:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()


class MapResult:
    """What ``Executor.map`` returns: awaitable (the list of results) and async-iterable.
    Runs once, on first use."""

    def __init__(self, executor: Executor, call: PreparedCall, total: int | None) -> None:
        self._executor = executor
        self._call = call
        self._total = total         # None over a proxy: the cluster's first count says it
        self._task: asyncio.Task | None = None

    async def _run(self) -> list:
        async with progress.track(self._executor, "map", self._total) as line:
            proxy = await self._executor._submit_counted(self._call, line)
            return await proxy.toLocal()

    def _started(self) -> asyncio.Task:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
        return self._task

    async def list(self) -> list:
        """The results, in order."""
        return await self._started()

    def __await__(self):
        return self._started().__await__()

    async def __aiter__(self):
        for value in await self._started():
            yield value


class _Started:
    """A call started by ``Executor.startPrepared``: called with its reply, it hands
    ``on_done`` the proxy (or the exception); ``cancel`` stops it, on the cluster too.
    One object of four slots rather than two closures of two cells each: thousands are
    in flight at once, and each object costs the garbage collector a visit."""

    __slots__ = ("executor", "request_id", "on_done", "deadline")

    def __init__(self, executor: Executor, request_id: int,
                 on_done: Callable[[Any], None]) -> None:
        self.executor, self.request_id, self.on_done = executor, request_id, on_done
        self.deadline: asyncio.TimerHandle | None = None

    def __call__(self, reply: Any) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
        self.on_done(reply if isinstance(reply, BaseException)
                     else RemotePythonObject(self.executor, reply))

    def cancel(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
        _cancel_request(self.executor._session, self.request_id)

    def time_out_in(self, timeout: float) -> None:
        self.deadline = self.executor._session.loop.call_later(timeout, self.time_out, timeout)

    def time_out(self, timeout: float) -> None:
        if _cancel_request(self.executor._session, self.request_id):
            self.on_done(_timed_out(timeout))


class _Submitted(asyncio.Future[RemotePythonObject]):
    """What ``Executor.submit`` returns: the future of a call sent, which the session
    calls with the call's reply. Cancelling it cancels the call on the cluster. One
    object where a coroutine would take a task, a future and three frames: thousands
    are in flight at once (``gather``), and each costs the garbage collector a visit."""

    __slots__ = ("_executor", "request_id", "_deadline")

    def __init__(self, executor: Executor, request_id: int) -> None:
        super().__init__(loop=executor._session.loop)
        self._executor = executor
        self.request_id = request_id
        self._deadline: asyncio.TimerHandle | None = None

    def __call__(self, reply: Any) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        if self.done():
            return
        if isinstance(reply, BaseException):
            self.set_exception(reply)
        else:
            self.set_result(RemotePythonObject(self._executor, reply))

    def cancel(self, msg: Any = None) -> bool:
        if not self.done():
            if self._deadline is not None:
                self._deadline.cancel()
            _cancel_request(self._executor._session, self.request_id)
        return super().cancel(msg)

    def time_out_in(self, timeout: float) -> None:
        self._deadline = self.get_loop().call_later(timeout, self._time_out, timeout)

    def _time_out(self, timeout: float) -> None:
        if not self.done() and _cancel_request(self._executor._session, self.request_id):
            self.set_exception(_timed_out(timeout))


def _cancel_request(session: Session, request_id: int) -> bool:
    """Stop waiting for a request's reply and cancel it on the cluster; False if its
    reply had come already."""
    if not session.forget(request_id):
        return False
    session.post(p.Cancel(target=request_id))
    return True


def _timed_out(timeout: float) -> PyforaTimeoutError:
    return PyforaTimeoutError(
        f"the computation did not finish within {timeout} s; it was cancelled")
