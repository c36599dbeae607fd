"""Measurement helpers shared by the per-system modules: percentiles, and a sampler of the
resident memory (RSS) of the client, the coordinator and the workers.

Runs in the child process that drives one system; the sampler runs on its own thread.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Iterable

import psutil

MB = 1_000_000


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
    are callables so that processes appearing meanwhile are picked up.
    """

    def __init__(self, roles: Roles, interval: float = 0.002) -> None:
        self.roles = roles
        self.interval = interval
        self.base: dict[int, int] = {}
        self.peak: dict[int, int] = {}
        self.role_of: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _sample(self) -> None:
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
                pid = proc.pid
                self.role_of[pid] = role
                self.base.setdefault(pid, rss)
                if rss > self.peak.get(pid, 0):
                    self.peak[pid] = rss

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
        for role in self.roles:
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
