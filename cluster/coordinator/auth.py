"""Who may talk to the coordinator: tokens, the Origin and Host checks, TLS contexts.

Every coordinator has two tokens, loopback-bound ones included (any local user can reach
a loopback port): one for clients and one for workers (``Config``), so that a client
cannot pose as a worker and receive other sessions' tasks. A token rides on the
websocket upgrade request (``Authorization: Bearer``, or ``?token=``), where it is
checked before the upgrade: a peer without it never gets to send a frame. Tokens are
compared in constant time and never logged.

Browsers can reach any cluster their user can, whatever the page: so a handshake carrying
an ``Origin`` header (only browsers send one) must come from a page of the cluster itself
(same scheme, host and port), and every request must name in ``Host`` one of the names
the cluster serves, which defeats DNS rebinding (a foreign name that resolves to
127.0.0.1, making the page "same-origin" with us).

The checks read a request through ``Request``, which aiohttp's requests and the worker
door's (``cluster.coordinator.ws_door``) both are, so every door applies the same ones;
each server turns a ``Refusal`` into its own response (``cluster.coordinator.web_doors``).

Runs on the coordinator's event loop (checks) or at start-up (contexts); nothing here
does I/O but reading certificate files.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import ipaddress
import secrets
import socket
import ssl
import urllib.parse
from collections.abc import Mapping
from typing import Protocol

from cluster.coordinator.guard import Guard
from pyfora.net.local_tokens import is_loopback


class Request(Protocol):
    """What the checks read of an upgrade or HTTP request."""

    @property
    def headers(self) -> Mapping[str, str]: ...     # names case-insensitive

    @property
    def query(self) -> Mapping[str, str]: ...

    @property
    def host(self) -> str | None: ...

    @property
    def transport(self) -> asyncio.Transport | None: ...


def new_token() -> str:
    """A fresh token: 32 random bytes, URL-safe so it can ride in ``?token=``."""
    return secrets.token_urlsafe(32)


def authorized(request: Request, token: str) -> bool:
    """Whether ``request`` carries ``token``, as ``Authorization: Bearer`` or ``?token=``."""
    header = request.headers.get("Authorization", "")
    offered = [request.query.get("token", ""),
               header[7:] if header[:7].lower() == "bearer " else ""]
    # compare_digest for each: how long a wrong guess takes says nothing about the token.
    return any([hmac.compare_digest(o.encode(), token.encode()) for o in offered if o])


def _hostname(host_header: str) -> str:
    """The name in a ``Host`` header, without its port."""
    return (urllib.parse.urlsplit("//" + host_header).hostname or "").lower()


def host_allowed(request: Request, served: frozenset[str], loopback_bound: bool) -> bool:
    """Whether ``Host`` names this cluster: a loopback name, one of ``served``
    (``served_names``) or, unless the cluster is bound to loopback only, an address
    literal (a rebinding attack needs a name)."""
    name = _hostname(request.host or "")
    if is_loopback(name) or name in served:
        return True
    if loopback_bound:
        return False
    try:
        ipaddress.ip_address(name.strip("[]"))
        return True
    except ValueError:
        return False


def origin_allowed(request: Request, port: int, secure: bool) -> bool:
    """Whether a websocket handshake's ``Origin``, if it has one, is this cluster's own
    scheme://host:port, the host being the one the request names."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True     # not a browser: tools and pyfora's own clients send no Origin
    try:
        page = urllib.parse.urlsplit(origin)
        page_port = page.port or (443 if page.scheme == "https" else 80)
    except ValueError:
        return False
    return (page.scheme == ("https" if secure else "http") and page_port == port
            and page.hostname is not None
            and page.hostname == _hostname(request.host or ""))


def served_names(host: str, allowed: tuple[str, ...]) -> frozenset[str]:
    """The names a cluster bound to ``host`` answers to beside loopback ones: ``allowed``
    (``--allow-host``), and this machine's own names unless it is bound to loopback."""
    names = set(allowed)
    if not is_loopback(host):
        names |= {socket.gethostname(), socket.getfqdn(), host}
    return frozenset(n.lower() for n in names if n)


#: What a peer refused for its token is told, by the endpoint's role.
TOKEN_HELP = {
    "client": "the cluster refused the token: pass token= to connect() or set PYFORA_TOKEN "
              "(pyfora-cluster prints it; a cluster of your own on this machine is found by "
              "itself)",
    "worker": "the cluster refused the worker token: pass --token or set "
              "PYFORA_WORKER_TOKEN to the worker token pyfora-cluster printed (the "
              "clients' token does not admit workers)",
}


@dataclasses.dataclass(frozen=True)
class Refusal:
    """A refused request: its HTTP status, and the ``pyfora.errors`` name and message the
    peer raises (``wire.refusal`` is the response's body)."""
    status: int
    kind: str
    message: str


@dataclasses.dataclass
class Doors:
    """What every request to one coordinator is checked against: the token of each role
    (``client``, ``worker``), the names it serves, its own origin, and the guard on
    connections that have not authenticated yet."""
    tokens: dict[str, str]
    guard: Guard
    served: frozenset[str]
    loopback: bool
    secure: bool
    port: int = 0           # set once bound

    def authorized(self, request: Request, role: str) -> bool:
        """Whether ``request`` carries the token of ``role``; if so its connection is
        no longer watched by the guard."""
        if not authorized(request, self.tokens[role]):
            return False
        self.guard.authenticated(request.transport)
        return True

    def refusal(self, request: Request, role: str) -> Refusal | None:
        """Why a websocket upgrade to the endpoint of ``role`` is refused, or None."""
        if not origin_allowed(request, self.port, self.secure):
            return Refusal(403, "AuthenticationError", "cross-origin websocket refused: "
                           "the Origin is not this cluster's own page")
        if not self.authorized(request, role):
            return Refusal(401, "AuthenticationError", TOKEN_HELP[role])
        return None

    def host_refusal(self, request: Request) -> Refusal | None:
        """Why any request is refused for the name it gives in ``Host``, or None."""
        if host_allowed(request, self.served, self.loopback):
            return None
        return Refusal(403, "AuthenticationError", f"this cluster does not serve the name "
                       f"{_hostname(request.host or '')!r} (pyfora-cluster --allow-host NAME "
                       "adds one)")


def server_context(certfile: str, keyfile: str | None) -> ssl.SSLContext:
    """The coordinator's TLS context (https and wss)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile)
    return context
