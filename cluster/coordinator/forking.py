"""The pool's end of the fork server (``cluster.worker.forkserver``): start it, ask it for
workers, and hold a handle per worker that the pool uses as it would an
``asyncio.subprocess.Process`` (``pid``, ``returncode``, ``wait``, ``terminate``,
``kill``).

The server is the workers' parent, so a worker's exit status comes from the server's
``waitpid``, in its report. A handle's ``pid`` is None until the server has forked it:
the pool asks for its first workers at once, while the server is still importing, so
that the import overlaps with the coordinator's own; a signal sent before then is
delivered as soon as the pid is known.

If the server itself dies, the workers it forked can no longer be watched: they are
killed, they end with no exit status (``returncode`` None, which ``describe_exit`` reads
as a lost connection), and the pool starts their replacements by exec.

Runs on the coordinator's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys

STOP_TIMEOUT = 5.0


class ForkedWorker:
    """One worker forked by the server, as the pool sees it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.pid: int | None = None
        self.returncode: int | None = None
        self._ended = asyncio.get_running_loop().create_future()
        self._signal: int | None = None     # sent before the pid was known

    async def wait(self) -> int | None:
        return await asyncio.shield(self._ended)

    def send_signal(self, sig: int) -> None:
        if self._ended.done():
            return
        if self.pid is None:
            self._signal = sig
            return
        # Between the server's waitpid and its report reaching us, this pid is free: a
        # signal could only go astray if the kernel handed it out again within that
        # microsecond window.
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def started(self, pid: int) -> None:
        self.pid = pid
        if self._signal is not None:
            self.send_signal(self._signal)

    def ended(self, returncode: int | None) -> None:
        self.returncode = returncode
        if not self._ended.done():
            self._ended.set_result(returncode)


class ForkServer:
    def __init__(self, proc: asyncio.subprocess.Process, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.proc = proc
        self.workers: dict[str, ForkedWorker] = {}
        self.alive = True
        self._reader = reader
        self._writer = writer
        self._reading = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, env: dict[str, str]) -> ForkServer:
        """Start the server (its workers inherit ``env``, with the worker token in it)."""
        ours, theirs = socket.socketpair()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "cluster.worker.forkserver", str(theirs.fileno()),
                stdin=asyncio.subprocess.PIPE, env=env, pass_fds=(theirs.fileno(),))
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        reader, writer = await asyncio.open_connection(sock=ours)
        return cls(proc, reader, writer)

    def spawn(self, name: str, argv: list[str]) -> ForkedWorker:
        """Ask for a worker running ``cluster.worker.main`` with ``argv``; forked once the
        server has its imports done."""
        worker = self.workers[name] = ForkedWorker(name)
        self._writer.write(json.dumps({"name": name, "argv": argv}).encode() + b"\n")
        return worker

    async def _read(self) -> None:
        try:
            while line := await self._reader.readline():
                report = json.loads(line)
                worker = self.workers.get(report["name"])
                if worker is None:
                    continue
                if "pid" in report:
                    worker.started(report["pid"])
                else:
                    del self.workers[report["name"]]
                    worker.ended(report["exit"])
        except (ConnectionError, json.JSONDecodeError, KeyError):
            pass
        finally:
            self._lost()

    def _lost(self) -> None:
        self.alive = False
        for worker in self.workers.values():
            worker.kill()
            worker.ended(None)
        self.workers.clear()

    async def stop(self) -> None:
        """Stop the server: its stdin closes, and with it that of every worker it forked."""
        self.alive = False
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self._writer.close()
        try:
            await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        await self._reading
