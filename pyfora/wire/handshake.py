"""How a connection opens, and how an error crosses the wire: the coordinator's addresses
(``endpoint_url``), the ``hello`` and token carried by the websocket upgrade request
(``upgrade_headers``, ``hello_from_header``), a refused upgrade's body (``refusal``,
``refused``), and an ``error`` reply as the exception it names (``error_for``).

Runs on any thread; no I/O.
"""

from __future__ import annotations

import base64
import json
import urllib.parse
from typing import Any

from .. import errors
from ..errors import ProtocolError, PyforaConnectionError
from .codec import decode, encode
from .messages import VERSION, Error, Hello


def endpoint_url(url: str, path: str) -> tuple[str, str | None]:
    """Normalize ``http(s)://`` and ``ws(s)://`` addresses of a coordinator, with or without
    a trailing slash or the endpoint's path, to the websocket URL of ``path``
    (``/api/session`` or ``/api/worker``); return it and the token given as ``?token=``.

    Raises:
        PyforaConnectionError: not such an address.
    """
    parts = urllib.parse.urlsplit(url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise PyforaConnectionError(
            f"cannot connect to {url!r}: expected a URL like http://host:8000/ or ws://host:8000")
    query = urllib.parse.parse_qs(parts.query)
    token = query.pop("token", [None])[0]
    base = parts.path.rstrip("/")
    if not base.endswith(path):
        base += path
    rest = urllib.parse.urlencode(query, doseq=True)
    return urllib.parse.urlunsplit((scheme, parts.netloc, base, rest, "")), token


#: The header of the websocket upgrade request that carries its ``hello``.
HELLO_HEADER = "Pyfora-Hello"


def upgrade_headers(hello: Hello, token: str | None) -> dict[str, str]:
    """The headers that open a connection: the ``hello`` and the token (as a bearer
    token, which proxies do not log as they log a URL's query)."""
    headers = {HELLO_HEADER: base64.urlsafe_b64encode(encode(hello)).decode("ascii")}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def hello_from_header(value: str | None) -> Hello:
    """The ``hello`` in an upgrade request's ``HELLO_HEADER``.

    Raises:
        ProtocolError: there is none (a client of another version), or it is malformed.
    """
    if value is None:
        raise ProtocolError(f"the upgrade request has no {HELLO_HEADER} header: this cluster "
                            f"speaks protocol version {VERSION}; upgrade pyfora on the older side")
    try:
        frame = base64.b64decode(value.encode("ascii"), altchars=b"-_", validate=True)
    except (ValueError, UnicodeEncodeError):
        raise ProtocolError(f"the {HELLO_HEADER} header is not base64") from None
    hello = decode(frame)
    if not isinstance(hello, Hello):
        raise ProtocolError(f"the {HELLO_HEADER} header holds {hello.op!r}, not hello")
    if hello.version != VERSION:
        raise ProtocolError(f"protocol version {hello.version} is not supported; this cluster "
                            f"speaks version {VERSION}: upgrade pyfora on the older side")
    return hello


def refusal(kind: str, message: str) -> bytes:
    """The body of the HTTP response that refuses an upgrade: which error, and why."""
    return json.dumps({"kind": kind, "message": message}).encode()


def refused(body: bytes | bytearray) -> Exception | None:
    """The error a refusal's body (``refusal``) stands for; None if it is not one."""
    try:
        data = json.loads(body)
        return error_for(Error(id=0, kind=data["kind"], message=data["message"]))
    except (ValueError, TypeError, KeyError):
        return None


def error_for(message: Error) -> Exception:
    """The exception an ``error`` reply stands for, from ``pyfora.errors`` by name."""
    cls: Any = getattr(errors, message.kind, None)
    if cls is errors.WorkerCrashedError:     # an object lost with workers that kept dying
        return cls(None, "pyfora.WorkerCrashedError", message.message)
    if not (isinstance(cls, type) and issubclass(cls, errors.PyforaError)) or issubclass(
            cls, errors.ComputationError):
        cls = errors.InternalError
    return cls(message.message)
