"""The functions every system runs, in one importable module.

The runner puts ``benchmarks/`` on ``PYTHONPATH`` for the child that drives a system, so
worker processes (Dask's spawned workers, Ray's, ProcessPoolExecutor's forks) import this
module by name; pyfora ships it by value, as it does any module of the user's own.
"""

from __future__ import annotations

import time

MB = 1_000_000


def noop():
    return None


def inc(x):
    return x + 1


def nbytes(value) -> int:
    """The payload's size: touches nothing, so an upload measures the transfer only."""
    return getattr(value, "nbytes", None) or len(value)


def import_numpy(seconds: float = 0.2) -> int:
    """Import numpy in a worker before W3 times anything (a first array unpickled there
    would otherwise pay the import: about 0.2 s). Several at once, each ``seconds`` long,
    so every worker gets one."""
    import os

    import numpy  # noqa: F401
    time.sleep(seconds)
    return os.getpid()


def make_bytes(size: int) -> bytes:
    return b"\x01" * size


def make_array(size: int):
    import numpy as np
    return np.ones(size // 8, dtype=np.float64)


def time_make(kind: str, size: int) -> float:
    """How long the worker takes to build a result (subtracted where a peer has no way to
    separate computing a result from downloading it)."""
    t0 = time.perf_counter()
    value = make_bytes(size) if kind == "bytes" else make_array(size)
    elapsed = time.perf_counter() - t0
    del value
    return elapsed


def isPrime(p):  # noqa: N802 - the seed's name
    if p < 2:
        return 0
    x = 2
    while x * x <= p:
        if p % x == 0:
            return 0
        x += 1
    return 1


def count_primes(lo: int, hi: int) -> int:
    return sum(isPrime(x) for x in range(lo, hi))


def chunks(n: int, parts: int) -> list[tuple[int, int]]:
    step = -(-n // parts)
    return [(lo, min(lo + step, n)) for lo in range(0, n, step)]
