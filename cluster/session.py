"""The coordinator's handler for one client session (``/api/session``).

When the session ends, for whatever reason, everything it queued or ran is cancelled and
everything it held is released.

Runs on the coordinator's event loop.
"""

from __future__ import annotations

import itertools

from pyfora import protocol as p
from pyfora.errors import PyforaError

from .link import Link

_names = itertools.count(1)


class ClientSession(Link):
    def __init__(self, ws, coordinator) -> None:
        super().__init__(ws, f"session-{next(_names)}")
        self.coordinator = coordinator
        self.dispatcher = coordinator.dispatcher

    def handle(self, message: p.Message) -> None:
        match message:
            case p.Submit():
                self.dispatcher.submit(self, message)
            case p.Define():
                self.send(self.dispatcher.define(self, message))
            case p.Fetch():
                self.spawn(self._fetch(message))
            case p.Release():
                for oid in message.oids:
                    self.dispatcher.store.release(oid, self)
            case p.Cancel():
                self.dispatcher.cancel(self, message.target)
            case p.Status():
                self.send(p.Info(id=message.id, info=self.coordinator.status()))
            case _:
                raise _unexpected(message)

    async def _fetch(self, message: p.Fetch) -> None:
        try:
            data = await self.dispatcher.object_bytes(message.oid, session=self)
        except (PyforaError, ConnectionError) as exc:
            self.send_error(message.id, exc)
        else:
            self.send(p.Value(id=message.id, data=data))


def _unexpected(message: p.Message) -> PyforaError:
    from pyfora.errors import ProtocolError
    return ProtocolError(f"a client may not send {message.op!r}")
