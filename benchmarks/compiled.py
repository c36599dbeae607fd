"""The compiled tier on the seed's block: pyfora (compiled, first and warm runs, and
interpreted) on an embedded cluster, beside a hand-written numba ``prange`` version on
the same cores and local CPython.

Run by hand: ``python benchmarks/compiled.py [N] [--workers 2] [--cpython-n M]``; local
CPython is timed on ``M`` elements (default N) and scaled to N when M < N (said so in
the output). Results: benchmarks/RESULTS.md, "Compiled tier".

Runs on the main thread of its own process.
"""

from __future__ import annotations

import argparse
import os
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


def prange_baseline(n: int, workers: int) -> tuple[int, float, float]:
    import numba

    numba.set_num_threads(workers)

    @numba.njit
    def is_prime(p):
        x = 2
        while x * x <= p:
            if p % x == 0:
                return 0
            x = x + 1
        return 1

    @numba.njit(parallel=True)
    def count(n):
        total = 0
        for i in numba.prange(n):
            total += is_prime(i)
        return total
    _, compile_s = timed(lambda: count(10))
    value, seconds = timed(lambda: count(n))
    return value, seconds, compile_s


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("n", type=int, nargs="?", default=10_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cpython-n", type=int, default=None)
    args = parser.parse_args()
    n, m = args.n, args.cpython_n or args.n
    import pyfora

    rows = []
    with pyfora.connect(workers=args.workers, progress=False) as ufora:
        time.sleep(3)       # the workers' warm-up (numba import, LLVM) is done by now

        def block():
            with ufora.remotely.downloadAll():
                result = sum(isPrime(x) for x in range(n))
            return result

        def listed():
            with ufora.remotely.downloadAll():
                primes = [x for x in range(n) if isPrime(x)]
            return len(primes)
        value, first = timed(block)
        rows.append(("pyfora compiled, first run", value, first))
        for i in range(2):
            value, warm = timed(block)
        rows.append(("pyfora compiled, warm", value, warm))
        value, seconds = timed(listed)
        rows.append(("pyfora compiled, list form (len)", value, seconds))
        status = ufora.status()["compiled"]
    value, seconds, compile_s = prange_baseline(n, args.workers)
    rows.append((f"numba prange, {args.workers} threads", value, seconds))
    value, seconds = timed(lambda: sum(isPrime(x) for x in range(m)))
    cpython = seconds * (n / m) ** 1.5 if m < n else seconds
    rows.append((f"local CPython{' (scaled from %d)' % m if m < n else ''}",
                 value if m == n else None, cpython))
    print(f"N={n:,} workers={args.workers} cores={os.cpu_count()}")
    for name, value, seconds in rows:
        print(f"{name:40s} {value!s:>10} {seconds:8.2f} s  x{cpython / seconds:6.1f} CPython")
    print(f"prange compile {compile_s:.2f} s; pyfora workers' compile counts: {status}")


if __name__ == "__main__":
    main()
