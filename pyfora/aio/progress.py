"""The progress line of long calls: a with-block, ``map`` or ``toLocal`` that takes more
than ``DELAY`` seconds shows busy cores, elements done (where known) and elapsed time.

It goes to stderr when stderr is a terminal, and to the cell's output in Jupyter (a
widget when ipywidgets is installed, else a status line redrawn in place); never to
redirected or non-interactive output unless asked for. Who decides, first to last: the
``progress=`` argument of ``connect`` (True or False), then ``$PYFORA_PROGRESS`` (``1`` or
``0``), then that rule. ``pyfora.aio.connect`` defaults to False: an async service serves
many calls at once, and its stderr is a log, not a screen.

tqdm draws the line: it handles terminal widths, redrawing in place, and Jupyter.

Runs on the event loop: the bar is drawn from a task there, between awaits, so it needs
no lock. Drawing is a write to stderr of a few dozen bytes, at most every ``INTERVAL``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TextIO

#: Seconds a call runs before its progress line appears.
DELAY = 1.0
#: Seconds between two redraws.
INTERVAL = 0.25
ENV = "PYFORA_PROGRESS"

_YES = {"1", "true", "yes", "on"}
_NO = {"0", "false", "no", "off"}


def in_jupyter() -> bool:
    """Whether this process is a Jupyter kernel (an IPython shell that talks ZMQ)."""
    ipython = sys.modules.get("IPython")
    if ipython is None or "ipykernel" not in sys.modules:
        return False
    shell = ipython.get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def wanted(setting: bool | None, stream: TextIO | None = None) -> bool:
    """Whether to show progress: ``setting`` if not None, else ``$PYFORA_PROGRESS`` if
    set, else whether ``stream`` (default stderr) is a terminal or a Jupyter cell."""
    if setting is not None:
        return setting
    env = os.environ.get(ENV, "").strip().lower()
    if env in _YES:
        return True
    if env in _NO:
        return False
    stream = stream if stream is not None else sys.stderr
    try:
        tty = stream is not None and stream.isatty()
    except (AttributeError, ValueError):    # no isatty, or closed
        tty = False
    return tty or in_jupyter()


def describe(info: dict | None) -> str:
    """The status part of the line: ``2/4 cores busy, 3 queued``."""
    if not info:
        return ""
    workers = info.get("workers")
    if isinstance(workers, list):           # a full /api/status-like dict
        busy = sum(1 for w in workers if w.get("state") == "busy")
        count = len(workers)
        queued = info.get("tasks", {}).get("queued", 0)
    else:                                   # a pushed load report
        busy, count, queued = info.get("cpus", 0), workers or 0, info.get("queued", 0)
    text = f"{busy}/{count} cores busy"
    return text + (f", {queued} queued" if queued else "")


def _make_bar(what: str, total: int | None, file: TextIO | None) -> Any:
    """A tqdm bar: the notebook widget in Jupyter when ipywidgets is there, else text."""
    from tqdm import tqdm as text_bar
    bar_cls: Any = text_bar
    if file is None and in_jupyter():
        try:
            import ipywidgets  # noqa: F401
            from tqdm.notebook import tqdm as widget_bar
            bar_cls = widget_bar
        except ImportError:
            pass        # the text bar, redrawn with \r, is a live line in a cell too
    # tqdm puts ", " before a postfix: "with-block, 2/4 cores busy [00:03]".
    if total is None:
        fmt = "{desc}{postfix} [{elapsed}]"
    else:
        fmt = ("{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
               "[{elapsed}<{remaining}]{postfix}")
    return bar_cls(total=total, desc=what, file=file if file is not None else sys.stderr,
                   leave=False, bar_format=fmt, dynamic_ncols=True, mininterval=0,
                   postfix="starting")


class Progress:
    """One progress line. ``report(info)`` and ``advance(n)`` or ``count(done, total)``
    feed it; ``run`` draws it after ``DELAY`` until cancelled, then removes it."""

    def __init__(self, what: str, total: int | None = None,
                 poll: Callable[[], Awaitable[dict]] | None = None,
                 file: TextIO | None = None, delay: float = DELAY) -> None:
        self.what = what
        self.total = total
        self.done = 0
        self.info: dict | None = None
        self.poll = poll
        self.file = file
        self.delay = delay
        self.bar: Any = None
        self.started = time.time()      # tqdm's clock

    def report(self, info: dict) -> None:
        """The cluster's latest load (pushed, or polled)."""
        self.info = info

    def advance(self, n: int = 1) -> None:
        """``n`` more elements are done."""
        self.done += n

    def count(self, done: int, total: int) -> None:
        """The cluster's count: ``done`` of ``total`` elements. A line that did not know
        its total (a map over a proxy) learns it; drawn already, it is redrawn with a bar."""
        if self.total != total:
            self.total = total
            if self.bar is not None:
                self.bar.close()
                self.bar = None
        self.done = max(self.done, done)    # the latest count; a late, older one is ignored

    def draw(self) -> None:
        if self.bar is None:
            self.bar = _make_bar(self.what, self.total, self.file)
            self.bar.start_t = self.started      # elapsed counts from the call's start
        if self.total is not None and self.done != self.bar.n:
            self.bar.update(self.done - self.bar.n)
        self.bar.set_postfix_str(describe(self.info) or "waiting for the cluster",
                                 refresh=True)

    async def run(self) -> None:
        try:
            await asyncio.sleep(self.delay)
            while True:
                if self.poll is not None:
                    try:
                        self.report(await self.poll())
                    except Exception:       # a status we cannot get: keep the elapsed time
                        pass
                self.draw()
                await asyncio.sleep(INTERVAL)
        finally:
            if self.bar is not None:
                self.bar.close()


@contextlib.asynccontextmanager
async def track(executor: Any, what: str, total: int | None = None,
                poll: bool = True) -> AsyncIterator[Progress | None]:
    """Show a progress line for the body, if ``executor`` wants one and the body runs
    longer than ``DELAY``. Yields the ``Progress`` (None when off) so the body can
    ``advance`` it. With ``poll``, the line asks the cluster for its load as it redraws.
    """
    if not wanted(getattr(executor, "progress", False)):
        yield None
        return
    progress = Progress(what, total, poll=executor.status if poll else None)
    task = asyncio.create_task(progress.run())
    try:
        yield progress
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
