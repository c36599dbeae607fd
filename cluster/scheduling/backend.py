"""What runs the tasks behind a coordinator: the part both backends share.

The coordinator's sessions and dashboard speak to a backend (``Coordinator.backend``):
``submit``, ``define``, ``cancel``, ``session_closed``, ``object_bytes``, ``status``,
``store`` (the object directory) and ``workers`` / ``tasks`` (for the dashboard). Two
implement it: ``dispatcher.Dispatcher``, the built-in worker pool (the default), and
``dask_backend.DaskBackend``, a Dask distributed cluster. What they have in common is
here: who may use which object, ``define``, and the load pushed to sessions while they
have tasks (``info`` with ``cpus``).

Runs on the coordinator's event loop.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from typing import Any

from cluster.coordinator.store import ObjectRecord, ObjectStore
from pyfora import wire as p
from pyfora.errors import ForeignProxyError, PyforaUsageError

#: Seconds between two counts of one map forwarded to its client.
PROGRESS_EVERY = 0.2
#: Seconds between two load pushes (``info``) to a session.
PUSH_EVERY = 0.02


class Backend:
    #: Why ``pyfora-worker``s may not join, said to one that tries (None: they may, and
    #: ``workers`` are their links).
    refuses_workers: str | None = None

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.tasks: dict[int, Any] = {}
        self._by_request: dict[tuple[Any, int], Any] = {}
        self._ids = itertools.count(1).__next__
        self.done = self.failed = 0
        self.active: collections.Counter = collections.Counter()   # session -> open tasks
        self._push_scheduled = False

    def define(self, session: Any, msg: p.Define) -> p.Done:
        size = p.value_size(msg.payload, msg.oob)
        record = ObjectRecord(self.store.new_id(), session, size, msg.type,
                              data=msg.payload, oob=msg.oob, frames=msg.frames, defined=True)
        self.store.add(record)
        return p.Done(id=msg.id, oid=record.oid, size=record.size, type=record.type,
                      value=msg.payload if size <= p.INLINE_LIMIT and not msg.oob else None)

    def cancel(self, session: Any, request_id: int) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        """Let go of what the backend holds outside the coordinator, once it has stopped."""

    def session_closed(self, session: Any) -> None:
        """Cancel what ``session`` queued or ran and release what it held."""
        for task in [t for t in self.tasks.values() if t.session is session]:
            self.cancel(session, task.request_id)
        self.store.release_owned_by(session)

    def _dependency(self, session: Any, oid: int) -> ObjectRecord:
        record = self.store.get(oid)
        if record is None:
            raise PyforaUsageError(f"object {oid} is not on this cluster (released, or made "
                                   "by another cluster)")
        if record.owner is not session:
            raise ForeignProxyError(f"object {oid} belongs to another session")
        return record

    def _record(self, oid: int, session: Any = None) -> ObjectRecord:
        """Object ``oid``, checked as ``session``'s (any session's when None).

        Raises:
            PyforaUsageError: unknown, or not ``session``'s.
        """
        record = (self._dependency(session, oid) if session is not None
                  else self.store.get(oid))
        if record is None:
            raise PyforaUsageError(f"object {oid} is not on this cluster")
        return record

    def load(self) -> dict:
        """``{"cpus": busy workers, "workers": n, "queued": tasks waiting}``."""
        raise NotImplementedError

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

    def _count(self, root: Any, key: Any, done: int) -> None:
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
