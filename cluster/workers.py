"""The worker pool: spawn worker subprocesses, replace those that die, kill them all on stop.

Each child gets a pipe on its stdin and exits when it closes, so workers die with the
coordinator even when it is killed with SIGKILL (as dask's ``process.py`` does).

Runs on the coordinator's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

log = logging.getLogger("cluster")
STOP_TIMEOUT = 5.0


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "the connection to the worker was lost"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"the worker process was killed by {name}"
    return f"the worker process exited with code {returncode}"


class WorkerPool:
    def __init__(self, count: int, url: str, token: str | None) -> None:
        self.count = count
        self.url = url
        self.token = token
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.exits: dict[str, int] = {}
        self._stopping = False
        self._serial = 0
        self._watchers: set[asyncio.Task] = set()

    async def start(self) -> None:
        for _ in range(self.count):
            await self._spawn()

    async def _spawn(self) -> None:
        self._serial += 1
        name = f"worker-{self._serial}"
        env = dict(os.environ)
        if self.token is not None:
            env["PYFORA_TOKEN"] = self.token      # not on the command line, where ps shows it
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cluster.worker_main", self.url, "--name", name,
            "--parent-pipe", stdin=asyncio.subprocess.PIPE, env=env)
        self.procs[name] = proc
        watcher = asyncio.create_task(self._watch(name, proc))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    async def _watch(self, name: str, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        self.exits[name] = code
        self.procs.pop(name, None)
        if not self._stopping:
            log.warning("%s: %s; starting a new one", name, describe_exit(code))
            await self._spawn()

    async def exit_reason(self, name: str, wait: float = 1.0) -> str:
        """Why a worker went away, waiting briefly for its process to end."""
        if name in self.exits:
            return describe_exit(self.exits[name])
        proc = self.procs.get(name)
        if proc is None:
            return describe_exit(None)
        try:
            code = await asyncio.wait_for(asyncio.shield(proc.wait()), wait)
        except asyncio.TimeoutError:
            code = None
        return describe_exit(code)

    async def stop(self) -> None:
        self._stopping = True
        procs = list(self.procs.values())
        for proc in procs:
            if proc.returncode is None:
                proc.terminate()
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), STOP_TIMEOUT)
        except asyncio.TimeoutError:
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
            await asyncio.gather(*(p.wait() for p in procs))
        for watcher in list(self._watchers):
            watcher.cancel()
