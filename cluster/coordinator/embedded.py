"""The embedded default's cluster (``pyfora.connect()`` with no URL), started in the order
that gets its first result soonest.

The workers are forked from a fork server, so that their imports are paid once, not once
per worker (``cluster.worker.forkserver``), and are started first (``start_workers``),
connecting to a socket already listening (the kernel queues their connections): the
client imports the rest of itself and sets up the coordinator (``start``) while the fork
server starts, on another core.

They join through a worker door served by websockets (``cluster.coordinator.ws_door``),
which the client has loaded already, not by aiohttp: importing aiohttp takes a few tenths
of a second of the client's CPU (most of it building TLS contexts a server never uses).
The aiohttp app (the dashboard,
``/api/status``, the clients' door) is served beside it on a socket of its own, bound at
once so that its URL is known, from its first connection on: aiohttp is imported then,
on a thread of its own, while the connection waits in the socket's queue. A program that
never looks at its embedded cluster's dashboard never pays for aiohttp.

Runs on the client's event loop (the import: on a thread of the loop's default executor).
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import logging
import os
import secrets
import socket
from typing import TYPE_CHECKING

from cluster.coordinator.pool import WorkerPool

if TYPE_CHECKING:
    from websockets.asyncio.server import Server

    from cluster.coordinator.coordinator import Coordinator

log = logging.getLogger("cluster")
#: The path of the worker door (``ws_door.PATH``, which is not imported yet).
WORKER_PATH = "/api/worker"


@dataclasses.dataclass
class Starting:
    """An embedded cluster's workers, starting: their pool, and the socket they connect
    to, which nothing serves yet."""
    pool: WorkerPool
    door: socket.socket

    async def abandon(self) -> None:
        await self.pool.stop()
        self.door.close()


async def start_workers(workers: int | None) -> Starting:
    """Start ``workers`` worker processes (default: one per core), connecting to a socket
    on 127.0.0.1 that ``start`` serves. Imports nothing but the pool."""
    count = workers if workers is not None else os.cpu_count() or 1
    door = socket.create_server(("127.0.0.1", 0))
    # A token made as ``auth.new_token`` makes them: ``auth`` is not imported yet.
    pool = WorkerPool(count, f"ws://127.0.0.1:{door.getsockname()[1]}{WORKER_PATH}",
                      secrets.token_urlsafe(32), fork=True)
    starting = Starting(pool, door)
    try:
        await pool.start()
    except BaseException:
        await starting.abandon()
        raise
    return starting


async def start(starting: Starting) -> EmbeddedCluster:
    """The cluster of the workers ``starting``, once they have joined. On failure, the
    caller abandons ``starting``."""
    from cluster.coordinator import ws_door
    from cluster.coordinator.auth import new_token
    from cluster.coordinator.coordinator import Config, Coordinator

    assert ws_door.PATH == WORKER_PATH
    pool = starting.pool
    listening = socket.create_server(("127.0.0.1", 0))
    port = listening.getsockname()[1]
    # The clients' token is given to no one: this cluster's only session is in-process,
    # and no other local user may open one on its port.
    config = Config(host="127.0.0.1", port=port, workers=pool.count, token=new_token(),
                    worker_token=pool.token)
    coordinator = Coordinator(config)
    coordinator.doors.port = port
    cluster = EmbeddedCluster(coordinator, listening)
    try:
        coordinator.open_shared_memory()
        cluster.door = await ws_door.start(coordinator, starting.door)
        coordinator.pool = pool     # from here, the cluster stops it
        await coordinator.wait_for_workers(pool.count)
    except BaseException:
        await cluster.stop()
        raise
    cluster.serve_http_when_asked()
    return cluster


class EmbeddedCluster:
    """The embedded default's coordinator, its workers and its doors."""

    def __init__(self, coordinator: Coordinator, listening: socket.socket) -> None:
        self.coordinator = coordinator
        self.url = f"http://127.0.0.1:{listening.getsockname()[1]}/"
        self.door: Server | None = None     # the worker door's server, once serving
        self._listening = listening
        self._importing: asyncio.Future | None = None
        self._serving: asyncio.Task | None = None
        self._runner = None     # the aiohttp app's runner, once serving

    def serve_http_when_asked(self) -> None:
        """Serve the app once a first connection waits on its socket (``serve_http``)."""
        asyncio.get_running_loop().add_reader(self._listening.fileno(), self.serve_http)

    def serve_http(self) -> None:
        """Import aiohttp on a thread, then serve the app on the loop."""
        if self._importing is not None:
            return
        asyncio.get_running_loop().remove_reader(self._listening.fileno())
        self._importing = asyncio.ensure_future(
            asyncio.to_thread(importlib.import_module, "cluster.coordinator.app"))
        self._serving = asyncio.ensure_future(self._serve_http())

    async def _serve_http(self) -> None:
        assert self._importing is not None
        try:
            app = await self._importing
            self._runner = await app.serve(
                app.make_app(self.coordinator.config, coordinator=self.coordinator),
                self._listening)
        except Exception:
            log.warning("the embedded cluster's dashboard could not be served", exc_info=True)

    async def stop(self) -> None:
        coordinator = self.coordinator
        # Sessions first: their clients must hear that the cluster is stopping, not that
        # the workers running their tasks crashed.
        await coordinator.close_sessions()
        if coordinator.pool is not None:
            await coordinator.pool.stop()
        if self._importing is None:
            asyncio.get_running_loop().remove_reader(self._listening.fileno())
        else:
            # An import under way cannot be stopped: it ends on its thread, unused.
            self._importing.cancel()
        if self._serving is not None:
            await asyncio.wait([self._serving])
        if self._runner is not None:
            await self._runner.cleanup()
        self._listening.close()
        await coordinator.shut_down()
        if self.door is not None:
            self.door.close()
            await self.door.wait_closed()
        coordinator.close_shared_memory()
        await coordinator.backend.close()
