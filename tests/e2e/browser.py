"""Headless Chromium for the dashboard's tests, and a screenshot helper a person can run.

Uses Debian's ``chromium`` and ``chromium-driver`` (``apt-get install chromium
chromium-driver``; ``.ci/run`` installs them) through Selenium, with the driver's path
given explicitly, so Selenium never tries to download a browser or a driver.

A screenshot of the dashboard under load, for a person to look at::

    python tests/e2e/browser.py --load docs/dashboard.png          # starts its own cluster
    python tests/e2e/browser.py --url http://127.0.0.1:8000/ shot.png

Runs on the caller's thread; a ``--load`` workload runs on a thread of its own.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

CHROMIUM = os.environ.get("PYFORA_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = (os.environ.get("PYFORA_CHROMEDRIVER") or shutil.which("chromedriver")
                or "/usr/bin/chromedriver")
# Flags that work in a container without a display, GPU or network: no sandbox (we run
# as root), and none of Chromium's own background traffic (updates, sync, QUIC probes).
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars"]


def unavailable() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"{path} not found: apt-get install chromium chromium-driver (needs {package})"
    return None


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A headless Chromium driven by Selenium, with a fresh profile, closed on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="pyfora-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver: Any, script: str, timeout: float, what: str) -> Any:
    """Run ``script`` (JavaScript returning a value) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script(script)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(0.05)


def polls(driver: Any) -> int:
    """How many times the page has redrawn from ``/api/status``."""
    return int(driver.execute_script("return Number(document.body.dataset.polls)"))


def text(driver: Any, element_id: str) -> str:
    return driver.execute_script(
        "return document.getElementById(arguments[0]).textContent", element_id)


def open_dashboard(driver: Any, url: str, interval_ms: int = 250, timeout: float = 30) -> None:
    """Load the dashboard at ``url`` (a cluster's base URL, with ``?token=``, else the
    token a local cluster left for its user) and wait for its first redraw."""
    from pyfora.net import local_tokens
    base, _, query = url.partition("?")
    if "token=" not in query:
        query = urllib.parse.urlencode({"token": local_tokens.find(base) or ""})
    query = "&".join(q for q in (query, f"interval={interval_ms}") if q)
    driver.get(f"{base.rstrip('/')}/?{query}")
    wait_for(driver, "return Number(document.body.dataset.polls) >= 1", timeout,
             "the dashboard's first redraw")


def save_screenshot(driver: Any, path: str) -> str:
    """Save the whole page, below the fold too, as a PNG (through the DevTools protocol:
    Selenium's own screenshot stops at the viewport)."""
    import base64

    width, height = driver.execute_script(
        "const e = document.documentElement; return [e.scrollWidth, e.scrollHeight]")
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as file:
        file.write(base64.b64decode(shot["data"]))
    return path


def dashboard_screenshot(url: str, path: str, *, after_polls: int = 3) -> str:
    """Open the dashboard of the cluster at ``url``, let it redraw ``after_polls`` times,
    and save a screenshot of it to ``path``. Returns ``path``."""
    with chromium() as driver:
        open_dashboard(driver, url)
        start = polls(driver)
        wait_for(driver, f"return Number(document.body.dataset.polls) >= {start + after_polls}",
                 30, "the dashboard to redraw")
        return save_screenshot(driver, path)


# -- a cluster under load, for the screenshot in the docs -----------------------------

def _is_prime(n: int) -> bool:
    x = 2
    while x * x <= n:
        if n % x == 0:
            return False
        x += 1
    return n > 1


def _count_primes(start: int, stop: int) -> int:
    return sum(1 for n in range(start, stop) if _is_prime(n))


def _squares(n: int) -> list[int]:
    return [i * i for i in range(n)]


def _workload(executor: Any, stop: threading.Event) -> None:
    """Keep the cluster busy: many small tasks, a few long ones, some objects held."""
    held = [executor.define(list(range(50_000))).result(60)]
    step = 0
    while not stop.is_set():
        futures = [executor.submit(_count_primes, i * 20_000, (i + 1) * 20_000)
                   for i in range(step, step + 12)]
        held.append(executor.submit(_squares, 20_000 + step).result(120))   # stays remote
        for future in futures:
            future.result(120)
        step += 12


def screenshot_under_load(path: str, workers: int = 2, settle: float = 6.0) -> str:
    """Start a cluster, run a workload from two sessions, screenshot the dashboard."""
    import pyfora

    with pyfora.connect(workers=workers) as first:
        cluster = first._aio._cluster
        url = f"{cluster.url}?token={cluster.coordinator.config.token}"
        second = pyfora.connect(url)
        stop = threading.Event()
        threads = [threading.Thread(target=_workload, args=(ex, stop), daemon=True)
                   for ex in (first, second)]
        for thread in threads:
            thread.start()
        try:
            with chromium(1280, 900) as driver:
                open_dashboard(driver, url, interval_ms=500)
                deadline = time.monotonic() + settle
                while time.monotonic() < deadline:
                    time.sleep(0.1)      # let the load chart fill in
                wait_for(driver, "return document.querySelector('#workers tr[data-state=busy]')",
                         30, "a busy worker")
                return save_screenshot(driver, path)
        finally:
            stop.set()
            for thread in threads:
                thread.join(120)
            second.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="where to save the PNG")
    parser.add_argument("--url", help="a running cluster's URL (?token= allowed)")
    parser.add_argument("--load", action="store_true",
                        help="start a 2-worker cluster and run a workload on it first")
    args = parser.parse_args(argv)
    reason = unavailable()
    if reason:
        sys.exit(f"cannot take a screenshot: {reason}")
    if args.load:
        print(screenshot_under_load(args.path))
    elif args.url:
        print(dashboard_screenshot(args.url, args.path))
    else:
        parser.error("give --url URL or --load")


if __name__ == "__main__":
    main()
