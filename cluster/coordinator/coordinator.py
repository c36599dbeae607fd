"""One coordinator's state (sessions, workers, tasks and objects) and how it is run
(``Config``), whatever serves its doors: aiohttp (``cluster.coordinator.app``) or, for
the embedded default's workers, websockets (``cluster.coordinator.ws_door``). Nothing here
imports aiohttp, so that the embedded default's first result never waits for it.

Runs on one event loop: the coordinator's own process, or the client's loop thread when
embedded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import uuid

from websockets.frames import CloseCode

from cluster.coordinator import in_process
from cluster.coordinator.auth import Doors, is_loopback, new_token, served_names
from cluster.coordinator.guard import Guard
from cluster.coordinator.link import Link, Socket
from cluster.coordinator.pool import WorkerPool
from cluster.coordinator.session import ClientSession
from cluster.coordinator.store import ObjectStore
from cluster.coordinator.worker_link import WorkerLink
from cluster.scheduling.backend import Backend
from cluster.scheduling.dispatcher import Dispatcher
from pyfora import wire as p
from pyfora.errors import PyforaUsageError
from pyfora.net import shared_memory

JOIN_TIMEOUT = 60.0
#: Seconds after a peer's connection ends to look again for the names of dead writers.
SWEEP_AGAIN = 1.0


@dataclasses.dataclass
class Config:
    """How to run a coordinator.

    ``token`` (the clients') defaults to ``$PYFORA_TOKEN`` and ``worker_token`` to
    ``$PYFORA_WORKER_TOKEN``; each is generated (``token_generated``,
    ``worker_token_generated``) when not given, whatever the address (``cluster.coordinator.auth``).
    ``allowed_hosts``: names of this cluster beside its machine's own (``auth.host_allowed``).
    ``max_unauthenticated`` connections may wait at once, each ``auth_timeout`` seconds at
    most, to authenticate (``cluster.coordinator.guard``).
    ``certfile``/``keyfile`` serve https and wss. ``memory_limit`` (bytes) is each worker
    subprocess's resident memory ceiling: one that goes over it is killed and replaced.
    ``session_grace`` is how many seconds a client session whose connection broke is kept
    for the client to resume it (0: released at once; see ``cluster.coordinator.session``).
    ``backend`` is what runs the tasks: ``"pool"``, worker subprocesses of the
    coordinator's own, or ``"dask"``, the Dask cluster whose scheduler is at
    ``scheduler`` (a local one of ``workers`` processes when None; ``dask_backend``).
    ``shared_memory``: clients and workers on this machine hand large buffers over
    through ``/dev/shm`` (``pyfora.net.shared_memory``). ``max_sessions``,
    ``max_session_bytes``, ``max_queued_tasks`` and ``max_unacked_bytes`` bound what
    clients may make the coordinator hold (``cluster.coordinator.limits``).
    """
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int | None = None          # None: one per core
    token: str | None = None            # clients' token
    worker_token: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    max_unauthenticated: int = 64
    auth_timeout: float = 10.0
    max_frame: int = p.MAX_FRAME
    certfile: str | None = None
    keyfile: str | None = None
    memory_limit: int | None = None
    session_grace: float = 30.0
    token_generated: bool = False
    worker_token_generated: bool = False
    backend: str = "pool"
    scheduler: str | None = None
    shared_memory: bool = True
    max_sessions: int = 1000
    max_session_bytes: int = 8 << 30       # defined values, per session
    max_queued_tasks: int = 1_000_000      # queued or running, per session
    max_unacked_bytes: int = 256 << 20     # replies not acknowledged, per session

    def __post_init__(self) -> None:
        if self.workers is None:
            self.workers = self.worker_count
        self.token = self.token or os.environ.get("PYFORA_TOKEN") or None
        if self.token is None:
            self.token, self.token_generated = new_token(), True
        self.worker_token = self.worker_token or os.environ.get("PYFORA_WORKER_TOKEN") or None
        if self.worker_token is None:
            self.worker_token, self.worker_token_generated = new_token(), True
        if self.worker_token == self.token:
            raise PyforaUsageError("the worker token must differ from the clients' token: "
                                   "a client holding it could pose as a worker")

    @property
    def worker_count(self) -> int:
        """``workers``: the number given, else one per core."""
        return self.workers if self.workers is not None else os.cpu_count() or 1

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)


class Coordinator:
    """The state one coordinator keeps: sessions, workers, tasks and objects."""

    def __init__(self, config: Config, backend: Backend | None = None) -> None:
        self.config = config
        self.cluster_id = uuid.uuid4().hex
        # What runs the tasks.
        self.backend: Backend = backend or Dispatcher(ObjectStore())
        self.sessions: set[ClientSession] = set()       # those with a socket connected
        self.worker_links: set[WorkerLink] = set()      # pyfora-workers connected
        self.resumable: dict[str, ClientSession] = {}   # by resume secret, detached too
        self.stopping = False
        assert config.token is not None and config.worker_token is not None
        self.doors = Doors(
            {"client": config.token, "worker": config.worker_token},
            Guard(config.max_unauthenticated, config.auth_timeout),
            served_names(config.host, config.allowed_hosts), config.loopback,
            secure=config.certfile is not None, port=config.port)
        self.pool: WorkerPool | None = None
        self._joined = asyncio.Event()
        self.host = shared_memory.host_id()
        self.shm: shared_memory.Directory | None = None     # from the app's start to cleanup
        self._local: set[asyncio.Future] = set()       # serving sessions of connect_local

    def open_shared_memory(self) -> None:
        if self.config.shared_memory:
            self.shm = shared_memory.Directory.create()

    def close_shared_memory(self) -> None:
        if self.shm is not None:
            self.shm.remove()

    def shm_for(self, hello: p.Hello) -> shared_memory.Directory | None:
        """The shared-memory directory for the peer that said ``hello``, if it is on this
        machine: a view of its own, which reclaims what the peer never took."""
        if self.shm is None or hello.host is None or hello.host != self.host:
            return None
        return self.shm.for_peer()

    def connection_ended(self, link: Link) -> None:
        """A peer's connection ended: unlink the shared buffers no message will take any
        more (``pyfora.net.shared_memory``): those written for ``link``'s peer, if it has
        ended for good (a session may be resumed), and those whose writer died."""
        if link.shm is not None and link.closed:
            link.shm.reclaim()
        if self.shm is not None:
            self.shm.sweep()
            # Again a little later: a killed peer's socket is closed before its process
            # is seen to be dead, so the first sweep may still take it for alive.
            asyncio.get_running_loop().call_later(SWEEP_AGAIN, self.shm.sweep)

    def welcome(self, session: str, shm: shared_memory.Directory | None) -> p.Welcome:
        return p.Welcome(session=session, workers=len(self.backend.workers),
                         cluster=self.cluster_id, max_frame=self.config.max_frame,
                         shm=shm.path if shm else None)

    def status(self) -> dict:
        info = self.backend.status()
        info["sessions"] = len(self.sessions)
        info["shared_memory"] = self.shm.usage() if self.shm is not None else None
        guard = self.doors.guard
        info["unauthenticated"] = {"waiting": len(guard), **guard.closed}
        info["compiled"] = compiled_totals(info.get("workers", ()))
        return info

    async def wait_for_workers(self, count: int, timeout: float = JOIN_TIMEOUT) -> None:
        async with asyncio.timeout(timeout):
            while len(self.backend.workers) < count:
                self._joined.clear()
                await self._joined.wait()

    def connect_local(self) -> tuple[in_process.ClientEnd, p.Welcome]:
        """A session for a client on this event loop (the embedded default): its frames
        are handed over in memory (``cluster.coordinator.in_process``). Returns the client's end of
        the connection and its welcome."""
        client, server = in_process.pair()
        session = ClientSession(server, self, self.shm.for_peer() if self.shm else None)
        self.resumable[session.resume_token] = session
        serving = asyncio.ensure_future(self.serve_session(session, server))
        self._local.add(serving)
        serving.add_done_callback(self._local.discard)
        return client, session.welcome()

    async def serve_session(self, session: ClientSession, ws: Socket) -> None:
        self.sessions.add(session)
        try:
            await session.serve()
        finally:
            if session.ws is ws:        # else a resume has replaced this socket
                self.sessions.discard(session)
            self.connection_ended(session)

    def session_ended(self, session: ClientSession) -> None:
        self.sessions.discard(session)
        self.resumable.pop(session.resume_token, None)
        if session.shm is not None:     # ended for good: what it never took, it never will
            session.shm.reclaim()

    def worker_welcome(self, hello: p.Hello) -> p.Welcome | p.Error:
        """The welcome of the worker that said ``hello``, or why it is refused."""
        if self.backend.refuses_workers is None:
            return self.welcome("", self.shm_for(hello))
        return p.Error(id=0, kind="PyforaUsageError", message=self.backend.refuses_workers)

    async def serve_worker(self, ws: Socket, hello: p.Hello, name: str) -> None:
        """Serve a worker welcomed on ``ws`` until it goes away (from either door)."""
        dispatcher = self.backend
        # Only the pool's dispatcher takes workers; the welcome refused them otherwise.
        assert isinstance(dispatcher, Dispatcher), dispatcher.refuses_workers
        worker = WorkerLink(ws, self, dispatcher, hello.name or name, self.shm_for(hello))
        self.worker_links.add(worker)
        dispatcher.worker_joined(worker)
        self._joined.set()
        try:
            await worker.serve()
        finally:
            # No new task for it while we wait to learn why it went.
            dispatcher.worker_leaving(worker)
            if self.pool is not None and self.pool.started(worker.name):
                why = await self.pool.exit_reason(worker.name)
            else:   # a pyfora-worker started by hand: its exit status is not ours to see
                why = ("the worker disconnected: its process ended, or the network between "
                       "it and the coordinator failed")
            dispatcher.worker_lost(worker, why)
            self.worker_links.discard(worker)
            self.connection_ended(worker)

    async def close_sessions(self) -> None:
        """Tell every client the cluster is going away (their pending calls fail with
        ``SessionClosedOK``)."""
        self.stopping = True
        for session in list(self.resumable.values()):
            if not session.attached:
                session.end()
        await asyncio.gather(*(
            link.ws.close(code=CloseCode.GOING_AWAY, message=b"cluster shutting down")
            for link in list(self.sessions)), return_exceptions=True)
        await asyncio.gather(*self._local, return_exceptions=True)

    async def shut_down(self) -> None:
        """Close every session, then every pyfora-worker's connection (a Dask cluster's
        workers are not ours to close)."""
        await self.close_sessions()
        for link in list(self.worker_links):
            await link.ws.close(code=CloseCode.GOING_AWAY, message=b"cluster shutting down")



def compiled_totals(workers) -> dict:
    """The compiled tier's counts of all workers (``pyfora.compiled.counts``), summed."""
    totals = {"compiled": 0, "runs": 0, "reruns": 0, "fallbacks": 0, "compile_s": 0.0,
              "cache_hits": 0}
    for worker in workers:
        for name, value in (worker.get("compiled") or {}).items():
            if name in totals:
                totals[name] += value
    totals["compile_s"] = round(totals["compile_s"], 3)
    return totals
