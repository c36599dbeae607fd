"""The compiled tier on the seed's block: pyfora (first and warm runs, the list form, and a
new cluster finding the disk cache) beside a hand-written numba ``prange`` version on the
same cores and local CPython.

Run by hand: ``python benchmarks/compiled.py [N] [--workers 2] [--rounds 3]
[--cpython-n M]``. Each round runs every system once, in turn (pyfora, prange, CPython),
and the table gives each one's median over the rounds. Each round's pyfora runs start a
new embedded cluster with an empty disk cache (``PYFORA_COMPILE_CACHE`` in a new temporary
directory): "first run" pays the compile; then a second new cluster on the same cache
directory gives "first run, disk cache". The prange version runs on ``--workers`` numba
threads (``NUMBA_NUM_THREADS``), compiled before the first round. Local CPython runs on
``M`` elements (default N / 5) and is scaled to N by the ratio of a serial numba loop's
times at N and at M (the same function over the same numbers, so the same shape of work);
the output says so. Results: benchmarks/RESULTS.md, "Compiled tier".

Runs on the main thread of its own process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time


def isPrime(p):  # noqa: N802 - the seed's own name
    x = 2
    while x * x <= p:
        if p % x == 0:
            return 0
        x = x + 1
    return 1


def timed(fn):
    t0 = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t0


def pyfora_round(n: int, workers: int, out: dict) -> None:
    import pyfora

    def block(ufora):
        with ufora.remotely.downloadAll():
            result = sum(isPrime(x) for x in range(n))
        return result

    def listed(ufora):
        with ufora.remotely.downloadAll():
            primes = [x for x in range(n) if isPrime(x)]
        return len(primes)

    with tempfile.TemporaryDirectory(prefix="pyfora-bench-cache-") as cache:
        os.environ["PYFORA_COMPILE_CACHE"] = cache
        with pyfora.connect(workers=workers, progress=False) as ufora:
            time.sleep(3)       # the workers' warm-up (numba import, LLVM) runs meanwhile
            record(out, "pyfora, first run", *timed(lambda: block(ufora)))
            record(out, "pyfora, warm", *timed(lambda: block(ufora)))
            record(out, "pyfora list form, first run", *timed(lambda: listed(ufora)))
            record(out, "pyfora list form, warm", *timed(lambda: listed(ufora)))
            time.sleep(2.5)     # workers report their counts every second
            out.setdefault("_compile cold", []).append(ufora.status()["compiled"])
        with pyfora.connect(workers=workers, progress=False) as ufora:
            time.sleep(3)
            record(out, "pyfora, first run, disk cache", *timed(lambda: block(ufora)))
            time.sleep(2.5)
            out.setdefault("_compile disk", []).append(ufora.status()["compiled"])


def record(out: dict, name: str, value, seconds: float) -> None:
    out.setdefault(name, []).append((value, seconds))


def numba_functions():
    import numba

    @numba.njit
    def is_prime(p):
        x = 2
        while x * x <= p:
            if p % x == 0:
                return 0
            x = x + 1
        return 1

    @numba.njit(parallel=True)
    def parallel_count(n):
        total = 0
        for i in numba.prange(n):
            total += is_prime(i)
        return total

    @numba.njit
    def serial_count(n):
        total = 0
        for i in range(n):
            total += is_prime(i)
        return total
    return parallel_count, serial_count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("n", type=int, nargs="?", default=10_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cpython-n", type=int, default=None)
    args = parser.parse_args()
    n, m = args.n, args.cpython_n or max(args.n // 5, 1)
    os.environ["NUMBA_NUM_THREADS"] = str(args.workers)     # before numba is imported
    parallel_count, serial_count = numba_functions()
    _, prange_compile = timed(lambda: parallel_count(10))
    serial_count(10)
    out: dict = {}
    for _ in range(args.rounds):
        pyfora_round(n, args.workers, out)
        record(out, f"numba prange, {args.workers} threads, warm",
               *timed(lambda: parallel_count(n)))
        record(out, f"local CPython (x{n / m:g} elements)",
               *timed(lambda: sum(isPrime(x) for x in range(m))))
    # CPython's time at N: its time at M times the ratio of the same loop's (compiled,
    # serial) times at N and at M.
    serial_n = statistics.median(timed(lambda: serial_count(n))[1] for _ in range(3))
    serial_m = statistics.median(timed(lambda: serial_count(m))[1] for _ in range(3))
    cpython_name = [k for k in out if k.startswith("local CPython")][0]
    cpython_m = statistics.median(s for _, s in out[cpython_name])
    cpython = cpython_m * serial_n / serial_m
    print(f"N={n:,} workers={args.workers} cores={os.cpu_count()} rounds={args.rounds} "
          f"python={sys.version.split()[0]} load={os.getloadavg()[0]:.1f}")
    print(f"local CPython: median {cpython_m:.2f} s on {m:,} elements, scaled x"
          f"{serial_n / serial_m:.2f} (serial numba {serial_m:.3f} s -> {serial_n:.3f} s) "
          f"to {cpython:.1f} s on {n:,}")
    prange = statistics.median(s for _, s in out[f"numba prange, {args.workers} threads, warm"])
    for name, runs in out.items():
        if name.startswith("_") or name == cpython_name:
            continue
        seconds = statistics.median(s for _, s in runs)
        values = sorted({v for v, _ in runs})
        print(f"{name:38s} {values!s:>12} median {seconds:7.2f} s "
              f"(runs {', '.join(f'{s:.2f}' for _, s in runs)})  "
              f"x{cpython / seconds:6.1f} CPython  {seconds / prange:5.2f}x prange")
    print(f"prange compile {prange_compile:.2f} s")
    for label in ("_compile cold", "_compile disk"):
        print(label[1:], [(c["compiled"], c["cache_hits"], c["compile_s"]) for c in out[label]],
              "(pieces compiled, of them from disk, seconds, summed over workers)")


if __name__ == "__main__":
    main()
