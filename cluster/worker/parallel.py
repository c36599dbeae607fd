"""The worker's side of automatic parallelism: what ``pyfora.parallel._runtime`` uses.

``ParallelContext`` is installed into the runtime when the worker starts. Its methods are
called from the task thread (``idle``, ``start_piece``, ``split``, ``cancel``,
``progress``, ``set_splittable``); the messages they cause are answered on the worker's
event loop (``handle``), which keeps running while the task thread computes. A task
waiting for its pieces never blocks the loop, so it can still be asked to split its own
piece.

Runs on both threads as documented per method.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pyfora import wire as p

if TYPE_CHECKING:
    from cluster.worker.main import Worker

#: How long the task thread waits for the coordinator's answer before going on alone.
REPLY_TIMEOUT = 30.0


class ParallelContext:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.name = worker.name
        self.callbacks: dict[int, Callable[[p.Message], None]] = {}
        self._splittable: tuple[int, Any] | None = None    # (task id, _PieceState)
        self._lock = threading.Lock()

    # -- task thread ---------------------------------------------------------------------

    def idle(self) -> int:
        """How many workers are idle now (0 if the coordinator does not answer)."""
        info = self._ask(p.Status(id=0))
        return int(info.get("idle", 0))

    def start_piece(self, payload: bytes, on_reply: Callable[[p.Message], None]) -> int:
        """Send a piece; ``on_reply(done_or_error)`` is called on the loop thread when it
        finished or was refused. Returns its request id. Does not wait."""
        rid = self.worker.ids()

        def send() -> None:
            self.callbacks[rid] = on_reply
            self.worker.send(p.Piece(id=rid, payload=payload))
        self.worker.loop.call_soon_threadsafe(send)
        return rid

    def split(self, rid: int) -> tuple[int, int] | None:
        """Ask running piece ``rid`` to give away the upper half of its unstarted range."""
        info = self._ask(p.Split(id=0, target=rid))
        if "start" in info and "stop" in info:
            return int(info["start"]), int(info["stop"])
        return None

    def cancel(self, rid: int) -> None:
        def send() -> None:
            self.callbacks.pop(rid, None)
            self.worker.send(p.Cancel(target=rid))
        self.worker.loop.call_soon_threadsafe(send)

    def progress(self, done: int, total: int) -> None:
        """The running task's map has ``done`` of ``total`` elements; the coordinator
        forwards it to the client that submitted the task. Does not wait."""
        running = self.worker.running
        if running is not None:
            self.worker.send_threadsafe(p.Progress(target=running[0], done=done, total=total))

    def set_splittable(self, state: Any) -> None:
        """The running piece's splittable state, or None when it ends."""
        running = self.worker.running
        with self._lock:
            self._splittable = (running[0], state) if state is not None and running else None

    def _ask(self, message: p.Status | p.Split) -> dict:
        future = asyncio.run_coroutine_threadsafe(self._request(message), self.worker.loop)
        try:
            reply = future.result(REPLY_TIMEOUT)
        except Exception:
            future.cancel()
            return {}
        return reply.info if isinstance(reply, p.Info) else {}

    async def _request(self, message: p.Status | p.Split) -> p.Message:
        message.id = self.worker.ids()
        future = self.worker.loop.create_future()
        self.worker.pending[message.id] = future
        try:
            self.worker.send(message)
            return await future
        finally:
            self.worker.pending.pop(message.id, None)

    # -- loop thread ---------------------------------------------------------------------

    def handle(self, message: p.Message) -> bool:
        """A message for the parallel machinery; False if it is not one."""
        match message:
            case p.Done():          # a piece finished (or was cancelled: then dropped)
                callback = self.callbacks.pop(message.id, None)
                if callback is not None:
                    callback(message)
            case p.Error() if message.id in self.callbacks:     # a piece was refused
                self.callbacks.pop(message.id)(message)
            case p.Info():
                future = self.worker.pending.pop(message.id, None)
                if future is not None and not future.done():
                    future.set_result(message)
            case p.Split():
                self.worker.send(p.Info(id=message.id, info=self._split(message.target)))
            case _:
                return False
        return True

    def _split(self, task_id: int) -> dict:
        with self._lock:
            current = self._splittable
        if current is None or current[0] != task_id:
            return {}
        given = current[1].split()
        return {} if given is None else {"start": given[0], "stop": given[1]}
