"""Automatic parallelism on the Dask backend: the context ``pyfora.parallel._runtime`` uses
when a task runs inside a Dask worker (the counterpart of ``worker_parallel.py``).

The backend's task function calls ``install_parallel_context()`` (idempotent) and runs the
user's call inside ``with current_task(tid):``; from then on the comprehensions of that
call split across idle Dask workers:

* **Pieces** are Dask tasks (``client.submit(_piece_task, ..., pure=False)`` with the
  worker's client, at a raised priority so that they go before new roots). A piece runs
  its payload exactly as a pool worker runs a ``Run`` (``serialization.loads``, call,
  ``serialization.dumps``; an error becomes ``describe_exception``). Its result comes
  back through the Dask future; a done-callback (Dask's callback thread) turns it into a
  ``p.Done`` (value inline) or, when the piece never ran, a ``p.Error`` ("refused"), and
  hands it to the runtime's ``on_reply``, as the built-in context does.
* **No deadlock: the root takes back a piece that has not started.** The built-in
  coordinator refuses a piece when no worker is idle; Dask instead queues it, possibly
  behind the very task that waits for it (one worker; two roots each waiting for a piece
  queued behind the other; nested comprehensions). So a piece must *claim* itself before
  it runs: its first act is to ask the root's process (a ``pyfora_parallel`` handler this
  module adds to every Dask worker, called worker-to-worker over Dask's own comms,
  without the scheduler) whether it may start. The root's process answers from one lock,
  and the root's ``split()`` of a piece still queued after ``TAKE_BACK`` seconds marks it
  taken back under the same lock, cancels its Dask future and replies ``p.Error``: the
  runtime then computes that range itself. Exactly one of the two wins; a piece that
  loses returns at once without computing. A task thread therefore only ever waits for
  pieces that are running on another thread, which wait only for pieces running on
  still other threads: no cycle, so everything finishes, and nothing secedes.
  The price: a root whose pieces all sit queued waits up to ``TAKE_BACK`` plus the
  runtime's 0.2 s poll before it computes them itself.
  ``secede()``/``rejoin()`` were not used: a seceded root frees its worker's slot, so its
  own pieces (and other roots) would run in the same process, competing for the GIL with
  the root, and ``rejoin`` would block a finished root until a slot frees up.
* **Stealing.** ``split(rid)`` of a running piece is relayed to the worker running it
  (same handler), which splits that piece's ``_PieceState`` as the built-in worker does.
  ``cancel(rid)`` of a running piece makes it stop at its next batch (Dask cannot
  interrupt a running task; its result is dropped).
* **Idle workers** are counted from the scheduler (its ``processing`` and
  ``ncores_running`` handlers: a running worker with fewer tasks processing than threads
  is idle), minus this process's own pieces that the scheduler has not yet placed. Two
  small RPCs to the scheduler, about a millisecond; the answer is reused for ``IDLE_CACHE``
  seconds because a root whose pieces finish often asks after each one.
* **Events** for the backend, which does not see pieces, are Dask events on topic
  ``TOPIC`` (``Client.subscribe_topic``), with ``tid`` the backend's task id given to
  ``current_task`` (pieces inherit their root's; None outside it) and ``piece`` the id
  ``"<root address>/<rid>"``:
  ``{"kind": "piece", "task": tid, "piece": id, "worker": address, "running": bool}``
  when a piece starts and ends (for the count of busy workers), and
  ``{"kind": "progress", "task": tid, "piece": None | id, "done": n, "total": m}`` for
  a map's elements done (``_runtime.pmap``, only inside ``current_task``). The backend
  sums, per task, the root's latest ``done`` and those of its running pieces (the
  root's count includes pieces that returned), as ``Dispatcher.task_progress`` does. A
  piece's end event leaves its worker before its result, on the same stream, so the
  scheduler sees it first and nothing counts twice.
* Not done here: what a piece prints goes to its Dask worker's own streams, not to the
  client (the backend's task function captures only its own task's thread).

One Dask worker per process (the default of ``dask worker`` and ``LocalCluster(processes
=True)``): the runtime has one context per process. Context methods run on the task
thread, ``handle`` on the worker's event loop, ``_finished`` on Dask's callback thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections.abc import Callable, Iterator
from time import perf_counter
from typing import Any, cast

from distributed import Client, Future, Worker, get_client, get_worker
from tornado.platform.asyncio import BaseAsyncIOLoop

from pyfora import compiled, serialization
from pyfora import wire as p
from pyfora.errors import PyforaUsageError
from pyfora.parallel import _runtime

#: How long a task thread waits for another process (scheduler or worker) to answer.
REPLY_TIMEOUT = 30.0
#: A piece not started this long after it was sent may be taken back by its root.
TAKE_BACK = 0.05
#: How long ``idle()`` reuses the scheduler's answer.
IDLE_CACHE = 0.02
#: Dask priority of pieces: ahead of tasks submitted at the default priority 0.
PRIORITY = 10
#: The handler this module adds to each Dask worker, and the progress event topic.
HANDLER = "pyfora_parallel"
TOPIC = "pyfora-parallel"

_install_lock = threading.Lock()
_installed: DaskParallelContext | None = None


def install_parallel_context() -> DaskParallelContext:
    """Install the context into the runtime of this Dask worker process (once); call it
    from inside a Dask task, before running user code."""
    global _installed
    try:
        worker = get_worker()
    except ValueError:
        raise PyforaUsageError(
            "install_parallel_context() must be called inside a Dask task") from None
    with _install_lock:
        if _installed is None:
            _installed = DaskParallelContext(worker)
            worker.handlers[HANDLER] = _installed.handle
            _runtime.install(_installed)
            # The compiled tier's counts ride on the worker's heartbeat to the scheduler,
            # where the backend's poll reads them; its warm-up starts with the first
            # task (a Dask worker runs no code of ours before that).
            worker.metrics["pyfora_compiled"] = lambda _worker: compiled.counts()
            compiled.start_warm_up()
        elif _installed.worker is not worker:
            raise PyforaUsageError(
                "pyfora's parallel runtime needs one Dask worker per process "
                "(start workers with processes, e.g. LocalCluster(processes=True))")
    return _installed


@contextlib.contextmanager
def current_task(tid: Any) -> Iterator[None]:
    """Run the backend's task ``tid`` (an int or str) on this thread: its map progress is
    logged under ``tid`` (see **Progress**). Installs the context if needed."""
    context = install_parallel_context()
    previous = getattr(context.local, "task", None)
    context.local.task = tid
    try:
        yield
    finally:
        context.local.task = previous


class _Sent:
    """A piece this process sent: ``queued`` until its worker claims it (``running``)."""

    __slots__ = ("future", "on_reply", "state", "worker", "sent_at")

    def __init__(self, on_reply: Callable[[p.Message], None]) -> None:
        self.on_reply = on_reply
        self.future: Future | None = None
        self.state = "queued"
        self.worker = ""
        self.sent_at = perf_counter()


class DaskParallelContext:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.address = worker.address       # where other workers reach this context
        # How errors name this worker (``run_piece`` reads it), as the backend names it.
        self.name = f"worker-{worker.name if worker.name is not None else worker.address}"
        self.local = threading.local()      # .task: backend task id; .piece: (root, rid)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._sent: dict[int, _Sent] = {}
        self._running: dict[tuple[str, int], Any] = {}    # pieces running here
        self._idle: tuple[float, int, set] = (0.0, 0, set())
        self._client: Client | None = None

    # -- task thread: the interface _runtime calls ----------------------------------------

    def idle(self) -> int:
        """Dask workers idle now, less the pieces this process sent that are not placed."""
        now = perf_counter()
        if now >= self._idle[0]:
            try:
                idle, placed = self._wait(self._scheduler_idle())
            except Exception:
                return 0
            self._idle = (now + IDLE_CACHE, idle, placed)
        _, idle, placed = self._idle
        with self._lock:
            unplaced = sum(1 for s in self._sent.values()
                           if s.state == "queued" and s.future is not None
                           and s.future.key not in placed)
        return max(0, idle - unplaced)

    def start_piece(self, payload: bytes, on_reply: Callable[[p.Message], None]) -> int:
        """Submit a piece to Dask; ``on_reply`` gets its ``p.Done`` or ``p.Error`` later."""
        rid = next(self._ids)
        sent = _Sent(on_reply)
        with self._lock:
            self._sent[rid] = sent
        try:
            if self._client is None:
                self._client = get_client()
            future = self._client.submit(_piece_task, payload, self.address, rid,
                                         getattr(self.local, "task", None),
                                         pure=False, priority=PRIORITY)
        except Exception as exc:        # the scheduler is gone: the runtime computes it
            with self._lock:
                self._sent.pop(rid, None)
            on_reply(p.Error(id=rid, kind="PyforaUsageError", message=str(exc)))
            return rid
        with self._lock:
            sent.future = future
        future.add_done_callback(lambda f: self._finished(rid, f))
        return rid

    def split(self, rid: int) -> tuple[int, int] | None:
        """A running piece gives away half of what it has not started; a piece queued for
        over ``TAKE_BACK`` seconds is taken back whole (its ``p.Error`` reply tells the
        runtime to compute it here) and None is returned."""
        with self._lock:
            sent = self._sent.get(rid)
            if sent is None or sent.future is None:
                return None
            if sent.state == "running":
                worker = sent.worker
            elif perf_counter() - sent.sent_at < TAKE_BACK:
                return None
            else:
                del self._sent[rid]
                worker = ""
        if not worker:
            self._drop(rid, sent)
            sent.on_reply(p.Error(id=rid, kind="PyforaUsageError",
                                  message="piece taken back before it started"))
            return None
        try:
            given = self._wait(self._call(worker, action="split", root=self.address, rid=rid))
        except Exception:
            return None
        return (int(given[0]), int(given[1])) if given else None

    def cancel(self, rid: int) -> None:
        with self._lock:
            sent = self._sent.pop(rid, None)
        if sent is not None:
            self._drop(rid, sent)

    def progress(self, done: int, total: int) -> None:
        task = getattr(self.local, "task", None)
        if task is not None:
            self.worker.log_event(TOPIC, {"kind": "progress", "task": task,
                                          "piece": self._piece_id(), "done": done,
                                          "total": total})

    def set_splittable(self, state: Any) -> None:
        piece = getattr(self.local, "piece", None)
        if piece is None:
            return
        with self._lock:
            if state is None:
                self._running.pop(piece, None)
            else:
                self._running[piece] = state

    # -- a piece, on the worker that runs it (task thread) --------------------------------

    def run_piece(self, payload: bytes, root: str, rid: int, task: Any) -> tuple | None:
        """Claim the piece from its root, then run it as a pool worker runs a task:
        ``(value bytes, None)`` or ``(None, error dict)``; None if it was taken back."""
        try:
            if not self._wait(self._call(root, action="claim", root=root, rid=rid,
                                         worker=self.address)):
                return None
        except Exception:
            return None     # the root's worker is gone: nobody waits for this piece
        self.local.piece, self.local.task = (root, rid), task
        self._log_piece(True)
        try:
            fn, args, kwargs = serialization.loads(payload)
            data, _ = serialization.dumps(fn(*args, **kwargs))
            return data, None
        except BaseException as exc:   # noqa: B036 - as a pool worker reports it
            return None, serialization.describe_exception(exc, self.name)
        finally:
            self._log_piece(False)
            self.local.piece, self.local.task = None, None

    def _log_piece(self, running: bool) -> None:
        self.worker.log_event(TOPIC, {"kind": "piece", "task": self.local.task,
                                      "piece": self._piece_id(), "worker": self.address,
                                      "running": running})

    def _piece_id(self) -> str | None:
        piece = getattr(self.local, "piece", None)
        return None if piece is None else f"{piece[0]}/{piece[1]}"

    # -- event loop: requests from other workers -------------------------------------------

    def handle(self, action: str, root: str, rid: int, worker: str = "") -> Any:
        """``claim`` (on the root's process): may piece ``rid`` start on ``worker``?
        ``split`` / ``stop`` (on the piece's process): give away half / stop early."""
        if action == "claim":
            with self._lock:
                sent = self._sent.get(rid)
                if root != self.address or sent is None or sent.state != "queued":
                    return False
                sent.state, sent.worker = "running", worker
            return True
        with self._lock:
            state = self._running.get((root, rid))
        if state is None:
            return None
        if action == "split":
            given = state.split()
            return None if given is None else list(given)
        if action == "stop":
            with state.lock:            # _PieceState: claim() sees nothing left
                state.limit = state.pos
        return None

    # -- Dask's callback thread: a piece's future finished ---------------------------------

    def _finished(self, rid: int, future: Future) -> None:
        with self._lock:
            sent = self._sent.pop(rid, None)
        if sent is None:                # taken back or cancelled: the runtime moved on
            return
        try:
            outcome = future.result(timeout=REPLY_TIMEOUT)
        except BaseException as exc:   # noqa: B036 - a lost worker, a cancelled future
            outcome, why = None, f"{type(exc).__name__}: {exc}"
        else:
            why = "piece was not run"
        if outcome is None:
            sent.on_reply(p.Error(id=rid, kind="PyforaUsageError", message=why))
            return
        data, error = outcome
        sent.on_reply(p.Done(id=rid, oid=0, size=len(data or b""), type="", value=data,
                             error=error))

    # -- helpers -----------------------------------------------------------------------

    def _drop(self, rid: int, sent: _Sent) -> None:
        """Forget a piece: cancel its Dask future; stop it at its next batch if it runs."""
        sent.state = "closed"
        if sent.future is not None:
            sent.future.cancel()
        if sent.worker:
            asyncio.run_coroutine_threadsafe(
                self._call(sent.worker, action="stop", root=self.address, rid=rid),
                self._loop)

    async def _call(self, address: str, **msg: Any) -> Any:
        return await getattr(self.worker.rpc(address), HANDLER)(**msg)

    async def _scheduler_idle(self) -> tuple[int, set]:
        processing, nthreads = await asyncio.gather(
            self.worker.scheduler.processing(), self.worker.scheduler.ncores_running())
        idle = sum(1 for w, n in nthreads.items() if len(processing.get(w, ())) < n)
        return idle, {key for keys in processing.values() for key in keys}

    @property
    def _loop(self) -> asyncio.AbstractEventLoop:
        """The worker's event loop. Tornado's IOLoop runs on asyncio's (since tornado 5),
        but ``Worker.loop`` is typed as any IOLoop."""
        return cast(BaseAsyncIOLoop, self.worker.loop).asyncio_loop

    def _wait(self, coro: Any) -> Any:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(REPLY_TIMEOUT)
        except BaseException:
            future.cancel()
            raise


def _piece_task(payload: bytes, root: str, rid: int, task: Any) -> tuple | None:
    """The Dask task of one piece (see ``DaskParallelContext.run_piece``)."""
    return install_parallel_context().run_piece(payload, root, rid, task)
