"""Fuzz both websocket endpoints of a real coordinator with random and mutated frames.

    .venv/bin/python benchmarks/fuzz_endpoints.py [--examples 10000]

Uses the generators and checks of ``tests/e2e/test_fuzz.py`` (hypothesis) at a larger
count: frames after the hello on ``/api/session``, first frames (handshakes) on
``/api/session`` and ``/api/worker``, while another session computes and checks its
results. Prints the figures recorded in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", "tests"), os.path.join(HERE, "..", "tests", "e2e")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=10_000)
    args = parser.parse_args()
    os.environ["PYFORA_FUZZ_EXAMPLES"] = str(args.examples)
    import test_fuzz
    from conftest import ClusterProcess, http_status

    cluster = ClusterProcess(1, "--max-frame", str(test_fuzz.FUZZ_MAX))
    try:
        started = time.monotonic()
        session = test_fuzz.Prober(cluster.url, "/api/session", hello=True)
        test_fuzz.run_with_bystander(cluster.url, _fuzzer(session, args.examples))
        handshakes = {}
        for path in ("/api/session", "/api/worker"):
            prober = test_fuzz.Prober(cluster.url, path, hello=False)
            figures = test_fuzz.run_with_bystander(cluster.url,
                                                   _fuzzer(prober, args.examples // 5))
            handshakes[path] = (prober.stats, figures)
        alive = cluster.proc.poll() is None
        workers = len(http_status(cluster.url)["workers"])
        print(f"session frames: {session.stats}")
        for path, (stats, figures) in handshakes.items():
            print(f"handshakes {path}: {stats} {figures}")
        print(f"coordinator alive: {alive}; workers: {workers}; "
              f"{time.monotonic() - started:.0f} s")
    finally:
        cluster.stop()


def _fuzzer(prober, count):
    import test_fuzz
    from hypothesis import HealthCheck, given, settings

    @settings(max_examples=count, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(test_fuzz.FRAMES)
    def fuzz(frame):
        prober.check(frame)
    return fuzz


if __name__ == "__main__":
    main()
