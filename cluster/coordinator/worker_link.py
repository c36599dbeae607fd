"""The coordinator's handler for one worker connection (``/api/worker``). What a worker
may send is checked against what it was given by the dispatcher (``check_get``, and
its handling of ``done``, ``output`` and ``progress``).

Runs on the coordinator's event loop.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

from cluster.coordinator.link import Link, Socket
from cluster.scheduling.dispatcher import Dispatcher, Task
from pyfora import wire as p
from pyfora.errors import ProtocolError, PyforaError
from pyfora.net.shared_memory import Directory

if TYPE_CHECKING:
    from cluster.coordinator.coordinator import Coordinator


class WorkerLink(Link):
    """A ``peers.Worker`` of ``dispatcher``: only the pool's backend takes workers."""

    def __init__(self, ws: Socket, coordinator: Coordinator, dispatcher: Dispatcher,
                 name: str, shm: Directory | None = None) -> None:
        super().__init__(ws, name, coordinator.config.max_frame, shm)
        self.coordinator = coordinator
        self.dispatcher = dispatcher
        self._task: Task | None = None
        self.task_started = 0.0          # time.monotonic() when ``task`` was set
        self.stats: p.Stats | None = None   # the worker's latest report of itself

    def handle(self, message: p.Message) -> None:
        match message:
            case p.Done():
                self.dispatcher.task_done(self, message)
            case p.Output():
                self.dispatcher.task_output(self, message)
            case p.Progress():
                self.dispatcher.task_progress(self, message)
            case p.Value() | p.Error():
                self.reply(message)
            case p.Get():
                self.dispatcher.check_get(self, message.oid)    # else its error is the reply
                self.spawn(self._get(message))
            case p.Piece():
                self.dispatcher.piece(self, message)
            case p.Split():
                self.spawn(self.dispatcher.split(self, message))
            case p.Cancel():
                self.dispatcher.cancel(self, message.target)
            case p.Status():
                self.send(p.Info(id=message.id, info=self.dispatcher.idle_info()))
            case p.Info():
                self.reply(message)
            case p.Stats():
                self.stats = message
            case _:
                raise ProtocolError(f"a worker may not send {message.op!r}")

    async def _get(self, message: p.Get) -> None:
        """Relay an object this worker needs; it keeps a copy, so it becomes a holder."""
        try:
            value = await self.dispatcher.object_bytes(message.oid, rebuild=False)
        except (PyforaError, ConnectionError) as exc:
            self.send_error(message.id, exc)
            return
        record = self.dispatcher.store.get(message.oid)
        if record is not None:
            record.holders.add(self)
        self.send(dataclasses.replace(value, id=message.id))

    @property
    def task(self) -> Task | None:
        """The task this worker runs now, or None."""
        return self._task

    @task.setter
    def task(self, task: Task | None) -> None:
        self._task = task
        self.task_started = time.monotonic()

    def describe(self) -> dict:
        """This worker for ``/api/status`` and the dashboard: ``rss`` (bytes) and ``cpu``
        (percent of one core) are None until its first ``stats`` report."""
        task = self._task
        return {"name": self.name, "state": "busy" if task is not None else "idle",
                "task": task.tid if task is not None else None,
                "task_seconds": round(time.monotonic() - self.task_started, 2)
                if task is not None else None,
                "rss": self.stats.rss if self.stats is not None else None,
                "cpu": self.stats.cpu if self.stats is not None else None,
                "compiled": self.stats.compiled if self.stats is not None else {}}
