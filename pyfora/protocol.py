"""The wire: message types and their msgpack encoding, with no I/O.

Both ends (the client in ``pyfora.aio``, the coordinator and the workers in ``cluster``)
import this module and nothing else to speak the protocol. A message is one binary
websocket frame holding a msgpack map ``{"op": ..., **fields}`` (its *envelope*), followed
by the frames of its out-of-band buffers, if it has any. User data travels in ``bytes``
fields and buffers that only the client and the workers unpickle: the coordinator never
does.

Out-of-band buffers (pickle protocol 5: the memory of large ``bytes``, ``bytearray`` and
numpy arrays) never go through msgpack: the envelope's ``oob`` field gives the size of each
buffer, and its bytes follow as frames of at most ``CHUNK`` bytes, in order, none
straddling two buffers. So msgpack never copies a large value, the sender sends views of
the value's own memory, the receiver gathers each buffer once, the coordinator relays the
frames as they came (``Assembler`` with ``join=False``), and no frame exceeds the frame
limit however large the value. Between processes of one machine, a large buffer goes
through shared memory instead, and the envelope names its file (``shared_memory``).

Messages that are one envelope alone (no buffer frames follow it) may travel several to a
frame, as a ``batch`` (``batch``, ``Batch``): a burst of tiny requests or replies costs a
few frames instead of one each. A message with buffers is never part of a batch, so its
frames still follow its envelope with no other frame in between.

Requests carry an ``id`` chosen by the sender; the reply names the same ``id``. Messages
whose ``id`` is 0 want no reply.

Runs on any thread; imports neither asyncio nor websockets (its only I/O: the files of
buffers in shared memory, when given a ``shared_memory.Directory``).
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import io
import itertools
import json
import urllib.parse
from collections.abc import Callable
from types import NoneType
from typing import Any, ClassVar, dataclass_transform

import msgpack

from .errors import ProtocolError
from .shared_memory import MIN_SIZE as SHARED_MIN_SIZE
from .shared_memory import Directory, Shared

VERSION = 4      # 2: out-of-band buffers; 3: ``batch`` frames, shared memory;
#                 4: ``hello`` and the token in the websocket upgrade request
#: Largest frame either end accepts, and largest message (envelope and buffers), unless
#: configured otherwise.
MAX_FRAME = 1 << 30
#: Out-of-band buffers are sent in frames of at most this many bytes: frames stay far
#: below any sensible frame limit, and one chunk in flight is all a sender copies.
CHUNK = 4 << 20
#: Results whose pickle is at most this many bytes ride along with their ``done`` reply.
INLINE_LIMIT = 64 * 1024
#: A ``batch`` frame is at most this many bytes (less if the peer's frame limit is lower):
#: enough to carry a burst in few frames, small enough that no envelope waits long.
BATCH_BYTES = 16 * 1024

_OPS: dict[str, type[Message]] = {}


class Message:
    """Base of every message; ``op`` names it on the wire."""
    __slots__ = ()
    op: ClassVar[str] = ""


def _oob():
    """The ``oob`` field of messages that carry a pickle: ``[size, writable]`` of each
    out-of-band buffer whose frames follow the envelope, or ``[size, writable, name]`` of
    one in shared memory (``shared_memory``: no frames follow for it)."""
    return dataclasses.field(default_factory=list)


def _frames():
    """The buffers' bytes, not part of the envelope: any sequence of bytes-like objects
    whose concatenation is the buffers', none straddling two buffers (whole buffers when
    sent or received by ``Assembler(join=True)``, the frames as they came when relayed)."""
    return dataclasses.field(default_factory=list, repr=False, compare=False,
                             metadata={"wire": False})


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
    """Who opens a connection: sent in its upgrade request (``HELLO_HEADER``), beside the
    token, so the coordinator knows and authenticates a peer before accepting a single
    frame from it. ``role`` is ``client`` or ``worker``.

    A client resuming a session after its connection broke names it with ``resume`` (the
    secret the coordinator gave in ``welcome``) and says how many messages of that session
    it has received (``received``, see ``Replay``)."""
    version: int
    role: str
    name: str | None = None
    resume: str | None = dataclasses.field(default=None, repr=False)
    received: int = 0
    host: str | None = None     # ``shared_memory.host_id()``: may it share memory


@_message("welcome")
class Welcome(Message):
    """The answer to ``hello``: the first frame of an accepted connection. For a client: ``resume`` is the session's secret for
    resuming it within ``grace`` seconds of a broken connection (None: it cannot be
    resumed), and ``received`` how many messages of the session the coordinator has.
    ``max_frame``: the largest frame the coordinator accepts (``batch`` frames stay under
    it). ``shm``: for a peer on the coordinator's machine, the directory through which
    large buffers go (``shared_memory``)."""
    session: str
    workers: int
    cluster: str
    resume: str | None = dataclasses.field(default=None, repr=False)
    grace: float = 0.0
    received: int = 0
    max_frame: int = MAX_FRAME
    shm: str | None = None


@_message("ack")
class Ack(Message):
    """Either end of a client session: ``count`` messages of it have arrived here, so the
    other end may forget them (``Replay``). Not counted itself; wants no reply."""
    count: int


@_message("batch")
class Batch(Message):
    """Several messages in one frame: each an envelope with no buffers to follow it, in the
    order they were sent. The receiver takes each as if it had come alone (counted, acked
    and answered one by one). Built by ``batch``."""
    envelopes: list


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
    oob: list = _oob()
    frames: list = _frames()


@_message("value")
class Value(Message):
    id: int
    data: bytes
    oob: list = _oob()
    frames: list = _frames()


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
    oob: list = _oob()
    frames: list = _frames()


@_message("define")
class Define(Message):
    id: int
    payload: bytes
    type: str = ""
    oob: list = _oob()
    frames: list = _frames()


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
    oob: list = _oob()
    frames: list = _frames()


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
    in bytes and CPU use in percent of one core since its previous report, and the
    compiled tier's counts (``pyfora.compiled.counts``)."""
    rss: int
    cpu: float
    compiled: dict = dataclasses.field(default_factory=dict)


# -- parallel pieces (worker to coordinator, see pyfora/parallel/_runtime.py) ----------

@_message("piece")
class Piece(Message):
    """A worker hands part of its task to an idle worker: run ``payload`` (a pickled call)
    now, or refuse at once with ``error`` if no worker is idle; pieces never queue. When it
    ran, the reply is ``done`` with the result inline."""
    id: int
    payload: bytes
    oob: list = _oob()
    frames: list = _frames()


@_message("split")
class Split(Message):
    """Ask the running piece ``target`` (the sender's request id; the task id when the
    coordinator relays it) to give away the upper half of the range it has not started.
    Answered by ``info``: ``{"start": ..., "stop": ...}``, or ``{}`` when it will not."""
    id: int
    target: int


_FIELDS = {op: {f.name for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                if f.metadata.get("wire", True)}
           for op, cls in _OPS.items()}


def encode(message: Message, **fields: Any) -> bytes:
    """Encode one message's envelope as a frame (its buffers' frames: ``to_frames``),
    with ``fields`` in place of its own."""
    data = {"op": message.op}
    for name in _FIELDS[message.op]:
        data[name] = getattr(message, name)
    data.update(fields)
    return msgpack.packb(data, use_bin_type=True)


def to_frames(message: Message, shm: Directory | None = None) -> list:
    """Every frame of one message: its envelope, then its buffers in ``CHUNK``-sized
    frames (views, not copies). Send them in order, with no other frame in between.

    ``shm``: the receiver shares this machine's memory, through that directory. Buffers
    of at least ``SHARED_MIN_SIZE`` bytes then go as files (a buffer the coordinator
    holds as a ``Shared``, by a new link to it), and the envelope names them."""
    buffers = getattr(message, "frames", None)     # only messages that carry a pickle
    if not buffers:
        return [encode(message)]
    layout: list = getattr(message, "oob")
    frames: list = [b""]
    oob = []
    parts = (part for part in buffers if _nbytes(part))
    for size, writable, *_ in layout:
        pieces, got = [], 0
        while got < size:
            pieces.append(next(parts))
            got += _nbytes(pieces[-1])
        if len(pieces) == 1 and isinstance(pieces[0], Shared):
            if shm is not None:
                oob.append([size, writable, shm.link(pieces[0])])
                continue
            pieces = [pieces[0].read()]     # to another machine
        elif shm is not None and size >= SHARED_MIN_SIZE and len(pieces) == 1:
            name = shm.put(pieces[0])
            if name is not None:
                oob.append([size, writable, name])
                continue
        oob.append([size, writable])
        for data in pieces:
            view = memoryview(data).cast("B")
            if len(view) <= CHUNK:
                frames.append(view)
            else:
                frames.extend(view[i:i + CHUNK] for i in range(0, len(view), CHUNK))
    frames[0] = encode(message, oob=oob)
    return frames


def _nbytes(part: Any) -> int:
    return part.nbytes if isinstance(part, Shared) else memoryview(part).nbytes


#: Bytes a ``batch`` frame adds to its envelopes at most: its own map, and the header of
#: its list (up to 5 bytes) and of each envelope (``_ENVELOPE_HEADER``).
_BATCH_HEADER = len(msgpack.packb({"op": "batch", "envelopes": []})) + 4
_ENVELOPE_HEADER = 5


def batch(messages: list[list], limit: int = BATCH_BYTES) -> list:
    """The frames that send ``messages`` (each the frames of one, ``to_frames``), in order:
    each run of messages that are an envelope alone goes as ``batch`` frames of at most
    ``limit`` bytes; a message with buffers goes as its own frames, never in a batch (nor
    one envelope too big to share a frame)."""
    out: list = []
    run: list[bytes] = []
    size = _BATCH_HEADER

    def end_run() -> None:
        out.append(run[0] if len(run) == 1 else encode(Batch(envelopes=run)))

    for frames in messages:
        if len(frames) == 1:
            envelope = frames[0]
            cost = len(envelope) + _ENVELOPE_HEADER
            if run and size + cost > limit:
                end_run()
                run, size = [], _BATCH_HEADER
            run.append(envelope)
            size += cost
        else:
            if run:
                end_run()
                run, size = [], _BATCH_HEADER
            out.extend(frames)
    if run:
        end_run()
    return out


def oob_layout(buffers: list) -> list:
    """The ``oob`` field describing ``buffers`` (bytes-like objects) to send."""
    layout = []
    for data in buffers:
        view = memoryview(data)
        layout.append([view.nbytes, not view.readonly])
    return layout


def value_size(data: bytes, oob: list) -> int:
    """An object's size, as its proxy gives it: its pickle ``data`` and the out-of-band
    buffers ``oob`` describes."""
    return len(data) + sum(entry[0] for entry in oob)


def message_size(message: Message, envelope: int) -> int:
    """Bytes on the wire of a message whose envelope is ``envelope`` bytes."""
    return envelope + sum(entry[0] for entry in getattr(message, "oob", ()))


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
    if not _FIELDS[op].issuperset(data):
        unknown = data.keys() - _FIELDS[op]
        raise ProtocolError(f"{op}: unknown fields {sorted(map(str, unknown))}")
    try:
        message = cls(**data)
    except TypeError as exc:
        raise ProtocolError(f"{op}: {exc}") from None
    _check_types(message)
    return message


def _typed(*types: type) -> Callable[[Any], bool]:
    return lambda value: type(value) in types


def _list_of(kind: type) -> Callable[[Any], bool]:
    return lambda value: type(value) is list and all(type(v) is kind for v in value)


def _oob_entry(b: Any) -> bool:
    return (type(b) is list and len(b) in (2, 3) and type(b[0]) is int and b[0] >= 0
            and type(b[1]) is bool and (len(b) == 2 or type(b[2]) is str))


#: What each field may hold; a field not named here may hold anything.
_FIELD_TYPES: dict[str, Callable[[Any], bool]] = {
    **dict.fromkeys(("id", "oid", "size", "target", "version", "workers", "inline", "rss",
                     "retries", "done", "total", "received", "count", "max_frame"),
                    _typed(int)),
    **dict.fromkeys(("payload", "data"), _typed(bytes)),
    "envelopes": _list_of(bytes),
    **dict.fromkeys(("deps", "oids"), _list_of(int)),
    "oob": lambda value: type(value) is list and all(map(_oob_entry, value)),
    **dict.fromkeys(("stream", "text", "kind", "message", "role", "type"), _typed(str)),
    **dict.fromkeys(("name", "resume", "host", "shm"), _typed(NoneType, str)),
    "value": _typed(NoneType, bytes),
    **dict.fromkeys(("cpu", "grace"), _typed(int, float)),
    **dict.fromkeys(("error", "info"), _typed(NoneType, dict)),
}
# Per operation, its checked fields: decoding is on every message's path.
_CHECKS = {op: [(name, _FIELD_TYPES[name]) for name in sorted(fields) if name in _FIELD_TYPES]
           for op, fields in _FIELDS.items()}


def _check_types(message: Message) -> None:
    """Reject fields of the wrong type here, so handlers can trust what they get."""
    for name, ok in _CHECKS[message.op]:
        value = getattr(message, name)
        if not ok(value):
            raise ProtocolError(f"{message.op}: field {name!r} has type {type(value).__name__}")


class Assembler:
    """The frames of one connection, as messages: each envelope with the buffers whose
    frames follow it. One per socket (a resumed session starts a new one: a message cut
    in half by a broken connection is sent again whole, see ``Replay``).

    ``join=True`` (the client and the workers, which unpickle): each buffer is gathered
    into one ``BytesIO`` as its frames arrive, so a buffer costs its own size and one
    frame, and its memory is never zero-filled first (as ``bytearray(size)`` would, a
    whole extra pass). Read-only buffers come out as ``bytes`` (``getvalue`` hands over
    the memory, no copy), so ``bytes`` values need no copy at all; writable ones as a
    writable ``memoryview`` of it (``getbuffer``), so numpy arrays come back writable.
    ``join=False`` (the coordinator, which relays): the frames are kept as they came.

    A buffer in shared memory (``shm``: the directory, for a peer on this machine) is
    taken as its envelope arrives: read or mapped, and its name unlinked, when joining;
    kept as a ``Shared`` by the coordinator.

    ``max_size`` bounds one message, envelope and buffers: a peer cannot make this end
    hold more than that for a message it has not finished sending.
    """

    def __init__(self, join: bool, max_size: int = MAX_FRAME,
                 shm: Directory | None = None) -> None:
        self.join = join
        self.max_size = max_size
        self.shm = shm
        self._message: Message | None = None
        self._size = 0              # bytes of the message being assembled
        self._layout: list = []     # [size, writable] of the buffers still to come
        self._left = 0              # bytes still to come of the current buffer
        self._buffer: Any = None    # the current buffer being joined
        self._readonly = False      # and whether it is read-only
        self._frames: list = []

    def feed(self, frame: bytes | str) -> list[tuple[Message | ProtocolError, int]]:
        """Take one frame; return the messages it completes, in order, each with its size
        on the wire: none while a message's buffers are still coming, one, or each of a
        ``batch``. A message that cannot be decoded comes as the ``ProtocolError`` saying
        why (see ``decode``): the connection can go on.

        Raises:
            ProtocolError: the connection cannot go on and must be closed with the error's
                ``close_code``: 1009, a message is over ``max_size`` or a ``batch``
                frame over ``BATCH_BYTES`` (which no peer makes); 1002, a buffer's
                frames do not fit what its envelope said, or a batch holds a message whose
                buffers would have to follow it.
        """
        if self._message is not None:
            return self._buffer_frame(frame)
        try:
            message = decode(frame)
        except ProtocolError as exc:
            return [(exc, len(frame))]
        if type(message) is not Batch:
            return self._envelope(message, len(frame))
        if len(frame) > BATCH_BYTES:
            # No peer makes one (``batch``): refused before its messages are handled, as
            # each would be answered (and its reply kept, ``Replay``) however many it holds.
            raise _fatal(1009, f"a batch frame of {len(frame):,} bytes is over the "
                         f"{BATCH_BYTES:,} a peer sends (protocol.BATCH_BYTES)")
        arrived: list[tuple[Message | ProtocolError, int]] = []
        for envelope in message.envelopes:
            try:
                inner = decode(envelope)
                if type(inner) is Batch:
                    raise ProtocolError("a batch inside a batch")
            except ProtocolError as exc:
                arrived.append((exc, len(envelope)))
                continue
            whole = self._envelope(inner, len(envelope))
            if not whole:
                self._reset()
                raise _fatal(1002, f"a batch holds {inner.op} with buffers: its frames "
                             "cannot follow it")
            arrived += whole
        return arrived

    def _buffer_frame(self, frame: bytes | str) -> list[tuple[Message | ProtocolError, int]]:
        assert self._message is not None
        if not isinstance(frame, (bytes, bytearray, memoryview)) or len(frame) > self._left:
            op = self._message.op
            self._reset()
            raise _fatal(1002, f"{op}: frames of its buffers do not fit the sizes its "
                         "envelope gave")
        self._left -= len(frame)
        if not self.join:
            self._frames.append(frame)
        elif self._left == 0 and not self._buffer.tell() and self._readonly and type(
                frame) is bytes:
            self._buffer = frame        # a read-only buffer in one frame: no copy at all
        else:
            self._buffer.write(frame)
        if self._left == 0:
            self._end_buffer()
        return self._done()

    def _reset(self) -> None:
        self._message, self._layout, self._left, self._buffer = None, [], 0, None
        self._frames = []

    def _envelope(self, message: Message, length: int) -> list[tuple[Message | ProtocolError, int]]:
        layout = getattr(message, "oob", None)
        if not layout:         # most messages: nothing follows
            return [(message, length)]
        size = message_size(message, length)
        if size > self.max_size:
            raise _fatal(1009, f"{message.op} of {size:,} bytes is over its size limit of "
                         f"{self.max_size:,} bytes (pyfora-cluster --max-frame)")
        self._message, self._size, self._layout = message, size, list(reversed(layout))
        self._frames = []
        self._next_buffer()
        return self._done()

    def _next_buffer(self) -> None:
        while self._layout and self._left == 0:
            size, writable, *name = self._layout.pop()
            if name:
                self._frames.append(self._shared(name[0], size, writable))
                continue
            self._left, self._readonly = size, not writable
            if self.join:
                self._buffer = io.BytesIO()
            if size == 0:
                self._end_buffer()

    def _shared(self, name: str, size: int, writable: bool) -> Any:
        op = self._message.op if self._message is not None else "?"
        try:
            if self.shm is None:
                raise OSError("this end shares no memory with its peer")
            if self.join:
                return self.shm.take(name, size, writable)
            shared = self.shm.keep(name)
            if len(shared) != size:
                raise OSError(f"not {size} bytes")
            return shared
        except OSError as exc:
            self._reset()
            raise _fatal(1002, f"{op}: its buffer in shared memory cannot be used "
                         f"({exc})") from None

    def _end_buffer(self) -> None:
        if self.join:
            buffer, self._buffer = self._buffer, None
            if isinstance(buffer, io.BytesIO):
                buffer = buffer.getvalue() if self._readonly else buffer.getbuffer()
            self._frames.append(buffer)
        self._next_buffer()

    def _done(self) -> list[tuple[Message | ProtocolError, int]]:
        if self._layout or self._left:
            return []
        message, self._message = self._message, None
        assert message is not None
        message.frames, self._frames = self._frames, []     # type: ignore[attr-defined]
        return [(message, self._size)]


def _fatal(code: int, text: str) -> ProtocolError:
    exc = ProtocolError(text)
    exc.close_code = code
    return exc


class Replay:
    """Messages one end of a client session sent that the other may not have received
    yet, so that a session whose connection broke can resume with nothing lost or
    repeated.

    Each end counts the messages it sends (``record``, with all their frames: a message
    and its buffers are sent again as a unit) and receives (``got``), acks aside. Every
    ``ACK_FRAMES`` messages or ``ACK_BYTES`` bytes received, it acks (sends ``Ack`` with
    its count) and the other end forgets what was acked. On resuming, each end tells the
    other its count, and sends again the messages after the other's (``after``): TCP
    delivers in order, so the messages lost in a cut are exactly a suffix of those sent
    (a message cut in half is not counted by its receiver, so it is sent again whole).
    This covers every message (``release``, ``cancel`` and pushed ``output`` as well as
    requests and replies), which de-duplicating requests by id alone would not.
    """

    ACK_FRAMES = 64
    ACK_BYTES = 1 << 20

    def __init__(self) -> None:
        self.sent = 0           # frames sent, counted
        self.received = 0       # frames received, counted
        self._unacked: collections.deque[list] = collections.deque()
        self._since_ack = 0
        self._bytes_since_ack = 0

    def record(self, frames: list) -> None:
        """A message (``to_frames``) is being sent: keep it until the other end acks it."""
        self.sent += 1
        self._unacked.append(frames)

    def got(self, size: int) -> Ack | None:
        """A message of ``size`` bytes arrived; return the ``Ack`` to send, when one is
        due."""
        self.received += 1
        self._since_ack += 1
        self._bytes_since_ack += size
        if self._since_ack < self.ACK_FRAMES and self._bytes_since_ack < self.ACK_BYTES:
            return None
        self._since_ack = self._bytes_since_ack = 0
        return Ack(count=self.received)

    def acked(self, count: int) -> None:
        """The other end has the first ``count`` messages sent.

        Raises:
            ProtocolError: it claims frames never sent, or ones already forgotten.
        """
        first = self.sent - len(self._unacked)      # frames forgotten already
        if not first <= count <= self.sent:
            raise ProtocolError(f"ack of {count} messages: {first} to {self.sent} expected")
        for _ in range(count - first):
            self._unacked.popleft()

    def after(self, count: int) -> list[list]:
        """The messages (each a list of frames) to send again to an end that has
        received ``count`` of them."""
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


def refused(body: bytes) -> Exception | None:
    """The error a refusal's body (``refusal``) stands for; None if it is not one."""
    try:
        data = json.loads(body)
        return error_for(Error(id=0, kind=data["kind"], message=data["message"]))
    except (ValueError, TypeError, KeyError):
        return None


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
