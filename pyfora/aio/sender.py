"""Frames written in order: at once when nothing is waiting, else batched.

A websocket library's ``send`` is a coroutine because it may have to wait for the peer to
read (flow control); for small frames it almost never does. Awaiting it in a writer task
fed by a queue costs a loop iteration per frame (the task wakes, sends, sleeps again),
and a round trip through pyfora crosses four such queues. ``Sender.send`` instead runs the
library's ``send`` right away, up to its first suspension: usually it finishes there,
having written the frame to the transport. Only when it must wait does a task finish it,
and frames sent meanwhile queue behind it, so the order is kept.

Writing costs a system call and a frame for the peer to parse, whatever the frame's size,
and thousands of tiny tasks make thousands of tiny messages at once. So after writing a
frame at once, the frames sent in the rest of that loop iteration are held, and written
together at the start of the next as ``batch`` frames (``protocol.batch``): a lone
request goes out at once; a burst costs a few frames.

Used by both ends of every connection: the client's session (websockets), the worker
(websockets) and the coordinator's links (aiohttp). Runs on the connection's event loop.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Coroutine, Generator
from typing import Any

from .. import protocol as p


class Sender:
    """Writes frames through ``send`` (a coroutine function of one frame), in order.

    ``gone``: the exceptions that mean the connection ended; frames are then dropped (the
    connection's reader sees the end and cleans up). ``ready()`` says whether ``send`` may
    be started outside a task now (e.g. the connection is open: a closing websockets
    connection waits on a deadline that needs its own task). With ``paused``, frames are
    only queued until ``start()`` (the other end expects another frame first).
    """

    def __init__(self, send: Callable[[bytes], Coroutine[Any, Any, Any]],
                 gone: tuple[type[BaseException], ...],
                 ready: Callable[[], bool] = lambda: True, paused: bool = False) -> None:
        self._send = send
        self._gone = gone
        self._ready = ready
        self._queue: collections.deque[bytes] = collections.deque()
        self._flushing: asyncio.Task | None = None
        self._held: list[bytes] | None = None   # a list while a burst is being held
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
        if self._held is not None:
            self._held.append(frame)
        elif self._paused or self._flushing is not None or not self._ready():
            self._queue.append(frame)
            if self._flushing is None and not self._paused:
                self._flushing = asyncio.ensure_future(self._flush(None))
        else:
            self._write(frame)
            if not self.closed and self._flushing is None:
                self._held = []
                asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Write the frames held since the last one written, now."""
        held, self._held = self._held, None
        if not held or self.closed:
            return
        if self._flushing is not None:
            self._queue.extend(held)
            return
        frames = p.batch(held)
        self._write(frames[0])
        if len(frames) > 1:
            self._queue.extend(frames[1:])
            if self._flushing is None:
                self._flushing = asyncio.ensure_future(self._flush(None))

    def _write(self, frame: bytes) -> None:
        """Start ``send(frame)`` here; a task finishes it if it has to wait."""
        coro = self._send(frame)
        try:
            waiting_for = coro.send(None)
        except StopIteration:
            return
        except self._gone:
            self.close()
            return
        self._flushing = asyncio.ensure_future(self._flush(_Resumed(coro, waiting_for)))

    def close(self) -> None:
        """Drop what is queued and every later frame (the connection ended or was
        replaced)."""
        self.closed = True
        self._queue.clear()
        self._held = None

    async def _flush(self, started: _Resumed | None) -> None:
        try:
            if started is not None:
                await started
            while self._queue and not self.closed:
                frames = p.batch(list(self._queue))
                self._queue.clear()
                for frame in frames:
                    await self._send(frame)
        except self._gone:
            self.close()
        finally:
            self._flushing = None

    async def wait(self) -> None:
        """Until what was sent is written (or dropped)."""
        self.flush()
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
