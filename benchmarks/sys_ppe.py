"""``concurrent.futures.ProcessPoolExecutor(2)``: the reference every ratio is taken against.

Async variants await ``loop.run_in_executor(pool, ...)``, as an asyncio service would.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ProcessPoolExecutor

import common
import tasks
from common import Stopwatch, latency_summary

WORKERS = 2


def _pool() -> ProcessPoolExecutor:
    pool = ProcessPoolExecutor(WORKERS)
    list(pool.map(tasks.inc, range(50)))
    return pool


def w1(cfg: dict) -> dict:
    n = cfg["w1_n"]
    with _pool() as pool:
        lat = []
        for _ in range(n):
            t0 = time.perf_counter()
            pool.submit(tasks.noop).result()
            lat.append(time.perf_counter() - t0)
        out = {"sync": latency_summary(lat)}

        async def run():
            loop = asyncio.get_running_loop()
            lat = []
            for _ in range(n):
                t0 = time.perf_counter()
                await loop.run_in_executor(pool, tasks.noop)
                lat.append(time.perf_counter() - t0)
            return latency_summary(lat)
        out["async"] = asyncio.run(run())
    return out


def w2(cfg: dict) -> dict:
    n = cfg["w2_n"]
    with _pool() as pool:
        t0 = time.perf_counter()
        futures = [pool.submit(tasks.inc, i) for i in range(n)]
        values = [f.result() for f in futures]
        elapsed = time.perf_counter() - t0
        assert values == list(range(1, n + 1))
        out = {"sync": {"tasks_per_s": n / elapsed, "with_values_tasks_per_s": n / elapsed}}

        async def run():
            loop = asyncio.get_running_loop()
            t0 = time.perf_counter()
            values = await asyncio.gather(*(loop.run_in_executor(pool, tasks.inc, i)
                                            for i in range(n)))
            elapsed = time.perf_counter() - t0
            assert values == list(range(1, n + 1))
            return {"tasks_per_s": n / elapsed, "with_values_tasks_per_s": n / elapsed}
        out["async"] = asyncio.run(run())
    return out


def w3(cfg: dict) -> dict:
    import numpy as np  # noqa: F401
    size = cfg["w3_mb"] * common.MB
    out = {}
    with _pool() as pool:
        roles = {"client": common.me, "worker": lambda: common.descendants(common.me()[0].pid)}
        list(pool.map(tasks.import_numpy, [0.2] * (3 * WORKERS)))
        for kind, make in (("bytes", tasks.make_bytes), ("numpy", tasks.make_array)):
            def up(payload):
                assert pool.submit(tasks.nbytes, payload).result() == size

            out[f"up_{kind}"] = common.measure_up(up, make, size, roles)
            make_s = min(pool.submit(tasks.time_make, kind, size).result() for _ in range(3))

            def down():
                pool.submit(make, size).result()

            out[f"down_{kind}"] = common.measure_down(down, size, roles, overhead=make_s)
            out[f"down_{kind}"]["worker_make_s"] = make_s
    return out


def w4(cfg: dict) -> dict:
    n = cfg["w4_n"]
    with _pool() as pool:
        with Stopwatch() as sw:
            count = sum(pool.map(tasks.isPrime, range(n), chunksize=max(1, n // (8 * WORKERS))))
    return {"with_block": {"seconds": sw.seconds, "count": count}}


def w5(cfg: dict) -> dict:
    t0 = time.perf_counter()
    from concurrent.futures import ProcessPoolExecutor as PPE
    t_import = time.perf_counter()
    pool = PPE(WORKERS)
    t_connect = time.perf_counter()
    pool.submit(tasks.noop).result()
    t_first = time.perf_counter()
    pool.shutdown()
    t_closed = time.perf_counter()
    return {"import_s": t_import - t0, "connect_s": t_connect - t_import,
            "start_to_first_s": t_first - t0, "first_after_import_s": t_first - t_import,
            "shutdown_s": t_closed - t_first}
