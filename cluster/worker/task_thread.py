"""What the thread that runs a user's task needs, on either backend: its printed output
captured a line at a time (``CapturedStream``), and a way to stop it (``interrupt``).

Used by the built-in worker (``worker_main``) and by the Dask backend's task function
(``dask_tasks``).
"""

from __future__ import annotations

import ctypes
import sys
import threading


class TaskCancelled(BaseException):
    """Raised inside a running task to stop it (a BaseException so user code's
    ``except Exception`` does not swallow it)."""


def interrupt(thread_ident: int) -> None:
    """Raise ``TaskCancelled`` in that thread at its next bytecode (a thread blocked in C,
    e.g. in ``time.sleep``, sees it when the call returns)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_ident),
                                               ctypes.py_object(TaskCancelled))


class CapturedStream:
    """Replaces sys.stdout/stderr: a task thread's writes go to its ``sink``, whole lines
    at a time; every other thread writes to the real stream."""

    def __init__(self, name: str, real) -> None:
        self.name = name
        self.real = real
        self.local = threading.local()

    def write(self, text: str) -> int:
        sink = getattr(self.local, "sink", None)
        if sink is None:
            return self.real.write(text)
        self.local.buffer += text
        if "\n" in self.local.buffer:
            whole, _, self.local.buffer = self.local.buffer.rpartition("\n")
            sink(self.name, whole + "\n")
        return len(text)

    def flush(self) -> None:
        if getattr(self.local, "sink", None) is None:
            self.real.flush()

    def start(self, sink) -> None:
        self.local.sink, self.local.buffer = sink, ""

    def stop(self) -> None:
        if self.local.buffer:
            self.local.sink(self.name, self.local.buffer)
        self.local.sink = None

    def __getattr__(self, name):
        return getattr(self.real, name)


def capture_streams() -> list[CapturedStream]:
    """Install the capturing stdout and stderr (once per process) and return them."""
    if not isinstance(sys.stdout, CapturedStream):
        sys.stdout = CapturedStream("stdout", sys.stdout)
    if not isinstance(sys.stderr, CapturedStream):
        sys.stderr = CapturedStream("stderr", sys.stderr)
    return [sys.stdout, sys.stderr]
