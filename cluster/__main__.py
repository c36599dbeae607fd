"""``pyfora-cluster`` (also ``python -m cluster``): run a coordinator and its workers.

Prints the URL clients connect to once every worker has joined, then serves until SIGINT
or SIGTERM, when it closes every session with GOING_AWAY and stops its workers.

Runs the coordinator's event loop on the main thread.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from .app import Config, start_cluster


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="pyfora-cluster",
        description="Run a pyfora coordinator with worker subprocesses. Prints the URL to "
                    "pass to pyfora.connect() once the workers have joined.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; any other needs a token)")
    parser.add_argument("--port", type=int, default=8000,
                        help="port to bind; 0 picks a free one (default 8000)")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker subprocesses to start (default: one per core)")
    parser.add_argument("--token", default=None,
                        help="token clients must present (default: $PYFORA_TOKEN; one is "
                             "generated and printed when binding a non-loopback address)")
    parser.add_argument("--log-level", default="WARNING",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser.parse_args(argv)


async def serve(config: Config) -> None:
    cluster = await start_cluster(config)
    print(cluster.url, flush=True)
    if config.token is not None and config.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"token: {config.token}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await cluster.stop()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(message)s")
    config = Config(host=args.host, port=args.port, workers=args.workers, token=args.token)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(serve(config))


def loop_factory():
    """uvloop where installed: it halves the coordinator's per-message cost."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    main()
