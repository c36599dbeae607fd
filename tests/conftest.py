"""Fixtures: a real coordinator with real worker subprocesses on 127.0.0.1.

``cluster_url`` is session-scoped and sync (``python -m cluster --port 0``), so sync and
async tests share it. Every wait here has a timeout built from ``UNIT``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

#: One scaled time unit for every timeout in the tests (raise PYFORA_TEST_UNIT on slow CI).
UNIT = float(os.environ.get("PYFORA_TEST_UNIT", "1.0"))


class ClusterProcess:
    def __init__(self, workers: int, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cluster", "--port", "0", "--workers", str(workers), *extra],
            stdout=subprocess.PIPE, text=True)
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()))
        reader.start()
        reader.join(60 * UNIT)
        if not line or not line[0].startswith("http"):
            self.proc.kill()
            raise RuntimeError(f"the cluster did not print its URL: {line!r}")
        self.url = line[0].strip()

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(30 * UNIT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


@pytest.fixture(scope="session")
def cluster_url():
    cluster = ClusterProcess(2)
    yield cluster.url
    assert cluster.stop() == 0


@pytest.fixture
def ufora(cluster_url):
    import pyfora
    with pyfora.connect(cluster_url) as executor:
        yield executor


@pytest.fixture
async def aex(cluster_url):
    from pyfora import aio
    async with aio.connect(cluster_url) as executor:
        yield executor
