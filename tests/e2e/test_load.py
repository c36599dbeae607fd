"""Load: 50 concurrent client sessions x 200 tasks each, every result checked, on the
shared two-worker cluster. (The 100,000-task memory soak is ``benchmarks/soak.py``.)"""

from __future__ import annotations

import asyncio
import time

from conftest import UNIT, http_status, wait_idle

from pyfora import aio

SESSIONS = 50
TASKS = 200
#: On the Dask backend each task costs Dask's scheduler a few ms (it is Dask's rate, about
#: 500 tasks/s here, not pyfora's that this measures): the same 50 sessions, fewer tasks.
DASK_TASKS = 40


def affine(x, k):
    return 3 * x + k


async def one_session(url: str, k: int, tasks: int) -> int:
    async with aio.connect(url) as ex:
        proxies = await asyncio.gather(*(ex.submit(affine, i, k) for i in range(tasks)))
        values = await asyncio.gather(*(proxy.toLocal() for proxy in proxies))
        assert values == [3 * i + k for i in range(tasks)]
        return len(values)


async def test_50_sessions_by_200_tasks(cluster_url, backend):
    tasks = TASKS if backend == "pool" else DASK_TASKS
    await asyncio.to_thread(wait_idle, cluster_url)
    started = time.monotonic()
    counts = await asyncio.wait_for(asyncio.gather(
        *(one_session(cluster_url, k, tasks) for k in range(SESSIONS))), 120 * UNIT)
    elapsed = time.monotonic() - started
    assert counts == [tasks] * SESSIONS
    status = await asyncio.to_thread(http_status, cluster_url)
    assert status["sessions"] == 0 or status["sessions"] < SESSIONS
    print(f"load: {SESSIONS * tasks} tasks from {SESSIONS} sessions in {elapsed:.1f} s")
