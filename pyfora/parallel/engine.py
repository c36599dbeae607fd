"""The parallel part of the runtime (``_runtime``): an ``_Engine`` splits the rest of a
comprehension into pieces for idle workers, steals work back and forth, and yields the
results in index order; ``run_piece`` runs one piece on the worker that took it. The
module docstring of ``_runtime`` says how (splitting, stealing, ordering, progress).

The tunables (``BATCH``, ``MIN_PIECE``, ``CHECK``) and the worker's context live in
``_runtime`` and are read from it at each use, so there is one of each.

Runs on the worker's task thread; ``_PieceState.split`` runs on the worker's loop thread.
"""

from __future__ import annotations

import pickle
import queue
import threading
from collections.abc import Callable
from time import perf_counter
from typing import Any

from . import _runtime

# -- the parallel part ----------------------------------------------------------------

class _Segment:
    __slots__ = ("start", "stop", "pos", "results", "yielded", "done", "error", "piece",
                 "t0", "cancelled")

    def __init__(self, start: int, stop: int) -> None:
        self.start = start
        self.stop = stop
        self.pos = start            # next element to compute (local segments)
        self.results: list = []
        self.yielded = 0
        self.done = False
        self.error: BaseException | None = None
        self.piece: int | None = None    # request id while it runs on another worker
        self.t0 = 0.0
        self.cancelled = False

    def __lt__(self, other: _Segment) -> bool:
        return self.start < other.start


class _Engine:
    """Computes ``it[start:]`` through ``fn`` on this worker and on idle ones."""

    def __init__(self, it: Any, start: int, fn: Callable, context: Any, rate: float,
                 idle: int, report: _runtime._Report | None = None) -> None:
        self.it = it
        self.report = report        # counts elements as batches and pieces finish
        self.fn = fn
        self.context = context
        self.rate = max(rate, 1e-9)
        self.idle = idle
        self.segs: list[_Segment] = [_Segment(start, len(it))]
        self.head = 0
        self.remote: dict[int, _Segment] = {}
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.fn_bytes: bytes | None = None
        self.next_check = perf_counter() + _runtime.CHECK

    # -- the loop ----------------------------------------------------------------------

    def results(self):
        """The results in index order; raises the first exception in index order."""
        try:
            self._offer(self.idle)
            while True:
                while self.head < len(self.segs):
                    seg = self.segs[self.head]
                    if seg.yielded < len(seg.results):
                        chunk = seg.results[seg.yielded:]
                        seg.yielded = len(seg.results)
                        yield from chunk
                    if not seg.done:
                        break
                    if seg.error is not None:
                        raise seg.error
                    seg.results = []
                    self.head += 1
                if self.head >= len(self.segs):
                    return
                self._step()
        finally:
            self._cancel(s for s in self.segs if s.piece is not None and not s.done)

    def _step(self) -> None:
        if self._drain() or perf_counter() >= self.next_check:
            self.next_check = perf_counter() + _runtime.CHECK
            self._offer(self.context.idle())
        seg = next((s for s in self.segs[self.head:] if s.piece is None and not s.done), None)
        if seg is not None:
            self._run_batch(seg)
            return
        if self._steal_for_self():
            return
        try:
            self._event(self.events.get(timeout=0.2))
        except queue.Empty:
            pass

    def _run_batch(self, seg: _Segment) -> None:
        a = seg.pos
        if a >= seg.stop:       # a split took all it had left (seen on Dask, under load)
            seg.done = True
            return
        b = min(seg.stop, a + max(1, int(_runtime.BATCH / self.rate)))
        t0 = perf_counter()
        try:
            seg.results.extend(_elements(self.fn(self.it[a:b])))
        except Exception as exc:
            self._failed(seg, exc)
            return
        self.rate = max((perf_counter() - t0) / (b - a), 1e-9)
        seg.pos = b
        seg.done = b >= seg.stop
        if self.report is not None:
            self.report.add(b - a)

    def _failed(self, seg: _Segment, exc: BaseException) -> None:
        """An element of ``seg`` raised: later elements are never needed."""
        seg.error, seg.done = exc, True
        later = self.segs[self.segs.index(seg) + 1:]
        del self.segs[self.segs.index(seg) + 1:]
        self._cancel(s for s in later if s.piece is not None and not s.done)

    # -- handing out work --------------------------------------------------------------

    def _remaining(self, seg: _Segment, now: float) -> float:
        if seg.piece is None:
            return seg.stop - seg.pos
        return seg.stop - seg.start - (now - seg.t0) / self.rate

    def _candidates(self, remote_only: bool = False) -> list[_Segment]:
        """Segments that may be split, most work left first. Running pieces always
        qualify: only their worker knows how much they have left (cost varies)."""
        now = perf_counter()
        segs = [s for s in self.segs[self.head:] if not s.done and s.error is None and (
            s.piece is not None or (not remote_only and
                                    self._remaining(s, now) * self.rate >= 2 * _runtime.MIN_PIECE))]
        segs.sort(key=lambda s: self._remaining(s, now), reverse=True)
        return segs

    def _split(self, seg: _Segment) -> _Segment | None:
        """Cut the upper half of what ``seg`` has not started into a new segment."""
        if seg.piece is None:
            left = seg.stop - seg.pos
            if left * self.rate < 2 * _runtime.MIN_PIECE:
                return None
            mid, stop = seg.pos + left // 2, seg.stop
        else:
            reply = self.context.split(seg.piece)
            if not reply:
                return None
            mid, stop = reply
        seg.stop = mid
        new = _Segment(mid, stop)
        self.segs.insert(self.segs.index(seg) + 1, new)
        return new

    def _offer(self, idle: int) -> None:
        """Give work to ``idle`` idle workers: split what has the most left."""
        if idle <= 0 or self.fn_bytes == b"":      # b"": the function cannot be pickled
            return
        if len(self.segs) == 1 and self.segs[0].pos == self.segs[0].start:
            self._initial_split(idle)
            return
        for _ in range(idle):
            new = next(filter(None, map(self._split, self._candidates())), None)
            if new is None:
                return
            self._send(new)

    def _initial_split(self, idle: int) -> None:
        seg = self.segs[0]
        total = seg.stop - seg.start
        parts = max(1, min(idle + 1, int(total * self.rate / _runtime.MIN_PIECE)))
        bounds = [seg.start + total * i // parts for i in range(parts + 1)]
        seg.stop = bounds[1]
        for a, b in zip(bounds[1:-1], bounds[2:], strict=True):
            new = _Segment(a, b)
            self.segs.append(new)
            self._send(new)

    def _steal_for_self(self) -> bool:
        for seg in self._candidates(remote_only=True):
            if self._split(seg) is not None:
                return True
        return False

    def _send(self, seg: _Segment) -> None:
        """Start ``seg`` on another worker; it stays local if it cannot be pickled."""
        from .. import serialization
        if self.fn_bytes is None:
            try:
                self.fn_bytes, _ = serialization.dumps(self.fn)
            except Exception:
                self.fn_bytes = b""
        if not self.fn_bytes:
            return
        try:
            payload, _ = serialization.dumps((run_piece, (
                self.fn_bytes, self.it[seg.start:seg.stop], seg.start, self.rate,
                self.report is not None), {}))
        except Exception:
            return
        seg.t0 = perf_counter()
        seg.piece = self.context.start_piece(payload, self.events.put)
        self.remote[seg.piece] = seg

    def _cancel(self, segs) -> None:
        for seg in list(segs):
            seg.cancelled = True
            self.context.cancel(seg.piece)

    # -- pieces finishing --------------------------------------------------------------

    def _drain(self) -> bool:
        got = False
        while True:
            try:
                message = self.events.get_nowait()
            except queue.Empty:
                return got
            got = self._event(message) or got

    def _event(self, message: Any) -> bool:
        """A piece finished, failed or was refused; True when a worker became free."""
        seg = self.remote.pop(message.id, None)
        if seg is None or seg.cancelled:
            return False
        seg.piece = None
        value = getattr(message, "value", None)
        if getattr(message, "error", None) is not None or value is None:
            seg.pos = seg.start         # refused, lost or unpicklable: compute it here
            seg.results = []
            return message.op == "done"
        results, error, stop = pickle.loads(value, buffers=message.frames)
        seg.results, seg.pos = results, stop
        if self.report is not None:
            self.report.add(len(results))
        if stop < seg.stop:             # a split whose reply we never saw
            self.segs.insert(self.segs.index(seg) + 1, _Segment(stop, seg.stop))
            seg.stop = stop
        seg.done = True
        if error is not None:
            self._failed(seg, _rebuild(error))
        return True


def _elements(part: Any) -> Any:
    """What a batch's result adds to the results: a dict comprehension's, its pairs."""
    return part.items() if type(part) is dict else part


def _rebuild(error: dict) -> BaseException:
    from .. import serialization
    exc = serialization.remote_exception_object(error)
    if exc is None:
        exc = RuntimeError(f"{error['type']}: {error.get('message', '')}")
    try:
        setattr(exc, serialization.REMOTE_FRAMES, list(error.get("frames") or ()))
    except Exception:
        pass
    return exc


# -- a piece, on the worker that runs it ----------------------------------------------

class _PieceState:
    """The part of a piece not started yet, which the loop thread may split off."""

    def __init__(self, base: int, n: int, rate: float) -> None:
        self.base = base
        self.pos = 0
        self.limit = n
        self.rate = max(rate, 1e-9)
        self.finished = False
        self.lock = threading.Lock()

    def claim(self) -> tuple[int, int] | None:
        with self.lock:
            if self.pos >= self.limit:
                self.finished = True
                return None
            a = self.pos
            self.pos = min(self.limit, a + max(1, int(_runtime.BATCH / self.rate)))
            return a, self.pos

    def split(self) -> tuple[int, int] | None:
        """Loop thread: give away the upper half of what is not started (global indices)."""
        with self.lock:
            left = self.limit - self.pos
            if self.finished or left < 2 or left * self.rate < 2 * _runtime.MIN_PIECE:
                return None
            mid, stop = self.pos + left // 2, self.limit
            self.limit = mid
            return self.base + mid, self.base + stop


def run_piece(fn_bytes: bytes, items: Any, base: int, rate: float,
              count: bool = False) -> tuple:
    """Compute ``items`` (indices ``base...`` of the root's iterable) through the function
    pickled in ``fn_bytes``; return ``(results, error, stop)`` with ``stop`` the global
    index where it ended (earlier than the end when it was split). With ``count`` (a piece
    of a ``pmap``), report its elements done."""
    from .. import serialization
    fn = serialization.loads(fn_bytes)
    state = _PieceState(base, len(items), rate)
    context = _runtime._context
    report = _runtime._Report(len(items), context) if count else None
    context.set_splittable(state)
    results: list = []
    try:
        while (claim := state.claim()) is not None:
            a, b = claim
            t0 = perf_counter()
            try:
                results.extend(_elements(fn(items[a:b])))
            except Exception as exc:
                return results, serialization.describe_exception(exc, context.name), base + b
            state.rate = max((perf_counter() - t0) / (b - a), 1e-9)
            if report is not None:
                report.add(b - a)
    finally:
        context.set_splittable(None)
    return results, None, base + state.limit
