"""Smoke tests: every example in examples/ runs against a real cluster and says the right
thing. Each runs as its own process, the way a user would run it, with a small size."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from conftest import UNIT, wait_idle

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples")


def run_example(name: str, *args: str) -> str:
    for url in [a for a in args if a.startswith("http")]:
        wait_idle(url)       # what an earlier test left running would slow this one down
    done = subprocess.run([sys.executable, os.path.join(EXAMPLES, name), *args],
                          capture_output=True, text=True, timeout=120 * UNIT)
    assert done.returncode == 0, f"{name} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_primes_tutorial(cluster_url):
    out = run_example("primes.py", cluster_url, "20000").splitlines()
    # The tutorial's isPrime counts 0 and 1 too: the 2,262 primes below 20,000, plus 2.
    assert out[0] == "2264"
    assert out[1].startswith("<RemotePythonObject list")
    assert out[2].startswith("[") and "19997" in out[2]
    assert out[3].split()[0] == "2264"


def test_chained_proxies(cluster_url):
    out = run_example("chained_proxies.py", cluster_url, "20000")
    assert "records  stays remote: <RemotePythonObject list" in out
    assert "top groups: [(" in out
    assert "with-block result: <RemotePythonObject dict" in out
    assert "groups over 900: 7" in out


def test_numpy_data(cluster_url):
    pytest.importorskip("numpy")
    out = run_example("numpy_data.py", cluster_url, "80000")
    assert "8 chunks of numpy.ndarray" in out
    fit = next(line for line in out.splitlines() if line.startswith("fit:"))
    slope, intercept = float(fit.split()[3]), float(fit.split()[6])
    assert abs(slope - 3) < 0.05 and abs(intercept - 2) < 0.05, fit
    assert "weighted mean of y:" in out


def get_json(url: str, timeout: float) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        return json.loads(reply.read())


def test_web_service_serves_concurrent_requests(cluster_url):
    """CPU-bound requests run on the cluster; the service keeps answering meanwhile."""
    wait_idle(cluster_url)
    proc = subprocess.Popen([sys.executable, os.path.join(EXAMPLES, "web_service.py"),
                             cluster_url, "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(60 * UNIT)
        assert line and line[0].startswith("http://"), f"the service printed {line!r}"
        base = line[0].strip()
        assert get_json(base + "health", 10 * UNIT)["workers"] >= 1

        below = 150_000          # about half a second of trial division per request
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            slow = [pool.submit(get_json, f"{base}primes?below={below}", 60 * UNIT)
                    for _ in range(4)]
            # While those are running on the cluster, the service answers at once.
            started = time.monotonic()
            assert get_json(base + "health", 10 * UNIT)["ok"] is True
            health_seconds = time.monotonic() - started
            answers = [f.result(timeout=60 * UNIT) for f in slow]
        assert {a["primes"] for a in answers} == {13848}      # primes below 150,000
        assert all(a["below"] == below for a in answers)
        assert health_seconds < 2 * UNIT, f"/health took {health_seconds:.2f} s under load"
        with pytest.raises(urllib.error.HTTPError) as bad:
            get_json(base + "primes?below=lots", 10 * UNIT)
        assert bad.value.code == 400
    finally:
        proc.terminate()
        proc.wait(30 * UNIT)
