"""Envelopes to bytes and back: ``encode``, ``decode`` (every field's type checked, so
handlers can trust what they get), and ``batch`` frames that carry a burst of envelopes.

Messages that are one envelope alone (no buffer frames follow it) may travel several to a
frame, as a ``batch``: a burst of tiny requests or replies costs a few frames instead of
one each. A message with buffers is never part of a batch, so its frames still follow its
envelope with no other frame in between.

Runs on any thread; no I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import msgpack

from ..errors import ProtocolError
from .messages import _FIELDS, _OPS, BATCH_BYTES, Batch, Message


def encode(message: Message, oob: list | None = None) -> bytes:
    """Encode one message's envelope as a frame (its buffers' frames: ``to_frames``,
    which gives the ``oob`` field that describes them, in place of the message's own)."""
    return _ENCODERS[message.op](message, oob)


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
    wrong = _CHECKS[op](message)
    if wrong is not None:
        value = getattr(message, wrong)
        raise ProtocolError(f"{op}: field {wrong!r} has type {type(value).__name__}")
    return message


def _oob_entry(b: Any) -> bool:
    return (type(b) is list and len(b) in (2, 3) and type(b[0]) is int and b[0] >= 0
            and type(b[1]) is bool and (len(b) == 2 or type(b[2]) is str))


def _typed(*names: str) -> str:
    return " or ".join(f"type(v) is {name}" for name in names)


def _list_of(name: str) -> str:
    return f"type(v) is list and all([type(x) is {name} for x in v])"


#: What each field may hold, as a test of ``v``; a field not named here may hold anything.
_FIELD_TYPES: dict[str, str] = {
    **dict.fromkeys(("id", "oid", "size", "target", "version", "workers", "inline", "rss",
                     "retries", "done", "total", "received", "count", "max_frame"),
                    _typed("int")),
    **dict.fromkeys(("payload", "data"), _typed("bytes")),
    "envelopes": _list_of("bytes"),
    **dict.fromkeys(("deps", "oids"), _list_of("int")),
    "oob": "type(v) is list and all(map(_oob_entry, v))",
    **dict.fromkeys(("stream", "text", "kind", "message", "role", "type"), _typed("str")),
    **dict.fromkeys(("name", "resume", "host", "shm"), "v is None or type(v) is str"),
    "value": "v is None or type(v) is bytes",
    **dict.fromkeys(("cpu", "grace"), _typed("int", "float")),
    **dict.fromkeys(("error", "info"), "v is None or type(v) is dict"),
}


# Decoding and encoding are on every message's path, at every hop: each operation gets
# its own two functions, written out field by field, instead of loops over its fields.
def _compile(op: str) -> tuple[Callable[..., bytes], Callable[[Message], str | None]]:
    fields = [f.name for f in dataclasses.fields(_OPS[op])  # type: ignore[arg-type]
              if f.name in _FIELDS[op]]
    items = [f"{name!r}: " + ("m.oob if oob is None else oob" if name == "oob" else f"m.{name}")
             for name in fields]
    checks = [f"    v = m.{name}\n    if not ({_FIELD_TYPES[name]}):\n        return {name!r}\n"
              for name in fields if name in _FIELD_TYPES]
    source = (f"def encode(m, oob=None):\n"
              f"    return packb({{'op': {op!r}, {', '.join(items)}}}, use_bin_type=True)\n"
              f"def check(m):\n{''.join(checks)}    return None\n")
    namespace: dict[str, Any] = {"packb": msgpack.packb, "_oob_entry": _oob_entry}
    exec(source, namespace)     # noqa: S102 - source built above from the messages' fields
    return namespace["encode"], namespace["check"]


_COMPILED = {op: _compile(op) for op in _FIELDS}
_ENCODERS = {op: encode for op, (encode, _) in _COMPILED.items()}
_CHECKS = {op: check for op, (_, check) in _COMPILED.items()}
