"""CPU microseconds per no-op task in a worker's threads, and the round trip (not run by
run.py).

    .venv/bin/python benchmarks/worker_cpu.py [--tree DIR] [N]

A standalone coordinator with one worker (``python -m cluster --workers 1``), a sync client
doing 300 ``submit(noop).result()`` to warm up, then N timed ones. Prints the worker's loop
thread (its main thread) and its other threads (the task thread; the idle parent watch)
as CPU time per task, and the wall time per round trip. With ``--tree`` the coordinator
and its worker run that source tree's code (e.g. main's, exported with ``git archive``): an
A/B of two versions with one script and one client.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import psutil
import tasks
from sys_pyfora import _connect, start_standalone, stop_standalone


def _threads(process: psutil.Process) -> dict[int, float]:
    return {t.id: t.user_time + t.system_time for t in process.threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("n", type=int, nargs="?", default=3000)
    parser.add_argument("--tree", default=None)
    args = parser.parse_args()
    n = args.n
    proc, url = start_standalone(workers=1, tree=args.tree)
    try:
        ex = _connect(url)
        try:
            for _ in range(300):
                ex.submit(tasks.noop).result()
            worker = psutil.Process(proc.pid).children()[0]
            before, t0 = _threads(worker), time.perf_counter()
            for _ in range(n):
                ex.submit(tasks.noop).result()
            wall, after = time.perf_counter() - t0, _threads(worker)
        finally:
            ex.close()
    finally:
        stop_standalone(proc)
    used = {tid: seconds - before.get(tid, 0.0) for tid, seconds in after.items()}
    loop = used.pop(worker.pid)
    print(json.dumps({"tree": args.tree or "this",
                      "round_trip_us": round(1e6 * wall / n),
                      "worker_loop_us": round(1e6 * loop / n),
                      "worker_other_threads_us": round(1e6 * sum(used.values()) / n),
                      "load": round(os.getloadavg()[0], 1)}))


if __name__ == "__main__":
    main()
