"""``python -m cluster.worker.forkserver FD``: import the worker once, then fork each worker
the pool asks for from this process.

A worker started by exec pays the interpreter's start and the worker's imports, a few
tenths of a second of CPU each, on a machine whose cores the client and the coordinator
are using at the same moment. Forked from here, a worker is running in milliseconds, and
so is the replacement for one that died. The embedded default's pool uses it
(``cluster.coordinator.forking`` is the other end).

The pool talks to it over the socket ``FD``, one JSON object a line: it sends
``{"name": ..., "argv": [...]}`` (``cluster.worker.main``'s arguments); the server answers
``{"name": ..., "pid": ...}`` once it has forked that worker, and ``{"name": ..., "exit":
code}`` when the worker has ended. The server is the workers' parent, so only it can read
their exit status; ``code`` is what asyncio's ``returncode`` would be (negative: killed by
that signal), so that the pool says why a worker went away as truthfully as when the
worker was its own child.

Stdin is the pool's parent-alive pipe. The server and every worker share it: the server
exits when it closes, and so does each worker (``--parent-pipe``), so that none outlives
the coordinator, even one killed with SIGKILL. The worker token comes in the environment,
which each worker inherits and then pops.

Single-threaded, and importing nothing that starts a thread: a fork copies only the thread
that calls it, and a lock another thread held would stay held in the child forever.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import sys
import traceback

import cluster.worker.main as worker_main
from cluster import loop_factory


def serve(channel: socket.socket) -> None:
    """Fork a worker for each request on ``channel``, report the exits of those forked,
    until the pool goes away (stdin or ``channel`` closes)."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so that it wakes select
    names: dict[int, str] = {}
    selector = selectors.DefaultSelector()
    for fd in (0, wake_r, channel.fileno()):
        selector.register(fd, selectors.EVENT_READ)
    pending = b""
    while True:
        for key, _ in selector.select():
            if key.fd == 0:
                if not os.read(0, 1024):
                    return
            elif key.fd == wake_r:
                os.read(wake_r, 4096)
                _reap(channel, names)
            else:
                data = channel.recv(65536)
                if not data:
                    return
                *lines, pending = (pending + data).split(b"\n")
                for line in lines:
                    request = json.loads(line)
                    pid = os.fork()
                    if pid == 0:
                        _become_worker(request["argv"], selector, channel, (wake_r, wake_w))
                    names[pid] = request["name"]
                    _report(channel, name=request["name"], pid=pid)
        _reap(channel, names)   # a SIGCHLD that came while its wake-up was being read


def _reap(channel: socket.socket, names: dict[int, str]) -> None:
    while names:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            return
        _report(channel, name=names.pop(pid), exit=os.waitstatus_to_exitcode(status))


def _report(channel: socket.socket, **fields) -> None:
    channel.sendall(json.dumps(fields).encode() + b"\n")


def _become_worker(argv: list[str], selector: selectors.BaseSelector,
                   channel: socket.socket, wake: tuple[int, int]) -> None:
    """In the child: drop the server's signal handling and descriptors, run the worker,
    and exit with the status the interpreter would have given it. Never returns."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        selector.close()
        channel.close()
        for fd in wake:
            os.close(fd)
        sys.argv = ["pyfora-worker", *argv]
        worker_main.main(argv)
        code = 0
    except SystemExit as exc:
        code = _exit_code(exc)
    except BaseException:  # noqa: B036 - the child must reach os._exit, whatever it was
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def _exit_code(exc: SystemExit) -> int:
    """The status ``sys.exit(exc.code)`` gives a process: a message is printed, and is 1."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def main() -> None:
    # Ctrl-C in a terminal reaches the whole process group: the pool stops its workers and
    # this server, rather than this server dying alone and leaving no one to fork.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    loop_factory()      # imports uvloop, where installed: each worker starts its loop with it
    try:
        serve(socket.socket(fileno=int(sys.argv[1])))
    except (BrokenPipeError, ConnectionResetError):
        pass        # the pool went away while we were telling it something
    # Without the interpreter's finalization of every module imported: the pool that
    # waits for this exit is stopping, and that took it tens of milliseconds.
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
