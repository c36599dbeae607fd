"""Soak: 100,000 tasks whose proxies are dropped at once; coordinator and worker memory
must end within 10% of where they started (after a warm-up).

    .venv/bin/python benchmarks/soak.py [--tasks 100000] [--workers 2] [--every 10000]

Starts ``python -m cluster``, submits tasks in batches of 500 from one aio session (each
makes a 1 KB value, uses a defined value, and half of them use the previous batch's
result), drops every proxy, and samples resident memory (psutil) of the coordinator and
of its workers (also every ``--every`` tasks, to tell a leak, which keeps growing, from
the allocator's high-water mark, which levels off). Prints the figures recorded in
docs/reliability.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import time

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", "tests")]


def work(i, base, previous=None):
    return bytes(1000) + base[:8] + (previous[:8] if previous is not None else b"") + bytes([i % 256])


def rss(pid: int) -> tuple[int, int]:
    process = psutil.Process(pid)
    workers = sum(c.memory_info().rss for c in process.children(recursive=True))
    return process.memory_info().rss, workers


async def run(url: str, total: int, pid: int, every: int) -> None:
    from conftest import http_status

    from pyfora import aio
    batch = 500
    async with aio.connect(url) as ex:
        base = await ex.define(b"base-value" * 10)
        done, previous, baseline = 0, None, None
        started = time.monotonic()
        while done < total:
            proxies = await asyncio.gather(*(
                ex.submit(work, i, base, previous if i % 2 else None)
                for i in range(done, done + batch)))
            previous = proxies[-1]
            del proxies
            gc.collect()
            done += batch
            if done == 5_000:           # warmed up: imports, caches, allocator arenas
                await asyncio.sleep(1)
                baseline = rss(pid)
                print(f"baseline after {done:,} tasks: coordinator "
                      f"{baseline[0] / 2**20:.1f} MiB, workers {baseline[1] / 2**20:.1f} MiB",
                      flush=True)
            elif baseline is not None and done % every == 0:
                now = rss(pid)
                print(f"  {done:>9,} tasks: coordinator {now[0] / 2**20:.1f} MiB, "
                      f"workers {now[1] / 2**20:.1f} MiB "
                      f"({(now[1] / baseline[1] - 1) * 100:+.1f}%)", flush=True)
        del previous
        await asyncio.sleep(2)          # let the releases land
        end = rss(pid)
        elapsed = time.monotonic() - started
        status = http_status(url)
        print(f"{done:,} tasks in {elapsed:.0f} s ({done / elapsed:,.0f}/s)")
        print(f"end: coordinator {end[0] / 2**20:.1f} MiB "
              f"({(end[0] / baseline[0] - 1) * 100:+.1f}%), workers {end[1] / 2**20:.1f} MiB "
              f"({(end[1] / baseline[1] - 1) * 100:+.1f}%)")
        print(f"objects left: {status['objects']}, lineage: {status['lineage']}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--every", type=int, default=10_000,
                        help="print memory every this many tasks (a multiple of 500)")
    args = parser.parse_args()
    from conftest import ClusterProcess
    cluster = ClusterProcess(args.workers)
    try:
        asyncio.run(run(cluster.url, args.tasks, cluster.pid, args.every))
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
