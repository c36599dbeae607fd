"""Who may talk to the coordinator: tokens, the Origin and Host checks, TLS contexts.

A coordinator bound to a loopback address trusts the machine it runs on and needs no
token (unless given one); bound to any other address it always has one (``Config``
generates it when none is given). Tokens are compared in constant time and never logged.

Browsers are the one client that can reach a developer's loopback cluster without being
asked to: any web page may open a websocket to ``ws://127.0.0.1:8000``. So a handshake
carrying an ``Origin`` header (only browsers send one) must come from a page on the
cluster's own host, and a loopback-bound coordinator also refuses requests whose ``Host``
is not a loopback name, which defeats DNS rebinding (a foreign name that resolves to
127.0.0.1, making the page "same-origin" with us).

Runs on the coordinator's event loop (checks) or at start-up (contexts); nothing here
does I/O but reading certificate files.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import secrets
import ssl
import urllib.parse

from aiohttp import abc, web

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 with or without brackets) is this
    machine only."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    """A fresh token: 32 random bytes, URL-safe so it can ride in ``?token=``."""
    return secrets.token_urlsafe(32)


def token_ok(given: str | None, expected: str | None) -> bool:
    """Whether ``given`` matches ``expected`` (None: no token required), in constant time."""
    if expected is None:
        return True
    return hmac.compare_digest((given or "").encode(), expected.encode())


def _hostname(host_header: str) -> str:
    """The name in a ``Host`` header, without its port."""
    return (urllib.parse.urlsplit("//" + host_header).hostname or "").lower()


def handshake_allowed(request: web.Request, loopback_bound: bool) -> bool:
    """Whether a websocket handshake may proceed (see the module docstring)."""
    own = _hostname(request.host or "")
    if loopback_bound and not is_loopback(own):
        return False
    origin = request.headers.get("Origin")
    if origin is None:
        return True     # not a browser: tools and pyfora's own clients send no Origin
    page = urllib.parse.urlsplit(origin).hostname    # None for "null" (file://, sandboxes)
    if page is None:
        return False
    return page == own or (is_loopback(page) and is_loopback(own))


class AccessLogger(abc.AbstractAccessLogger):
    """aiohttp's access log without query strings: ``/api/status?token=...`` is how the
    dashboard may pass the token, and the default format (``%r``) would log it."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info('%s "%s %s" %s %.3fs', request.remote, request.method, request.path,
                         response.status, time)

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


def server_context(certfile: str, keyfile: str | None) -> ssl.SSLContext:
    """The coordinator's TLS context (https and wss)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile)
    return context


def pinned_context(certfile: str) -> ssl.SSLContext:
    """For the coordinator's own worker subprocesses: trust exactly the coordinator's
    certificate. They dial the address it bound (often 127.0.0.1 or 0.0.0.0), which need
    not be a name the certificate carries, so the host name is not checked; the pin and
    the token are what authenticate the coordinator."""
    context = ssl.create_default_context(cafile=certfile)
    context.check_hostname = False
    # A self-signed leaf is its own trust anchor only with PARTIAL_CHAIN (the default
    # from Python 3.13 on, not before).
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context
