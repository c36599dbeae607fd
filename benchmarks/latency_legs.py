"""Where one W1 round trip goes, leg by leg (not part of run.py).

    .venv/bin/python benchmarks/latency_legs.py [N]

Uses the embedded cluster, whose coordinator runs on the client's loop thread, and wraps
the coordinator's message handlers (``ClientSession.handle``, ``WorkerLink.handle``) to
timestamp a task's arrival and its result's. Prints the median of each leg.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tasks  # noqa: E402

import pyfora  # noqa: E402
from cluster.coordinator.session import ClientSession  # noqa: E402
from cluster.coordinator.worker_link import WorkerLink  # noqa: E402
from pyfora import wire as p  # noqa: E402

LEGS = ["client submit() -> coordinator handles Submit",
        "coordinator handles Submit (dispatch, Run queued)",
        "Run queued -> Done handled (the worker leg)",
        "coordinator handles Done (Done queued)",
        "Done queued -> client result() returns",
        "total"]


def main(n: int) -> None:
    stamps: dict[str, float] = {}
    handle_client, handle_worker = ClientSession.handle, WorkerLink.handle

    def on_client(self, message):
        submit = isinstance(message, p.Submit)
        if submit:
            stamps["c_in"] = time.perf_counter()
        handle_client(self, message)
        if submit:
            stamps["c_out"] = time.perf_counter()

    def on_worker(self, message):
        done = isinstance(message, p.Done)
        if done:
            stamps["w_in"] = time.perf_counter()
        handle_worker(self, message)
        if done:
            stamps["w_out"] = time.perf_counter()

    ClientSession.handle, WorkerLink.handle = on_client, on_worker
    ex = pyfora.connect(workers=2)
    rows = []
    try:
        for i in range(n + 100):
            t0 = time.perf_counter()
            ex.submit(tasks.noop).result()
            t1 = time.perf_counter()
            if i >= 100:
                s = stamps
                rows.append((s["c_in"] - t0, s["c_out"] - s["c_in"], s["w_in"] - s["c_out"],
                             s["w_out"] - s["w_in"], t1 - s["w_out"], t1 - t0))
    finally:
        ex.close()
    for i, leg in enumerate(LEGS):
        print(f"{statistics.median(r[i] for r in rows) * 1e6:8.0f} µs  {leg}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
