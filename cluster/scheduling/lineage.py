"""Objects lost with a worker, computed again from their lineage.

Every computed object keeps its *recipe*: the payload, inputs and inline limit of the task
that made it (``store.ObjectRecord.recipe``). When the only worker holding an object dies
the object is *lost*, and nothing happens until something needs it: a task that uses it,
a client's download, or a worker fetching it. Then ``Rebuilder.start`` queues the recipe
again, ahead of everything else, as a *rebuild* task that stores its result under the
same object id; tasks that need the object wait for it (``Rebuild.waiters``), downloads
await ``Rebuild.done``. A recipe's own inputs may be lost or dormant too: the rebuild
task waits for them the same way, so a chain is rebuilt from its last surviving link.
Defined values never get lost: the coordinator keeps their bytes (``record.data``).
Objects made by a task whose payload had out-of-band buffers (a large argument) keep no
recipe: the coordinator holds a task's bytes only while it relays them, so such an object
lost with its worker stays lost (``WorkerCrashedError``).

A rebuild that dies with its worker is tried again up to ``MAX_ATTEMPTS`` times; one that
raises (code that is not deterministic) fails the object, and whatever waits for it,
with that error.

Runs on the coordinator's event loop, called by the ``Dispatcher``; nothing here awaits.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING

from cluster.coordinator.store import ObjectRecord
from pyfora import wire as p

if TYPE_CHECKING:
    from cluster.scheduling.dispatcher import Dispatcher, Task
    from cluster.scheduling.peers import Worker

#: The error type of a task that could not finish because a worker died: its own, or the
#: one holding an input that could not be computed again.
CRASHED = "pyfora.WorkerCrashedError"


def crash_error(message: str, worker: str | None = None) -> dict:
    return {"type": CRASHED, "message": message, "frames": [], "exc": None, "worker": worker}

MAX_ATTEMPTS = 3


@dataclasses.dataclass(frozen=True, slots=True)
class Recipe:
    """How an object was computed."""
    payload: bytes
    deps: tuple
    inline: int


class Rebuild:
    """One lost object being computed again."""

    def __init__(self, record: ObjectRecord, task: Task) -> None:
        self.record = record
        self.task = task
        self.waiters: list[Task] = []
        # True once the object is back, False if it could not be rebuilt.
        self.done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.attempts = 1

    def settle(self, ok: bool) -> list[Task]:
        """It is over: wake the downloads; return the waiting tasks (once)."""
        if self.record.rebuild is self:
            self.record.rebuild = None
        if not self.done.done():
            self.done.set_result(ok)
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            waiter.waiting = None
        return waiters


def is_lost(record: ObjectRecord) -> bool:
    """Its value is nowhere, but its recipe can make it again."""
    return (not record.holders and record.data is None and record.error is None
            and record.recipe is not None)


class Rebuilder:
    def __init__(self, dispatcher: Dispatcher) -> None:
        self.d = dispatcher
        self.rebuilt = 0      # objects computed again, for /api/status

    def remember(self, task: Task, record: ObjectRecord) -> None:
        """``record`` was just computed by ``task``: keep its recipe. Call before the
        task's own references to its inputs are dropped."""
        if task.oob:
            return      # its buffers were not kept (see above)
        record.recipe = Recipe(task.payload, tuple(task.deps), task.inline)
        self.d.store.add_children(task.deps)

    def ready(self, task: Task) -> bool:
        """Whether every input of ``task`` has a copy somewhere. If one is lost, start
        rebuilding it and park ``task`` until it is back; if one failed, fail ``task``."""
        for oid in task.deps:
            record = self.d.store.get(oid)
            if record is None:
                continue
            if record.error is not None:
                self.d.fail(task, record.error)
                return False
            if not record.holders and record.data is None and record.recipe is None:
                self.d.fail(task, crash_error(
                    f"input object {oid} was lost with its worker and cannot be computed "
                    "again: it was made from a large argument, which is not kept"))
                return False
            if is_lost(record):
                rebuild = self.start(record)
                rebuild.waiters.append(task)
                task.waiting = rebuild
                return False
        return True

    def start(self, record: ObjectRecord) -> Rebuild:
        """Compute ``record`` again (once, however many ask)."""
        if record.rebuild is not None:
            return record.rebuild
        d = self.d
        recipe = record.recipe
        assert recipe is not None, "only a lost object (is_lost) is computed again"
        task = d.new_task(record.owner, recipe.payload, list(recipe.deps), recipe.inline,
                          record.oid)
        rebuild = record.rebuild = task.rebuild = Rebuild(record, task)
        for oid in task.deps:
            d.store.incref(oid)
        d.enqueue(task, front=True)     # may settle it already, if an input failed
        return rebuild

    def retry(self, rebuild: Rebuild) -> bool:
        """The worker running ``rebuild``'s task died: queue it again, if it has tries
        left."""
        task = rebuild.task
        if rebuild.attempts >= MAX_ATTEMPTS or task.cancelled:
            return False
        rebuild.attempts += 1
        task.worker = None
        self.d.enqueue(task, front=True)
        return True

    def finished(self, rebuild: Rebuild, msg: p.Done, holder: Worker | None) -> None:
        """``rebuild``'s task ended (its references to its inputs are already dropped)."""
        task, record, d = rebuild.task, rebuild.record, self.d
        if d.store.get(record.oid) is not record or task.cancelled or record.refs <= 0:
            if holder is not None and msg.error is None:
                holder.send(p.Free(oids=[record.oid]))
            self.abandon(rebuild)
            return
        if msg.error is not None and msg.error["type"] == CRASHED:
            # Workers died, not the code: it stays lost, to be tried again when next needed.
            for waiter in rebuild.settle(False):
                d.crashed(waiter, msg.error)
            return
        if msg.error is not None:
            record.error = msg.error
            for waiter in rebuild.settle(False):
                d.fail(waiter, msg.error)
            return
        self.rebuilt += 1
        if holder is not None:
            record.holders.add(holder)
        record.keep = True      # see store: rebuilt inputs are not rebuilt again per use
        for waiter in rebuild.settle(True):
            d.enqueue(waiter)

    def abandon(self, rebuild: Rebuild) -> None:
        """Nobody needs it any more (its session ended, or the record was dropped)."""
        for waiter in rebuild.settle(False):
            if not waiter.cancelled:
                self.d.crashed(waiter, crash_error(
                    f"input object {rebuild.record.oid} was lost with its worker and could "
                    "not be computed again"))
