"""Frames written in order, at once when nothing is waiting to be written.

A websocket library's ``send`` is a coroutine because it may have to wait for the peer to
read (flow control); for small frames it almost never does. Awaiting it in a writer task
fed by a queue costs a loop iteration per frame (the task wakes, sends, sleeps again),
and a round trip through pyfora crosses four such queues. ``Sender.send`` instead runs the
library's ``send`` right away, up to its first suspension: usually it finishes there,
having written the frame to the transport. Only when it must wait does a task finish it,
and frames sent meanwhile queue behind it, so the order is kept.

Used by both ends of every connection: the client's session (websockets), the worker
(websockets) and the coordinator's links (aiohttp). Runs on the connection's event loop.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Generator
from typing import Any


class Sender:
    """Writes frames through ``send`` (a coroutine function of one frame), in order.

    ``gone``: the exceptions that mean the connection ended; frames are then dropped (the
    connection's reader sees the end and cleans up). ``ready()`` says whether ``send`` may
    be started outside a task now (e.g. the connection is open: a closing websockets
    connection waits on a deadline that needs its own task). With ``paused``, frames are
    only queued until ``start()`` (the other end expects another frame first).
    """

    def __init__(self, send: Callable[[bytes], Awaitable[Any]],
                 gone: tuple[type[BaseException], ...],
                 ready: Callable[[], bool] = lambda: True, paused: bool = False) -> None:
        self._send = send
        self._gone = gone
        self._ready = ready
        self._queue: collections.deque[bytes] = collections.deque()
        self._flushing: asyncio.Task | None = None
        self._paused = paused
        self.closed = False

    def start(self) -> None:
        """Write what was queued while paused, and from now on as it comes."""
        self._paused = False
        if self._queue and self._flushing is None and not self.closed:
            self._flushing = asyncio.ensure_future(self._flush(None))

    def send(self, frame: bytes) -> None:
        """Write ``frame`` now, or after the frames before it. Never blocks, never raises
        for a connection that ended."""
        if self.closed:
            return
        if self._paused:
            self._queue.append(frame)
            return
        if self._flushing is not None or not self._ready():
            self._queue.append(frame)
            if self._flushing is None:
                self._flushing = asyncio.ensure_future(self._flush(None))
            return
        coro = self._send(frame)
        try:
            waiting_for = coro.send(None)
        except StopIteration:
            return
        except self._gone:
            self.closed = True
            return
        self._flushing = asyncio.ensure_future(self._flush(_Resumed(coro, waiting_for)))

    def close(self) -> None:
        """Drop what is queued and every later frame (the connection was replaced)."""
        self.closed = True
        self._queue.clear()

    async def _flush(self, started: _Resumed | None) -> None:
        try:
            if started is not None:
                await started
            while self._queue and not self.closed:
                await self._send(self._queue.popleft())
        except self._gone:
            self.close()
        finally:
            self._flushing = None

    async def wait(self) -> None:
        """Until what was queued is written (or dropped)."""
        while self._flushing is not None:
            await asyncio.shield(self._flushing)


class _Resumed:
    """The rest of a coroutine that was run by hand up to its first suspension (which
    yielded ``waiting_for``), to be awaited in a task: ``yield from`` it, primed."""

    def __init__(self, coro: Any, waiting_for: Any) -> None:
        self._coro = coro
        self._waiting_for = waiting_for

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, value = self._coro, self._waiting_for
        while True:
            try:
                sent = yield value
            except BaseException as exc:    # noqa: B036 - cancellation is passed on too
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as stop:
                    return stop.value
