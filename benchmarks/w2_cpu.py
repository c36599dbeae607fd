"""CPU microseconds per W2 task in each thread of each pyfora process (not run by run.py).

    .venv/bin/python benchmarks/w2_cpu.py [N]

W2 sync on the embedded cluster (``pyfora.connect(workers=2)``): the client's main thread,
its ``pyfora-loop`` thread (which runs the coordinator too), and each worker's event-loop
and task threads. Every figure is that thread's CPU time during the run divided by all N
tasks (each worker runs about half of them). Steadier than tasks/s on a shared machine: a
change that moves CPU per task moves throughput once the machine is quiet.
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import psutil  # noqa: E402
import tasks  # noqa: E402

import pyfora  # noqa: E402


def threads(me: psutil.Process) -> dict:
    seconds = {}
    for process in [me] + me.children(recursive=True):
        try:
            for thread in process.threads():
                seconds[(process.pid, thread.id)] = thread.user_time + thread.system_time
        except psutil.Error:
            pass
    return seconds


def main(n: int) -> None:
    me = psutil.Process()
    ex = pyfora.connect(workers=2)
    try:
        for _ in range(200):
            ex.submit(tasks.noop).result()
        before, t0 = threads(me), time.perf_counter()
        futures = [ex.submit(tasks.inc, i) for i in range(n)]
        for future in futures:
            future.result()
        elapsed, after = time.perf_counter() - t0, threads(me)
        loop = ex._portal._thread.native_id
    finally:
        ex.close()
    per_task = {}
    for (pid, tid), seconds in after.items():
        used = seconds - before.get((pid, tid), 0.0)
        if used > 0.01:
            if pid == me.pid:
                name = ("client loop" if tid == loop else "client main" if tid == pid
                        else "client other")
            else:
                name = f"worker {pid} " + ("loop" if tid == pid else "task")
            per_task[name] = round(1e6 * used / n)
    print(json.dumps({"tasks_per_s": round(n / elapsed), "cpu_us_per_task": per_task,
                      "total_us": sum(per_task.values())}))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10000)
