"""pyfora's side of every workload, sync facade and ``pyfora.aio``.

W1, W2, W4 and W5 use the embedded default (``pyfora.connect(workers=2)``: coordinator on
the client's loop thread); W1 and W2 also take a coordinator's ``url`` (``sys_pyfora_dask``).
W3 uses a standalone ``python -m cluster`` subprocess so that the coordinator's memory is
separable from the client's (its children are the workers).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import common
import tasks
from common import Stopwatch, latency_summary

WORKERS = 2


def _connect(url=None):
    import pyfora
    return pyfora.connect(url, workers=None if url else WORKERS)


def _warm(ex, n=50):
    for _ in range(n):
        ex.submit(tasks.noop).result()


# -- W1 latency -----------------------------------------------------------------------

def w1(cfg: dict, url: str | None = None) -> dict:
    n = cfg["w1_n"]
    out = {}
    ex = _connect(url)
    try:
        _warm(ex)
        lat = []
        for _ in range(n):
            t0 = time.perf_counter()
            ex.submit(tasks.noop).result()
            lat.append(time.perf_counter() - t0)
        out["sync"] = latency_summary(lat)
        lat = []
        for _ in range(n):
            t0 = time.perf_counter()
            ex.submit(tasks.noop).result().toLocal().result()
            lat.append(time.perf_counter() - t0)
        out["sync_value"] = latency_summary(lat)
    finally:
        ex.close()
    out.update(asyncio.run(_w1_async(n, url)))
    return out


async def _w1_async(n: int, url: str | None) -> dict:
    from pyfora import aio
    out = {}
    async with aio.connect(url, workers=None if url else WORKERS) as ex:
        for _ in range(50):
            await ex.submit(tasks.noop)
        lat = []
        for _ in range(n):
            t0 = time.perf_counter()
            await ex.submit(tasks.noop)
            lat.append(time.perf_counter() - t0)
        out["async"] = latency_summary(lat)
        lat = []
        for _ in range(n):
            t0 = time.perf_counter()
            await (await ex.submit(tasks.noop)).toLocal()
            lat.append(time.perf_counter() - t0)
        out["async_value"] = latency_summary(lat)
    return out


# -- W2 throughput --------------------------------------------------------------------

def w2(cfg: dict, url: str | None = None) -> dict:
    n = cfg["w2_n"]
    out = {}
    ex = _connect(url)
    try:
        _warm(ex)
        t0 = time.perf_counter()
        futures = [ex.submit(tasks.inc, i) for i in range(n)]
        proxies = [f.result() for f in futures]
        t1 = time.perf_counter()
        values = [f.result() for f in [p.toLocal() for p in proxies]]
        t2 = time.perf_counter()
        assert values == list(range(1, n + 1))
        out["sync"] = {"tasks_per_s": n / (t1 - t0), "with_values_tasks_per_s": n / (t2 - t0),
                       "submit_s": t1 - t0}
        del proxies, futures, values
    finally:
        ex.close()
    out["async"] = asyncio.run(_w2_async(n, url))
    return out


async def _w2_async(n: int, url: str | None) -> dict:
    from pyfora import aio
    async with aio.connect(url, workers=None if url else WORKERS) as ex:
        for _ in range(50):
            await ex.submit(tasks.noop)
        t0 = time.perf_counter()
        proxies = await asyncio.gather(*(ex.submit(tasks.inc, i) for i in range(n)))
        t1 = time.perf_counter()
        values = await asyncio.gather(*(p.toLocal() for p in proxies))
        t2 = time.perf_counter()
        assert values == list(range(1, n + 1))
        del proxies
        return {"tasks_per_s": n / (t1 - t0), "with_values_tasks_per_s": n / (t2 - t0)}


# -- W3 transfer ----------------------------------------------------------------------

def start_standalone(workers: int = WORKERS, tree: str | None = None,
                     extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    """``python -m cluster`` on a free port, with ``extra`` arguments; with ``tree``, that
    source tree's (the coordinator and its workers import ``cluster`` from their working
    directory)."""
    proc = subprocess.Popen([sys.executable, "-m", "cluster", "--port", "0", "--workers",
                             str(workers), *extra], stdout=subprocess.PIPE, text=True,
                            cwd=tree)
    url = proc.stdout.readline().strip()
    if not url.startswith("http"):
        proc.kill()
        raise RuntimeError(f"python -m cluster printed {url!r}")
    return proc, url


def stop_standalone(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def w3(cfg: dict) -> dict:
    import numpy as np  # noqa: F401 - loaded before sampling
    import psutil
    size = cfg["w3_mb"] * common.MB
    proc, url = start_standalone()
    coord = psutil.Process(proc.pid)
    roles = {"client": common.me, "coordinator": lambda: [coord],
             "worker": lambda: coord.children(recursive=True)}
    sizes = {"shared memory": common.shm_bytes}     # buffers in flight between them
    out = {}
    ex = _connect(url)
    try:
        _warm(ex, 10)
        [f.result() for f in [ex.submit(tasks.import_numpy) for _ in range(3 * WORKERS)]]
        for kind, make in (("bytes", tasks.make_bytes), ("numpy", tasks.make_array)):
            def up(payload):
                got = ex.submit(tasks.nbytes, payload).result().toLocal().result()
                assert got == size, got

            out[f"up_{kind}"] = common.measure_up(up, make, size, roles, sizes)

            proxy = ex.submit(make, size).result()

            def down():
                value = proxy.toLocal().result()
                assert len(value) * getattr(value, "itemsize", 1) == size

            time.sleep(0.2)
            out[f"down_{kind}"] = common.measure_down(down, size, roles, sizes)
            proxy = None        # released
            time.sleep(0.2)
    finally:
        ex.close()
        stop_standalone(proc)
    return out


# -- W4 parallel CPU ------------------------------------------------------------------

def w4(cfg: dict) -> dict:
    N = cfg["w4_n"]  # noqa: N806 - the name the with-block reads
    isPrime = tasks.isPrime  # noqa: N806
    out = {}
    ex = _connect()
    try:
        _warm(ex, 10)
        parts = tasks.chunks(N, 8 * WORKERS)
        with Stopwatch() as sw:
            futures = [ex.submit(tasks.count_primes, lo, hi) for lo, hi in parts]
            count = sum(f.result().toLocal().result() for f in futures)
        out["chunks"] = {"seconds": sw.seconds, "count": count}
        if not hasattr(ex, "remotely"):
            out["with_block"] = {"status": "n/a", "reason": "Executor has no `remotely` yet"}
        else:
            t0 = time.perf_counter()
            with ex.remotely.downloadAll():
                result = sum(isPrime(x) for x in range(N))
            out["with_block"] = {"seconds": time.perf_counter() - t0, "count": result}
    finally:
        ex.close()
    return out


# -- W5 start-up ----------------------------------------------------------------------

def w5(cfg: dict) -> dict:
    t0 = time.perf_counter()
    import pyfora
    t_import = time.perf_counter()
    ex = pyfora.connect(workers=WORKERS)
    t_connect = time.perf_counter()
    ex.submit(tasks.noop).result().toLocal().result()
    t_first = time.perf_counter()
    ex.close()
    t_closed = time.perf_counter()
    return {"import_s": t_import - t0, "connect_s": t_connect - t_import,
            "start_to_first_s": t_first - t0, "first_after_import_s": t_first - t_import,
            "shutdown_s": t_closed - t_first, "pid": os.getpid()}
