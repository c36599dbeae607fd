"""``pyfora-worker``: a worker process. Connects to a coordinator, runs tasks, holds results.

Tasks run one at a time, in the order they came, on a single task thread while the event
loop keeps answering the coordinator (object fetches, frees, cancellation). The
coordinator may send several tasks ahead (its window); they wait here, their missing inputs
already being fetched. The loop hands the task thread the next one only after it has
written the previous one's ``done``, so when the worker dies the coordinator knows that
the tasks it has no ``done`` for, but the first, never started. What a task prints is
captured and sent, a whole line at a time, to the client that submitted it.

Started by the coordinator's pool (``--parent-pipe``: exit when stdin closes, so a worker
never outlives its coordinator) or by hand on another host.

The event loop runs on the main thread; user code runs on the "pyfora-task" thread.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import ctypes
import logging
import os
import queue
import ssl
import sys
import threading

import websockets
from websockets.asyncio.client import connect

from pyfora import protocol as p
from pyfora import serialization
from pyfora.aio.sender import Sender
from pyfora.aio.tls import client_context
from pyfora.errors import ProtocolError, PyforaConnectionError
from pyfora.parallel import _runtime as parallel_runtime

from . import loop_factory, worker_stats
from .worker_parallel import ParallelContext

log = logging.getLogger("cluster.worker")


class TaskCancelled(BaseException):
    """Raised inside a running task to stop it (a BaseException so user code's
    ``except Exception`` does not swallow it)."""


class InputUnavailable(LookupError):
    """An input of a task could not be fetched. ``kind`` is the coordinator's error kind:
    ``WorkerCrashedError`` when it was lost with a worker (the task may run again)."""

    def __init__(self, oid: int, reply: p.Error) -> None:
        super().__init__(f"input object {oid} is unavailable: {reply.message}")
        self.kind = reply.kind

    @staticmethod
    def of(fetch: asyncio.Future) -> BaseException:
        """Why the fetch of a task's inputs failed."""
        if fetch.cancelled():
            return asyncio.CancelledError("fetching the task's inputs was cancelled")
        return fetch.exception()


class _Entry:
    __slots__ = ("value", "data")

    def __init__(self, value, data):
        self.value = value
        self.data = data


class _CapturedStream:
    """Replaces sys.stdout/stderr: the task thread's writes go to its client, whole lines
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


class Worker:
    def __init__(self, ws, name: str) -> None:
        self.ws = ws
        self.name = name
        self.loop = asyncio.get_running_loop()
        self.store: dict[int, _Entry] = {}
        self.sender = Sender(ws.send, (websockets.ConnectionClosed,),
                             lambda: ws.state is websockets.State.OPEN)
        # Tasks received and not handed to the task thread yet, in order; the fetches of
        # their missing inputs; whether the task thread has one.
        self.runs: collections.deque[p.Run] = collections.deque()
        self.inputs: dict[int, asyncio.Future] = {}
        self.fetching: dict[int, asyncio.Future] = {}    # object id -> its fetch
        self.busy = False
        self.inbox: queue.SimpleQueue[p.Run | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._task_thread, name="pyfora-task",
                                       daemon=True)
        self.pending: dict[int, asyncio.Future] = {}
        self.ids = p.RequestIds()
        self.running: tuple[int, int] | None = None      # (task id, thread ident)
        # Tasks received but not started yet, and those of them cancelled meanwhile: a
        # Cancel can overtake its task's start, and must not be lost when it does.
        self.waiting: set[int] = set()
        self.cancelled: set[int] = set()
        self.running_lock = threading.Lock()
        self.streams = [_CapturedStream("stdout", sys.stdout), _CapturedStream("stderr", sys.stderr)]
        sys.stdout, sys.stderr = self.streams
        self.parallel = ParallelContext(self)
        parallel_runtime.install(self.parallel)
        self.thread.start()

    def send(self, message: p.Message) -> None:
        self.sender.send(p.encode(message))

    def send_threadsafe(self, message: p.Message) -> None:
        self.loop.call_soon_threadsafe(self.sender.send, p.encode(message))

    def stop(self) -> None:
        """End the task thread once its task returns."""
        self.inbox.put(None)

    async def serve(self) -> None:
        async for frame in self.ws:
            self.receive(frame)

    def receive(self, frame: bytes) -> None:
        message = p.decode(frame)
        if isinstance(message, p.Batch):
            for inner in message.frames:
                self.receive(inner)
        elif not self.parallel.handle(message):
            match message:
                case p.Run():
                    self.queue_run(message)
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

    def queue_run(self, message: p.Run) -> None:
        """Queue a task behind the others; start fetching its missing inputs now."""
        with self.running_lock:
            self.waiting.add(message.id)
        missing = [oid for oid in message.deps if oid not in self.store]
        if missing:
            fetch = asyncio.ensure_future(asyncio.gather(*map(self.get, missing)))
            fetch.add_done_callback(lambda _: self.next_run())
            self.inputs[message.id] = fetch
        self.runs.append(message)
        self.next_run()

    def next_run(self) -> None:
        """Hand the first queued task to the task thread, if it is free and the task's
        inputs are here; answer those that cannot run (an input is unavailable)."""
        while not self.busy and self.runs:
            message = self.runs[0]
            fetch = self.inputs.get(message.id)
            if fetch is not None and not fetch.done():
                return      # its fetch's callback calls again
            self.runs.popleft()
            self.inputs.pop(message.id, None)
            if fetch is not None and (fetch.cancelled() or fetch.exception() is not None):
                self.unavailable(message, InputUnavailable.of(fetch))
                continue
            self.busy = True
            self.inbox.put(message)

    def unavailable(self, message: p.Run, exc: BaseException) -> None:
        """Answer a queued task that will not run: an input is missing, or it was
        cancelled."""
        with self.running_lock:
            self.waiting.discard(message.id)
            self.cancelled.discard(message.id)
        error = serialization.describe_exception(exc, self.name)
        if getattr(exc, "kind", None) == "WorkerCrashedError":
            error["type"] = "pyfora.WorkerCrashedError"     # queued again to wait for it
        self.send(p.Done(id=message.id, oid=message.oid, size=0, type="", error=error))

    def _task_thread(self) -> None:
        while (message := self.inbox.get()) is not None:
            done = self.execute(message)
            try:
                self.loop.call_soon_threadsafe(self.finished, done)
            except RuntimeError:
                return      # the loop has closed: the worker is going away

    def finished(self, done: p.Done) -> None:
        """Loop thread: the task thread finished a task; send its ``done``, then start
        the next (in that order: see the module's docstring)."""
        self.busy = False
        self.send(done)
        self.sender.flush()
        self.next_run()

    def get(self, oid: int) -> asyncio.Future:
        """Fetch an input this worker does not hold, through the coordinator: one fetch
        per object, however many queued tasks need it."""
        fetch = self.fetching.get(oid)
        if fetch is None:
            fetch = self.fetching[oid] = asyncio.ensure_future(self._get(oid))
            fetch.add_done_callback(lambda _: self.fetching.pop(oid, None))
        return fetch

    async def _get(self, oid: int) -> None:
        request_id = self.ids()
        future = self.loop.create_future()
        self.pending[request_id] = future
        self.send(p.Get(id=request_id, oid=oid))
        reply = await future
        if isinstance(reply, p.Error):
            raise InputUnavailable(oid, reply)
        self.store[oid] = _Entry(serialization.loads(reply.data, self.resolve), reply.data)

    def resolve(self, oid: int):
        return self.store[oid].value

    def execute(self, message: p.Run) -> p.Done:
        """Run one task on the task thread; never raises."""
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
                fn, args, kwargs = serialization.loads(message.payload, self.resolve)
                value = fn(*args, **kwargs)
            finally:
                with self.running_lock:
                    self.running = None
                for stream in self.streams:
                    stream.stop()
            data, _ = serialization.dumps(value)
        except TaskCancelled as exc:
            with self.running_lock:
                self.running = None
            return p.Done(id=message.id, oid=message.oid, size=0, type="",
                          error=serialization.describe_exception(exc, self.name))
        except BaseException as exc:   # noqa: B036 - user code may raise SystemExit too
            return p.Done(id=message.id, oid=message.oid, size=0, type="",
                          error=serialization.describe_exception(exc, self.name))
        self.store[message.oid] = _Entry(value, data)
        return p.Done(id=message.id, oid=message.oid, size=len(data),
                      type=serialization.type_name(type(value)),
                      value=data if len(data) <= message.inline else None)

    def fetch(self, message: p.Fetch) -> None:
        entry = self.store.get(message.oid)
        fetching = self.fetching.get(message.oid)
        if entry is None and fetching is not None:
            # The coordinator counts us as a holder from the moment it relays the value;
            # another worker's fetch may overtake our storing it.
            fetching.add_done_callback(lambda _: self.fetch(message))
        elif entry is None:
            self.send(p.Error(id=message.id, kind="PyforaUsageError",
                              message=f"object {message.oid} is not on {self.name}"))
        else:
            self.send(p.Value(id=message.id, data=entry.data))

    def cancel(self, task_id: int) -> None:
        """Raise TaskCancelled in the task thread, if that task is still the one running;
        if it has not started, answer it as cancelled now (still queued here) or mark it
        (handed to the task thread, which checks the mark before starting it)."""
        with self.running_lock:
            if task_id in self.waiting:
                self.cancelled.add(task_id)
            elif self.running is not None and self.running[0] == task_id:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(self.running[1]), ctypes.py_object(TaskCancelled))
                return
            else:
                return
        queued = next((m for m in self.runs if m.id == task_id), None)
        if queued is not None:
            self.runs.remove(queued)
            self.inputs.pop(task_id, None)      # its fetches go on: we are a holder now
            self.unavailable(queued, TaskCancelled())


async def run_worker(url: str, token: str | None, name: str,
                     ssl_context: ssl.SSLContext | None = None) -> None:
    tls = {"ssl": ssl_context} if url.startswith("wss:") else {}
    try:
        connection = await connect(url, max_size=p.MAX_FRAME, compression=None,
                                   ping_interval=None, **tls)
    except (OSError, websockets.InvalidHandshake) as exc:
        # On another host this is the usual first failure (a firewall, a wrong address,
        # the coordinator bound to 127.0.0.1, a certificate): one line, not a traceback.
        raise SystemExit(f"pyfora-worker: cannot reach the coordinator at {url}: "
                         f"{exc}") from None
    async with connection as ws:
        await ws.send(p.encode(p.Hello(version=p.VERSION, role="worker", token=token,
                                       name=name)))
        reply = p.decode(await ws.recv())
        if isinstance(reply, p.Error):
            raise SystemExit(f"pyfora-worker: {reply.message}")
        worker = Worker(ws, name)
        stats = asyncio.create_task(worker_stats.report(worker.send))
        try:
            await worker.serve()
        except websockets.ConnectionClosed:
            pass
        finally:
            worker.stop()
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
        epilog="example:\n  pyfora-worker ws://coordinator:8000 --token T --name gpu-box-1\n\n"
               "environment: PYFORA_TOKEN (default --token)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="the coordinator, e.g. ws://host:8000 (or http://...)")
    parser.add_argument("--token", default=os.environ.get("PYFORA_TOKEN"),
                        help="the cluster's token (default: $PYFORA_TOKEN)")
    parser.add_argument("--name", default=f"worker@{os.uname().nodename}-{os.getpid()}",
                        help="a name for this worker in the dashboard and in errors")
    parser.add_argument("--cafile", default=None,
                        help="with wss://: trust this certificate (or authority) instead of "
                             "the system's")
    parser.add_argument("--no-verify", action="store_true",
                        help="with wss://: do not verify the coordinator's certificate")
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
    token = args.token or url_token
    if args.pin and args.cafile:
        from .auth import pinned_context
        context = pinned_context(args.cafile)
    else:
        context = client_context(args.cafile, verify=not args.no_verify)
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(run_worker(url, token, args.name, context))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
