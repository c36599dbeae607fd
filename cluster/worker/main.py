"""``pyfora-worker``: a worker process. Connects to a coordinator, runs tasks, holds results.

Tasks run one at a time, in the order they came, on one long-lived task thread while the
event loop keeps answering the coordinator (object fetches, frees, cancellation). What a
task prints is captured and sent, a whole line at a time, to the client that submitted it.

The loop hands the thread one task at a time through a queue it blocks on, and the thread
hands back the task's ``done`` with one ``call_soon_threadsafe``, which writes it and
hands over the next task. No executor, future or asyncio task per task: that machinery
would cost more than the rest of a small task's path. A task whose function ran quickly
here before (``INLINE_BELOW``) runs on the loop's own thread instead, while the task
thread has nothing to do: the two thread wake-ups of the hand-over cost more than it.

Started by the coordinator's pool (``--parent-pipe``: exit when stdin closes, so a worker
never outlives its coordinator) or by hand on another host.

When the compiled tier warms up (``--warm-up``): by default before the worker joins, so
that no task waits for it (a standalone cluster's and a hand-started worker's start is
paid once, while nothing waits on it); the embedded default's forked workers, whose start
its first result waits for, warm up once they have had no task for a while instead
(``Worker.warm_up``).

The event loop runs on the main thread; user code runs on the "pyfora-task" thread.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import os
import queue
import ssl
import threading
import time
import types
from typing import Any

import websockets
from websockets.asyncio.client import connect

from cluster import loop_factory
from cluster.worker import stats as worker_stats
from cluster.worker.parallel import ParallelContext
from cluster.worker.task_thread import TaskCancelled, capture_streams, interrupt
from pyfora import compiled, serialization
from pyfora import wire as p
from pyfora.errors import ProtocolError, PyforaConnectionError
from pyfora.net import local_tokens, shared_memory
from pyfora.net.frames import FramesClientConnection
from pyfora.net.sender import Sender
from pyfora.net.tls import client_context, pinned_context
from pyfora.parallel import _runtime as parallel_runtime

log = logging.getLogger("cluster.worker")
#: Seconds without a task after which a worker warms its compiled tier up (``warm_up``).
WARM_UP_IDLE = 0.5
#: Handed to the task thread, in the place of a task, to warm the compiled tier up.
_WARM_UP: Any = object()
#: A task runs on the loop thread when its function's last run here (the call and the
#: pickling of its result) took less than this many seconds, and its pickle is at most
#: ``INLINE_PAYLOAD`` bytes (the loop unpickles it to find its function). Meanwhile the
#: loop answers nothing, so a run must stay far shorter than anything waits for it.
INLINE_BELOW = 0.0005
INLINE_PAYLOAD = 16 * 1024
#: Functions remembered as quick or not, at most (then forgotten, all at once).
QUICK_KEYS = 1024


class InputUnavailable(LookupError):
    """An input of a task could not be fetched. ``kind`` is the coordinator's error kind:
    ``WorkerCrashedError`` when it was lost with a worker (the task may run again)."""

    def __init__(self, oid: int, reply: p.Error) -> None:
        super().__init__(f"input object {oid} is unavailable: {reply.message}")
        self.kind = reply.kind


class _Entry:
    """An object held: its value, and its pickle to send when asked (``data``, plus the
    out-of-band ``buffers``, which share the value's memory rather than copy it)."""
    __slots__ = ("value", "data", "buffers")

    def __init__(self, value, data: bytes, buffers: list) -> None:
        self.value = value
        self.data = data
        self.buffers = buffers


class Worker:
    def __init__(self, ws, name: str, max_frame: int = p.MAX_FRAME,
                 shm: shared_memory.Directory | None = None) -> None:
        self.ws = ws
        self.name = name
        self.shm = shm      # on the coordinator's machine: large buffers go there
        self.loop = asyncio.get_running_loop()
        self.store: dict[int, _Entry] = {}
        self.sender = Sender.on_websocket(ws, max_frame)
        self.pending: dict[int, asyncio.Future] = {}
        self.ids = p.RequestIds()
        self.running: tuple[int, int] | None = None      # (task id, thread ident)
        # Tasks received but not started yet, and those of them cancelled meanwhile: a
        # Cancel can overtake its task's start, and must not be lost when it does.
        self.waiting: set[int] = set()
        self.cancelled: set[int] = set()
        self.running_lock = threading.Lock()
        self.streams = capture_streams()
        self.parallel = ParallelContext(self)
        parallel_runtime.install(self.parallel)
        # Tasks received and not handed to the task thread yet, in order; ``busy`` from
        # when one is taken from there until its done is written.
        self.queue: collections.deque[p.Run] = collections.deque()
        self.busy = False
        self.last_done = self.loop.time()
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # Whether each function's last run was quick (by ``_function_key``), and whether
        # the task thread is warming the compiled tier up (then nothing else may import).
        self.quick: dict[tuple, bool] = {}
        self.warming = False
        # A daemon: a task still running must not hold the process at exit.
        threading.Thread(target=self.serve_tasks, name="pyfora-task", daemon=True).start()

    def send(self, message: p.Message) -> None:
        self.sender.send(p.to_frames(message, self.shm))

    def send_threadsafe(self, message: p.Message) -> None:
        self.loop.call_soon_threadsafe(self.sender.send, p.to_frames(message, self.shm))

    async def serve(self) -> None:
        assembler = p.Assembler(join=True, shm=self.shm)
        message: p.Message | ProtocolError | None
        async for frame in self.ws:
            for message, _ in assembler.feed(frame):
                self.receive(message)
            message = None      # its buffers are not kept until the next frame comes

    def receive(self, message: p.Message | ProtocolError) -> None:
        if isinstance(message, ProtocolError):
            raise message       # the coordinator sent what this version cannot read
        if self.parallel.handle(message):
            return
        match message:
            case p.Run():
                with self.running_lock:
                    self.waiting.add(message.id)
                self.queue.append(message)
                if not self.busy:
                    self.start_next()
            case p.Fetch():
                self.fetch(message)
            case p.Free():
                for oid in message.oids:
                    self.store.pop(oid, None)
            case p.Cancel():
                self.cancel(message.target)
            case p.Value() | p.Error():
                future = self.pending.pop(message.id, None)
                if future is not None and not future.done():
                    future.set_result(message)
            case _:
                raise ProtocolError(f"a worker does not expect {message.op!r}")

    def start_next(self) -> None:
        """Hand the next task received to the task thread, after fetching its missing
        inputs; the tasks after it wait meanwhile. Loop thread, while no task is busy."""
        self.busy = bool(self.queue)
        if self.busy:
            message = self.queue.popleft()
            missing = [oid for oid in message.deps if oid not in self.store]
            if missing:
                asyncio.ensure_future(self.fetch_then_run(message, missing))
            else:
                self.hand_over(message)

    def hand_over(self, message: p.Run) -> None:
        """Run a task whose inputs are here: on this thread if its function is known to be
        quick, else on the task thread. Loop thread, while no task is busy."""
        call = self.unpickled(message)
        if call is None or (key := _function_key(call[0])) is None or not self.quick.get(key):
            self.inbox.put((message, call))
            return
        done = self.run_here(message, call)
        # Later in this iteration: after the lines it printed, sent as it printed them.
        self.loop.call_soon(self.finish, p.to_frames(done, self.shm))

    def unpickled(self, message: p.Run) -> tuple | None:
        """The task's call, unpickled here if it could run here; None otherwise (the
        task thread unpickles it, and reports why that fails)."""
        if (self.warming or not self.quick or message.frames
                or len(message.payload) > INLINE_PAYLOAD):
            return None
        try:
            return serialization.loads(message.payload, self.resolve, message.frames)
        except BaseException:   # noqa: B036 - the task thread reports it, as always
            return None

    def run_here(self, message: p.Run, call: tuple) -> p.Done:
        """``execute`` on the loop thread, as the task thread would run it: with no event
        loop running (the task may run one of its own) and no automatic parallelism (its
        pieces would wait for this loop: the comprehensions run as CPython runs them)."""
        asyncio.events._set_running_loop(None)
        parallel_runtime.install(None)
        try:
            return self.execute(message, call)
        finally:
            parallel_runtime.install(self.parallel)
            asyncio.events._set_running_loop(self.loop)

    async def fetch_then_run(self, message: p.Run, missing: list[int]) -> None:
        """Fetch a task's ``missing`` inputs, then hand it to the task thread; if one
        cannot be had, that is the task's done. Loop thread."""
        try:
            await asyncio.gather(*map(self.get, missing))
        except Exception as exc:    # unavailable, or a value this worker cannot unpickle
            with self.running_lock:
                self.waiting.discard(message.id)
                self.cancelled.discard(message.id)
            error = serialization.describe_exception(exc, self.name)
            if isinstance(exc, InputUnavailable) and exc.kind == "WorkerCrashedError":
                error["type"] = "pyfora.WorkerCrashedError"     # queued again for it
            self.finish(p.to_frames(p.Done(id=message.id, oid=message.oid, size=0, type="",
                                           error=error), self.shm))
        else:
            self.hand_over(message)

    def finish(self, done: list) -> None:
        """Write a task's done (its frames), then start the next task. Loop thread."""
        # Written now, not held for the next loop iteration, and before the next task
        # starts: the coordinator may send several ahead (its window) and, when we die,
        # takes every task it has no done for but the first as never started.
        self.sender.send(done)
        self.sender.flush()
        self.last_done = self.loop.time()
        self.start_next()

    def warm_up(self) -> None:
        """Have the task thread warm the compiled tier up (numba's import and LLVM's start,
        0.5-1 s of CPU: what the first task that compiles would pay) once the worker has
        had no task for ``WARM_UP_IDLE``, so that it costs no task's time on a busy worker.
        On the task thread, not a thread of its own: a task importing a package while
        another thread imports it too (numba imports numpy) may find it half initialized,
        and fail. A task that comes meanwhile waits for it, once. Loop thread."""
        idle = self.loop.time() - self.last_done
        if self.busy or self.queue:
            self.loop.call_later(WARM_UP_IDLE, self.warm_up)
        elif idle < WARM_UP_IDLE:
            self.loop.call_later(WARM_UP_IDLE - idle, self.warm_up)
        else:
            self.warming = True
            self.inbox.put(_WARM_UP)

    def serve_tasks(self) -> None:
        """The task thread: run each task handed over, until ``close``."""
        done: list | None
        while (item := self.inbox.get()) is not None:
            if item is _WARM_UP:
                compiled.warm_up()
                self.warming = False
                continue
            message, call = item
            item = None
            done = p.to_frames(self.execute(message, call), self.shm)
            # Not held while waiting for the next task: a task's arguments and result
            # are freed when it ends (the store keeps the result itself).
            message = call = None
            try:
                self.loop.call_soon_threadsafe(self.finish, done)
            except RuntimeError:    # the loop is closed: the worker is exiting
                return
            done = None

    def close(self) -> None:
        """Let the task thread end once its task, if any, has."""
        self.inbox.put(None)

    async def get(self, oid: int) -> None:
        """Fetch an input this worker does not hold, through the coordinator."""
        request_id = self.ids()
        future = self.loop.create_future()
        self.pending[request_id] = future
        self.send(p.Get(id=request_id, oid=oid))
        reply = await future
        if isinstance(reply, p.Error):
            raise InputUnavailable(oid, reply)
        value = serialization.loads(reply.data, self.resolve, reply.frames)
        self.store[oid] = _Entry(value, reply.data, reply.frames)

    def resolve(self, oid: int):
        return self.store[oid].value

    def execute(self, message: p.Run, call: tuple | None = None) -> p.Done:
        """Run one task (``call``: its pickle already loaded); never raises. Records
        whether its function was quick (see ``INLINE_BELOW``)."""
        def sink(stream: str, text: str) -> None:
            self.send_threadsafe(p.Output(id=message.id, stream=stream, text=text))

        for stream in self.streams:
            stream.start(sink)
        try:
            try:
                with self.running_lock:
                    self.waiting.discard(message.id)
                    if message.id in self.cancelled:
                        self.cancelled.discard(message.id)
                        raise TaskCancelled()
                    self.running = (message.id, threading.get_ident())
                fn, args, kwargs = call or serialization.loads(message.payload, self.resolve,
                                                               message.frames)
                call = None
                started = time.perf_counter()
                value = compiled.call(fn, args, kwargs)
            finally:
                with self.running_lock:
                    self.running = None
                for stream in self.streams:
                    stream.stop()
            buffers: list = []
            data, _ = serialization.dumps(value, buffers=buffers)
            key = _function_key(fn)
            if key is not None:
                if len(self.quick) >= QUICK_KEYS and key not in self.quick:
                    self.quick.clear()
                self.quick[key] = time.perf_counter() - started < INLINE_BELOW
        except TaskCancelled as exc:
            with self.running_lock:
                self.running = None
            return p.Done(id=message.id, oid=message.oid, size=0, type="",
                          error=serialization.describe_exception(exc, self.name))
        except BaseException as exc:   # noqa: B036 - user code may raise SystemExit too
            return p.Done(id=message.id, oid=message.oid, size=0, type="",
                          error=serialization.describe_exception(exc, self.name))
        self.store[message.oid] = _Entry(value, data, buffers)
        oob = p.oob_layout(buffers)
        size = p.value_size(data, oob)
        inline = size <= message.inline
        return p.Done(id=message.id, oid=message.oid, size=size,
                      type=serialization.type_name(type(value)),
                      value=data if inline else None, oob=oob if inline else [],
                      frames=buffers if inline else [])

    def fetch(self, message: p.Fetch) -> None:
        entry = self.store.get(message.oid)
        if entry is None:
            self.send(p.Error(id=message.id, kind="PyforaUsageError",
                              message=f"object {message.oid} is not on {self.name}"))
        else:
            self.send(p.Value(id=message.id, data=entry.data, oob=p.oob_layout(entry.buffers),
                              frames=entry.buffers))

    def cancel(self, task_id: int) -> None:
        """Raise TaskCancelled in the task thread, if that task is still the one running;
        mark it cancelled, if it has not started yet."""
        with self.running_lock:
            if task_id in self.waiting:
                self.cancelled.add(task_id)
                return
            if self.running is None or self.running[0] != task_id:
                return
            interrupt(self.running[1])


def _function_key(fn: Any) -> tuple | None:
    """What makes a function the same one from task to task, for ``Worker.quick``: most
    arrive as a new object each time (pickled by value), with the same code. None for a
    function that must never run on the loop thread: one whose comprehensions were made
    parallel, or pyfora's own (a map's, a with-block's), which may be quick with one input
    and split across the cluster with the next."""
    if type(fn) is not types.FunctionType or fn.__module__.startswith(_OWN) \
            or parallel_runtime.CELL in fn.__code__.co_freevars:
        return None
    return fn.__module__, fn.__qualname__, fn.__code__.co_code


_OWN = ("pyfora.", "cluster.")


async def run_worker(url: str, token: str | None, name: str,
                     ssl_context: ssl.SSLContext | None = None,
                     warm_when_idle: bool = True) -> None:
    # Only for wss: websockets refuses an ssl argument with a ws:// URL.
    tls: dict[str, Any] = {"ssl": ssl_context} if url.startswith("wss:") else {}
    hello = p.Hello(version=p.VERSION, role="worker", name=name, host=shared_memory.host_id())
    try:
        connection = await connect(url, max_size=p.MAX_FRAME, compression=None,
                                   ping_interval=None, create_connection=FramesClientConnection,
                                   additional_headers=p.upgrade_headers(hello, token), **tls)
    except websockets.InvalidStatus as exc:
        refusal = p.refused(exc.response.body or b"")
        raise SystemExit(f"pyfora-worker: {refusal or exc}") from None
    except (OSError, websockets.InvalidHandshake) as exc:
        # On another host this is the usual first failure (a firewall, a wrong address,
        # the coordinator bound to 127.0.0.1, a certificate): one line, not a traceback.
        raise SystemExit(f"pyfora-worker: cannot reach the coordinator at {url}: "
                         f"{exc}") from None
    async with connection as ws:
        assert isinstance(ws, FramesClientConnection)
        reply = p.decode(await ws.next_frame())
        if not isinstance(reply, p.Welcome):
            raise SystemExit(f"pyfora-worker: the coordinator opened with {reply.op!r}")
        worker = Worker(ws, name, reply.max_frame, shared_memory.Directory.offered(reply.shm))
        if warm_when_idle and compiled.default_on():
            worker.loop.call_later(WARM_UP_IDLE, worker.warm_up)
        stats = asyncio.create_task(worker_stats.report(worker.send))
        try:
            await worker.serve()
        except websockets.ConnectionClosed:
            pass
        finally:
            worker.sender.close()
            worker.close()
            if worker.shm is not None:
                worker.shm.close()
            stats.cancel()


def _exit_when_parent_dies() -> None:
    """The coordinator holds our stdin's other end: EOF means it is gone."""
    def watch() -> None:
        while os.read(0, 1024):
            pass
        os._exit(0)
    threading.Thread(target=watch, name="pyfora-parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="pyfora-worker",
        description="Join a pyfora coordinator as a worker and run its tasks, one at a\n"
                    "time, keeping their results in memory until no client needs them.\n"
                    "Serves until the coordinator goes away or SIGINT.",
        epilog="example:\n  PYFORA_WORKER_TOKEN=W pyfora-worker ws://coordinator:8000 "
               "--name gpu-box-1\n\n"
               "environment: PYFORA_WORKER_TOKEN (the worker token pyfora-cluster printed)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="the coordinator, e.g. ws://host:8000 (or http://...)")
    parser.add_argument("--token", default=None,
                        help="the cluster's worker token (visible to other users in ps: "
                             "prefer --token-file or $PYFORA_WORKER_TOKEN; default: "
                             "$PYFORA_WORKER_TOKEN, else for a coordinator on this machine "
                             "the one it left for its user)")
    parser.add_argument("--token-file", type=local_tokens.read_file, default=None,
                        metavar="PATH", help="read the worker token from this file")
    parser.add_argument("--name", default=f"worker@{os.uname().nodename}-{os.getpid()}",
                        help="a name for this worker in the dashboard and in errors")
    parser.add_argument("--cafile", default=None,
                        help="with wss://: trust this certificate (or authority) instead of "
                             "the system's")
    parser.add_argument("--no-verify", action="store_true",
                        help="with wss://: do not verify the coordinator's certificate")
    parser.add_argument("--warm-up", choices=["join", "idle"], default="join",
                        help="when to warm the compiled tier up (numba's import and LLVM's "
                             "start, about a second of CPU): before joining (default), or "
                             "once the worker has had no task for half a second, which a "
                             "task arriving meanwhile waits for")
    parser.add_argument("--parent-pipe", action="store_true", help=argparse.SUPPRESS)
    # --pin: --cafile is the coordinator's own certificate, host name unchecked (its pool).
    parser.add_argument("--pin", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--log-level", default="WARNING",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="what the worker logs to stderr (default WARNING)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(message)s")
    if args.parent_pipe:
        _exit_when_parent_dies()
    try:
        url, url_token = p.endpoint_url(args.url, "/api/worker")
    except PyforaConnectionError as exc:
        parser.error(str(exc))
    # Popped, so that the code this worker runs does not find it in its environment.
    from_env = os.environ.pop("PYFORA_WORKER_TOKEN", None)
    token = (args.token or args.token_file or url_token or from_env
             or local_tokens.find(url, "worker_token"))
    # Made only for wss: loading the system's authorities costs tens of milliseconds of
    # CPU, at the moment the embedded default's workers start alongside their client.
    context = None
    if url.startswith("wss:"):
        context = (pinned_context(args.cafile) if args.pin and args.cafile
                   else client_context(args.cafile, verify=not args.no_verify))
    if args.warm_up == "join":
        # Here, before the task thread and the loop exist: nothing imports beside it.
        compiled.warm_up()
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(run_worker(url, token, args.name, context,
                                  warm_when_idle=args.warm_up == "idle"))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
