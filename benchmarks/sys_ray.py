"""Ray, local: ``ray.init(num_cpus=2)``. Async variants ``await`` the ObjectRefs.

Ray's processes (gcs_server, raylet with the object store, dashboard agents) count as its
"coordinator" for memory; its ``ray::`` task processes as workers. Numpy results come back
zero-copy from the shared-memory object store, which RSS counts where pages are touched.
"""

from __future__ import annotations

import asyncio
import logging
import time

import common
import tasks
from common import Stopwatch, latency_summary

WORKERS = 2


def _init():
    import ray
    ray.init(num_cpus=WORKERS, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)
    remote = {name: ray.remote(getattr(tasks, name)) for name in
              ("noop", "inc", "nbytes", "make_bytes", "make_array", "count_primes",
               "import_numpy")}
    ray.get([remote["inc"].remote(i) for i in range(50)])
    return ray, remote


def w1(cfg: dict) -> dict:
    n = cfg["w1_n"]
    ray, r = _init()
    try:
        lat = []
        for _ in range(n):
            t0 = time.perf_counter()
            ray.get(r["noop"].remote())
            lat.append(time.perf_counter() - t0)
        out = {"sync": latency_summary(lat)}

        async def run():
            lat = []
            for _ in range(n):
                t0 = time.perf_counter()
                await r["noop"].remote()
                lat.append(time.perf_counter() - t0)
            return latency_summary(lat)
        out["async"] = asyncio.run(run())
    finally:
        ray.shutdown()
    return out


def w2(cfg: dict) -> dict:
    n = cfg["w2_n"]
    ray, r = _init()
    try:
        t0 = time.perf_counter()
        values = ray.get([r["inc"].remote(i) for i in range(n)])
        elapsed = time.perf_counter() - t0
        assert values == list(range(1, n + 1))
        out = {"sync": {"tasks_per_s": n / elapsed, "with_values_tasks_per_s": n / elapsed}}

        async def run():
            t0 = time.perf_counter()
            values = await asyncio.gather(*(r["inc"].remote(i) for i in range(n)))
            elapsed = time.perf_counter() - t0
            assert list(values) == list(range(1, n + 1))
            return {"tasks_per_s": n / elapsed, "with_values_tasks_per_s": n / elapsed}
        out["async"] = asyncio.run(run())
    finally:
        ray.shutdown()
    return out


def _ray_roles():
    def split(want_worker: bool):
        procs = []
        for proc in common.descendants(common.me()[0].pid):
            try:
                is_worker = proc.name().startswith("ray::") or "default_worker" in " ".join(
                    proc.cmdline())
            except Exception:
                continue
            if is_worker == want_worker:
                procs.append(proc)
        return procs
    return {"client": common.me, "coordinator": lambda: split(False),
            "worker": lambda: split(True)}


def w3(cfg: dict) -> dict:
    import numpy as np  # noqa: F401
    size = cfg["w3_mb"] * common.MB
    ray, r = _init()
    roles = _ray_roles()
    out = {}
    try:
        ray.get([r["import_numpy"].remote() for _ in range(3 * WORKERS)])
        for kind in ("bytes", "numpy"):
            make = tasks.make_bytes if kind == "bytes" else tasks.make_array

            def up(payload):
                assert ray.get(r["nbytes"].remote(payload)) == size

            out[f"up_{kind}"] = common.measure_up(up, make, size, roles)

            ref = r[f"make_{'bytes' if kind == 'bytes' else 'array'}"].remote(size)
            ray.wait([ref])

            def down():
                ray.get(ref)

            time.sleep(0.2)
            out[f"down_{kind}"] = common.measure_down(down, size, roles)
            ref = None          # released
            time.sleep(0.2)
    finally:
        ray.shutdown()
    return out


def w4(cfg: dict) -> dict:
    n = cfg["w4_n"]
    ray, r = _init()
    try:
        with Stopwatch() as sw:
            count = sum(ray.get([r["count_primes"].remote(lo, hi)
                                 for lo, hi in tasks.chunks(n, 8 * WORKERS)]))
    finally:
        ray.shutdown()
    return {"with_block": {"seconds": sw.seconds, "count": count}}


def w5(cfg: dict) -> dict:
    t0 = time.perf_counter()
    import ray
    t_import = time.perf_counter()
    ray.init(num_cpus=WORKERS, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)
    noop = ray.remote(tasks.noop)
    t_connect = time.perf_counter()
    ray.get(noop.remote())
    t_first = time.perf_counter()
    ray.shutdown()
    t_closed = time.perf_counter()
    return {"import_s": t_import - t0, "connect_s": t_connect - t_import,
            "start_to_first_s": t_first - t0, "first_after_import_s": t_first - t_import,
            "shutdown_s": t_closed - t_first}
