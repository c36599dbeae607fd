"""Fixtures: a real coordinator with real worker subprocesses on 127.0.0.1.

``cluster_url`` is session-scoped and sync (``python -m cluster --port 0``), so sync and
async tests share it; ``one_worker_url`` is a second, one-worker cluster for tests that
must know which worker runs what (cancellation). Both run once per backend (``backend``:
the built-in pool, and Dask when ``distributed`` is installed), so every test that uses
them runs on both; a test about the pool's own workers is marked ``pool_only``. Every
wait here has a timeout built from ``UNIT``; conditions are polled against a deadline,
never slept on.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import psutil
import pytest

#: One scaled time unit for every timeout in the tests (raise PYFORA_TEST_UNIT on slow CI).
UNIT = float(os.environ.get("PYFORA_TEST_UNIT", "1.0"))

# The clusters the tests start leave their tokens here (``pyfora.net.local_tokens``), not in
# the user's own runtime directory; child processes inherit it.
os.environ.setdefault("PYFORA_RUNTIME_DIR", tempfile.mkdtemp(prefix="pyfora-tests-"))
# and their workers' compiled code here, not in the user's ``~/.cache/pyfora/compiled``.
os.environ.setdefault("PYFORA_COMPILE_CACHE", tempfile.mkdtemp(prefix="pyfora-compiled-"))

try:
    import distributed  # noqa: F401
    BACKENDS = ["pool", "dask"]
except ImportError:
    BACKENDS = ["pool"]


class ClusterProcess:
    """``python -m cluster --port 0`` as a child process; ``url`` is the URL it printed."""

    def __init__(self, workers: int, *extra: str, command: list[str] | None = None) -> None:
        command = command or [sys.executable, "-m", "cluster"]
        self.proc = subprocess.Popen(
            [*command, "--port", "0", "--workers", str(workers), *extra],
            stdout=subprocess.PIPE, text=True)
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()),
                                  daemon=True)
        reader.start()
        reader.join(60 * UNIT)
        if not line or not line[0].startswith("http"):
            self.proc.kill()
            self.proc.wait(30 * UNIT)
            raise RuntimeError(f"the cluster did not print its URL: {line!r}")
        # With a generated token the URL carries it; ``url`` is the bare address, which
        # pyfora's clients complete from the tokens the cluster left (``local_tokens``).
        self.url, _, self.token = line[0].strip().partition("?token=")
        self.pid = self.proc.pid

    def status(self) -> dict:
        return http_status(self.url)

    def worker_pids(self) -> list[int]:
        return [c.pid for c in psutil.Process(self.pid).children(recursive=True)]

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(30 * UNIT)


def http_status(url: str, token: str | None = None) -> dict:
    """``GET /api/status`` of the coordinator at ``url``, with its token (default: the
    ``?token=`` of ``url``, else the one a local cluster left for its user)."""
    from pyfora.net import local_tokens
    url, _, given = url.partition("?token=")
    request = urllib.request.Request(url.rstrip("/") + "/api/status", headers={
        "Authorization": f"Bearer {token or given or local_tokens.find(url)}"})
    with urllib.request.urlopen(request, timeout=10 * UNIT) as reply:
        assert reply.headers["Content-Type"].startswith("application/json")
        return json.loads(reply.read())


def upgrade_headers(url: str, role: str = "client", token: str | None = None,
                    **hello) -> dict:
    """The headers a raw test client opens a connection to ``url`` with: its hello, and
    the token of ``role`` (default: the one a local cluster left for its user)."""
    from pyfora.net import local_tokens
    from pyfora import wire as p
    if token is None:
        token = local_tokens.find(url, "token" if role == "client" else "worker_token")
    return p.upgrade_headers(p.Hello(version=p.VERSION, role=role, **hello), token)


def ws_endpoint(url: str, path: str = "/api/session") -> str:
    """The websocket URL of ``path`` at the coordinator whose address is ``url``."""
    return url.replace("http", "ws", 1).rstrip("/") + path


def messages_of(frame: bytes) -> list:
    """The messages in a frame a raw test client received: one, or each of a ``batch``."""
    from pyfora import wire as p
    message = p.decode(frame)
    if isinstance(message, p.Batch):
        return [p.decode(envelope) for envelope in message.envelopes]
    return [message]


def wait_until(predicate, timeout: float, what: str = "the condition", interval: float = 0.02):
    """Poll ``predicate`` until it returns something true; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            what = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


async def async_wait_until(predicate, timeout: float, what: str = "the condition",
                           interval: float = 0.02):
    """``wait_until`` for coroutines: ``predicate`` may be sync or async."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        await asyncio.sleep(interval)


def alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie awaiting its parent's wait does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def is_idle(url: str) -> bool:
    status = http_status(url)
    return (status["tasks"]["queued"] == 0 and status["tasks"]["running"] == 0
            and all(w["state"] == "idle" for w in status["workers"]))


def wait_idle(url: str, timeout: float = 30 * UNIT) -> None:
    """Wait until no task runs or waits (what an earlier test left behind has stopped)."""
    wait_until(lambda: is_idle(url), timeout, f"{url} to be idle")


def busy(seconds: float) -> str:
    """A pure-Python busy loop: cancellation has to interrupt it."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return "finished"


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request):
    """What runs the shared clusters' tasks: ``"pool"`` or ``"dask"``."""
    return request.param


@pytest.fixture(scope="session")
def cluster_process(backend):
    cluster = ClusterProcess(2, "--backend", backend)
    yield cluster
    assert cluster.stop() == 0


@pytest.fixture(scope="session")
def cluster_url(cluster_process):
    return cluster_process.url


@pytest.fixture(scope="session")
def one_worker(backend):
    """A one-worker cluster: whatever runs there blocks everything after it."""
    cluster = ClusterProcess(1, "--backend", backend)
    yield cluster
    assert cluster.stop() == 0


@pytest.fixture
def one_worker_url(one_worker):
    wait_idle(one_worker.url)
    return one_worker.url


@pytest.fixture
def ufora(cluster_url):
    import pyfora
    wait_idle(cluster_url)
    with pyfora.connect(cluster_url) as executor:
        yield executor


@pytest.fixture
async def aex(cluster_url):
    from pyfora import aio
    await asyncio.to_thread(wait_idle, cluster_url)
    async with aio.connect(cluster_url) as executor:
        yield executor
