"""The messages of the wire: one dataclass per operation, and the sizes both ends agree on.

A message is one binary websocket frame holding a msgpack map ``{"op": ..., **fields}``
(its *envelope*: ``codec``), followed by the frames of its out-of-band buffers, if it has
any (``framing``). Requests carry an ``id`` chosen by the sender; the reply names the same
``id``. Messages whose ``id`` is 0 want no reply.

Runs on any thread; no I/O.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, dataclass_transform

VERSION = 5      # 2: out-of-band buffers; 3: ``batch`` frames, shared memory;
#                 4: ``hello`` and the token in the websocket upgrade request;
#                 5: a read-only buffer's file in shared memory starts with a head
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
    """The answer to ``hello``: the first frame of an accepted connection. For a client:
    ``resume`` is the session's secret for resuming it within ``grace`` seconds of a
    broken connection (None: it cannot be resumed), and ``received`` how many messages of
    the session the coordinator has.
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
