"""Automatic parallelism: the seed's ``sum(isPrime(x) for x in range(N))`` on W workers,
against local single-process CPython measured in the same run.

    .venv/bin/python benchmarks/bench_parallel.py [--workers W] [--seconds 20] [--n N]
    .venv/bin/python benchmarks/bench_parallel.py --overhead [--rounds 400]
    .venv/bin/python benchmarks/bench_parallel.py --turns 3 [--n N]

1. N is sized so that the local sum takes about ``--seconds`` (unless ``--n`` is given).
2. local: ``sum(isPrime(x) for x in range(N))`` in this process.
3. pyfora: the same line in a ``with ufora.remotely.downloadAll():`` block, then
   ``[x for x in range(N) if isPrime(x)]`` with ``remoteAll`` (local: the same list).
4. overhead (alone with ``--overhead``): comprehensions over 1,000 cheap elements, as
   ``submit`` compiles them (``rewrite_function``) and as written, timed in turns in the
   same process: on a worker, and here (outside a worker, where the runtime runs the
   comprehension at once, and with a stand-in worker context that reports no idle
   worker, which is the worker's path without the cluster's noise). Each of ``--rounds``
   rounds times ``CALLS`` calls of each version, alternating which goes first; printed:
   best and median per call, and the ratio of the best and the median of the rounds'
   ratios. Then a whole with-block round trip with and without ``.sequential()``, in
   turns.

Prints one line per measurement and the speedups (local time / pyfora time), and the CPU
time the workers spent against the local CPU time (how much work the machinery adds, a
figure that does not depend on what else the machine is running).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import threading
import time

import pyfora
from pyfora.parallel import _runtime, rewrite_function, sequential


def isPrime(p):
    x = 2
    while x*x <= p:
        if p % x == 0:
            return 0
        x = x + 1
    return 1


# The tiny work: a comprehension of each kind over 1,000 cheap elements.
def cheap_list():
    return [x * x for x in range(1000)]


def cheap_set():
    return {x * x for x in range(1000)}


def cheap_dict():
    return {x: x * x for x in range(1000)}


def cheap_sum():
    return sum(x * x for x in range(1000))


CHEAP = (cheap_list, cheap_set, cheap_dict, cheap_sum)
CALLS = 20


@sequential
def compare(pairs, rounds):
    """For each ``(name, runtime_fn, plain_fn)``: the best and median seconds per call
    of each, and the median of the rounds' ratios, timed in turns in this process."""
    out = []
    for name, par, seq in pairs:
        times = {par: [], seq: []}
        ratios = []
        for r in range(rounds):
            for fn in ((par, seq) if r % 2 == 0 else (seq, par)):
                t0 = time.perf_counter()
                for _ in range(CALLS):
                    fn()
                times[fn].append((time.perf_counter() - t0) / CALLS)
            ratios.append(times[par][-1] / times[seq][-1])
        out.append((name, min(times[par]), statistics.median(times[par]), min(times[seq]),
                    statistics.median(times[seq]), statistics.median(ratios)))
    return out


class NoIdleWorkers:
    """A worker context for this process: the runtime takes the worker's path, and the
    rest is never worth splitting because no worker is idle."""

    name = "local"

    def idle(self) -> int:
        return 0


def print_overhead(where: str, rows: list) -> None:
    for name, par_best, par_med, seq_best, seq_med, ratio in rows:
        print(f"{where:26s} {name:10s} runtime {par_best * 1e6:6.2f} us (median "
              f"{par_med * 1e6:6.2f}), plain {seq_best * 1e6:6.2f} us (median "
              f"{seq_med * 1e6:6.2f}): best {100 * (par_best / seq_best - 1):+5.1f}%, "
              f"median of rounds {100 * (ratio - 1):+5.1f}%", flush=True)


def overhead(ufora, rounds: int) -> None:
    """The tiny-work overhead on a worker, then here (see the module docstring)."""
    pairs = [(fn.__name__, rewrite_function(fn), fn) for fn in CHEAP]
    assert all(par is not seq for _, par, seq in pairs), "not rewritten"
    assert all(par() == seq() for _, par, seq in pairs)
    rows = ufora.submit(compare, pairs, rounds).result().toLocal().result()
    print_overhead("on a worker", rows)
    print_overhead("here, outside a worker", compare(pairs, rounds))
    _runtime.install(NoIdleWorkers())
    try:
        print_overhead("here, worker path", compare(pairs, rounds))
    finally:
        _runtime.install(None)
    with_block_overhead(ufora)


def with_block_overhead(ufora, rounds: int = 30) -> None:
    """A whole with-block round trip over 1,000 cheap elements, parallel and
    ``.sequential()`` in turns (the client compiles the block each time)."""
    times: dict[bool, list[float]] = {True: [], False: []}
    for r in range(2 * rounds):
        parallel = r % 2 == 0
        remotely = ufora.remotely if parallel else ufora.remotely.sequential()
        t0 = time.perf_counter()
        with remotely.downloadAll():
            squares = [x * x for x in range(1000)]
        times[parallel].append(time.perf_counter() - t0)
        assert squares[-1] == 999 * 999
    par, seq = statistics.median(times[True]), statistics.median(times[False])
    print(f"with-block over 1,000 cheap elements: {par * 1e3:.2f} ms parallel, "
          f"{seq * 1e3:.2f} ms sequential() (medians of {rounds}): "
          f"{100 * (par / seq - 1):+.1f}%", flush=True)


def start_cluster(workers: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "cluster", "--port", "0", "--workers",
                             str(workers)], stdout=subprocess.PIPE, text=True)
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(60)
    if not line or not line[0].startswith("http"):
        proc.kill()
        raise SystemExit(f"the cluster did not start: {line!r}")
    return proc, line[0].strip()


def worker_cpu(proc: subprocess.Popen) -> float:
    """CPU seconds used so far by the cluster's worker processes (psutil, if installed)."""
    try:
        import psutil
    except ImportError:
        return float("nan")
    total = 0.0
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            times = child.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def size_n(seconds: float) -> int:
    n0 = 100_000
    t0 = time.perf_counter()
    sum(isPrime(x) for x in range(n0))
    t = time.perf_counter() - t0
    return int(n0 * (seconds / t) ** (1 / 1.5))      # cost grows about as N ** 1.5


def turns(W: int, N: int, count: int) -> None:  # noqa: N803 - the with-blocks read N
    """The sum and the list block in turns, each with its local run just before it, so
    the two forms meet the same machine: wall-clock speedup, and workers' CPU against
    local CPU (what the machinery adds, whatever else runs)."""
    print(f"# {platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"load {os.getloadavg()[0]:.1f}; N={N:,}, W={W}, compile "
          f"{os.environ.get('PYFORA_COMPILE', 'default')}", flush=True)
    proc, url = start_cluster(W)
    try:
        with pyfora.connect(url) as ufora:
            with ufora.remotely.downloadAll():      # the workers' first block: warm them
                warm = sum(isPrime(x) for x in range(20_000))
            assert warm == sum(isPrime(x) for x in range(20_000))
            for turn in range(count):
                for form in ("sum", "list"):
                    t0, c0 = time.perf_counter(), time.process_time()
                    if form == "sum":
                        local = sum(isPrime(x) for x in range(N))
                    else:
                        local = len([x for x in range(N) if isPrime(x)])
                    local_t, local_cpu = time.perf_counter() - t0, time.process_time() - c0
                    cpu0, t0 = worker_cpu(proc), time.perf_counter()
                    if form == "sum":
                        with ufora.remotely.downloadAll():
                            remote = sum(isPrime(x) for x in range(N))
                    else:
                        with ufora.remotely.downloadAll():
                            remote = len([x for x in range(N) if isPrime(x)])
                    remote_t, cpu = time.perf_counter() - t0, worker_cpu(proc) - cpu0
                    assert remote == local, (form, remote, local)
                    print(f"turn {turn + 1} {form:4s}  local {local_t:6.2f} s  pyfora "
                          f"{remote_t:6.2f} s  speedup {local_t / remote_t:5.2f}  worker CPU "
                          f"{cpu / local_cpu:.2f} x local CPU  (load "
                          f"{os.getloadavg()[0]:.1f})", flush=True)
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--overhead", action="store_true",
                        help="only the tiny-work overhead (step 4)")
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--turns", type=int, default=0,
                        help="only the sum and list blocks, alternated this many times on "
                             "one cluster, each against its local run")
    args = parser.parse_args()
    if args.turns:
        turns(args.workers, args.n or size_n(args.seconds), args.turns)
        return
    if args.overhead:
        print(f"# {platform.node()}, {os.cpu_count()} cores, Python "
              f"{platform.python_version()}, load {os.getloadavg()[0]:.1f}; "
              f"{args.rounds} rounds of {CALLS} calls", flush=True)
        proc, url = start_cluster(args.workers)
        try:
            with pyfora.connect(url) as ufora:
                overhead(ufora, args.rounds)
        finally:
            proc.terminate()
            proc.wait(30)
        return
    N = args.n or size_n(args.seconds)
    W = args.workers
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}, "
          f"load {os.getloadavg()[0]:.1f}; N={N:,}, W={W}", flush=True)

    t0, c0 = time.perf_counter(), time.process_time()
    local_sum = sum(isPrime(x) for x in range(N))
    local_sum_t, local_sum_cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"local  sum   {local_sum_t:7.2f} s", flush=True)

    proc, url = start_cluster(W)
    try:
        with pyfora.connect(url) as ufora:
            cpu0 = worker_cpu(proc)
            t0 = time.perf_counter()
            with ufora.remotely.downloadAll():
                result = sum(isPrime(x) for x in range(N))
            remote_sum_t = time.perf_counter() - t0
            cpu = worker_cpu(proc) - cpu0
            assert result == local_sum, (result, local_sum)
            print(f"pyfora sum   {remote_sum_t:7.2f} s  speedup {local_sum_t / remote_sum_t:.2f}"
                  f" (target {0.9 * W:.1f}); worker CPU {cpu:.2f} s = "
                  f"{cpu / local_sum_cpu:.2f} x local CPU", flush=True)

            cpu0 = worker_cpu(proc)
            t0 = time.perf_counter()
            with ufora.remotely.remoteAll():
                primes = [x for x in range(N) if isPrime(x)]
            remote_list_t = time.perf_counter() - t0
            cpu = worker_cpu(proc) - cpu0
            count = len(primes.toLocal().result())
            print(f"pyfora list  {remote_list_t:7.2f} s  ({count:,} primes, remoteAll)", flush=True)

            t0, c0 = time.perf_counter(), time.process_time()
            local_primes = [x for x in range(N) if isPrime(x)]
            local_list_t, local_list_cpu = time.perf_counter() - t0, time.process_time() - c0
            assert count == len(local_primes)
            print(f"local  list  {local_list_t:7.2f} s  speedup "
                  f"{local_list_t / remote_list_t:.2f} (target {0.9 * W:.1f}); worker CPU "
                  f"{cpu:.2f} s = {cpu / local_list_cpu:.2f} x local CPU", flush=True)

            overhead(ufora, args.rounds)
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()
