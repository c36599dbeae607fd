"""CPU seconds each process spends moving one W3 payload (not run by ``run.py``).

On a shared machine the wall-clock MB/s of W3 mostly measures the other engineers' load;
the CPU time the client, the coordinator and the workers spend per transfer does not
(much), so it is the figure to compare two versions of pyfora by. Same phases as W3 (a
standalone ``python -m cluster --workers 2``, ``submit(nbytes, payload)`` up,
``toLocal()`` down), no RSS sampler running alongside.

    .venv-bench/bin/python benchmarks/transfer_cpu.py --mb 100 --runs 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import psutil
import tasks
from sys_pyfora import _connect, start_standalone, stop_standalone

import common


def _cpu(processes: list[psutil.Process]) -> list[float]:
    return [sum(p.cpu_times()[:2]) for p in processes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    size = args.mb * common.MB
    proc, url = start_standalone()
    coordinator = psutil.Process(proc.pid)
    ex = _connect(url)
    rows: dict[str, list] = {}
    try:
        for _ in range(10):
            ex.submit(tasks.noop).result()
        roles = [psutil.Process(), coordinator, *coordinator.children()]
        for _ in range(args.runs):
            for kind, make in (("bytes", tasks.make_bytes), ("numpy", tasks.make_array)):
                payload = make(size)
                before, t0 = _cpu(roles), time.perf_counter()
                assert ex.submit(tasks.nbytes, payload).result().toLocal().result() == size
                rows.setdefault(f"up {kind}", []).append(
                    (time.perf_counter() - t0, before, _cpu(roles)))
                del payload
                proxy = ex.submit(make, size).result()
                time.sleep(0.2)
                before, t0 = _cpu(roles), time.perf_counter()
                proxy.toLocal().result()
                rows.setdefault(f"down {kind}", []).append(
                    (time.perf_counter() - t0, before, _cpu(roles)))
                del proxy
    finally:
        ex.close()
        stop_standalone(proc)
    print(f"{args.mb} MB, median of {args.runs}; CPU seconds per transfer "
          "(workers: the busier one)")
    print(f"{'phase':<12} {'MB/s':>6} {'client':>7} {'coord':>7} {'worker':>7}")
    for phase, samples in rows.items():
        def med(f):
            return statistics.median(f(s) for s in samples)
        mbs = med(lambda s: args.mb / s[0])
        client = med(lambda s: s[2][0] - s[1][0])
        coord = med(lambda s: s[2][1] - s[1][1])
        worker = med(lambda s: max(b - a for a, b in zip(s[1][2:], s[2][2:])))
        print(f"{phase:<12} {mbs:6.0f} {client:7.3f} {coord:7.3f} {worker:7.3f}")


if __name__ == "__main__":
    main()
