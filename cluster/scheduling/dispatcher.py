"""Queueing, routing and cancellation of tasks.

A task goes to a worker with room, idle ones first, preferring the one that already holds
most of its inputs. Each worker runs one task at a time, in the order it got them, and
may hold a *window* of tasks queued behind the one it runs, so it starts the next one
without waiting for a round trip through the coordinator (what makes tiny tasks fast).
The window is sized by how long the worker's last task took, to hold about
``QUEUED_WORK`` seconds of work: a long task would hold back the ones queued behind it
from workers that become idle. It opens only within a stream of tasks: a worker left with
nothing to do starts again from one, so a burst of long tasks after short ones is not
queued on the first workers that ask. Results stay on the worker that computed them
(small ones are also kept here, to ride along with the reply); the directory in ``store``
says where.

A running task may hand parts of its work (*pieces*, automatic parallelism) to workers
that are idle right now (nothing in their window); a piece is refused rather than queued,
so a task never waits for work that cannot start. Its result goes back inline to the
worker that asked, and is not kept. While a session has tasks, it gets ``info`` pushes
with ``cpus`` (busy workers).
A ``map``'s counts of elements done (``progress``, from its task and from its running
pieces) are summed here and forwarded to the session that submitted it.

A worker is trusted with what it was given, and nothing more: it may report (``done``,
``output``, ``progress``) only on tasks it holds (its window: given to it, not finished),
and fetch (``get``) only objects that are inputs of those tasks. Anything else is
refused (a request) or logged and dropped (a push), so a worker that misbehaves, or a
connection that only claims to be one, cannot finish, write to or read another session's
tasks and objects.

A task whose worker dies fails with a ``WorkerCrashedError`` saying why, or is queued
again if it was submitted with ``retries``. The tasks queued behind it in the worker's
window never started (the worker writes a task's ``done`` before it starts the next), so
they are queued again as they were. Objects that die with their worker are
computed again from their lineage when next needed (``lineage``).

Runs on the coordinator's event loop. Everything but ``object_bytes`` and ``split`` is
synchronous, so the dispatcher's state changes only between awaits and needs no locks.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import Iterable

from cluster.coordinator.store import ObjectRecord, ObjectStore
from cluster.scheduling.backend import Backend
from cluster.scheduling.lineage import CRASHED, Rebuild, Rebuilder, crash_error, is_lost
from cluster.scheduling.peers import Session, Worker
from pyfora import wire as p
from pyfora.errors import ProtocolError, PyforaUsageError, WorkerCrashedError

log = logging.getLogger("cluster")

@dataclasses.dataclass(eq=False)
class Task:
    tid: int
    session: Session                # a piece's: the worker that asked for it
    request_id: int
    payload: bytes
    deps: list[int]
    inline: int
    oid: int
    worker: Worker | None = None
    cancelled: bool = False
    piece: bool = False             # part of another task, asked for by a worker
    # (session, request id) its printed output goes to
    output: tuple[Session, int] | None = None
    retries: int = 0                # times left to run it again if its worker dies
    rebuild: Rebuild | None = None  # for a task that recomputes a lost object
    waiting: Rebuild | None = None  # of a lost input it waits for
    parent: Task | None = None      # the task a piece is part of
    total: int = 0                  # a map's elements, from its first ``progress``
    # A map's elements done: {0: its own, piece tid: ...}.
    counts: dict[int | str, int] = dataclasses.field(default_factory=dict)
    counted_at: float = 0.0         # time.monotonic() of the last ``progress`` forwarded
    counted: int = 0                # the last count forwarded
    started: float = 0.0            # time.monotonic() when it became its worker's first
    oob: list = dataclasses.field(default_factory=list)     # the payload's buffers' sizes
    frames: list = dataclasses.field(default_factory=list)  # and their frames, to relay


#: Most tasks a worker may hold at once (the one it runs and those queued behind it):
#: enough to cover the round trip of ``done`` and the next ``run`` for tiny tasks.
WINDOW = 16
#: Seconds of work a worker's window holds, judged by its last task's time (as seen from
#: here: from sending it, or from the previous ``done``, to its own ``done``).
QUEUED_WORK = 0.02


class Dispatcher(Backend):
    """The built-in backend: worker subprocesses (and ``pyfora-worker``s) linked to the
    coordinator by websockets."""

    def __init__(self, store: ObjectStore) -> None:
        super().__init__(store)
        store.on_free = self._free
        store.on_drop = self._dropped
        self.tasks: dict[int, Task] = {}
        self._by_request: dict[tuple[Session, int], Task] = {}
        self.lineage = Rebuilder(self)
        self.queue: collections.deque[Task] = collections.deque()
        self.idle: dict[Worker, None] = {}      # an ordered set of idle workers
        self._workers: dict[Worker, None] = {}
        # Each worker taking tasks: the tasks it holds ({tid: Task}, in the order sent; the
        # first is the one it runs, ``worker.task``), and how many it may hold now.
        self.windows: dict[Worker, dict[int, Task]] = {}
        self.limits: dict[Worker, int] = {}

    @property
    def workers(self) -> dict[Worker, None]:
        """The workers joined (an ordered set)."""
        return self._workers

    # -- from client sessions ---------------------------------------------------------

    def submit(self, session: Session, msg: p.Submit) -> None:
        """Queue a task. Raises ``PyforaUsageError`` for dependencies it may not use."""
        records = [self._dependency(session, oid) for oid in msg.deps]
        for record in records:
            record.refs += 1
        task = Task(self._ids(), session, msg.id, msg.payload, list(msg.deps), msg.inline,
                    self.store.new_id(), retries=msg.retries, oob=msg.oob, frames=msg.frames)
        task.output = (session, msg.id)
        self.tasks[task.tid] = task
        self._by_request[(session, msg.id)] = task
        self.active[session] += 1
        failed = next((r.error for r in records if r.error is not None), None)
        if failed is not None:
            self.fail(task, failed)
            return
        waiting = bool(self.queue)      # then no worker has room: nothing to schedule
        self.enqueue(task)
        if not waiting:
            self.schedule()

    def new_task(self, session: Session, payload: bytes, deps: list, inline: int,
                 oid: int) -> Task:
        """A task of the cluster's own for ``session`` (no request of its waits for it)."""
        task = Task(self._ids(), session, 0, payload, deps, inline, oid)
        task.request_id = -task.tid
        self.tasks[task.tid] = task
        self._by_request[(session, task.request_id)] = task
        self.active[session] += 1
        return task

    def enqueue(self, task: Task, front: bool = False) -> None:
        """Queue ``task`` once its inputs all exist (see ``lineage.Rebuilder.ready``)."""
        if self.lineage.ready(task):
            (self.queue.appendleft if front else self.queue.append)(task)

    def fail(self, task: Task, error: dict) -> None:
        self._finish(task, p.Done(id=task.tid, oid=task.oid, size=0, type="", error=error),
                     holder=None)

    def crashed(self, task: Task, error: dict) -> None:
        """``task`` could not finish because a worker died (``error`` says which): queue
        it again while it has tries left (``retries``; a rebuild's own attempts), else
        fail it with ``error``."""
        task.worker = None
        if task.rebuild is not None:
            retried = self.lineage.retry(task.rebuild)
        elif task.retries > 0 and not task.cancelled:
            task.retries -= 1
            self.enqueue(task, front=True)
            retried = True
        else:
            retried = False
        if not retried:
            self.fail(task, error)

    def cancel(self, session: Session, request_id: int) -> None:
        task = self._by_request.get((session, request_id))
        if task is None:
            return
        if task.worker is None:
            if task.waiting is not None:
                task.waiting.waiters.remove(task)
                task.waiting = None
            elif task in self.queue:
                self.queue.remove(task)
            task.cancelled = True
            self._forget(task)
            if task.rebuild is not None:
                self.lineage.abandon(task.rebuild)
        elif not task.cancelled:
            task.cancelled = True
            task.worker.send(p.Cancel(target=task.tid))

    async def object_bytes(self, oid: int, session: Session | None = None,
                           rebuild: bool = True) -> p.Value:
        """The pickle of an object (a ``value`` with its buffers' frames, to relay under
        the asker's request id), from the coordinator's copy or from a worker holding it.
        A lost object is computed again first, unless ``rebuild`` is false (a worker asks:
        it must not wait for a rebuild that may need it; its task waits in the queue).

        Raises:
            PyforaUsageError: unknown object, one (with ``session``) it does not own, or
                one whose computation failed.
            WorkerCrashedError: it was lost with its worker and workers kept dying while
                it was computed again.
        """
        for _ in range(8):      # each pass makes progress unless workers keep dying
            record = self._record(oid, session)
            if record.data is not None:
                return record.value()
            if record.holders:
                holder = next(iter(record.holders))
                try:
                    reply = await holder.request(p.Fetch(id=0, oid=oid))
                except ConnectionError:
                    record.holders.discard(holder)     # it died meanwhile: try elsewhere
                    continue
                if not isinstance(reply, p.Value):
                    raise ProtocolError(f"{holder.name} answered a fetch with {reply.op!r}")
                return reply
            if not is_lost(record) or not rebuild:
                break
            started = self.lineage.start(record)
            self.schedule()
            await asyncio.shield(started.done)
        if record.error is not None:
            raise PyforaUsageError(f"object {oid} holds no value: its computation failed")
        raise WorkerCrashedError(None, CRASHED, f"object {oid} was lost with its worker" + (
            ", and workers kept dying while it was computed again" if rebuild else ""))

    # -- from workers -----------------------------------------------------------------

    def worker_joined(self, worker: Worker) -> None:
        self._workers[worker] = None
        self.idle[worker] = None
        self.windows[worker] = {}
        self.limits[worker] = 1        # until its first task shows how long they take
        self.schedule()

    def worker_leaving(self, worker: Worker) -> None:
        """``worker``'s connection ended: give it no new task (it is lost once we know
        why)."""
        self.idle.pop(worker, None)
        self.limits[worker] = 0

    def worker_lost(self, worker: Worker, why: str) -> None:
        self._workers.pop(worker, None)
        self.idle.pop(worker, None)
        self.limits.pop(worker, None)
        window = self.windows.pop(worker, {})
        for piece in [t for t in self.tasks.values() if t.session is worker]:
            self.cancel(worker, piece.request_id)
        worker.task = None
        # Objects only it held are lost; they are computed again when next needed.
        self.store.forget_holder(worker)
        error = crash_error(why, worker.name)
        tasks = list(window.values())
        for task in reversed(tasks[1:]):       # never started: queued again, in order
            if task.cancelled:
                self.crashed(task, error)      # settles it, as it would have on the worker
            else:
                task.worker = None
                self.enqueue(task, front=True)
        if tasks:
            self.crashed(tasks[0], error)
        self.schedule()

    def check_get(self, worker: Worker, oid: int) -> None:
        """May ``worker`` fetch object ``oid``? Only as an input of a task it holds.

        Raises:
            ProtocolError: it may not.
        """
        if not any(oid in task.deps for task in self.windows.get(worker, {}).values()):
            raise ProtocolError(f"object {oid} is not an input of a task given to this "
                                "worker: a worker fetches only its tasks' inputs")

    def _held_by(self, worker: Worker, tid: int, op: str) -> Task | None:
        """Task ``tid`` if ``worker`` holds it; else None, and the push is logged."""
        task = self.windows.get(worker, {}).get(tid)
        if task is None:
            log.warning("%s sent %s for task %d, which it was not given: dropped",
                        worker.name, op, tid)
        return task

    def task_done(self, worker: Worker, msg: p.Done) -> None:
        if self._held_by(worker, msg.id, "done") is None:
            return
        window = self.windows[worker]
        task = window.pop(msg.id)
        if worker.task is task:
            now = time.monotonic()
            if self.limits.get(worker):
                took = max(now - task.started, 1e-6)
                self.limits[worker] = max(1, min(WINDOW, int(QUEUED_WORK / took)))
            worker.task = next(iter(window.values()), None)
            if worker.task is not None:
                worker.task.started = now
        if not window and self.limits.get(worker):
            self.idle[worker] = None
            if not self.queue:
                self.limits[worker] = 1
        if msg.error is not None and msg.error["type"] == CRASHED and not task.cancelled:
            # An input was lost with another worker: the task waits for it to be computed
            # again (see lineage.ready), at no cost to its retries (unless it was cancelled
            # meanwhile: then it ends here).
            task.worker = None
            self.enqueue(task, front=True)
        else:
            self._finish(task, msg, holder=worker)
        self.schedule()

    def task_output(self, worker: Worker, msg: p.Output) -> None:
        task = self._held_by(worker, msg.id, "output")
        if task is not None and not task.cancelled and task.output is not None:
            session, request_id = task.output
            session.send(p.Output(id=request_id, stream=msg.stream, text=msg.text))

    def task_progress(self, worker: Worker, msg: p.Progress) -> None:
        """A map's count of elements done, from its task or from one of its pieces (see
        ``Backend._count``)."""
        task = self._held_by(worker, msg.target, "progress")
        root = task.parent if task is not None and task.piece else task
        if (task is None or task.cancelled or root is None or root.piece or root.cancelled
                or root.rebuild is not None or root.request_id <= 0
                or self.tasks.get(root.tid) is not root):
            return
        if root is task:
            root.total = msg.total
        self._count(root, 0 if root is task else task.tid, msg.done)

    # -- pieces (from workers) --------------------------------------------------------

    def piece(self, asker: Worker, msg: p.Piece) -> None:
        """Run a piece of ``asker``'s task on an idle worker now, or refuse it."""
        if not self.idle or (asker, msg.id) in self._by_request:
            asker.send(p.Error(id=msg.id, kind="PyforaUsageError", message="no idle worker"))
            return
        parent = asker.task
        task = Task(self._ids(), asker, msg.id, msg.payload, [], p.MAX_FRAME - (1 << 16),
                    self.store.new_id(), piece=True, parent=parent,
                    output=parent.output if parent is not None else None,
                    oob=msg.oob, frames=msg.frames)
        self.tasks[task.tid] = task
        self._by_request[(asker, msg.id)] = task
        self._start(task, next(iter(self.idle)))

    def idle_info(self) -> dict:
        return {"idle": len(self.idle), "workers": len(self.workers)}

    async def split(self, asker: Worker, msg: p.Split) -> None:
        """Relay a ``split`` to the worker running the piece; relay its answer."""
        task = self._by_request.get((asker, msg.target))
        info: dict = {}
        if task is not None and task.piece and task.worker is not None and not task.cancelled:
            try:
                reply = await asyncio.wait_for(
                    task.worker.request(p.Split(id=0, target=task.tid)), 30.0)
                info = reply.info if isinstance(reply, p.Info) else {}
            except (TimeoutError, ConnectionError, PyforaUsageError):
                info = {}
        asker.send(p.Info(id=msg.id, info=info))

    # -- internals --------------------------------------------------------------------

    def schedule(self) -> None:
        while self.queue:
            worker = self._pick(self.queue[0])
            if worker is None:
                return
            self._start(self.queue.popleft(), worker)

    def _start(self, task: Task, worker: Worker) -> None:
        self.windows[worker][task.tid] = task
        task.worker = worker
        if worker.task is None:
            del self.idle[worker]
            worker.task = task
            task.started = time.monotonic()
        worker.send(p.Run(id=task.tid, oid=task.oid, payload=task.payload,
                          deps=task.deps, inline=task.inline, oob=task.oob, frames=task.frames))
        self._status_changed()

    def _pick(self, task: Task) -> Worker | None:
        """The worker for ``task``: an idle one if any, else one with room in its window
        (the emptiest); among those, the one holding most of its inputs. None: all full."""
        if self.idle:
            candidates: Iterable[Worker] = self.idle
        else:
            candidates = [w for w, window in self.windows.items()
                          if len(window) < self.limits[w]]
            if not candidates:
                return None
        if not task.deps:
            if candidates is self.idle:
                return next(iter(self.idle))
            return min(candidates, key=lambda w: len(self.windows[w]))
        records = [r for r in map(self.store.get, task.deps) if r is not None]
        return max(candidates, key=lambda w: (sum(r.size for r in records if w in r.holders),
                                              -len(self.windows[w])))

    def _finish(self, task: Task, msg: p.Done, holder: Worker | None) -> None:
        if self.tasks.get(task.tid) is not task:
            return      # finished already (failed while it waited, then its worker ended)
        if task.rebuild is not None:
            self._forget(task)
            self.lineage.finished(task.rebuild, msg, holder)
            self._status_changed()
            return
        record = None
        if not task.piece and not task.cancelled and not task.session.closed:
            record = ObjectRecord(
                task.oid, task.session, msg.size, msg.type,
                holders={holder} if holder is not None and msg.error is None else set(),
                data=None if msg.oob else msg.value, error=msg.error)
            if msg.error is None:
                # Before _forget drops the task's references to its inputs.
                self.lineage.remember(task, record)
        self._forget(task)
        self._status_changed()
        if task.piece:          # the asker gets the value inline; nobody keeps it
            if task.parent is not None:
                task.parent.counts.pop(task.tid, None)      # the parent counts it now
            if holder is not None and msg.error is None:
                holder.send(p.Free(oids=[msg.oid]))
            if not task.cancelled and not task.session.closed:
                task.session.send(p.Done(id=task.request_id, oid=0, size=msg.size,
                                         type=msg.type, value=msg.value, error=msg.error,
                                         oob=msg.oob, frames=msg.frames))
            return
        if record is None:      # cancelled, or its session ended
            if holder is not None and msg.error is None:
                holder.send(p.Free(oids=[msg.oid]))
            return
        if msg.error is None:
            self.done += 1
        else:
            self.failed += 1
        self.store.add(record)
        task.session.send(p.Done(id=task.request_id, oid=task.oid, size=msg.size,
                                 type=msg.type, value=record.data, error=msg.error))

    def _forget(self, task: Task) -> None:
        if self.tasks.pop(task.tid, None) is None:
            return      # already forgotten: its references were dropped then
        self._by_request.pop((task.session, task.request_id), None)
        task.frames = []        # the coordinator holds payloads only while relaying them
        if not task.piece:
            self.active[task.session] -= 1
            if self.active[task.session] <= 0:
                del self.active[task.session]
        for oid in task.deps:
            self.store.decref(oid)

    def load(self) -> dict:
        return {"cpus": sum(1 for w in self.workers if w.task is not None),
                "workers": len(self.workers), "queued": self._queued()}

    def _queued(self) -> int:
        """Tasks waiting to start: here, and behind the running one in workers' windows."""
        return len(self.queue) + sum(max(0, len(w) - 1) for w in self.windows.values())

    def _free(self, record: ObjectRecord) -> None:
        for holder in record.holders:
            holder.send(p.Free(oids=[record.oid]))

    def _dropped(self, record: ObjectRecord) -> None:
        if record.rebuild is not None:
            rebuild = record.rebuild
            if rebuild.task.worker is None:
                self.cancel(rebuild.task.session, rebuild.task.request_id)
            self.lineage.abandon(rebuild)

    def status(self) -> dict:
        load = self.load()
        return {
            "workers": [{**w.describe(), "window": len(self.windows.get(w, ()))}
                        for w in self.workers],
            "tasks": {"queued": load["queued"], "running": load["cpus"],
                      "done": self.done, "failed": self.failed},
            "objects": {"count": len(self.store), "bytes": self.store.total_bytes()},
            # Records kept (dormant ones too, as inputs of recipes); objects recomputed.
            "lineage": {"records": self.store.record_count(),
                        "rebuilt": self.lineage.rebuilt},
        }
