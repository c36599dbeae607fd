"""``pyfora-cluster`` (also ``python -m cluster``): run a coordinator and its workers.

Prints the URL clients connect to once every worker has joined (with ``?token=`` when
the token was generated here, and the tokens on stderr), leaves the tokens for its user
(``pyfora.net.local_tokens``), then serves until SIGINT or SIGTERM, when it closes every
session with GOING_AWAY, stops its workers and removes the tokens' file.

Runs the coordinator's event loop on the main thread.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import signal
import sys

from cluster import loop_factory
from cluster.coordinator.app import Config, start_cluster
from cluster.coordinator.limits import MIN_UNACKED_BYTES
from pyfora.net import local_tokens


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="pyfora-cluster",
        description="Run a pyfora coordinator with worker subprocesses. Prints the URL to\n"
                    "pass to pyfora.connect() once the workers have joined, then serves\n"
                    "until SIGINT or SIGTERM. The same URL in a browser shows the\n"
                    "dashboard; /api/status gives its numbers as JSON.",
        epilog="examples:\n"
               "  pyfora-cluster --port 8000 --workers 4\n"
               "  pyfora-cluster --host 0.0.0.0 --token-file ~/.pyfora-token\n"
               "  PYFORA_WORKER_TOKEN=W pyfora-worker ws://this-host:8000   (more workers)\n"
               "  pyfora-cluster --backend dask --scheduler tcp://dask-scheduler:8786\n\n"
               "environment: PYFORA_TOKEN (the clients' token), PYFORA_WORKER_TOKEN (the\n"
               "workers'); each is generated and printed when not given.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1)")
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
                        help="token clients must present (visible to other users in ps: "
                             "prefer --token-file or $PYFORA_TOKEN; default: generated, "
                             "printed, and left for your user in "
                             f"{local_tokens.runtime_dir()})")
    parser.add_argument("--token-file", type=local_tokens.read_file, default=None,
                        metavar="PATH", help="read the clients' token from this file")
    parser.add_argument("--worker-token-file", type=local_tokens.read_file, default=None,
                        metavar="PATH", help="read the workers' token from this file "
                        "(default: $PYFORA_WORKER_TOKEN, else generated and printed)")
    parser.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                        help="a name this cluster answers to in the Host header beside "
                             "loopback names and, off loopback, the machine's own names "
                             "and addresses (behind a proxy, say); repeatable")
    parser.add_argument("--max-unauthenticated", type=int, default=64, metavar="N",
                        help="connections that may wait at once to authenticate; one more "
                             "closes the oldest (default 64)")
    parser.add_argument("--auth-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="how long a connection may take to make a request with the "
                             "token before it is closed (default 10)")
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
    if args.max_unauthenticated < 1 or args.auth_timeout <= 0:
        parser.error("--max-unauthenticated and --auth-timeout must be positive")
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
        if match is None:
            raise ValueError(text)
        value = float(match[1]) * _UNITS[match[2].upper()]
    except (ValueError, KeyError):
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
    assert config.token is not None and config.worker_token is not None
    port = cluster.coordinator.doors.port
    try:
        saved = local_tokens.write(port, cluster.url, config.token, config.worker_token)
    except OSError as exc:
        saved = None
        print(f"pyfora-cluster: the tokens were not saved for local clients: {exc}",
              file=sys.stderr, flush=True)
    try:
        announce(cluster.url, config, saved)
        await stop.wait()
    finally:
        if saved is not None:
            local_tokens.remove(saved)
        await cluster.stop()


def announce(url: str, config: Config, saved: str | None) -> None:
    """Print the URL on stdout and, once, the tokens made here on stderr (never logged):
    whoever gave a token knows it already."""
    shown = f"{url}?token={config.token}" if config.token_generated else url
    print(shown, flush=True)
    lines = []
    if config.token_generated:
        lines.append(f"token: {config.token}")
    if config.worker_token_generated and config.backend == "pool":
        lines.append(f"worker token: {config.worker_token}")
    if saved is not None:
        lines.append(f"(left for your user in {saved}: pyfora.connect({url!r}) and "
                     "pyfora-worker on this machine find them there)")
    if lines:
        print("\n".join(lines), file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(message)s")
    config = Config(host=args.host, port=args.port, workers=args.workers,
                    token=args.token or args.token_file, worker_token=args.worker_token_file,
                    allowed_hosts=tuple(args.allow_host),
                    max_unauthenticated=args.max_unauthenticated,
                    auth_timeout=args.auth_timeout,
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
