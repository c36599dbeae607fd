"""What the Dask backend (``dask_backend``) runs inside Dask workers: a pyfora task as a
Dask task, and the small task that fetches its result.

A task's Dask result is a ``Held``: the value and its pickle, as a built-in worker keeps
them, or the error its call raised (``describe_exception``), so a failed task is a Dask
task that succeeded and Dask's own retries are left for workers that die. The
coordinator never unpickles a value: a task tells it its size, type, error and, when
small enough to ride along with the reply, its pickle, in an event on ``DONE_TOPIC``
(one Dask task per pyfora task: a second one to describe the result halved the rate,
so ``describe`` runs as a task only when a finished task's event never came);
for a ``toLocal`` it asks for ``fetch(held)`` (the pickle). The worker plugin
``DoneEvents`` sends that event as Dask moves the task to memory, so that it shares a
message to the scheduler with Dask's own news of the task.

What a task prints goes to the coordinator as Dask events on ``OUTPUT_TOPIC``, a line at
a time; ``STARTED_TOPIC`` says which worker started which task, once it has run for
``STARTED_AFTER`` (the coordinator counts busy workers with it, and knows where to stop
a cancelled task). Why not at once: a worker sends to the scheduler at most one batch
every few milliseconds, and the first message after a pause goes alone, so an event
sent as a task starts, or from its thread as it ends, would hold Dask's news that the
task finished until the next batch. Events from one worker reach the coordinator in the
order they were logged, before the news that the task finished. A running task is
stopped by ``stop`` (``Client.run`` on its worker), as a built-in worker stops one.

Runs on a Dask worker's task thread (``run``) and event loop (``stop``, ``_started``,
``DoneEvents``), one task thread per process.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterable
from typing import Any

from distributed import WorkerPlugin, get_worker

from cluster.worker.dask_parallel import current_task
from cluster.worker.task_thread import capture_streams, interrupt
from pyfora import compiled, serialization
from pyfora import wire as p

OUTPUT_TOPIC = "pyfora-output"
STARTED_TOPIC = "pyfora-started"
DONE_TOPIC = "pyfora-done"

#: Seconds a task runs before its worker says it started: a shorter one says nothing.
STARTED_AFTER = 0.01

_lock = threading.Lock()
_running: dict[int, int] = {}       # task id -> ident of the thread running it
# A returned task's done event, by Dask key, until ``DoneEvents`` sends it.
_done: dict[Hashable, dict] = {}


class Held:
    """A task's outcome, as its Dask future holds it: the value, its pickle and the
    pickle's out-of-band buffers (which share the value's memory), or an error."""
    __slots__ = ("value", "data", "buffers", "error")

    def __init__(self, value: Any = None, data: bytes | None = None,
                 buffers: Iterable[Any] = (), error: dict | None = None) -> None:
        self.value, self.data, self.buffers, self.error = value, data, list(buffers), error


def _received(oob: list, buffers: list) -> list:
    """Buffers as they came from the coordinator (bytes): writable ones are made
    writable again (a copy), so arrays arrive writable as on the built-in workers."""
    return [bytearray(data) if entry[1] else data
            for data, entry in zip(buffers, oob, strict=False)]


def worker_label(address: str) -> str:
    """How errors and the dashboard name a Dask worker."""
    return f"dask-worker@{address.rpartition('://')[2]}"


def run(tid: int, payload: bytes, oob: list, buffers: list, inline: int, oids: list[int],
        inputs: list[Held]) -> Held:
    """Run one pyfora task: ``payload`` is the pickled call (``buffers`` its out-of-band
    buffers, as ``oob`` describes them), ``inputs`` the Helds of the objects ``oids`` it
    refers to; its ``DONE_TOPIC`` event carries the pickle of the result when it is at
    most ``inline`` bytes and has no out-of-band buffers."""
    worker = get_worker()
    key = worker.get_current_task()
    name = worker_label(worker.address)
    values = {oid: held.value for oid, held in zip(oids, inputs, strict=True)}

    def sink(stream: str, text: str) -> None:
        worker.log_event(OUTPUT_TOPIC, {"task": tid, "stream": stream, "text": text})

    streams = capture_streams()
    for stream in streams:
        stream.start(sink)
    try:
        try:
            with _lock:
                _running[tid] = threading.get_ident()
            worker.loop.add_callback(worker.loop.call_later, STARTED_AFTER, _started,
                                     worker, tid)
            with current_task(tid):
                fn, args, kwargs = serialization.loads(payload, values.__getitem__,
                                                       _received(oob, buffers))
                value = compiled.call(fn, args, kwargs)
        finally:
            with _lock:
                _running.pop(tid, None)
            for stream in streams:
                stream.stop()
        out: list = []
        data, _ = serialization.dumps(value, buffers=out)
    except BaseException as exc:   # noqa: B036 - user code may raise SystemExit too
        held = Held(error=serialization.describe_exception(exc, name))
    else:
        held = Held(value, data, out)
    done = {"task": tid, **describe(held, inline)}
    if DoneEvents.name in worker.plugins:
        _done[key] = done
    else:       # a worker that never got the plugin: no event may wait for it
        worker.log_event(DONE_TOPIC, done)
    return held


def _started(worker, tid: int) -> None:
    """On the worker's loop, ``STARTED_AFTER`` seconds after task ``tid`` began: say so
    if it still runs. Said only while ``stop`` can find it: the coordinator stops a task
    it was told of, so a cancel that follows this event must not miss the task."""
    with _lock:
        if tid not in _running:
            return
        worker.log_event(STARTED_TOPIC, {"task": tid, "worker": worker.address})


class DoneEvents(WorkerPlugin):
    """Sends a returned task's done event from the worker's loop, as Dask moves the task
    to memory: then it goes in the same message to the scheduler as Dask's own news that
    the task finished (logged from the task's thread, it would go alone, and the news
    wait for the worker's next batch)."""

    idempotent = True
    name = "pyfora-done-events"

    def setup(self, worker) -> None:
        self.worker = worker

    def transition(self, key, start, finish, **kwargs) -> None:
        if start in ("executing", "long-running", "cancelled", "resumed"):
            msg = _done.pop(key, None)
            if msg is not None and finish == "memory":
                self.worker.log_event(DONE_TOPIC, msg)


def describe(held: Held, inline: int) -> dict:
    """A task's outcome as its done event gives it: size, type, error, and the pickle
    when it is at most ``inline`` bytes and has no out-of-band buffers. Also run as a
    Dask task of its own when a finished task's event never came."""
    if held.error is not None or held.data is None:     # no pickle: only with an error
        return {"size": 0, "type": "", "value": None, "error": held.error}
    size = p.value_size(held.data, p.oob_layout(held.buffers))
    return {"size": size, "type": serialization.type_name(type(held.value)),
            "value": held.data if size <= inline and not held.buffers else None,
            "error": None}


def load(data: bytes, oob: list, buffers: list) -> Held:
    """A ``define``d value (its pickle and buffers, from the coordinator's copy)."""
    buffers = _received(oob, buffers)
    return Held(serialization.loads(data, buffers=buffers), data, buffers)


def fetch(held: Held) -> tuple[bytes, list, list]:
    """The pickle, the ``oob`` layout and the buffers (as ``bytes``: Dask's pickling of
    results does not take every buffer type)."""
    if held.data is None:       # the coordinator fetches only objects that hold a value
        raise LookupError(f"the task raised: {held.error}")
    return (held.data, p.oob_layout(held.buffers),
            [buffer if isinstance(buffer, bytes) else bytes(buffer) for buffer in held.buffers])


def stop(tid: int) -> None:
    """Stop task ``tid`` if it still runs in this process (``Client.run`` on the worker
    that said it started it; one not started yet is cancelled in Dask's queue)."""
    with _lock:
        ident = _running.get(tid)
        if ident is not None:
            interrupt(ident)
