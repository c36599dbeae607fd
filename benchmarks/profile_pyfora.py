"""Drive one pyfora workload in a loop, for a profiler to watch (not part of run.py).

    .venv-bench/bin/py-spy record -r 500 --subprocesses --threads -f raw -o /tmp/w1.txt -- \
        .venv-bench/bin/python benchmarks/profile_pyfora.py latency
    .venv-bench/bin/python benchmarks/profile_pyfora.py --summarize /tmp/w1.txt

Modes: ``latency`` (W1 sync), ``alatency`` (W1 async), ``throughput`` (W2 sync),
``upload`` / ``download`` (W3, 100 MB bytes), ``startup`` (W5). The embedded cluster is
used throughout, so the coordinator shows up as the client's ``pyfora-loop`` thread.
"""

from __future__ import annotations

import asyncio
import collections
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tasks  # noqa: E402


def main(mode: str) -> None:
    if mode == "startup":
        for _ in range(5):
            import pyfora
            ex = pyfora.connect(workers=2)
            ex.submit(tasks.noop).result().toLocal().result()
            ex.close()
        return
    if mode == "alatency":
        from pyfora import aio

        async def run():
            async with aio.connect(None, workers=2) as ex:
                for _ in range(5000):
                    await ex.submit(tasks.noop)
        asyncio.run(run())
        return
    import pyfora
    ex = pyfora.connect(workers=2)
    t0 = time.perf_counter()
    if mode == "latency":
        for _ in range(5000):
            ex.submit(tasks.noop).result()
    elif mode == "throughput":
        for _ in range(2):
            futures = [ex.submit(tasks.inc, i) for i in range(20000)]
            [f.result() for f in futures]
    elif mode == "upload":
        payload = tasks.make_bytes(100 * tasks.MB)
        for _ in range(5):
            ex.submit(tasks.nbytes, payload).result()
    elif mode == "download":
        proxy = ex.submit(tasks.make_bytes, 100 * tasks.MB).result()
        for _ in range(5):
            proxy.toLocal().result()
    print(f"{mode}: {time.perf_counter() - t0:.2f} s", file=sys.stderr)
    ex.close()


def summarize(path: str, top: int = 25) -> None:
    """Self and inclusive sample counts per function, per process, from py-spy raw output."""
    self_c: dict = collections.defaultdict(collections.Counter)
    incl_c: dict = collections.defaultdict(collections.Counter)
    totals: collections.Counter = collections.Counter()
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            frames = stack.split(";")
            procs = [i for i, fr in enumerate(frames) if fr.startswith("process ")]
            start = procs[-1] if procs else -1
            name = frames[start] if procs else "?"
            role = ("worker " + name.split("--name ")[1].split()[0] if "--name " in name
                    else "client/coordinator " + name.split(":")[0])
            rest = frames[start + 1:]
            thread = next((fr for fr in rest if fr.startswith("thread")), "")
            tname = thread.split(": ", 1)[1] if ": " in thread else thread
            proc = f"{role} [{tname}]"
            n = int(count)
            totals[proc] += n
            funcs = [fr.split(" (")[0] + " " + fr.split("/")[-1].rstrip(")")
                     for fr in rest if not fr.startswith("thread")]
            if funcs:
                self_c[proc][funcs[-1]] += n
            for fn in set(funcs):
                incl_c[proc][fn] += n
    for proc, total in totals.most_common():
        print(f"\n=== {proc}: {total} samples")
        print("  self:")
        for fn, n in self_c[proc].most_common(top):
            print(f"    {100 * n / total:5.1f}%  {fn}")
        print("  inclusive:")
        for fn, n in incl_c[proc].most_common(top):
            print(f"    {100 * n / total:5.1f}%  {fn}")


if __name__ == "__main__":
    if sys.argv[1] == "--summarize":
        summarize(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 25)
    else:
        main(sys.argv[1])
