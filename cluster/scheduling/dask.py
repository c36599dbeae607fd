"""The Dask backend: pyfora's coordinator in front of a Dask distributed cluster
(``pyfora-cluster --backend dask [--scheduler tcp://host:8786]``).

Sessions, the wire and the object directory (``store``) are the coordinator's, as with
the built-in pool; what runs tasks and holds their results is Dask:

* A task is a Dask task (``dask_tasks.run``) whose inputs are the Dask futures of the
  objects it uses; its object is its future (``futures``), released when the object is
  (``ObjectStore.on_free``). The tasks submitted in one turn of the event loop go to
  Dask as one graph (``_send``). A ``define``d value becomes a Dask task that unpickles
  the coordinator's copy, made the first time a task uses it.
* A task's size, type, error and, when small, its pickle (the ``done`` reply) come in
  an event (``dask_tasks.DONE_TOPIC``, sent by the ``dask_tasks.DoneEvents`` worker
  plugin registered at start); its reply is sent once its Dask future has finished
  too. ``toLocal`` fetches the pickle with a small Dask task (``dask_tasks.fetch``).
  The coordinator unpickles no user value.
* A worker that dies: Dask runs its tasks again elsewhere and recomputes lost results
  from their lineage (the futures' graph), up to its ``allowed-failures``; past that the
  task fails with ``WorkerCrashedError``. So ``submit(..., retries=N)``, which on the
  pool is how a task survives its worker dying, changes nothing here.
* Cancelling a task cancels its Dask future; one that already started is interrupted
  on its worker (``dask_tasks.stop``, through ``Client.run``).
* Printed output, tasks starting, and automatic parallelism's pieces and progress come
  as Dask events too (``dask_tasks.OUTPUT_TOPIC``, ``STARTED_TOPIC``,
  ``dask_parallel.TOPIC``). A task says it started only once it has run for
  ``dask_tasks.STARTED_AFTER``: one shorter is never seen running (busy workers in
  ``load`` and the dashboard), and one cancelled before the news came is stopped when
  it comes.
* The workers (for the dashboard and ``welcome``) are polled from the scheduler every
  ``POLL`` seconds.

Runs on the coordinator's event loop, with an asynchronous Dask client.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import Sequence

from distributed import Client, Future, LocalCluster, wait
from distributed.client import FutureCancelledError

from cluster.coordinator.store import ObjectRecord, ObjectStore
from cluster.scheduling.backend import Backend
from cluster.scheduling.lineage import CRASHED, crash_error
from cluster.scheduling.peers import Session
from cluster.worker import dask_parallel, dask_tasks
from pyfora import wire as p
from pyfora.errors import PyforaUsageError, WorkerCrashedError
from pyfora.net.shared_memory import Shared

log = logging.getLogger("cluster")

#: Seconds between two polls of the scheduler for its workers.
POLL = 0.5
#: Seconds a cancelled task is remembered, in case the news that it started comes late.
STOP_LATE = 60.0
#: Seconds to wait for a finished task's done event (it comes first, from the same worker)
#: before asking its worker for the outcome with a Dask task of its own.
DONE_LATE = 5.0


@dataclasses.dataclass(eq=False)
class DaskTask:
    tid: int
    session: Session
    request_id: int
    oid: int
    deps: list[int]
    outcome: asyncio.Future[tuple]  # its done event: (size, type, value, error)
    future: Future | None = None    # its Dask future (holds a dask_tasks.Held)
    watcher: asyncio.Future[None] | None = None    # the asyncio task waiting for it
    worker: str | None = None       # address of the Dask worker that started it
    started: float = 0.0
    cancelled: bool = False
    inline: int = 0                 # the largest result to send with its done reply
    total: int = 0                  # a map's elements, from its first progress event
    # A map's elements done: {0: its own, piece id ("root/rid"): ...}.
    counts: dict[int | str, int] = dataclasses.field(default_factory=dict)
    counted_at: float = 0.0
    counted: int = 0                # the last count forwarded

    @property
    def output(self) -> tuple[Session, int]:    # as the dashboard asks of any task
        return self.session, self.request_id


class DaskWorker:
    """A Dask worker, as ``/api/status`` and the dashboard show it."""

    def __init__(self, backend: DaskBackend, address: str) -> None:
        self.backend = backend
        self.address = address
        self.name = dask_tasks.worker_label(address)
        self.metrics: dict = {}

    def describe(self) -> dict:
        task = next((t for t in self.backend.tasks.values() if t.worker == self.address),
                    None)
        busy = task is not None or self.address in self.backend.pieces.values()
        return {"name": self.name, "state": "busy" if busy else "idle",
                "task": task.tid if task is not None else None,
                "task_seconds": round(time.monotonic() - task.started, 2)
                if task is not None else None,
                "rss": self.metrics.get("memory"), "cpu": self.metrics.get("cpu"),
                "compiled": self.metrics.get("pyfora_compiled") or {}}


class DaskBackend(Backend):
    refuses_workers = ("this coordinator runs its tasks on Dask: add Dask workers to its "
                       "scheduler (dask worker tcp://SCHEDULER:8786), not pyfora-workers")

    def __init__(self, client: Client, cluster: LocalCluster | None = None) -> None:
        super().__init__(ObjectStore())
        self.store.on_free = self._free
        self.tasks: dict[int, DaskTask] = {}
        self._by_request: dict[tuple[Session, int], DaskTask] = {}
        self.client = client
        self.cluster = cluster              # a LocalCluster this backend started
        self.futures: dict[int, Future] = {}    # oid -> the Dask future holding its value
        self._workers: dict[str, DaskWorker] = {}   # by address
        self.pieces: dict[str, str] = {}    # running piece -> address of its worker
        self._running: collections.Counter = collections.Counter()  # address -> tasks
        # Cancelled before they were seen to start: task id -> when, oldest first.
        self._stopped: collections.OrderedDict[int, float] = collections.OrderedDict()
        # Submitted since the loop last ran, with their arguments to dask_tasks.run.
        self._unsent: list[tuple[DaskTask, tuple]] = []
        client.subscribe_topic(dask_tasks.OUTPUT_TOPIC, self._output)
        client.subscribe_topic(dask_tasks.STARTED_TOPIC, self._started)
        client.subscribe_topic(dask_tasks.DONE_TOPIC, self._done)
        client.subscribe_topic(dask_parallel.TOPIC, self._parallel)
        self._poller: asyncio.Task | None = None

    @property
    def workers(self) -> list[DaskWorker]:
        return list(self._workers.values())

    @classmethod
    async def start(cls, scheduler: str | None, workers: int) -> DaskBackend:
        """Connect to the Dask scheduler at ``scheduler``, or start a local Dask cluster
        of ``workers`` worker processes with one thread each, and wait for a worker."""
        # Dask logs at INFO by default: follow the coordinator's --log-level instead.
        logging.getLogger("distributed").setLevel(logging.getLogger().getEffectiveLevel())
        cluster = None
        if scheduler is None:
            cluster = await LocalCluster(n_workers=workers, threads_per_worker=1,
                                         processes=True, asynchronous=True,
                                         dashboard_address=":0")
        try:
            client = await Client(cluster if cluster is not None else scheduler,
                                  asynchronous=True)
        except BaseException:
            if cluster is not None:
                await _close(cluster)
            raise
        backend = cls(client, cluster)
        try:
            await client.register_plugin(dask_tasks.DoneEvents())
            await client.wait_for_workers(workers if cluster is not None else 1)
            await backend._poll_once()
        except BaseException:
            await backend.close()
            raise
        backend._poller = asyncio.ensure_future(backend._poll())
        return backend

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        self._unsent.clear()
        for task in list(self.tasks.values()):
            if task.watcher is not None:
                task.watcher.cancel()
        await self.client.close()
        if self.cluster is not None:
            await _close(self.cluster)

    # -- from client sessions ---------------------------------------------------------

    def submit(self, session: Session, msg: p.Submit) -> None:
        """Send a task to Dask. Raises ``PyforaUsageError`` for dependencies it may not
        use."""
        records = [self._dependency(session, oid) for oid in msg.deps]
        for record in records:
            record.refs += 1
        task = DaskTask(self._ids(), session, msg.id, self.store.new_id(), list(msg.deps),
                        asyncio.get_running_loop().create_future(), inline=msg.inline)
        self.tasks[task.tid] = task
        self._by_request[(session, msg.id)] = task
        self.active[session] += 1
        failed = next((r for r in records if r.error is not None), None)
        if failed is not None:
            self._finish(task, 0, "", None, failed.error)
            return
        if not self._unsent:
            asyncio.get_running_loop().call_soon(self._send)
        self._unsent.append((task, (task.tid, msg.payload, msg.oob,
                                    _joined(msg.oob, msg.frames), msg.inline,
                                    list(msg.deps), [self._future(r) for r in records])))
        self._status_changed()

    def cancel(self, session: Session, request_id: int) -> None:
        task = self._by_request.get((session, request_id))
        if task is None or task.cancelled:
            return
        task.cancelled = True
        if task.watcher is not None:
            task.watcher.cancel()
        worker = task.worker
        self._forget(task)
        if worker is None:      # it may have started without our knowing yet
            now = time.monotonic()
            while self._stopped and now - next(iter(self._stopped.values())) > STOP_LATE:
                self._stopped.popitem(last=False)
            self._stopped[task.tid] = now
        asyncio.ensure_future(self._stop(task, worker))

    async def object_bytes(self, oid: int, session: Session | None = None,
                           rebuild: bool = True) -> p.Value:
        """The pickle of an object (a ``value`` with its buffers, to send under the
        asker's request id), from the coordinator's copy or from its Dask worker (Dask
        computes it again first if that worker died).

        Raises:
            PyforaUsageError: unknown object, one (with ``session``) it does not own, or
                one whose computation failed.
            WorkerCrashedError: Dask gave up on it: workers kept dying while it ran.
        """
        record = self._record(oid, session)
        if record.data is not None:
            return record.value()
        if record.error is not None or oid not in self.futures:
            raise PyforaUsageError(f"object {oid} holds no value: its computation failed")
        fetched = self.client.submit(dask_tasks.fetch, self.futures[oid], pure=False)
        try:
            data, oob, buffers = await fetched
        except Exception as exc:
            raise WorkerCrashedError(None, CRASHED, f"object {oid} could not be fetched "
                                     f"from Dask: {type(exc).__name__}: {exc}") from None
        finally:
            fetched.release()
        return p.Value(id=0, data=data, oob=oob, frames=buffers)

    def status(self) -> dict:
        running = self._running.total()
        return {
            "workers": [w.describe() for w in self.workers],
            "tasks": {"queued": len(self.tasks) - running, "running": running,
                      "done": self.done, "failed": self.failed},
            "objects": {"count": len(self.store), "bytes": self.store.total_bytes()},
            # Lineage is Dask's: what it recomputes is not seen here.
            "lineage": {"records": self.store.record_count(), "rebuilt": None},
            "backend": "dask",
        }

    def load(self) -> dict:
        busy = set(self._running)
        busy.update(self.pieces.values())
        return {"cpus": len(busy), "workers": len(self._workers),
                "queued": len(self.tasks) - self._running.total()}

    # -- internals --------------------------------------------------------------------

    def _send(self) -> None:
        """Send the tasks submitted since the loop last ran to Dask as one graph: each
        graph costs the Dask client and the scheduler a round of packing, unpacking and
        ordering whatever its size, and a client's burst of submits comes in one read of
        its socket."""
        unsent = [(task, args) for task, args in self._unsent if not task.cancelled]
        self._unsent = []
        if not unsent:
            return
        try:
            futures = self.client.map(
                dask_tasks.run, *zip(*(args for _, args in unsent), strict=True),
                key=[f"pyfora-{task.oid}-{id(self):x}" for task, _ in unsent], pure=False)
        except Exception as exc:    # a client closing: in a callback, nobody else would see it
            for task, _ in unsent:
                self._finish(task, 0, "", None, crash_error(
                    f"Dask did not take the task: {type(exc).__name__}: {exc}"))
            return
        for (task, _), future in zip(unsent, futures, strict=True):
            task.future = future
            task.watcher = asyncio.ensure_future(self._watch(task, future))

    def _future(self, record: ObjectRecord) -> Future:
        future = self.futures.get(record.oid)
        if future is None:      # a defined value: Dask gets it from the coordinator's copy
            future = self.futures[record.oid] = self.client.submit(
                dask_tasks.load, record.data, record.oob,
                _joined(record.oob, record.frames), key=f"pyfora-{record.oid}-{id(self):x}",
                pure=False)
        return future

    async def _watch(self, task: DaskTask, future: Future) -> None:
        """Wait for ``task``'s Dask ``future``, then finish it."""
        try:
            await wait(future)
            if future.status == "finished":
                outcome = await self._outcome(task)
            else:       # Dask gave up on it: KilledWorker, a scheduler gone
                exc = await future.exception()
                outcome = 0, "", None, crash_error(
                    f"Dask could not run the task: {type(exc).__name__}: {exc}",
                    dask_tasks.worker_label(task.worker or ""))
        except (asyncio.CancelledError, FutureCancelledError):
            if task.cancelled:
                return
            raise
        self._finish(task, *outcome)

    async def _outcome(self, task: DaskTask) -> tuple:
        """A finished task's outcome: from its done event, or, when that never comes (a
        scheduler dropping events under load), from its worker (``dask_tasks.describe``)."""
        try:
            return await asyncio.wait_for(asyncio.shield(task.outcome), DONE_LATE)
        except TimeoutError:
            log.warning("task %d: no done event %.0f s after it finished; asking its "
                        "worker", task.tid, DONE_LATE)
        described = self.client.submit(dask_tasks.describe, task.future, task.inline,
                                       pure=False)
        try:
            msg = await described
        except Exception as exc:
            return 0, "", None, crash_error(
                f"Dask could not describe the task's result: {type(exc).__name__}: {exc}",
                dask_tasks.worker_label(task.worker or ""))
        finally:
            described.release()
        return msg["size"], msg["type"], msg["value"], msg["error"]

    def _finish(self, task: DaskTask, size: int, type_: str, value: bytes | None,
                error: dict | None) -> None:
        if self.tasks.get(task.tid) is not task:
            return
        self._forget(task)
        self._status_changed()
        if task.session.closed:
            if task.future is not None:
                task.future.release()
            return
        if error is None:
            self.done += 1
            if task.future is not None:     # None: it failed before it was sent to Dask
                self.futures[task.oid] = task.future
        else:
            self.failed += 1
            if task.future is not None:
                task.future.release()
        self.store.add(ObjectRecord(task.oid, task.session, size, type_, data=value,
                                    error=error))
        task.session.send(p.Done(id=task.request_id, oid=task.oid, size=size, type=type_,
                                 value=value, error=error))

    def _forget(self, task: DaskTask) -> None:
        if self.tasks.pop(task.tid, None) is None:
            return
        self._by_request.pop((task.session, task.request_id), None)
        self._moved(task, None)
        self.active[task.session] -= 1
        if self.active[task.session] <= 0:
            del self.active[task.session]
        for oid in task.deps:
            self.store.decref(oid)

    def _moved(self, task: DaskTask, worker: str | None) -> None:
        """``task`` runs on ``worker`` now (None: it ended); Dask may run a task again on
        another worker when its first one dies."""
        if task.worker is not None:
            self._running[task.worker] -= 1
            if self._running[task.worker] <= 0:
                del self._running[task.worker]
        task.worker = worker
        if worker is not None:
            self._running[worker] += 1

    async def _stop(self, task: DaskTask, worker: str | None) -> None:
        """Cancel a task's Dask future, and interrupt it on ``worker`` if it started."""
        if task.future is None:
            return
        try:
            await self.client.cancel([task.future], force=True)
            if worker is not None:
                await self.client.run(dask_tasks.stop, task.tid, workers=[worker])
        except Exception as exc:    # the worker went away meanwhile: nothing left to stop
            log.info("stopping task %d: %s", task.tid, exc)

    def _free(self, record: ObjectRecord) -> None:
        future = self.futures.pop(record.oid, None)
        if future is not None:
            future.release()

    # -- Dask events (on the event loop) ----------------------------------------------

    def _started(self, event: tuple) -> None:
        msg = event[1]
        task = self.tasks.get(msg["task"])
        if task is not None:
            self._moved(task, msg["worker"])
            task.started = time.monotonic()
            self._status_changed()
        elif self._stopped.pop(msg["task"], None) is not None:
            # Cancelled before the news that it started came: stop it now.
            asyncio.ensure_future(self.client.run(dask_tasks.stop, msg["task"],
                                                  workers=[msg["worker"]]))

    def _done(self, event: tuple) -> None:
        msg = event[1]
        task = self.tasks.get(msg["task"])
        if task is not None and not task.outcome.done():
            task.outcome.set_result((msg["size"], msg["type"], msg["value"], msg["error"]))

    def _output(self, event: tuple) -> None:
        msg = event[1]
        task = self.tasks.get(msg["task"])
        if task is not None and not task.session.closed:
            task.session.send(p.Output(id=task.request_id, stream=msg["stream"],
                                       text=msg["text"]))

    def _parallel(self, event: tuple) -> None:
        msg = event[1]
        task = self.tasks.get(msg["task"])
        if msg["kind"] == "piece":
            if msg["running"]:
                self.pieces[msg["piece"]] = msg["worker"]
            else:
                self.pieces.pop(msg["piece"], None)
                if task is not None:
                    task.counts.pop(msg["piece"], None)     # its root counts it now
            self._status_changed()
        elif msg["kind"] == "progress" and task is not None:
            if msg["piece"] is None:
                task.total = msg["total"]
            self._count(task, msg["piece"] or 0, msg["done"])

    # -- the scheduler's workers ------------------------------------------------------

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL)
            try:
                await self._poll_once()
            except Exception as exc:    # the scheduler is away; Dask reconnects
                log.info("polling the Dask scheduler: %s", exc)

    async def _poll_once(self) -> None:
        scheduler = self.client.scheduler
        if scheduler is None:       # only before the client has started
            raise ConnectionError("the Dask client has no scheduler connection")
        info = await scheduler.identity(n_workers=-1)
        workers = info.get("workers", {})
        for address in set(self._workers) - set(workers):
            del self._workers[address]
        for address, worker in workers.items():
            view = self._workers.get(address) or DaskWorker(self, address)
            view.metrics = worker.get("metrics", {})
            self._workers[address] = view


async def _close(cluster: LocalCluster) -> None:
    """Close a cluster made with ``asynchronous=True``: its ``close`` returns an awaitable
    then (None in synchronous mode, which its type allows for)."""
    closing = cluster.close()
    if closing is not None:
        await closing


def _joined(oob: Sequence, frames: Sequence) -> list:
    """Out-of-band buffers whole, from the frames the coordinator keeps them in (a buffer
    over ``wire.CHUNK`` came in several, one in shared memory as a ``Shared``)."""
    buffers, parts = [], iter(frames)
    for size, *_ in oob:
        pieces, got = [], 0
        while got < size:
            piece = next(parts)
            got += len(piece)
            pieces.append(piece.read() if isinstance(piece, Shared) else piece)
        buffers.append(pieces[0] if len(pieces) == 1 else b"".join(pieces))
    return buffers
