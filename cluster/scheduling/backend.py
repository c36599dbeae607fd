"""What runs the tasks behind a coordinator: the part both backends share.

The coordinator's sessions and dashboard speak to a backend (``Coordinator.backend``):
``submit``, ``define``, ``cancel``, ``session_closed``, ``object_bytes``, ``status``,
``store`` (the object directory) and ``workers`` / ``tasks`` (for the dashboard): the
abstract methods of ``Backend``, and the ``TaskView`` of its tasks. Two implement it:
``dispatcher.Dispatcher``, the built-in worker pool (the default), and
``dask.DaskBackend``, a Dask distributed cluster. What they have in common is here: who
may use which object, ``define``, and the load pushed to sessions while they have tasks
(``info`` with ``cpus``). The sessions and workers they are handed are the Protocols of
``peers``.

Runs on the coordinator's event loop.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import itertools
import time
from collections.abc import Collection, Mapping
from typing import Protocol

from cluster.coordinator.store import ObjectRecord, ObjectStore
from cluster.scheduling.peers import Session, WorkerView
from pyfora import wire as p
from pyfora.errors import ForeignProxyError, PyforaUsageError

#: Seconds between two counts of one map forwarded to its client.
PROGRESS_EVERY = 0.2
#: Seconds between two load pushes (``info``) to a session.
PUSH_EVERY = 0.02


class TaskView(Protocol):
    """What ``Backend`` and the dashboard read of either backend's tasks."""
    tid: int
    session: Session
    request_id: int         # the session's request (<= 0: none of its waits for it)
    total: int              # a map's elements, from its first ``progress``
    #: A map's elements done, by who counted them: 0 the task itself, else a piece of it.
    counts: dict[int | str, int]
    counted_at: float       # time.monotonic() of the last ``progress`` forwarded
    counted: int            # the last count forwarded

    @property
    def worker(self) -> object:
        """Where it runs; None while it waits."""
        ...

    @property
    def output(self) -> tuple[Session, int] | None:
        """The (session, request id) its printed output goes to."""
        ...


class Backend(abc.ABC):
    #: Why ``pyfora-worker``s may not join, said to one that tries (None: they may, and
    #: ``workers`` are their links).
    refuses_workers: str | None = None
    #: The tasks not finished, by id (set by each backend, of its own task type).
    tasks: Mapping[int, TaskView]

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self._ids = itertools.count(1).__next__
        self.done = self.failed = 0
        self.active: collections.Counter[Session] = collections.Counter()  # -> open tasks
        self._push_scheduled = False

    @property
    @abc.abstractmethod
    def workers(self) -> Collection[WorkerView]:
        """The workers running tasks now."""

    @abc.abstractmethod
    def submit(self, session: Session, msg: p.Submit) -> None:
        """Queue a task. Raises ``PyforaUsageError`` for dependencies it may not use."""

    @abc.abstractmethod
    def cancel(self, session: Session, request_id: int) -> None:
        """Cancel ``session``'s request ``request_id``, if it is a task not finished."""

    @abc.abstractmethod
    async def object_bytes(self, oid: int, session: Session | None = None,
                           rebuild: bool = True) -> p.Value:
        """The pickle of an object, as a ``value`` to relay under the asker's request id
        (``session``: checked as its).

        Raises:
            PyforaUsageError: unknown object, one (with ``session``) it does not own, or
                one whose computation failed.
            WorkerCrashedError: it could not be had from its workers.
        """

    @abc.abstractmethod
    def status(self) -> dict:
        """``/api/status``'s ``workers``, ``tasks``, ``objects`` and ``lineage``."""

    @abc.abstractmethod
    def load(self) -> dict:
        """``{"cpus": busy workers, "workers": n, "queued": tasks waiting}``."""

    def define(self, session: Session, msg: p.Define) -> p.Done:
        size = p.value_size(msg.payload, msg.oob)
        record = ObjectRecord(self.store.new_id(), session, size, msg.type,
                              data=msg.payload, oob=msg.oob, frames=msg.frames, defined=True)
        self.store.add(record)
        return p.Done(id=msg.id, oid=record.oid, size=record.size, type=record.type,
                      value=msg.payload if size <= p.INLINE_LIMIT and not msg.oob else None)

    async def close(self) -> None:  # noqa: B027 - a hook: most have nothing to let go of
        """Let go of what the backend holds outside the coordinator, once it has stopped."""

    def session_closed(self, session: Session) -> None:
        """Cancel what ``session`` queued or ran and release what it held."""
        for task in [t for t in self.tasks.values() if t.session is session]:
            self.cancel(session, task.request_id)
        self.store.release_owned_by(session)

    def _dependency(self, session: Session, oid: int) -> ObjectRecord:
        record = self.store.get(oid)
        if record is None:
            raise PyforaUsageError(f"object {oid} is not on this cluster (released, or made "
                                   "by another cluster)")
        if record.owner is not session:
            raise ForeignProxyError(f"object {oid} belongs to another session")
        return record

    def _record(self, oid: int, session: Session | None = None) -> ObjectRecord:
        """Object ``oid``, checked as ``session``'s (any session's when None).

        Raises:
            PyforaUsageError: unknown, or not ``session``'s.
        """
        record = (self._dependency(session, oid) if session is not None
                  else self.store.get(oid))
        if record is None:
            raise PyforaUsageError(f"object {oid} is not on this cluster")
        return record

    def _status_changed(self) -> None:
        """Push the cluster's load to sessions with open tasks, at most every
        ``PUSH_EVERY`` seconds."""
        if self._push_scheduled or not self.active:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._push_scheduled = True
        loop.call_later(PUSH_EVERY, self._push_status)

    def _push_status(self) -> None:
        self._push_scheduled = False
        info = self.load()
        for session in self.active:
            if not session.closed:
                session.send(p.Info(id=0, info=info))

    def _count(self, root: TaskView, key: int | str, done: int) -> None:
        """A map's elements done, as counted by its task (``key`` 0) or by one of its
        running pieces: forward the sum to the session that submitted it, at most every
        ``PROGRESS_EVERY`` seconds. The task's own count includes the pieces that
        returned; a piece's count is dropped when it ends (the sum may lag, never count
        twice)."""
        root.counts[key] = done
        now = time.monotonic()
        if not root.total or now - root.counted_at < PROGRESS_EVERY or root.session.closed:
            return
        done = min(root.total, sum(root.counts.values()))
        if done <= root.counted:        # the lag: only counts that move forward are sent
            return
        root.counted, root.counted_at = done, now
        root.session.send(p.Progress(target=root.request_id, total=root.total, done=done))
