"""The wire: message types and their msgpack encoding, with no I/O.

Both ends (the client in ``pyfora.aio``, the coordinator and the workers in ``cluster``)
import this module and nothing else to speak the protocol. Every frame is one binary
websocket message holding a msgpack map ``{"op": ..., **fields}``; a ``batch`` holds
several such frames that were ready to send together (``batch``, ``Batch``). User data travels in
``bytes`` fields that only the client and the workers unpickle: the coordinator never does.

Requests carry an ``id`` chosen by the sender; the reply names the same ``id``. Messages
whose ``id`` is 0 want no reply.

Runs on any thread; imports neither asyncio nor websockets.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import urllib.parse
from typing import Any, ClassVar, dataclass_transform

import msgpack

from .errors import ProtocolError

VERSION = 2      # 2: ``batch``
#: Largest frame either end accepts, unless configured otherwise.
MAX_FRAME = 1 << 30
#: Results whose pickle is at most this many bytes ride along with their ``done`` reply.
INLINE_LIMIT = 64 * 1024

_OPS: dict[str, type[Message]] = {}


class Message:
    """Base of every message; ``op`` names it on the wire."""
    __slots__ = ()
    op: ClassVar[str] = ""


@dataclass_transform()     # tells type checkers these classes are dataclasses
def _message(op: str):
    def wrap(cls):
        cls.op = op
        cls = dataclasses.dataclass(slots=True)(cls)
        _OPS[op] = cls
        return cls
    return wrap


# -- handshake ------------------------------------------------------------------------

@_message("hello")
class Hello(Message):
    """First frame of every connection. ``role`` is ``client`` or ``worker``.

    A client resuming a session after its connection broke names it with ``resume`` (the
    secret the coordinator gave in ``welcome``) and says how many frames of that session
    it has received (``received``, see ``Replay``)."""
    version: int
    role: str
    token: str | None = dataclasses.field(default=None, repr=False)
    name: str | None = None
    resume: str | None = dataclasses.field(default=None, repr=False)
    received: int = 0


@_message("welcome")
class Welcome(Message):
    """The answer to ``hello``. For a client: ``resume`` is the session's secret for
    resuming it within ``grace`` seconds of a broken connection (None: it cannot be
    resumed), and ``received`` how many frames of the session the coordinator has."""
    session: str
    workers: int
    cluster: str
    resume: str | None = dataclasses.field(default=None, repr=False)
    grace: float = 0.0
    received: int = 0


@_message("ack")
class Ack(Message):
    """Either end of a client session: ``count`` frames of it have arrived here, so the
    other end may forget them (``Replay``). Not counted itself; wants no reply."""
    count: int


@_message("batch")
class Batch(Message):
    """Several frames sent as one (each an encoded message, in order). The receiver
    handles each as if it had come alone: counted, acked and answered one by one."""
    frames: list


#: A batch holds frames up to this many bytes in all: far under any frame limit.
BATCH_BYTES = 16 * 1024


def batch(frames: list[bytes]) -> list[bytes]:
    """``frames`` as few frames as can carry them, in order: runs of small frames become
    one ``batch`` each (up to ``BATCH_BYTES``), large ones go alone."""
    out: list[bytes] = []
    run: list[bytes] = []
    size = 0
    for frame in frames:
        cost = len(frame) + 5       # msgpack's header of a bytes item: 5 bytes at most
        if run and size + cost > BATCH_BYTES:
            out.append(run[0] if len(run) == 1 else encode(Batch(frames=run)))
            run, size = [], 0
        run.append(frame)
        size += cost
    if run:
        out.append(run[0] if len(run) == 1 else encode(Batch(frames=run)))
    return out


# -- replies --------------------------------------------------------------------------

@_message("error")
class Error(Message):
    """A request failed. ``kind`` names the matching exception class in ``pyfora.errors``."""
    id: int
    kind: str
    message: str


@_message("ok")
class Ok(Message):
    id: int


@_message("done")
class Done(Message):
    """A computation finished: ``oid`` now names its result on the cluster.

    ``value`` carries the result's pickle when it is small; ``error`` is set when the
    computation raised (a dict: type, message, traceback, exc, worker).
    """
    id: int
    oid: int
    size: int
    type: str
    value: bytes | None = None
    error: dict | None = None


@_message("value")
class Value(Message):
    id: int
    data: bytes


@_message("output")
class Output(Message):
    """Text a running task printed. ``id`` is the task's submit id."""
    id: int
    stream: str
    text: str


@_message("info")
class Info(Message):
    id: int
    info: dict


@_message("progress")
class Progress(Message):
    """How far a running ``map`` is: ``done`` of its ``total`` elements are computed.
    ``target`` names the task (worker to coordinator: the task id; coordinator to client:
    the submit id). It has no ``id``, so it never completes the request it reports on;
    sent at most every ``pyfora.parallel._runtime.REPORT`` seconds, and wants no reply."""
    target: int
    done: int
    total: int


# -- requests -------------------------------------------------------------------------

@_message("submit")
class Submit(Message):
    """Run ``payload`` (a pickled ``(fn, args, kwargs)``); ``deps`` are object ids it uses.
    ``retries``: how many times to run it again if the worker running it dies."""
    id: int
    payload: bytes
    deps: list = dataclasses.field(default_factory=list)
    inline: int = INLINE_LIMIT
    retries: int = 0


@_message("define")
class Define(Message):
    id: int
    payload: bytes
    type: str = ""


@_message("fetch")
class Fetch(Message):
    id: int
    oid: int


@_message("release")
class Release(Message):
    oids: list


@_message("cancel")
class Cancel(Message):
    """Cancel the request (client) or task (coordinator to worker) named ``target``."""
    target: int


@_message("status")
class Status(Message):
    id: int


# -- coordinator to worker ------------------------------------------------------------

@_message("run")
class Run(Message):
    """Run task ``id`` and keep its result as object ``oid``."""
    id: int
    oid: int
    payload: bytes
    deps: list
    inline: int = INLINE_LIMIT


@_message("free")
class Free(Message):
    oids: list


@_message("get")
class Get(Message):
    """A worker asks the coordinator for an object it does not hold."""
    id: int
    oid: int


@_message("stats")
class Stats(Message):
    """A worker's periodic report of its own process, for the dashboard: resident memory
    in bytes and CPU use in percent of one core since its previous report."""
    rss: int
    cpu: float


# -- parallel pieces (worker to coordinator, see pyfora/parallel/_runtime.py) ----------

@_message("piece")
class Piece(Message):
    """A worker hands part of its task to an idle worker: run ``payload`` (a pickled call)
    now, or refuse at once with ``error`` if no worker is idle; pieces never queue. When it
    ran, the reply is ``done`` with the result inline."""
    id: int
    payload: bytes


@_message("split")
class Split(Message):
    """Ask the running piece ``target`` (the sender's request id; the task id when the
    coordinator relays it) to give away the upper half of the range it has not started.
    Answered by ``info``: ``{"start": ..., "stop": ...}``, or ``{}`` when it will not."""
    id: int
    target: int


_FIELDS = {op: {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
           for op, cls in _OPS.items()}


def encode(message: Message) -> bytes:
    """Encode one message as a frame."""
    data = {"op": message.op}
    for name in _FIELDS[message.op]:
        data[name] = getattr(message, name)
    return msgpack.packb(data, use_bin_type=True)


def decode(frame: bytes | str) -> Message:
    """Decode one frame.

    Raises:
        ProtocolError: the frame is not a message this version knows, naming the problem.
            Its ``request_id`` is the frame's ``id`` when one can be read (else 0), so the
            error reply reaches the request waiting for it instead of leaving it to hang.
    """
    if not isinstance(frame, bytes):
        raise ProtocolError("expected a binary frame, got text")
    try:
        data = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except Exception as exc:
        raise ProtocolError(f"frame is not valid msgpack ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"frame must be a map, got {type(data).__name__}")
    try:
        return _decode_map(data)
    except ProtocolError as exc:
        request_id = data.get("id")
        exc.request_id = request_id if type(request_id) is int else 0
        raise


def _decode_map(data: dict) -> Message:
    op = data.pop("op", None)
    cls = _OPS.get(op) if isinstance(op, str) else None
    if cls is None:
        raise ProtocolError(f"unknown operation {op!r}")
    unknown = data.keys() - _FIELDS[op]
    if unknown:
        raise ProtocolError(f"{op}: unknown fields {sorted(map(str, unknown))}")
    try:
        message = cls(**data)
    except TypeError as exc:
        raise ProtocolError(f"{op}: {exc}") from None
    _check_types(message)
    return message


_INT_FIELDS = {"id", "oid", "size", "target", "version", "workers", "inline", "rss", "retries",
               "done", "total", "received", "count"}
_BYTES_FIELDS = {"payload", "data"}


def _check_types(message: Message) -> None:
    """Reject fields of the wrong type here, so handlers can trust what they get."""
    for name in _FIELDS[message.op]:
        value = getattr(message, name)
        if name in _INT_FIELDS:
            ok = type(value) is int
        elif name in _BYTES_FIELDS:
            ok = type(value) is bytes
        elif name == "frames":
            ok = type(value) is list and all(type(v) is bytes for v in value)
        elif name in ("deps", "oids"):
            ok = type(value) is list and all(type(v) is int for v in value)
        elif name in ("stream", "text", "kind", "message", "role", "type"):
            ok = type(value) is str
        elif name in ("token", "name", "resume"):
            ok = value is None or type(value) is str
        elif name == "value":
            ok = value is None or type(value) is bytes
        elif name in ("cpu", "grace"):
            ok = type(value) in (int, float)
        elif name in ("error", "info"):
            ok = value is None or type(value) is dict
        else:
            ok = True
        if not ok:
            raise ProtocolError(f"{message.op}: field {name!r} has type {type(value).__name__}")


class Replay:
    """Frames one end of a client session sent that the other may not have received yet,
    so that a session whose connection broke can resume with nothing lost or repeated.

    Each end counts the frames it sends (``record``) and receives (``got``), acks aside.
    Every ``ACK_FRAMES`` frames or ``ACK_BYTES`` bytes received, it acks (sends ``Ack``
    with its count) and the other end forgets what was acked. On resuming, each end tells
    the other its count, and sends again the frames after the other's (``after``): TCP
    delivers in order, so the frames lost in a cut are exactly a suffix of those sent.
    This covers every message (``release``, ``cancel`` and pushed ``output`` as well as
    requests and replies), which de-duplicating requests by id alone would not.
    """

    ACK_FRAMES = 64
    ACK_BYTES = 1 << 20

    def __init__(self) -> None:
        self.sent = 0           # frames sent, counted
        self.received = 0       # frames received, counted
        self._unacked: collections.deque[bytes] = collections.deque()
        self._since_ack = 0
        self._bytes_since_ack = 0

    def record(self, frame: bytes) -> None:
        """A frame is being sent: keep it until the other end acks it."""
        self.sent += 1
        self._unacked.append(frame)

    def got(self, size: int) -> Ack | None:
        """A frame of ``size`` bytes arrived; return the ``Ack`` to send, when one is due."""
        self.received += 1
        self._since_ack += 1
        self._bytes_since_ack += size
        if self._since_ack < self.ACK_FRAMES and self._bytes_since_ack < self.ACK_BYTES:
            return None
        self._since_ack = self._bytes_since_ack = 0
        return Ack(count=self.received)

    def acked(self, count: int) -> None:
        """The other end has the first ``count`` frames sent.

        Raises:
            ProtocolError: it claims frames never sent, or ones already forgotten.
        """
        first = self.sent - len(self._unacked)      # frames forgotten already
        if not first <= count <= self.sent:
            raise ProtocolError(f"ack of {count} frames: {first} to {self.sent} expected")
        for _ in range(count - first):
            self._unacked.popleft()

    def after(self, count: int) -> list[bytes]:
        """The frames to send again to an end that has received ``count`` of them."""
        self.acked(count)
        return list(self._unacked)

    def __len__(self) -> int:
        return len(self._unacked)


def endpoint_url(url: str, path: str) -> tuple[str, str | None]:
    """Normalize ``http(s)://`` and ``ws(s)://`` addresses of a coordinator, with or without
    a trailing slash or the endpoint's path, to the websocket URL of ``path``
    (``/api/session`` or ``/api/worker``); return it and the token given as ``?token=``.

    Raises:
        PyforaConnectionError: not such an address.
    """
    from .errors import PyforaConnectionError
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


class RequestIds:
    """Request ids for one connection: positive, increasing (0 means no reply wanted)."""

    def __init__(self) -> None:
        self._next = itertools.count(1).__next__

    def __call__(self) -> int:
        return self._next()


def error_for(message: Error) -> Exception:
    """The exception an ``error`` reply stands for, from ``pyfora.errors`` by name."""
    from . import errors
    cls: Any = getattr(errors, message.kind, None)
    if cls is errors.WorkerCrashedError:     # an object lost with workers that kept dying
        return cls(None, "pyfora.WorkerCrashedError", message.message)
    if not (isinstance(cls, type) and issubclass(cls, errors.PyforaError)) or issubclass(
            cls, errors.ComputationError):
        cls = errors.InternalError
    return cls(message.message)
