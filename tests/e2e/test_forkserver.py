"""The embedded default's workers are forked from a fork server (``cluster.worker.forkserver``):
a worker killed by hand is replaced by another fork and its task fails saying how it died
(the server's ``waitpid``, reported to the pool); the server and its workers exit with
the client, even one killed with SIGKILL; a dead server leaves a pool that still works."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest
from conftest import UNIT, alive, async_wait_until, wait_until

import pyfora
from pyfora import aio

T = 30 * UNIT


def until_file(path):
    """Runs until ``path`` exists (30 s at most)."""
    deadline = time.monotonic() + 30
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return "released"


async def _running(ex) -> bool:
    return (await ex.status())["tasks"]["running"] == 1


async def _names_are(ex, names: list[str]) -> bool:
    return [w["name"] for w in (await ex.status())["workers"]] == names


async def _pid(ex) -> int:
    return await asyncio.wait_for((await ex.submit(os.getpid)).toLocal(), T)


async def test_a_forked_worker_killed_by_hand_fails_its_task_and_is_replaced(tmp_path):
    async with aio.connect(None, workers=1) as ex:
        first = await _pid(ex)
        server = psutil.Process(first).ppid()
        assert server != os.getpid() and psutil.Process(server).ppid() == os.getpid()
        task = asyncio.ensure_future(ex.submit(until_file, str(tmp_path / "never")))
        await async_wait_until(lambda: _running(ex), T, "the task to start")
        os.kill(first, signal.SIGKILL)
        with pytest.raises(pyfora.WorkerCrashedError, match="killed by SIGKILL"):
            await (await asyncio.wait_for(task, T)).toLocal()
        second = await _pid(ex)
        assert second != first and not alive(first)
        assert psutil.Process(second).ppid() == server       # forked, not started afresh


async def test_a_worker_exiting_reports_its_own_exit_code():
    async with aio.connect(None, workers=1) as ex:
        with pytest.raises(pyfora.WorkerCrashedError, match="exited with code 7"):
            await (await asyncio.wait_for(ex.submit(os._exit, 7), T)).toLocal()
        assert await _pid(ex) != os.getpid()


async def test_a_dead_fork_server_leaves_a_pool_that_starts_workers_by_exec():
    async with aio.connect(None, workers=1) as ex:
        first = await _pid(ex)
        server = psutil.Process(first).ppid()
        os.kill(server, signal.SIGKILL)
        # Its worker is killed with it (no one could report its exit), and replaced.
        await async_wait_until(lambda: not alive(first), T, "the orphaned worker to go")
        await async_wait_until(lambda: _names_are(ex, ["worker-2"]), T, "its replacement")
        second = await _pid(ex)
        assert second != first and psutil.Process(second).ppid() == os.getpid()


async def test_the_memory_limit_samples_forked_workers_by_pid():
    """The pool's memory watch finds a forked worker by the pid the server reported, and
    says why it killed it."""
    from cluster.coordinator.pool import WorkerPool
    with socket.create_server(("127.0.0.1", 0)) as listening:   # never answers: they wait
        url = f"ws://127.0.0.1:{listening.getsockname()[1]}/api/worker"
        pool = WorkerPool(1, url, "token", memory_limit=1, fork=True)
        await pool.start()
        try:
            await async_wait_until(lambda: "worker-1" in pool.reasons, T, "the memory watch")
            assert "over its memory limit" in await pool.exit_reason("worker-1")
            await async_wait_until(lambda: "worker-1" in pool.exits, T, "its exit status")
            assert pool.exits["worker-1"] == -signal.SIGKILL
        finally:
            await asyncio.wait_for(pool.stop(), T)
        assert not pool.procs


SCRIPT = """
import os, psutil, pyfora
ex = pyfora.connect(workers=2)
assert ex.submit(abs, -3).result(30).toLocal().result(30) == 3
print(" ".join(str(c.pid) for c in psutil.Process().children(recursive=True)), flush=True)
input()
"""


def test_the_fork_server_and_its_workers_die_with_a_client_killed_by_sigkill():
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], T)
        assert ready, "the script printed no pids"
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 3, pids         # the server and two workers
        proc.kill()
    finally:
        proc.kill()
        proc.wait(T)
    wait_until(lambda: not any(alive(p) for p in pids), T, "the server and workers to exit")
