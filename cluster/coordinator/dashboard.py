"""The dashboard: the page at ``/`` and the JSON it polls, ``/api/status``.

The page is one static file (``cluster/static/dashboard.html``: HTML, CSS and plain
JavaScript, no build step) that polls ``/api/status`` and redraws. Nothing is fetched from
anywhere but the coordinator itself, and the Content-Security-Policy sent with the page
holds the browser to that.

Both routes want the clients' token (``Config.token``), as ``?token=`` or as an
``Authorization: Bearer`` header: the status names sessions and workers, and no one but
the cluster's users should see them. The page
takes the token from its own URL once, keeps it in ``sessionStorage`` and sends it as a
header, so it does not stay in the address bar.

Runs on the coordinator's event loop.
"""

from __future__ import annotations

import collections
import importlib.resources
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from cluster.coordinator.coordinator import Coordinator
    from cluster.scheduling.peers import Session

PAGE = importlib.resources.files("cluster.coordinator") / "static" / "dashboard.html"
# Inline script and style are the page's own; everything else, the network included, is
# limited to this origin, and no other site may frame the page (clickjacking).
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
       "connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
       "base-uri 'none'; form-action 'none'")
STARTED = web.AppKey("dashboard_started", float)


def cluster_status(coordinator: Coordinator, started: float) -> dict[str, Any]:
    """``Coordinator.status()`` with what the dashboard adds: the objects each worker
    holds, one row per session, the cluster's id and its uptime in seconds."""
    info = coordinator.status()
    held: dict[object, list[int]] = collections.defaultdict(lambda: [0, 0])    # by worker
    owned: dict[Session, list[int]] = collections.defaultdict(lambda: [0, 0])
    for record in coordinator.backend.store.records():
        owned[record.owner][0] += 1
        owned[record.owner][1] += record.size
        for holder in record.holders:
            held[holder][0] += 1
            held[holder][1] += record.size
    by_name = {w.name: w for w in coordinator.backend.workers}
    for row in info["workers"]:
        count, size = held.get(by_name.get(row["name"]), (0, 0))
        row["objects"], row["bytes"] = count, size
    queued: collections.Counter[Session] = collections.Counter()
    running: collections.Counter[Session] = collections.Counter()
    for task in list(coordinator.backend.tasks.values()):
        # A piece (part of a task another worker split off) counts for the session whose
        # task it is part of.
        output = task.output
        session = output[0] if output else task.session
        (running if task.worker is not None else queued)[session] += 1
    info["session_list"] = [
        {"name": s.name, "queued": queued[s], "running": running[s],
         "objects": owned[s][0], "bytes": owned[s][1]}
        for s in sorted(coordinator.sessions, key=lambda s: s.name)]
    info["cluster"] = coordinator.cluster_id
    info["uptime"] = round(time.monotonic() - started, 1)
    return info


def setup(app: web.Application, coordinator: Coordinator) -> None:
    """Add ``/`` (the page) and ``/api/status`` (its JSON) to the coordinator's app."""
    app[STARTED] = time.monotonic()
    doors = coordinator.doors

    async def page(request: web.Request) -> web.Response:
        if not doors.authorized(request, "client"):
            return web.Response(
                status=401, content_type="text/plain", headers={"WWW-Authenticate": "Bearer"},
                text="This cluster wants its token: open /?token=TOKEN (the token "
                     "pyfora-cluster printed).\n")
        return web.Response(text=PAGE.read_text("utf-8"), content_type="text/html",
                            headers={"Content-Security-Policy": CSP,
                                     "Cache-Control": "no-store",
                                     "X-Content-Type-Options": "nosniff",
                                     "Referrer-Policy": "no-referrer"})

    async def status(request: web.Request) -> web.Response:
        if not doors.authorized(request, "client"):
            return web.json_response(
                {"error": "this cluster wants its token: ?token= or Authorization: Bearer"},
                status=401, headers={"WWW-Authenticate": "Bearer"})
        return web.json_response(cluster_status(coordinator, app[STARTED]),
                                 headers={"Cache-Control": "no-store"})

    app.router.add_get("/", page)
    app.router.add_get("/api/status", status)
