"""Messages written in order: at once when nothing is waiting, else batched.

A websocket library's ``send`` is a coroutine because it may have to wait for the peer to
read (flow control); for small frames it almost never does. Awaiting it in a writer task
fed by a queue costs a loop iteration per message (the task wakes, sends, sleeps again),
and a round trip through pyfora crosses four such queues. ``Sender.send`` instead runs the
library's ``send`` right away, up to its first suspension: usually it finishes there,
having written the frame to the transport. Only when it must wait does a task finish it,
and what is sent meanwhile queues behind it, so the order is kept.

Writing costs a system call and a frame for the peer to parse, whatever the frame's size,
and thousands of tiny tasks make thousands of tiny messages at once. So after writing a
message at once, the messages sent in the rest of that loop iteration are held, and
written together at the start of the next (``wire.batch``): envelopes alone share
``batch`` frames, a message with buffers goes as its own frames between them. A lone
request goes out at once; a burst costs a few frames.

Used by both ends of every connection: the client's session (websockets), the worker
(websockets) and the coordinator's links (aiohttp). Runs on the connection's event loop.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Coroutine, Generator, Sequence
from typing import Any

import websockets

from .. import wire as p

# Looked up once: ``websockets.State`` is a lazy import, resolved again on every use.
_OPEN = websockets.State.OPEN


class Sender:
    """Writes messages (each the frames of one, ``wire.to_frames``) through ``send`` (a
    coroutine function of one frame), in order.

    ``gone``: the exceptions that mean the connection ended; what is queued is then dropped
    (the connection's reader sees the end and cleans up). ``ready()`` says whether ``send``
    may be started outside a task now (e.g. the connection is open: a closing websockets
    connection waits on a deadline that needs its own task). With ``paused``, messages are
    only queued until ``start()`` (the other end expects another frame first). ``limit``:
    the largest ``batch`` frame to make (the peer's frame limit, if lower than
    ``wire.BATCH_BYTES``). ``write_now(frame)``, if given, writes a frame without a
    coroutine when it can, and says whether it did (``pyfora.net.frames``).
    """

    def __init__(self, send: Callable[[Any], Coroutine[Any, Any, Any]],
                 gone: tuple[type[BaseException], ...],
                 ready: Callable[[], bool] = lambda: True, paused: bool = False,
                 limit: int = p.BATCH_BYTES,
                 write_now: Callable[[Any], bool] | None = None) -> None:
        self._send = send
        self._write_now = write_now
        self._gone = gone
        self._ready = ready
        self._limit = min(limit, p.BATCH_BYTES)
        self._queue: collections.deque[list] = collections.deque()
        self._flushing: asyncio.Task | None = None
        self._held: list[list] | None = None    # a list while a burst is being held
        self._paused = paused
        self.closed = False

    @classmethod
    def on_websocket(cls, ws: Any, limit: int) -> Sender:
        """For a ``websockets`` client connection (the client's session, a worker) whose
        peer takes frames of up to ``limit`` bytes."""
        # Started outside a task only while open: a closing connection's send waits for
        # the close under a deadline, which needs a task of its own.
        return cls(ws.send, (websockets.ConnectionClosed,), lambda: ws.state is _OPEN,
                   limit=limit, write_now=getattr(ws, "write_now", None))

    def start(self) -> None:
        """Write what was queued while paused, and from now on as it comes."""
        self._paused = False
        if self._queue and self._flushing is None and not self.closed:
            self._flushing = asyncio.ensure_future(self._flush(None, ()))

    def send(self, frames: list) -> None:
        """Write one message's ``frames`` now, or after the messages before it. Never
        blocks, never raises for a connection that ended."""
        if self.closed:
            return
        if self._held is not None:
            self._held.append(frames)
        elif self._paused or self._flushing is not None or not self._ready():
            self._queue.append(frames)
            if self._flushing is None and not self._paused:
                self._flushing = asyncio.ensure_future(self._flush(None, ()))
        else:
            self._write(frames)
            if not self.closed and self._flushing is None:
                self._held = []
                asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Write the messages held since the last one written at once, now."""
        held, self._held = self._held, None
        if not held or self.closed:
            return
        if self._flushing is not None or not self._ready():
            self._queue.extend(held)
            if self._flushing is None:
                self._flushing = asyncio.ensure_future(self._flush(None, ()))
            return
        self._write(p.batch(held, self._limit))

    def _write(self, frames: Sequence) -> None:
        """Start ``send`` of each frame here; a task finishes the one that has to wait, and
        writes the rest."""
        write_now = self._write_now
        for i, frame in enumerate(frames):
            if write_now is not None and write_now(frame):
                continue
            coro = self._send(frame)
            try:
                waiting_for = coro.send(None)
            except StopIteration:
                continue
            except self._gone:
                self.close()
                return
            self._flushing = asyncio.ensure_future(
                self._flush(_Resumed(coro, waiting_for), frames[i + 1:]))
            return

    def close(self) -> None:
        """Drop what is queued and everything sent later (the connection ended or was
        replaced)."""
        self.closed = True
        self._queue.clear()
        self._held = None

    async def _flush(self, started: _Resumed | None, rest: Sequence) -> None:
        try:
            if started is not None:
                await started
            for frame in rest:
                if self.closed:
                    return
                await self._send(frame)
            while self._queue and not self.closed:
                messages = list(self._queue)
                self._queue.clear()
                for frame in p.batch(messages, self._limit):
                    if self.closed:
                        return
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
