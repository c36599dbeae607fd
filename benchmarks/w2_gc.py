"""The garbage collector's work per W2 task in the client process (not run by ``run.py``).

    .venv/bin/python benchmarks/w2_gc.py [ROUNDS]

W2's bursts, sync and ``pyfora.aio``, on the embedded cluster (``pyfora.connect(workers=2)``,
whose coordinator runs in this process too). For each burst: the objects the collector
examined per task (the sum, over the collections during the burst, of the objects in the
generations each one scanned) and how many collections of each generation ran. It counts
objects, not time, so it does not move with the machine's load: every object a pending or
finished task keeps is examined again at each collection of its generation, and thousands
are kept at once.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tasks  # noqa: E402

import pyfora  # noqa: E402
from pyfora import aio  # noqa: E402

N = 5000


class Census:
    """Counts, from a ``gc.callbacks`` hook, what each collection examines."""

    def __init__(self) -> None:
        self.examined = 0
        self.collections = [0, 0, 0]

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            generation = info["generation"]
            self.collections[generation] += 1
            self.examined += sum(len(gc.get_objects(g)) for g in range(generation + 1))

    def __enter__(self) -> Census:
        gc.collect()
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc) -> None:
        gc.callbacks.remove(self)

    def row(self) -> str:
        return f"{self.examined / N:6.0f} examined per task, collections {self.collections}"


def sync_bursts(rounds: int) -> None:
    ex = pyfora.connect(workers=2)
    try:
        for _ in range(50):
            ex.submit(tasks.noop).result()
        for _ in range(rounds):
            with Census() as census:
                futures = [ex.submit(tasks.inc, i) for i in range(N)]
                proxies = [f.result() for f in futures]
            print("sync ", census.row())
            del futures, proxies
    finally:
        ex.close()


async def async_bursts(rounds: int) -> None:
    async with aio.connect(workers=2) as ex:
        for _ in range(50):
            await ex.submit(tasks.noop)
        for _ in range(rounds):
            with Census() as census:
                proxies = await asyncio.gather(*(ex.submit(tasks.inc, i) for i in range(N)))
            print("async", census.row())
            del proxies


if __name__ == "__main__":
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    sync_bursts(rounds)
    asyncio.run(async_bursts(rounds))
