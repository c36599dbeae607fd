"""An aiohttp web service that offloads CPU-heavy work to a pyfora cluster.

Each request awaits ``ex.submit(...)``: the computation runs on the cluster's workers,
so the service's event loop stays free and serves other requests meanwhile, and many
requests run at once (as many as the cluster has cores).

    python examples/web_service.py                          # an embedded cluster
    python examples/web_service.py http://localhost:8000/   # a running one
    curl 'http://127.0.0.1:8080/primes?below=200000'

Prints the service's own URL once it is ready. ``--port 0`` picks a free port.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from aiohttp import web

from pyfora import aio

EXECUTOR = web.AppKey("executor", aio.Executor)


def count_primes(below: int) -> int:
    """CPU-bound on purpose: trial division."""
    count = 0
    for n in range(2, below):
        x = 2
        while x * x <= n:
            if n % x == 0:
                break
            x += 1
        else:
            count += 1
    return count


async def primes(request: web.Request) -> web.Response:
    try:
        below = int(request.query.get("below", "100000"))
    except ValueError:
        raise web.HTTPBadRequest(text="below must be an integer\n") from None
    if not 0 <= below <= 10_000_000:
        raise web.HTTPBadRequest(text="below must be between 0 and 10,000,000\n")
    started = time.monotonic()
    proxy = await request.app[EXECUTOR].submit(count_primes, below)   # runs on the cluster
    count = await proxy.toLocal()
    return web.json_response({"below": below, "primes": count,
                              "seconds": round(time.monotonic() - started, 3)})


async def health(request: web.Request) -> web.Response:
    """Answers at once, however busy the cluster is: nothing here blocks the loop."""
    return web.json_response({"ok": True,
                              "workers": await request.app[EXECUTOR].getWorkerCount()})


def make_app(cluster_url: str | None) -> web.Application:
    app = web.Application()

    async def executor(app: web.Application):
        # One executor for the whole service, shared by every request.
        async with aio.connect(cluster_url) as ex:
            app[EXECUTOR] = ex
            yield

    app.cleanup_ctx.append(executor)
    app.router.add_get("/primes", primes)
    app.router.add_get("/health", health)
    return app


async def serve(cluster_url: str | None, host: str, port: int) -> None:
    runner = web.AppRunner(make_app(cluster_url))
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    print(f"http://{bound_host}:{bound_port}/", flush=True)
    try:
        await asyncio.Event().wait()        # until Ctrl-C / SIGTERM
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cluster", nargs="?", default=None,
                        help="the cluster's URL (default: start an embedded cluster)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.cluster, args.host, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
