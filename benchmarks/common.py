"""Measurement helpers shared by the per-system modules: percentiles, a sampler of the
resident memory (RSS) of the client, the coordinator and the workers, and W3's timing.

Runs in the child process that drives one system; the sampler runs on its own thread.
"""

from __future__ import annotations

import gc
import os
import statistics
import threading
import time
from typing import Callable, Iterable

import psutil

MB = 1_000_000
#: W3 times each transfer this many times with no sampler running, and reports the
#: median: the sampler polls every process's RSS every 2 ms from a thread of the client,
#: which contends for the client's GIL and slowed pyfora's transfers by up to 2x.
TIMED_ROUNDS = 3


def median_seconds(run: Callable[[], object], rounds: int = TIMED_ROUNDS) -> float:
    """The median time of ``run()`` over ``rounds`` calls."""
    times = []
    for _ in range(rounds):
        gc.collect()
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def shm_bytes(prefix: str = "pyfora-") -> int:
    """Bytes in the files of ``/dev/shm/<prefix>*`` directories (each file once, however
    many names it has): memory that is in no process's RSS until it is mapped."""
    sizes: dict[int, int] = {}
    try:
        roots = [e.path for e in os.scandir("/dev/shm") if e.name.startswith(prefix)]
    except OSError:
        return 0
    for root in roots:
        try:
            with os.scandir(root) as entries:
                for entry in entries:
                    try:
                        stat = entry.stat()
                    except OSError:
                        continue
                    sizes[stat.st_ino] = stat.st_size
        except OSError:
            pass
    return sum(sizes.values())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def latency_summary(seconds: list[float]) -> dict:
    return {"p50_us": percentile(seconds, 50) * 1e6, "p99_us": percentile(seconds, 99) * 1e6,
            "mean_us": sum(seconds) / len(seconds) * 1e6, "n": len(seconds)}


Roles = dict[str, Callable[[], Iterable[psutil.Process]]]


class RssSampler:
    """Samples the RSS of each role's processes every ``interval`` seconds.

    For each role it reports the largest peak, and the largest growth of one process over
    its own RSS when sampling started (``delta``): the memory a transfer cost it. Roles
    are callables so that processes appearing meanwhile are picked up. ``sizes``: other
    memory to sample and report as roles, by name (bytes now, e.g. ``shm_bytes``).
    """

    def __init__(self, roles: Roles, interval: float = 0.002,
                 sizes: dict[str, Callable[[], int]] | None = None) -> None:
        self.roles = roles
        self.sizes = sizes or {}
        self.interval = interval
        self.base: dict[int, int] = {}
        self.peak: dict[int, int] = {}
        self.role_of: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _sample(self) -> None:
        for name, size in self.sizes.items():
            self._record(name, name, size())
        for role, procs in self.roles.items():
            try:
                members = list(procs())
            except psutil.Error:
                continue
            for proc in members:
                try:
                    rss = proc.memory_info().rss
                except psutil.Error:
                    continue
                self._record(proc.pid, role, rss)

    def _record(self, key, role: str, size: int) -> None:
        self.role_of[key] = role
        self.base.setdefault(key, size)
        if size > self.peak.get(key, 0):
            self.peak[key] = size

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def report(self, payload: int) -> dict:
        out = {}
        for role in [*self.roles, *self.sizes]:
            pids = [pid for pid, r in self.role_of.items() if r == role]
            if not pids:
                continue
            delta = max(self.peak[pid] - self.base[pid] for pid in pids)
            out[role] = {"peak_mb": max(self.peak[pid] for pid in pids) / MB,
                         "delta_mb": delta / MB, "copies": delta / payload}
        return out


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def me() -> list[psutil.Process]:
    return [psutil.Process()]


class Stopwatch:
    def __enter__(self) -> Stopwatch:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.t0


def measure_up(up: Callable[[object], object], make: Callable[[int], object], size: int,
               roles: Roles, sizes: dict[str, Callable[[], int]] | None = None) -> dict:
    """W3 up: ``up(payload)`` once with the sampler running (the payload made inside it,
    so the client's own copy counts), then ``median_seconds`` of it unsampled."""
    gc.collect()
    with RssSampler(roles, sizes=sizes) as rss:
        payload = make(size)
        with Stopwatch() as sw:
            up(payload)
        del payload
    payload = make(size)
    seconds = median_seconds(lambda: up(payload))
    return {"mb_per_s": size / MB / seconds, "seconds": seconds,
            "sampled_seconds": sw.seconds, "rss": rss.report(size)}


def measure_down(down: Callable[[], object], size: int, roles: Roles,
                 sizes: dict[str, Callable[[], int]] | None = None,
                 overhead: float = 0.0) -> dict:
    """W3 down: ``down()`` once with the sampler running, then ``median_seconds`` of it
    unsampled, less ``overhead`` (the worker's time to make the value, where ``down``
    includes it)."""
    gc.collect()
    with RssSampler(roles, sizes=sizes) as rss:
        with Stopwatch() as sw:
            down()
    seconds = max(median_seconds(down) - overhead, 1e-6)
    return {"mb_per_s": size / MB / seconds, "seconds": seconds,
            "sampled_seconds": sw.seconds - overhead, "rss": rss.report(size)}
