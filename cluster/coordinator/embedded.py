"""The embedded default's cluster (``pyfora.connect()`` with no URL), started in the order
that gets its first result soonest.

Importing the coordinator's web server (aiohttp, ``cluster.coordinator.app``) and starting
worker processes (importing the worker) each take a few tenths of a second, most of the
time to a first result if done one after the other. Here the coordinator's socket is
bound and listening first, the workers are started connecting to it (the
kernel queues their connections), and only then is the web server imported and served
on that socket: the two overlap. The workers are forked from a fork server, so that
their imports are paid once, not once per worker (``cluster.worker.forkserver``).
Nothing here imports aiohttp.

Runs on the client's event loop.
"""

from __future__ import annotations

import os
import secrets
import socket

from cluster.coordinator.pool import WorkerPool


async def start(workers: int | None):
    """A cluster of ``workers`` worker processes (default: one per core) on 127.0.0.1,
    once they have joined: a ``cluster.coordinator.app.RunningCluster``."""
    count = workers if workers is not None else os.cpu_count() or 1
    listening = socket.create_server(("127.0.0.1", 0))
    port = listening.getsockname()[1]
    # Tokens made as ``auth.new_token`` makes them (``auth`` imports aiohttp). The clients'
    # is given to no one: this cluster's only session is in-process, and no other local
    # user may open one on its port.
    pool = WorkerPool(count, f"ws://127.0.0.1:{port}/api/worker", secrets.token_urlsafe(32),
                      fork=True)
    try:
        await pool.start()
        from cluster.coordinator.app import Config, start_cluster
    except BaseException:
        await pool.stop()
        listening.close()
        raise
    config = Config(host="127.0.0.1", port=port, workers=count,
                    token=secrets.token_urlsafe(32), worker_token=pool.token)
    return await start_cluster(config, started=(listening, pool))
