"""The coordinator as an aiohttp application, and a running cluster built around it.

``make_app(config)`` sets up the routes; ``start_cluster(config)`` binds them, starts the
worker pool and waits until the workers have joined: that is ``python -m cluster``. The
embedded default of ``pyfora.connect()`` serves its workers without aiohttp first
(``cluster.coordinator.embedded``) and this app beside them (``serve``).

Runs on one event loop: the coordinator's own process, or the client's loop thread when
embedded.
"""

from __future__ import annotations

import logging
import socket

from aiohttp import web

from cluster.coordinator import dashboard
from cluster.coordinator.auth import server_context
from cluster.coordinator.coordinator import Config, Coordinator
from cluster.coordinator.limits import check_session_count
from cluster.coordinator.pool import WorkerPool
from cluster.coordinator.session import ClientSession
from cluster.coordinator.web_doors import AccessLogger, GuardedSite, accept, check_host
from cluster.scheduling.backend import Backend
from pyfora import wire as p
from pyfora.errors import ProtocolError, PyforaUsageError, ResourceLimitError

log = logging.getLogger("cluster")

COORDINATOR = web.AppKey("coordinator", Coordinator)


async def session_handler(request: web.Request) -> web.StreamResponse:
    coordinator = request.app[COORDINATOR]
    sessions: list[ClientSession] = []

    def welcome(ws: web.WebSocketResponse, hello: p.Hello) -> p.Welcome | p.Error:
        if hello.resume is None:
            try:
                check_session_count(len(coordinator.resumable), coordinator.config.max_sessions)
            except ResourceLimitError as exc:
                return p.Error(id=0, kind="ResourceLimitError", message=str(exc))
            session = ClientSession(ws, coordinator, coordinator.shm_for(hello))
            coordinator.resumable[session.resume_token] = session
        else:
            found = coordinator.resumable.get(hello.resume)
            if found is None or found.closed or coordinator.stopping:
                return p.Error(id=0, kind="SessionLost", message=(
                    "the session could not be resumed: it ended (its grace period "
                    "passed, or the cluster restarted)"))
            try:
                found.resume(ws, hello.received)
            except ProtocolError as exc:
                found.end()
                return p.Error(id=0, kind="SessionLost", message=str(exc))
            session = found
        sessions.append(session)
        return session.welcome()

    try:
        accepted = await accept(request, "client", coordinator.doors,
                                coordinator.config.max_frame, welcome)
    except BaseException:
        if sessions:        # the welcome could not be sent: as if it broke after
            sessions[0].disconnected(sessions[0].ws)
        raise
    if isinstance(accepted, web.Response):
        return accepted
    await coordinator.serve_session(sessions[0], accepted[0])
    return accepted[0]


async def worker_handler(request: web.Request) -> web.StreamResponse:
    coordinator = request.app[COORDINATOR]
    accepted = await accept(request, "worker", coordinator.doors, coordinator.config.max_frame,
                            lambda ws, hello: coordinator.worker_welcome(hello))
    if isinstance(accepted, web.Response):
        return accepted
    ws, hello = accepted
    await coordinator.serve_worker(ws, hello, f"worker@{request.remote}")
    return ws


async def _open_shared_memory(app: web.Application) -> None:
    app[COORDINATOR].open_shared_memory()


async def _close_shared_memory(app: web.Application) -> None:
    app[COORDINATOR].close_shared_memory()


async def _shut_down(app: web.Application) -> None:
    await app[COORDINATOR].shut_down()


def make_app(config: Config, backend: Backend | None = None,
             coordinator: Coordinator | None = None) -> web.Application:
    """The app of a new coordinator; or of ``coordinator``, whose owner opens and closes
    its shared memory and its connections (``cluster.coordinator.embedded``)."""
    owned = coordinator is None
    coordinator = coordinator or Coordinator(config, backend)
    app = web.Application(middlewares=[check_host(coordinator.doors)])
    app[COORDINATOR] = coordinator
    app.router.add_get("/api/session", session_handler)
    app.router.add_get("/api/worker", worker_handler)
    dashboard.setup(app, coordinator)      # "/" and "/api/status"
    if owned:
        app.on_startup.append(_open_shared_memory)
        app.on_shutdown.append(_shut_down)
        app.on_cleanup.append(_close_shared_memory)
    return app


async def serve(app: web.Application, listening: socket.socket, tls=None) -> web.AppRunner:
    """Serve ``app`` on the ``listening`` socket; the runner's ``cleanup()`` stops it."""
    # Request headers are held until complete, before any check: bounded per connection
    # (128 by default) as well as per line.
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=2.0,
                           access_log_class=AccessLogger, max_headers=64)
    await runner.setup()
    try:
        await GuardedSite(runner, listening, app[COORDINATOR].doors.guard,
                          ssl_context=tls).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


class RunningCluster:
    """A coordinator bound to a port, with its worker pool."""

    def __init__(self, runner: web.AppRunner, url: str, coordinator: Coordinator) -> None:
        self.runner = runner
        self.url = url
        self.coordinator = coordinator

    async def stop(self) -> None:
        # Sessions first: their clients must hear that the cluster is stopping, not that
        # the workers running their tasks crashed.
        await self.coordinator.close_sessions()
        if self.coordinator.pool is not None:
            await self.coordinator.pool.stop()
        await self.runner.cleanup()
        await self.coordinator.backend.close()


async def start_cluster(config: Config) -> RunningCluster:
    """Bind the coordinator, start ``config.workers`` workers and wait for them to join
    (with the Dask backend: connect to Dask, or start a local Dask cluster, first)."""
    backend = None
    if config.backend == "dask":
        try:
            from cluster.scheduling.dask import DaskBackend
        except ImportError as exc:
            raise PyforaUsageError("the Dask backend needs dask[distributed]: pip install "
                                   f"'pyfora[dask]' ({exc})") from None
        backend = await DaskBackend.start(config.scheduler, config.worker_count)
    try:
        return await _bind(config, backend)
    except BaseException:
        if backend is not None:
            await backend.close()
        raise


async def _bind(config: Config, backend: Backend | None) -> RunningCluster:
    app = make_app(config, backend)
    coordinator = app[COORDINATOR]
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    listening = socket.create_server((config.host.strip("[]"), config.port), family=family)
    tls = server_context(config.certfile, config.keyfile) if config.certfile else None
    runner = await serve(app, listening, tls)
    host, port = runner.addresses[0][:2]
    coordinator.doors.port = port
    shown = f"[{host}]" if ":" in host else host
    secure = "s" if tls is not None else ""
    url = f"http{secure}://{shown}:{port}/"
    if backend is not None:
        return RunningCluster(runner, url, coordinator)
    try:
        coordinator.pool = WorkerPool(
            config.worker_count, f"ws{secure}://{shown}:{port}/api/worker",
            config.worker_token, certfile=config.certfile, memory_limit=config.memory_limit)
        await coordinator.pool.start()
        await coordinator.wait_for_workers(config.worker_count)
    except BaseException:
        await RunningCluster(runner, url, coordinator).stop()
        raise
    return RunningCluster(runner, url, coordinator)
