"""``pyfora-cluster``: start, print the URL, serve ``/api/status``, and stop cleanly on
SIGTERM or SIGINT, workers included. Orphans are looked for with psutil."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from conftest import UNIT, ClusterProcess, alive, busy, http_status, wait_until

import pyfora
from pyfora.net import local_tokens

T = 30 * UNIT
SCRIPT = os.path.join(os.path.dirname(sys.executable), "pyfora-cluster")


def square(x):
    return x * x


@pytest.fixture
def cli_cluster():
    cluster = ClusterProcess(2, command=[SCRIPT])
    yield cluster
    if cluster.proc.poll() is None:
        cluster.proc.kill()
        cluster.proc.wait(T)


def port_open(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_prints_the_url_and_reports_status(cli_cluster):
    assert cli_cluster.url.startswith("http://127.0.0.1:") and cli_cluster.url.endswith("/")
    status = cli_cluster.status()
    assert len(status["workers"]) == 2
    assert all(w["state"] == "idle" and w["name"] for w in status["workers"])
    assert status["tasks"]["queued"] == 0 and status["tasks"]["running"] == 0
    assert status["objects"] == {"count": 0, "bytes": 0}
    assert len(cli_cluster.worker_pids()) == 2

    with pyfora.connect(cli_cluster.url) as ex:
        held = ex.submit(bytes, 100_000).result(timeout=T)
        running = [ex.submit(busy, 60) for _ in range(3)]   # 2 run, 1 waits
        wait_until(lambda: cli_cluster.status()["tasks"]["running"] == 2, T, "2 running")
        status = cli_cluster.status()
        assert status["tasks"]["queued"] == 1
        assert sorted(w["state"] for w in status["workers"]) == ["busy", "busy"]
        assert all(isinstance(w["task"], int) for w in status["workers"])
        assert status["objects"]["count"] == 1
        assert status["objects"]["bytes"] >= 100_000 == held.size - (held.size - 100_000)
        assert status["sessions"] == 1
        for future in running:
            assert future.cancel()
        wait_until(lambda: cli_cluster.status()["tasks"]["running"] == 0, T, "cancels")
    # the session closed: what it held is freed
    wait_until(lambda: cli_cluster.status()["objects"]["count"] == 0, T, "objects freed")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_the_cluster_and_its_workers(cli_cluster, sig):
    port = int(cli_cluster.url.rstrip("/").rsplit(":", 1)[1])
    workers = cli_cluster.worker_pids()
    assert len(workers) == 2 and all(alive(p) for p in workers)
    ex = pyfora.connect(cli_cluster.url)
    pending = ex.submit(busy, 60)
    wait_until(lambda: cli_cluster.status()["tasks"]["running"] == 1, T, "the task to start")
    start = time.monotonic()
    cli_cluster.signal(sig)
    assert cli_cluster.wait(T) == 0
    assert time.monotonic() - start < 15 * UNIT
    assert not any(alive(p) for p in workers), "orphan workers"
    assert not port_open(port)
    # the client was told: its pending future fails, nothing hangs
    with pytest.raises(pyfora.ConnectionError):
        pending.result(timeout=T)
    ex.close()


def test_sigkill_leaves_no_orphans(cli_cluster):
    workers = cli_cluster.worker_pids()
    cli_cluster.proc.kill()
    cli_cluster.proc.wait(T)
    wait_until(lambda: not any(alive(p) for p in workers), T, "orphan workers")


def test_a_replaced_worker_is_restarted(cluster_url):
    # killing a worker by hand: the pool starts a new one, the cluster keeps serving
    with pyfora.connect(cluster_url) as ex:
        victim = ex.submit(os.getpid).result(timeout=T).toLocal().result(timeout=T)
        pending = ex.submit(lambda: busy(60) if os.getpid() == victim else "other")
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(http_status(cluster_url)["workers"]) == 2 and
                   victim not in _worker_pids(cluster_url), T, "a replacement worker")
        result = pending.result(timeout=T)
        try:
            value = result.toLocal().result(timeout=T)
        except pyfora.WorkerCrashedError as exc:
            assert "SIGKILL" in str(exc)
        else:
            assert value == "other"
        assert ex.submit(square, 3).result(timeout=T).toLocal().result(timeout=T) == 9


def _worker_pids(url):
    import psutil
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return [c.pid for c in psutil.Process(conn.pid).children()]
    return []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_explicit_port_and_help():
    port = free_port()
    proc = subprocess.Popen([SCRIPT, "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1"], stdout=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        # The tokens are left for this user before the URL is printed.
        token = wait_until(lambda: local_tokens.find(url), T, "the cluster's tokens")
        assert http_status(url)["workers"]
    finally:
        proc.terminate()
        assert proc.wait(T) == 0
    assert proc.stdout.read().strip() == f"{url}?token={token}"
    assert local_tokens.find(url) is None         # removed as it stopped
    helped = subprocess.run([SCRIPT, "--help"], capture_output=True, text=True, timeout=T)
    assert helped.returncode == 0 and "--workers" in helped.stdout


def test_bad_arguments_are_refused_clearly():
    negative = subprocess.run([SCRIPT, "--workers", "-1"], capture_output=True, text=True,
                              timeout=T)
    assert negative.returncode == 2 and "--workers must be 0 or more" in negative.stderr
    worker = os.path.join(os.path.dirname(sys.executable), "pyfora-worker")
    not_a_url = subprocess.run([worker, "coordinator:8000"], capture_output=True, text=True,
                               timeout=T)
    assert not_a_url.returncode == 2 and "expected a URL like" in not_a_url.stderr
    assert "Traceback" not in not_a_url.stderr


def test_sigterm_while_starting_stops_cleanly():
    import psutil
    port = free_port()
    proc = subprocess.Popen([SCRIPT, "--port", str(port), "--workers", "2"],
                            stdout=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: port_open(port), T, "the port to open")
        workers = [c.pid for c in psutil.Process(proc.pid).children()]
        proc.terminate()            # most likely before the workers have joined
        assert proc.wait(T) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(T)
    wait_until(lambda: not any(alive(p) for p in workers), T, "orphan workers")
    assert not port_open(port)


def test_unknown_path_is_404(cluster_url):
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(cluster_url + "api/nothing", timeout=T)
    assert info.value.code == 404
