"""``pyfora-cluster`` (also ``python -m cluster``): run a coordinator and its workers.

Prints the URL clients connect to once every worker has joined, then serves until SIGINT
or SIGTERM, when it closes every session with GOING_AWAY and stops its workers.

Runs the coordinator's event loop on the main thread.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import signal
import sys

from . import loop_factory
from .app import Config, start_cluster
from .limits import MIN_UNACKED_BYTES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="pyfora-cluster",
        description="Run a pyfora coordinator with worker subprocesses. Prints the URL to\n"
                    "pass to pyfora.connect() once the workers have joined, then serves\n"
                    "until SIGINT or SIGTERM. The same URL in a browser shows the\n"
                    "dashboard; /api/status gives its numbers as JSON.",
        epilog="examples:\n"
               "  pyfora-cluster --port 8000 --workers 4\n"
               "  pyfora-cluster --host 0.0.0.0 --token $(openssl rand -hex 16)\n"
               "  pyfora-worker ws://this-host:8000 --token T    (more workers, other hosts)\n"
               "  pyfora-cluster --backend dask --scheduler tcp://dask-scheduler:8786\n\n"
               "environment: PYFORA_TOKEN (default --token)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; any other needs a token)")
    parser.add_argument("--port", type=int, default=8000,
                        help="port to bind; 0 picks a free one (default 8000)")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker subprocesses to start (default: one per core; 0: "
                             "none, only workers that join with pyfora-worker)")
    parser.add_argument("--backend", choices=["pool", "dask"], default="pool",
                        help="what runs the tasks: pool, worker subprocesses of this "
                             "coordinator (default), or dask, a Dask distributed cluster "
                             "(needs pip install 'pyfora[dask]')")
    parser.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help="with --backend dask: the Dask scheduler to use, e.g. "
                             "tcp://host:8786 (default: start a local Dask cluster of "
                             "--workers processes)")
    parser.add_argument("--token", default=None,
                        help="token clients must present (default: $PYFORA_TOKEN; one is "
                             "generated and printed when binding a non-loopback address)")
    parser.add_argument("--certfile", default=None,
                        help="PEM certificate (chain): serve https and wss")
    parser.add_argument("--keyfile", default=None,
                        help="PEM private key of --certfile (default: in --certfile)")
    parser.add_argument("--memory-limit", type=parse_size, default=None, metavar="SIZE",
                        help="resident memory per worker, e.g. 2GiB or 500MB: a worker over "
                             "it is killed and replaced, its task fails with "
                             "WorkerCrashedError")
    parser.add_argument("--max-frame", type=parse_size, default=None, metavar="SIZE",
                        help="largest websocket frame, and largest message (a value with "
                             "its buffers), accepted (default 1GiB)")
    parser.add_argument("--no-shared-memory", dest="shared_memory", action="store_false",
                        help="send every buffer over the websockets, even to clients and "
                             "workers on this machine (default: large buffers between "
                             "processes of this machine go through /dev/shm)")
    parser.add_argument("--session-grace", type=float, default=30.0, metavar="SECONDS",
                        help="how long a client whose connection broke has to reconnect "
                             "and resume its session before everything it held is "
                             "released (default 30; 0: release at once)")
    limits = parser.add_argument_group(
        "limits per client",
        "What one client may make the coordinator hold. A request over a limit fails\n"
        "with ResourceLimitError naming its flag; the session goes on.")
    limits.add_argument("--max-sessions", type=int, default=1000, metavar="N",
                        help="client sessions at once, those kept for a client to resume "
                             "included; one more is refused (default 1000)")
    limits.add_argument("--max-session-bytes", type=parse_size, default=8 << 30,
                        metavar="SIZE",
                        help="bytes of the values one session has defined that the "
                             "coordinator holds; a define over it is refused (default 8GiB)")
    limits.add_argument("--max-queued-tasks", type=int, default=1_000_000, metavar="N",
                        help="tasks one session has queued or running; a submit over it is "
                             "refused (default 1000000)")
    limits.add_argument("--max-unacked-bytes", type=parse_size, default=256 << 20,
                        metavar="SIZE",
                        help="bytes of replies sent to one session that its client has not "
                             "acknowledged (kept to send again if the connection breaks): "
                             "fetches wait for room under it; a session whose other replies "
                             "go over it is closed (default 256MiB, at least 4MiB)")
    parser.add_argument("--log-level", default="WARNING",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="what the coordinator logs to stderr (default WARNING)")
    args = parser.parse_args(argv)
    if args.keyfile and not args.certfile:
        parser.error("--keyfile needs --certfile")
    if args.workers is not None and args.workers < 0:
        parser.error(f"--workers must be 0 or more, not {args.workers}")
    for flag in ("max_sessions", "max_queued_tasks"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be 1 or more")
    if args.max_unacked_bytes < MIN_UNACKED_BYTES:
        parser.error(f"--max-unacked-bytes must be at least {MIN_UNACKED_BYTES >> 20}MiB: a "
                     "client acknowledges what it received every MiB")
    if args.scheduler and args.backend != "dask":
        parser.error("--scheduler is the Dask scheduler: use it with --backend dask")
    if args.backend == "dask" and not args.scheduler and args.workers == 0:
        parser.error("--backend dask without --scheduler starts a local Dask cluster: "
                     "--workers must be 1 or more")
    return args


_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str) -> int:
    """``"2GiB"``, ``"500MB"``, ``"1e9"`` -> bytes."""
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", text)
    try:
        value = float(match[1]) * _UNITS[match[2].upper()]
    except (TypeError, ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 2GiB or 500MB)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"a size must be positive: {text!r}")
    return int(value)


async def serve(config: Config) -> None:
    # Handle the signals before starting: one that arrives while the workers are still
    # joining must stop them too, not kill this process and leave them behind.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    starting = asyncio.ensure_future(start_cluster(config))
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait([starting, stopping], return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        starting.cancel()      # start_cluster stops whatever it had started
        await asyncio.gather(starting, return_exceptions=True)
        return
    stopping.cancel()
    cluster = starting.result()
    print(cluster.url, flush=True)
    if config.token_generated:
        # Printed (never logged) once, for the operator to hand to clients; a token given
        # with --token or $PYFORA_TOKEN is already known to whoever gave it.
        print(f"token: {config.token}\nconnect with pyfora.connect({cluster.url!r}, "
              "token=...) or set PYFORA_TOKEN", file=sys.stderr, flush=True)
    try:
        await stop.wait()
    finally:
        await cluster.stop()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(message)s")
    config = Config(host=args.host, port=args.port, workers=args.workers, token=args.token,
                    certfile=args.certfile, keyfile=args.keyfile,
                    memory_limit=args.memory_limit, session_grace=args.session_grace,
                    backend=args.backend, scheduler=args.scheduler,
                    shared_memory=args.shared_memory, max_sessions=args.max_sessions,
                    max_session_bytes=args.max_session_bytes,
                    max_queued_tasks=args.max_queued_tasks,
                    max_unacked_bytes=args.max_unacked_bytes)
    if args.max_frame is not None:
        config.max_frame = args.max_frame
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(serve(config))



if __name__ == "__main__":
    main()
