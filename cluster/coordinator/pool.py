"""The worker pool: spawn worker subprocesses, replace those that die, kill them all on stop.

Each child gets a pipe on its stdin and exits when it closes, so workers die with the
coordinator even when it is killed with SIGKILL (as dask's ``process.py`` does).

With ``fork=True`` (the embedded default's pool) the workers are forked from a fork server
that has imported the worker once (``cluster.worker.forkserver``): the client, the
coordinator and the workers all start on the same few cores, and the workers' own
interpreter starts and imports were most of the time to a first result. A standalone
coordinator starts once and lives long; its workers stay its own children, exec'd, each
visible by ``--name`` in ``ps``. A forked worker, a replacement too, has the environment
and the modules the server started with, not those of the moment it is forked.

With a memory limit, the pool samples each child's resident memory (psutil) every
``MEMORY_INTERVAL`` seconds and kills one that is over it, remembering why, so the task it
was running fails with a ``WorkerCrashedError`` that says so. The pool watches rather than
the worker itself because a worker stuck in native code cannot watch anything, and an
``RLIMIT_AS`` ceiling would count address space (numpy, thread stacks) rather than memory.

Runs on the coordinator's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from cluster.coordinator.forking import ForkedWorker, ForkServer

log = logging.getLogger("cluster")
STOP_TIMEOUT = 5.0
MEMORY_INTERVAL = 0.1
_SIGNAL_HINTS = {
    signal.SIGKILL: " (by hand, or by the kernel's out-of-memory killer)",
    signal.SIGSEGV: " (a segmentation fault, in native code)",
    signal.SIGBUS: " (a bus error, in native code)",
    signal.SIGABRT: " (aborted, in native code)",
}


def describe_exit(returncode: int | None) -> str:
    """Why a worker went away, from its exit status (None: it is still running, or it was
    not ours)."""
    if returncode is None:
        return "the connection to the worker was lost"
    if returncode < 0:
        try:
            sig = signal.Signals(-returncode)
        except ValueError:
            return f"the worker process was killed by signal {-returncode}"
        return f"the worker process was killed by {sig.name}{_SIGNAL_HINTS.get(sig, '')}"
    return f"the worker process exited with code {returncode}"


class WorkerPool:
    def __init__(self, count: int, url: str, token: str | None, certfile: str | None = None,
                 memory_limit: int | None = None, fork: bool = False) -> None:
        self.count = count
        self.url = url
        self.token = token
        self.certfile = certfile            # the coordinator's certificate, pinned by workers
        self.memory_limit = memory_limit
        self.fork = fork and hasattr(os, "fork")
        self.procs: dict[str, asyncio.subprocess.Process | ForkedWorker] = {}
        self.exits: dict[str, int | None] = {}   # None: its fork server was lost
        self.reasons: dict[str, str] = {}   # why the pool killed a worker itself
        self._stopping = False
        self._serial = 0
        self._watchers: set[asyncio.Task] = set()
        self._forks: ForkServer | None = None

    async def start(self) -> None:
        if self.fork:
            self._forks = await ForkServer.start(self._environment())
        for _ in range(self.count):
            await self._spawn()
        if self.memory_limit is not None:
            self._keep(asyncio.create_task(self._watch_memory(self.memory_limit)))

    def _keep(self, task: asyncio.Task) -> None:
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _spawn(self) -> None:
        self._serial += 1
        name = f"worker-{self._serial}"
        tls = ["--cafile", self.certfile, "--pin"] if self.certfile else []
        # The embedded default's first result waits for its workers' start: they warm the
        # compiled tier up once idle, not before joining.
        warm = ["--warm-up", "idle"] if self.fork else []
        argv = [self.url, "--name", name, "--parent-pipe", *tls, *warm]
        proc: asyncio.subprocess.Process | ForkedWorker
        if self._forks is not None and self._forks.alive:
            proc = self._forks.spawn(name, argv)
        else:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "cluster.worker.main", *argv,
                stdin=asyncio.subprocess.PIPE, env=self._environment())
        self.procs[name] = proc
        self._keep(asyncio.create_task(self._watch(name, proc)))

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.token is not None:
            env["PYFORA_WORKER_TOKEN"] = self.token   # not on the command line, where ps shows it
        return env

    async def _watch(self, name: str, proc: asyncio.subprocess.Process | ForkedWorker) -> None:
        code = await proc.wait()
        self.exits[name] = code
        self.procs.pop(name, None)
        if not self._stopping:
            log.warning("%s: %s; starting a new one", name, describe_exit(code))
            await self._spawn()

    async def _watch_memory(self, limit: int) -> None:
        import psutil
        while not self._stopping:
            for name, proc in list(self.procs.items()):
                if proc.pid is None:
                    continue        # not forked yet
                try:
                    rss = psutil.Process(proc.pid).memory_info().rss
                except psutil.Error:
                    continue        # it is exiting: _watch will see it
                if rss > limit and proc.returncode is None:
                    self.reasons[name] = (
                        f"the worker went over its memory limit ({rss / 2**20:,.0f} MiB "
                        f"resident, limit {limit / 2**20:,.0f} MiB) and was killed")
                    log.warning("%s: %s", name, self.reasons[name])
                    proc.kill()
            await asyncio.sleep(MEMORY_INTERVAL)

    def started(self, name: str) -> bool:
        """Whether the worker called ``name`` is one of this pool's processes."""
        return name in self.procs or name in self.exits

    async def exit_reason(self, name: str, wait: float = 1.0) -> str:
        """Why a worker went away, waiting briefly for its process to end."""
        if name in self.reasons:
            return self.reasons[name]
        if name in self.exits:
            return describe_exit(self.exits[name])
        proc = self.procs.get(name)
        if proc is None:
            return describe_exit(None)
        try:
            code = await asyncio.wait_for(asyncio.shield(proc.wait()), wait)
        except TimeoutError:
            code = None
        return self.reasons.get(name) or describe_exit(code)

    async def stop(self) -> None:
        self._stopping = True
        procs = list(self.procs.values())
        for proc in procs:
            if proc.returncode is None:
                proc.terminate()
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), STOP_TIMEOUT)
        except TimeoutError:
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
            if self._forks is not None:     # one that no longer answers: its workers too
                await self._forks.stop()
            await asyncio.gather(*(p.wait() for p in procs))
        if self._forks is not None:
            await self._forks.stop()
        for watcher in list(self._watchers):
            watcher.cancel()
