"""A worker's periodic report of its own memory and CPU use, for the dashboard.

The worker measures itself (psutil) rather than the coordinator sampling its children:
workers started by hand on other hosts (``pyfora-worker URL``) are not the coordinator's
children, and only the worker's own process can see them. One ``stats`` message a
second is a few dozen bytes, negligible next to the task traffic.

Runs on the worker's event loop; psutil's reads are a few microseconds, so they do not
need a thread of their own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import psutil

from pyfora import compiled
from pyfora import wire as p

#: Seconds between two reports.
INTERVAL = 1.0


def sample(process: psutil.Process) -> p.Stats:
    """This process's resident memory, CPU percent (of one core) since the last call, and
    what its compiled tier did."""
    return p.Stats(rss=process.memory_info().rss, cpu=round(process.cpu_percent(None), 1),
                   compiled=compiled.counts())


async def report(send: Callable[[p.Message], None], interval: float = INTERVAL) -> None:
    """Send a ``stats`` message now and every ``interval`` seconds until cancelled."""
    process = psutil.Process()
    process.cpu_percent(None)     # the first call only starts the CPU clock
    while True:
        send(sample(process))
        await asyncio.sleep(interval)
