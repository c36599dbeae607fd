"""The dashboard (``cluster/coordinator/dashboard.py``): its JSON, its token check, and the page in a
real headless Chromium (skipped, with the reason, where Chromium is not installed)."""

from __future__ import annotations

import os

import browser
import pytest
from aiohttp.test_utils import TestClient, TestServer
from conftest import UNIT, ClusterProcess, busy, http_status, wait_until

from cluster.coordinator.app import Config, make_app

TOKEN = "dashboard-test-token"


def test_status_reports_worker_memory_and_cpu(ufora, cluster_url):
    """Workers report their own RSS and CPU; a busy one shows its task and its CPU use."""
    status = wait_until(lambda: (s := http_status(cluster_url)) and all(
        w["rss"] for w in s["workers"]) and s, 10 * UNIT, "the workers' first stats")
    assert all(w["rss"] > 1_000_000 for w in status["workers"])
    future = ufora.submit(busy, 30 * UNIT)
    # An idle worker reports about 0%; a busy one a whole core, or its share of one when
    # the machine is loaded (a tenth of one at load 10 on 2 cores).
    row = wait_until(lambda: next((w for w in http_status(cluster_url)["workers"]
                                   if w["state"] == "busy" and w["cpu"] > 5), None),
                     10 * UNIT, "a busy worker using the CPU")
    assert row["task"] is not None and row["task_seconds"] >= 0
    future.cancel()


def test_status_counts_per_session_objects(ufora, cluster_url):
    proxy = ufora.define(b"x" * 100_000).result(30 * UNIT)
    sessions = http_status(cluster_url)["session_list"]
    mine = [s for s in sessions if s["objects"] >= 1 and s["bytes"] >= 100_000]
    assert mine, sessions
    assert http_status(cluster_url)["sessions"] == len(sessions)
    del proxy


@pytest.fixture
async def guarded():
    """A coordinator app with a token, and no workers: only its HTTP routes are used."""
    async with TestClient(TestServer(make_app(Config(token=TOKEN, workers=0)))) as client:
        yield client


@pytest.mark.parametrize("path", ["/", "/api/status"])
async def test_token_is_required_when_the_cluster_has_one(guarded, path):
    for auth in [{}, {"params": {"token": "wrong"}},
                 {"headers": {"Authorization": "Bearer wrong"}},
                 {"headers": {"Authorization": f"Basic {TOKEN}"}}]:
        reply = await guarded.get(path, **auth)
        assert reply.status == 401, auth
        assert reply.headers["WWW-Authenticate"] == "Bearer"
        assert TOKEN not in await reply.text()
    for auth in [{"params": {"token": TOKEN}},
                 {"headers": {"Authorization": f"Bearer {TOKEN}"}}]:
        reply = await guarded.get(path, **auth)
        assert reply.status == 200, auth


async def test_page_is_self_contained(guarded):
    reply = await guarded.get("/", params={"token": TOKEN})
    html = await reply.text()
    assert reply.content_type == "text/html"
    csp = reply.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    # Nothing the page loads comes from another host: no absolute URLs at all.
    assert "http://" not in html and "https://" not in html and "//cdn" not in html
    assert 'id="worker-count"' in html


# -- in a real browser ---------------------------------------------------------------

# CI sets PYFORA_REQUIRE_BROWSER=1, so a browser that failed to install fails the run
# instead of skipping the tests; a developer without Chromium gets a skip and the reason.
MISSING = browser.unavailable()
needs_chromium = pytest.mark.skipif(
    MISSING is not None and os.environ.get("PYFORA_REQUIRE_BROWSER") != "1",
    reason=f"no headless browser: {MISSING}")


@pytest.fixture(scope="module")
def chromium():
    if MISSING is not None:
        pytest.fail(f"PYFORA_REQUIRE_BROWSER=1 but {MISSING}")
    with browser.chromium() as driver:
        yield driver


@needs_chromium
def test_dashboard_shows_workers_and_live_numbers(chromium, ufora, cluster_url):
    # Leave the page of an earlier test (its cluster may be gone) and forget its log.
    chromium.get("about:blank")
    chromium.get_log("browser")
    browser.open_dashboard(chromium, cluster_url)
    expected = len(http_status(cluster_url)["workers"])
    browser.wait_for(chromium, f"return document.getElementById('worker-count').textContent"
                               f" === '{expected}'", 10 * UNIT, "the worker count")
    rows = chromium.execute_script(
        "return [...document.querySelectorAll('#workers tbody tr')].map(r => r.dataset.name)")
    assert sorted(rows) == sorted(w["name"] for w in http_status(cluster_url)["workers"])
    done_before = int(browser.text(chromium, "tasks-done"))

    futures = [ufora.submit(busy, 0.4 * UNIT) for _ in range(6)]
    browser.wait_for(chromium, "return Number(document.getElementById('busy-count')"
                               ".textContent) > 0 && document.querySelector("
                               "'#workers tr[data-state=busy]')", 10 * UNIT,
                     "the page to show a busy worker")
    browser.wait_for(chromium, "return document.querySelector('#sessions tbody tr[data-name]')",
                     10 * UNIT, "the page to list the session")
    for future in futures:
        future.result(30 * UNIT)
    browser.wait_for(chromium, f"return Number(document.getElementById('tasks-done')"
                               f".textContent) >= {done_before + 6}", 10 * UNIT,
                     "the done count to grow by the 6 tasks")
    browser.wait_for(chromium, "return document.getElementById('busy-count').textContent"
                               " === '0'", 10 * UNIT, "the page to show the workers idle again")
    assert "live" in browser.text(chromium, "conn-text")
    # Every resource the page loaded came from the coordinator itself.
    origins = chromium.execute_script(
        "return performance.getEntriesByType('resource').map(e => new URL(e.name).origin)")
    assert set(origins) <= {cluster_url.rstrip("/")}, origins
    errors = [e for e in chromium.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


@needs_chromium
def test_dashboard_with_a_token(chromium):
    cluster = ClusterProcess(1, "--token", TOKEN)
    try:
        chromium.get(cluster.url)                          # no token: the page says why
        assert "token" in chromium.find_element("tag name", "body").text
        browser.open_dashboard(chromium, f"{cluster.url}?token={TOKEN}")
        browser.wait_for(chromium, "return document.getElementById('worker-count')"
                                   ".textContent === '1'", 10 * UNIT, "the worker count")
        # The page keeps the token for the tab, out of the address bar.
        assert TOKEN not in chromium.current_url
        start = browser.polls(chromium)
        browser.wait_for(chromium, f"return Number(document.body.dataset.polls) > {start + 1}",
                         10 * UNIT, "more redraws with the token sent as a header")
        assert "live" in browser.text(chromium, "conn-text")
    finally:
        assert cluster.stop() == 0


@needs_chromium
def test_screenshot_helper(tmp_path, cluster_url):
    path = browser.dashboard_screenshot(cluster_url, str(tmp_path / "dash.png"), after_polls=1)
    with open(path, "rb") as file:
        head = file.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    assert width >= 1000 and height >= 500

