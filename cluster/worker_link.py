"""The coordinator's handler for one worker connection (``/api/worker``).

Runs on the coordinator's event loop.
"""

from __future__ import annotations

from pyfora import protocol as p
from pyfora.errors import ProtocolError, PyforaError

from .link import Link


class WorkerLink(Link):
    def __init__(self, ws, coordinator, name: str) -> None:
        super().__init__(ws, name)
        self.coordinator = coordinator
        self.dispatcher = coordinator.dispatcher
        self.task = None

    def handle(self, message: p.Message) -> None:
        match message:
            case p.Done():
                self.dispatcher.task_done(self, message)
            case p.Output():
                self.dispatcher.task_output(message)
            case p.Value() | p.Error():
                self.reply(message)
            case p.Get():
                self.spawn(self._get(message))
            case _:
                raise ProtocolError(f"a worker may not send {message.op!r}")

    async def _get(self, message: p.Get) -> None:
        """Relay an object this worker needs; it keeps a copy, so it becomes a holder."""
        try:
            data = await self.dispatcher.object_bytes(message.oid)
        except (PyforaError, ConnectionError) as exc:
            self.send_error(message.id, exc)
            return
        record = self.dispatcher.store.get(message.oid)
        if record is not None:
            record.holders.add(self)
        self.send(p.Value(id=message.id, data=data))

    def describe(self) -> dict:
        return {"name": self.name, "state": "busy" if self.task is not None else "idle",
                "task": self.task.tid if self.task is not None else None}
