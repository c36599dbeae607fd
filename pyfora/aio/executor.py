"""The asynchronous ``Executor``: submit, define, download, release, close.

This is where every remote operation is implemented; the synchronous ``pyfora.Executor``
only bridges to it.

Runs on one event loop (the caller's own, or the sync facade's loop thread), except the
methods documented as thread-safe.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, Callable

from .. import protocol as p
from .. import serialization
from ..errors import ExecutorClosedError
from .remote import RemotePythonObject
from .session import Session


def _identity(value: Any) -> Any:
    return value


class PreparedCall:
    """A call already pickled: made by ``Executor.prepare`` on any thread."""

    __slots__ = ("payload", "deps")

    def __init__(self, payload: bytes, deps: list[int]) -> None:
        self.payload = payload
        self.deps = deps


class Executor:
    """A live connection to a cluster. Make one with ``await pyfora.aio.connect(url)``;
    use it as an async context manager, or ``await close()`` it."""

    def __init__(self, session: Session, cluster: Any = None) -> None:
        self._session = session
        session.on_push = self._on_push
        self._cluster = cluster        # the embedded cluster this executor owns, if any
        self._code_map = serialization.CodeMap()
        self._closed = False

    # -- remote operations ------------------------------------------------------------

    def prepare(self, fn: Callable, args: tuple = (), kwargs: dict | None = None) -> PreparedCall:
        """Pickle a call. Thread-safe, does no I/O.

        Raises:
            PythonToForaConversionError: an argument cannot be pickled; it is named.
            ForeignProxyError: a proxy belongs to another executor.
            ExecutorClosedError: this executor is closed.
        """
        self._check_open()
        payload, deps = serialization.dumps_call(fn, args, kwargs or {}, self, self._code_map)
        return PreparedCall(payload, deps)

    async def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> RemotePythonObject:
        """Run ``fn(*args, **kwargs)`` on the cluster.

        Returns:
            A proxy of the result, once it is computed. If ``fn`` raised, the proxy's
            ``toLocal()`` raises ``ComputationError``.

        Cancelling the awaiting task cancels the computation on the cluster.
        """
        return await self.submitPrepared(self.prepare(fn, args, kwargs))

    async def submitPrepared(self, call: PreparedCall) -> RemotePythonObject:
        """Send a call made by ``prepare``; otherwise as ``submit``."""
        message = p.Submit(id=self._session.next_id(), payload=call.payload, deps=call.deps)
        try:
            done = await self._session.request(message)
        except asyncio.CancelledError:
            self._session.post(p.Cancel(target=message.id))
            raise
        return RemotePythonObject(self, done)

    async def define(self, obj: Any) -> RemotePythonObject:
        """Send ``obj`` to the cluster and return a proxy of it."""
        self._check_open()
        payload, deps = serialization.dumps(obj, self, self._code_map)
        if deps:
            # The coordinator keeps defined values as opaque bytes and a worker loading them
            # would not know to fetch the proxies inside: build such a value on a worker,
            # where they resolve, as the result of a task that lists them as dependencies.
            return await self.submit(_identity, obj)
        done = await self._session.request(p.Define(
            id=self._session.next_id(), payload=payload, type=serialization.type_name(type(obj))))
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
        reply = await self._session.request(p.Fetch(id=self._session.next_id(), oid=proxy.oid))
        return serialization.loads(reply.data)

    def _release(self, oid: int) -> None:
        """A proxy died: tell the cluster. Thread-safe; called from finalizers."""
        if not self._closed:
            self._session.post_threadsafe(p.Release(oids=[oid]))

    def _on_push(self, message: p.Message) -> None:
        if isinstance(message, p.Output):
            stream = sys.stderr if message.stream == "stderr" else sys.stdout
            stream.write(message.text)
            stream.flush()

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
