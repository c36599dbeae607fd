"""``cluster.coordinator.embedded``: ``pyfora.connect()`` with no URL gets its first result
without importing aiohttp, its workers joining through the websockets-served door, and
its aiohttp app (``/api/status``, the dashboard) is still served, from the first request
on, with the same checks. Real embedded clusters in subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import UNIT

SCRIPT = """
import json, sys, urllib.error, urllib.request
import pyfora

def get(url, token=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())

with pyfora.connect(workers=2) as ex:
    assert ex.submit(abs, -3).result(30).toLocal().result(30) == 3
    out = {"aiohttp_before": "aiohttp" in sys.modules}
    cluster = ex._aio._cluster
    config = cluster.coordinator.config
    door = cluster.coordinator.pool.url.replace("ws://", "http://")
    status, body = get(cluster.url + "api/status", config.token)
    out["status"] = [status, len(body["workers"])]
    out["status_without_token"] = get(cluster.url + "api/status")
    out["status_with_the_workers_token"] = get(cluster.url + "api/status", config.worker_token)[0]
    out["door_with_the_clients_token"] = get(door, config.token)
    out["door_other_path"] = get(door.replace("/api/worker", "/api/status"), config.token)[0]
print(json.dumps(out))
"""


def test_first_result_without_aiohttp_then_the_app_on_demand():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=120 * UNIT)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["aiohttp_before"] is False
    assert out["status"] == [200, 2]
    assert out["status_without_token"][0] == 401
    assert out["status_with_the_workers_token"] == 401
    status, body = out["door_with_the_clients_token"]
    assert (status, body["kind"]) == (401, "AuthenticationError")
    assert out["door_other_path"] == 404
