"""pyfora on its Dask backend: W1 and W2, ``sys_pyfora``'s own code, against a standalone
``python -m cluster --backend dask --workers 2`` (a coordinator process that starts the
same ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)`` as ``sys_dask``,
its Dask scheduler inside the coordinator).

The comparison with ``sys_dask`` counts everything pyfora adds: raw Dask's scheduler lives
in its client's process, while pyfora's client talks over a websocket to the coordinator,
whose asynchronous Dask client talks to the scheduler in the same process. That hop, and
the coordinator's bookkeeping, are the price of pyfora in front of Dask, so they are in
the figure; the Dask cluster behind both is the same. pyfora's W2 ``tasks/s`` ends once
every task has finished and its reply (size and type) arrived; the values come after, in
the ``+ toLocal all`` row, which is the one that moves data as raw Dask's ``gather`` does.

``PYFORA_BENCH_TREE``, when set, is the source tree the coordinator (and through it the
Dask workers) runs from, for an A/B of two trees with the same client.
"""

from __future__ import annotations

import os

import sys_pyfora

WORKERS = 2


def _run(workload, cfg: dict) -> dict:
    proc, url = sys_pyfora.start_standalone(
        WORKERS, tree=os.environ.get("PYFORA_BENCH_TREE"), extra=("--backend", "dask"))
    try:
        return workload(cfg, url)
    finally:
        sys_pyfora.stop_standalone(proc)


def w1(cfg: dict) -> dict:
    return _run(sys_pyfora.w1, cfg)


def w2(cfg: dict) -> dict:
    return _run(sys_pyfora.w2, cfg)
