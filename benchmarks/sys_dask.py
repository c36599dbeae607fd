"""Dask distributed: ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)``.

The scheduler runs in the client process (as LocalCluster does); the nannies and worker
processes are its children. Async variants use ``Client(asynchronous=True)``.
"""

from __future__ import annotations

import asyncio
import logging
import time

import common
import tasks
from common import Stopwatch, latency_summary

WORKERS = 2


def _cluster(asynchronous: bool = False):
    from dask.distributed import LocalCluster
    logging.getLogger("distributed").setLevel(logging.ERROR)
    return LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True,
                        dashboard_address=None, asynchronous=asynchronous)


def _client():
    from dask.distributed import Client
    cluster = _cluster()
    client = Client(cluster)
    client.wait_for_workers(WORKERS)
    client.gather(client.map(tasks.inc, range(50), pure=False))
    return cluster, client


def _close(cluster, client) -> None:
    client.close()
    cluster.close()


async def _async(body):
    from dask.distributed import Client
    async with _cluster(asynchronous=True) as cluster:
        async with Client(cluster, asynchronous=True) as client:
            await client.wait_for_workers(WORKERS)
            await client.gather(client.map(tasks.inc, range(50), pure=False))
            return await body(client)


def w1(cfg: dict) -> dict:
    n = cfg["w1_n"]
    cluster, client = _client()
    try:
        lat = []
        for _ in range(n):
            t0 = time.perf_counter()
            client.submit(tasks.noop, pure=False).result()
            lat.append(time.perf_counter() - t0)
        out = {"sync": latency_summary(lat)}
    finally:
        _close(cluster, client)

    async def body(client):
        lat = []
        for _ in range(n):
            t0 = time.perf_counter()
            await client.submit(tasks.noop, pure=False)
            lat.append(time.perf_counter() - t0)
        return latency_summary(lat)
    out["async"] = asyncio.run(_async(body))
    return out


def w2(cfg: dict) -> dict:
    n = cfg["w2_n"]
    cluster, client = _client()
    try:
        t0 = time.perf_counter()
        values = client.gather(client.map(tasks.inc, range(n), pure=False))
        elapsed = time.perf_counter() - t0
        assert values == list(range(1, n + 1))
        out = {"sync": {"tasks_per_s": n / elapsed, "with_values_tasks_per_s": n / elapsed}}
    finally:
        _close(cluster, client)

    async def body(client):
        t0 = time.perf_counter()
        values = await client.gather(client.map(tasks.inc, range(n), pure=False))
        elapsed = time.perf_counter() - t0
        assert values == list(range(1, n + 1))
        return {"tasks_per_s": n / elapsed, "with_values_tasks_per_s": n / elapsed}
    out["async"] = asyncio.run(_async(body))
    return out


def w3(cfg: dict) -> dict:
    import numpy as np  # noqa: F401
    from dask.distributed import wait
    size = cfg["w3_mb"] * common.MB
    out = {}
    cluster, client = _client()
    roles = {"client": common.me, "worker": lambda: common.descendants(common.me()[0].pid)}
    try:
        client.gather(client.map(tasks.import_numpy, [0.2] * (3 * WORKERS), pure=False))
        for kind, make in (("bytes", tasks.make_bytes), ("numpy", tasks.make_array)):
            def up(payload):
                assert client.submit(tasks.nbytes, payload, pure=False).result() == size

            out[f"up_{kind}"] = common.measure_up(up, make, size, roles)

            future = client.submit(make, size, pure=False)
            wait(future)

            def down():
                future.result()

            time.sleep(0.2)
            out[f"down_{kind}"] = common.measure_down(down, size, roles)
            future = None       # released
            time.sleep(0.2)
    finally:
        _close(cluster, client)
    return out


def w4(cfg: dict) -> dict:
    import dask.bag as db
    n = cfg["w4_n"]
    cluster, client = _client()
    try:
        with Stopwatch() as sw:
            count = db.from_sequence(range(n), npartitions=8 * WORKERS).map(
                tasks.isPrime).sum().compute()
    finally:
        _close(cluster, client)
    return {"with_block": {"seconds": sw.seconds, "count": count}}


def w5(cfg: dict) -> dict:
    t0 = time.perf_counter()
    from dask.distributed import Client, LocalCluster
    t_import = time.perf_counter()
    logging.getLogger("distributed").setLevel(logging.ERROR)
    cluster = LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    client = Client(cluster)
    t_connect = time.perf_counter()
    client.submit(tasks.noop, pure=False).result()
    t_first = time.perf_counter()
    client.close()
    cluster.close()
    t_closed = time.perf_counter()
    return {"import_s": t_import - t0, "connect_s": t_connect - t_import,
            "start_to_first_s": t_first - t0, "first_after_import_s": t_first - t_import,
            "shutdown_s": t_closed - t_first}
