"""``pyfora.protocol``: pure unit tests, no I/O."""

import dataclasses

import msgpack
import pytest

from pyfora import errors
from pyfora import protocol as p

SAMPLES = [
    p.Hello(version=p.VERSION, role="client", token="t", name=None),
    p.Welcome(session="s-1", workers=2, cluster="c0ffee"),
    p.Error(id=3, kind="ProtocolError", message="bad"),
    p.Ok(id=4),
    p.Done(id=5, oid=9, size=12, type="int", value=b"\x80\x05K\x0c.", error=None),
    p.Done(id=6, oid=10, size=0, type="", error={"type": "ValueError", "message": "x"}),
    p.Value(id=7, data=b"\x00" * 100),
    p.Output(id=8, stream="stdout", text="hello\n"),
    p.Info(id=9, info={"workers": []}),
    p.Submit(id=10, payload=b"pickle", deps=[1, 2]),
    p.Define(id=11, payload=b"pickle", type="list"),
    p.Fetch(id=12, oid=3),
    p.Release(oids=[1, 2, 3]),
    p.Cancel(target=10),
    p.Status(id=13),
    p.Run(id=14, oid=15, payload=b"x", deps=[], inline=100),
    p.Free(oids=[4]),
    p.Get(id=16, oid=4),
]


FOUNDATION_OPS = {"hello", "welcome", "error", "ok", "done", "value", "output", "info",
                  "submit", "define", "fetch", "release", "cancel", "status", "run", "free",
                  "get"}


def test_every_foundation_operation_has_a_sample():
    assert FOUNDATION_OPS <= set(p._OPS)
    assert {m.op for m in SAMPLES} == FOUNDATION_OPS


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: m.op)
def test_encode_decode_round_trip(message):
    frame = p.encode(message)
    assert isinstance(frame, bytes)
    assert msgpack.unpackb(frame)["op"] == message.op
    assert p.decode(frame) == message


def test_progress_round_trip_and_carries_no_request_id():
    message = p.Progress(target=7, done=30, total=100)
    assert p.decode(p.encode(message)) == message
    # No ``id``: a client waiting on request 7 must not take it for the reply.
    assert not hasattr(message, "id")
    with pytest.raises(errors.ProtocolError, match="'done'"):
        p.decode(msgpack.packb({"op": "progress", "target": 7, "done": "3", "total": 9}))


def test_defaults_are_filled_in():
    frame = msgpack.packb({"op": "submit", "id": 1, "payload": b"x"})
    message = p.decode(frame)
    assert message == p.Submit(id=1, payload=b"x", deps=[], inline=p.INLINE_LIMIT)


@pytest.mark.parametrize("frame, words", [
    ("text", "binary frame"),
    (b"\xc1", "not valid msgpack"),
    (b"", "not valid msgpack"),
    (msgpack.packb([1, 2]), "must be a map, got list"),
    (msgpack.packb(7), "must be a map, got int"),
    (msgpack.packb({"id": 1}), "unknown operation None"),
    (msgpack.packb({"op": "frobnicate", "id": 1}), "unknown operation 'frobnicate'"),
    (msgpack.packb({"op": 3}), "unknown operation 3"),
    (msgpack.packb({"op": "fetch", "id": 1, "oid": 2, "extra": 1}), "unknown fields ['extra']"),
    (msgpack.packb({"op": "fetch", "id": 1}), "fetch:"),
    (msgpack.packb({"op": "fetch", "id": "1", "oid": 2}), "field 'id' has type str"),
    (msgpack.packb({"op": "fetch", "id": True, "oid": 2}), "field 'id' has type bool"),
    (msgpack.packb({"op": "submit", "id": 1, "payload": "str"}), "field 'payload' has type str"),
    (msgpack.packb({"op": "submit", "id": 1, "payload": b"", "deps": [1, "2"]}), "'deps'"),
    (msgpack.packb({"op": "release", "oids": 5}), "field 'oids' has type int"),
    (msgpack.packb({"op": "output", "id": 1, "stream": "stdout", "text": b"x"}), "'text'"),
    (msgpack.packb({"op": "hello", "version": 1, "role": "client", "token": 5}), "'token'"),
    (msgpack.packb({"op": "done", "id": 1, "oid": 1, "size": 0, "type": "", "error": [1]}),
     "'error'"),
])
def test_bad_frames_raise_protocol_error_naming_the_problem(frame, words):
    with pytest.raises(errors.ProtocolError, match=None) as info:
        p.decode(frame)
    assert words in str(info.value)


def test_protocol_error_carries_the_request_id_when_it_can_be_read():
    with pytest.raises(errors.ProtocolError) as info:
        p.decode(msgpack.packb({"op": "frobnicate", "id": 42}))
    assert info.value.request_id == 42
    with pytest.raises(errors.ProtocolError) as info:
        p.decode(msgpack.packb({"op": "fetch", "id": 43, "oid": "x"}))
    assert info.value.request_id == 43
    with pytest.raises(errors.ProtocolError) as info:
        p.decode(b"\xc1")
    assert info.value.request_id == 0
    with pytest.raises(errors.ProtocolError) as info:
        p.decode(msgpack.packb({"op": "frobnicate", "id": "42"}))
    assert info.value.request_id == 0


def test_messages_are_slotted_dataclasses():
    for cls in p._OPS.values():
        assert dataclasses.is_dataclass(cls)
        assert hasattr(cls, "__slots__")
        with pytest.raises(AttributeError):
            cls.__new__(cls).not_a_field = 1


def test_request_ids_are_positive_and_increasing():
    ids = p.RequestIds()
    seen = [ids() for _ in range(5)]
    assert seen == [1, 2, 3, 4, 5]
    assert p.RequestIds()() == 1   # one counter per connection


@pytest.mark.parametrize("kind, cls", [
    ("ProtocolError", errors.ProtocolError),
    ("AuthenticationError", errors.AuthenticationError),
    ("PyforaUsageError", errors.PyforaUsageError),
    ("ForeignProxyError", errors.ForeignProxyError),
    ("ExecutorClosedError", errors.ExecutorClosedError),
    # ComputationError needs the remote details, which an error reply does not carry
    ("ComputationError", errors.InternalError),
    # ... but a download of an object lost with workers that kept dying has none to carry
    ("WorkerCrashedError", errors.WorkerCrashedError),
    ("NoSuchError", errors.InternalError),
    ("PyforaError", errors.PyforaError),
    ("os", errors.InternalError),       # a module attribute that is no exception class
    ("Exception", errors.InternalError),
])
def test_error_for_maps_kind_to_exception(kind, cls):
    exc = p.error_for(p.Error(id=1, kind=kind, message="what happened"))
    assert type(exc) is cls
    assert "what happened" in str(exc)


def test_module_does_no_io():
    import sys
    source = open(p.__file__).read()
    for name in ("asyncio", "websockets", "aiohttp", "socket"):
        assert f"import {name}" not in source
    assert "pyfora.protocol" in sys.modules


def test_resume_fields_round_trip_and_stay_out_of_reprs():
    hello = p.Hello(version=p.VERSION, role="client", token="t", resume="secret", received=7)
    welcome = p.Welcome(session="s", workers=1, cluster="c", resume="secret", grace=2.5,
                        received=3)
    assert p.decode(p.encode(hello)) == hello
    assert p.decode(p.encode(welcome)) == welcome
    assert p.decode(p.encode(p.Ack(count=64))) == p.Ack(count=64)
    assert "secret" not in repr(hello) + repr(welcome)
    with pytest.raises(errors.ProtocolError, match="grace"):
        p.decode(msgpack.packb({"op": "welcome", "session": "s", "workers": 1,
                                "cluster": "c", "grace": "long"}))


def test_replay_sends_again_exactly_what_the_other_end_missed():
    sender, receiver = p.Replay(), p.Replay()
    frames = [bytes([i]) * 10 for i in range(5)]
    for frame in frames:
        sender.record(frame)
    for frame in frames[:3]:        # the last two were lost in the cut
        receiver.got(len(frame))
    assert sender.after(receiver.received) == frames[3:]
    assert sender.after(receiver.received) == frames[3:]     # until acked, kept
    sender.acked(5)
    assert len(sender) == 0 and sender.after(5) == []
    with pytest.raises(errors.ProtocolError):
        sender.acked(4)             # frames forgotten already
    with pytest.raises(errors.ProtocolError):
        sender.acked(6)             # frames never sent


def test_replay_acks_every_so_many_frames_or_bytes():
    replay = p.Replay()
    acks = [replay.got(10) for _ in range(p.Replay.ACK_FRAMES)]
    assert acks[:-1] == [None] * (p.Replay.ACK_FRAMES - 1)
    assert acks[-1] == p.Ack(count=p.Replay.ACK_FRAMES)
    assert replay.got(p.Replay.ACK_BYTES) == p.Ack(count=p.Replay.ACK_FRAMES + 1)


def test_batch_keeps_order_and_sends_large_frames_alone():
    small = [p.encode(p.Cancel(target=i)) for i in range(3)]
    large = p.encode(p.Define(id=9, payload=b"x" * p.BATCH_BYTES))
    frames = p.batch(small + [large] + small[:1])
    assert frames[1:] == [large, small[0]]      # a lone frame is not wrapped
    batch = p.decode(frames[0])
    assert isinstance(batch, p.Batch) and batch.frames == small
    many = p.batch([p.encode(p.Cancel(target=i)) for i in range(5000)])
    assert len(many) > 1 and all(len(f) <= p.BATCH_BYTES + 64 for f in many)
    inner = [p.decode(f) for frame in many for f in p.decode(frame).frames]
    assert [m.target for m in inner] == list(range(5000))


def test_batch_frames_must_be_bytes():
    with pytest.raises(errors.ProtocolError, match="frames"):
        p.decode(msgpack.packb({"op": "batch", "frames": [1, 2]}))
