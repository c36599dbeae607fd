"""``pyfora.wire``: pure unit tests, no I/O."""

import dataclasses
import os

import msgpack
import pytest

from pyfora import errors
from pyfora import wire as p
from pyfora.net import shared_memory

SAMPLES = [
    p.Hello(version=p.VERSION, role="client", name=None),
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


def test_the_wire_does_no_io():
    import pathlib
    for module in pathlib.Path(p.__file__).parent.glob("*.py"):
        source = module.read_text()
        for name in ("asyncio", "websockets", "aiohttp", "socket"):
            assert f"import {name}" not in source, module


def test_resume_fields_round_trip_and_stay_out_of_reprs():
    hello = p.Hello(version=p.VERSION, role="client", resume="secret", received=7)
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
    sender, receiver, assembler = p.Replay(), p.Replay(), p.Assembler(join=True)
    messages = [p.Submit(id=i, payload=b"x", oob=[[10, False]], frames=[bytes([i]) * 10])
                for i in range(5)]
    sent = [p.to_frames(m) for m in messages]
    for frames in sent:
        sender.record(frames)
    # Two whole messages and the envelope of the third arrived; the cut lost the rest.
    arrived = [whole for frames in sent[:2] for f in frames for whole in assembler.feed(bytes(f))]
    assert assembler.feed(bytes(sent[2][0])) == []
    for message, size in arrived:
        receiver.got(size)
    assert receiver.received == 2
    assert sender.after(receiver.received) == sent[2:]       # each message whole
    assert sender.after(receiver.received) == sent[2:]       # until acked, kept
    sender.acked(5)
    assert len(sender) == 0 and sender.after(5) == []
    with pytest.raises(errors.ProtocolError):
        sender.acked(4)             # messages forgotten already
    with pytest.raises(errors.ProtocolError):
        sender.acked(6)             # messages never sent


def test_replay_acks_every_so_many_frames_or_bytes():
    replay = p.Replay()
    acks = [replay.got(10) for _ in range(p.Replay.ACK_FRAMES)]
    assert acks[:-1] == [None] * (p.Replay.ACK_FRAMES - 1)
    assert acks[-1] == p.Ack(count=p.Replay.ACK_FRAMES)
    assert replay.got(p.Replay.ACK_BYTES) == p.Ack(count=p.Replay.ACK_FRAMES + 1)


def buffers_message(*buffers) -> p.Submit:
    return p.Submit(id=1, payload=b"pickle", oob=p.oob_layout(buffers), frames=list(buffers))


def test_buffers_travel_in_chunks_after_the_envelope():
    big = bytearray(range(256)) * (p.CHUNK // 256 * 2 + 1)       # two chunks and a bit
    frames = p.to_frames(buffers_message(big, b"", b"small"))
    assert p.decode(frames[0]).oob == [[len(big), True], [0, False], [5, False]]
    assert [len(f) for f in frames[1:]] == [p.CHUNK, p.CHUNK, len(big) - 2 * p.CHUNK, 5]
    assert all(isinstance(f, memoryview) for f in frames[1:])     # views, not copies


@pytest.mark.parametrize("join", [True, False])
def test_the_assembler_gives_each_message_with_its_buffers(join):
    big, small = bytearray(b"ab" * (p.CHUNK + 7)), b"read-only" * 9000
    frames = [bytes(f) for f in p.to_frames(buffers_message(big, b"", small))]
    frames.append(p.encode(p.Status(id=2)))
    assembler = p.Assembler(join=join)
    results = [assembler.feed(f) for f in frames]
    assert results[:len(frames) - 2] == [[]] * (len(frames) - 2)
    [(message, size)] = results[-2]
    assert size == len(frames[0]) + len(big) + len(small)
    assert b"".join(message.frames) == bytes(big) + small
    if join:        # one object per buffer, writable ones writable
        assert [type(b) for b in message.frames] == [memoryview, bytes, bytes]
        assert not message.frames[0].readonly
        assert message.frames[2] is frames[-2]      # a read-only buffer in one frame: as is
    else:           # relayed as they came
        assert message.frames == frames[1:-1]
    assert results[-1] == [(p.Status(id=2), len(frames[-1]))]


def test_the_assembler_refuses_what_does_not_fit():
    assembler = p.Assembler(join=False, max_size=1000)
    big = p.encode(p.Submit(id=1, payload=b"", oob=[[600, True], [600, True]]))
    with pytest.raises(errors.ProtocolError, match="over its size limit of 1,000") as info:
        assembler.feed(big)
    assert info.value.close_code == 1009
    assert assembler.feed(p.encode(p.Submit(id=1, payload=b"", oob=[[10, True]]))) == []
    with pytest.raises(errors.ProtocolError, match="do not fit") as info:
        assembler.feed(b"x" * 11)
    assert info.value.close_code == 1002
    [(error, size)] = assembler.feed(b"\xc1")      # an ordinary bad frame: the connection goes on
    assert isinstance(error, errors.ProtocolError) and error.close_code is None and size == 1
    with pytest.raises(errors.ProtocolError, match="oob"):
        p.decode(msgpack.packb({"op": "submit", "id": 1, "payload": b"", "oob": [[-1, True]]}))


# -- batches --------------------------------------------------------------------------

def envelope(i: int) -> list:
    return p.to_frames(p.Cancel(target=i))


def with_buffer(i: int, size: int) -> list:
    return p.to_frames(p.Submit(id=i, payload=b"p", oob=[[size, False]],
                                frames=[bytes([i % 256]) * size]))


def test_a_batch_never_holds_buffers_and_order_is_kept_around_them():
    big = with_buffer(100, 2 * p.CHUNK + 5)         # an envelope and three buffer frames
    small = with_buffer(101, 10)                    # an envelope and one small buffer frame
    messages = [envelope(0), envelope(1), big, envelope(2), small, envelope(3), envelope(4)]
    frames = p.batch(messages)
    # Runs of envelopes alone are batched; a message with buffers goes as its own frames,
    # in place, its envelope never in a batch.
    assert len(frames) == 1 + 4 + 1 + 2 + 1
    assert frames[1:5] == big and frames[6:8] == small and frames[5] == envelope(2)[0]
    for i in (0, 8):
        batch = p.decode(frames[i])
        assert isinstance(batch, p.Batch)
        assert all(isinstance(p.decode(e), p.Cancel) for e in batch.envelopes)
    # The receiving end gets every message whole, in the order sent.
    for join in (True, False):
        assembler = p.Assembler(join=join)
        arrived = [m for f in frames for m, _ in assembler.feed(bytes(f))]
        assert [getattr(m, "target", getattr(m, "id", None)) for m in arrived] == [
            0, 1, 100, 2, 101, 3, 4]
        assert b"".join(arrived[2].frames) == bytes([100]) * (2 * p.CHUNK + 5)
        assert b"".join(arrived[4].frames) == bytes([101]) * 10


def test_a_lone_envelope_is_not_wrapped_nor_a_big_one_batched():
    assert p.batch([envelope(7)]) == envelope(7)
    large = p.to_frames(p.Define(id=9, payload=b"x" * p.BATCH_BYTES))
    frames = p.batch([envelope(0), large, envelope(1)])
    assert frames == envelope(0) + large + envelope(1)


@pytest.mark.parametrize("limit", [p.BATCH_BYTES, 1000, 64])
def test_a_batch_respects_the_frame_limit(limit):
    messages = [p.to_frames(p.Output(id=i, stream="stdout", text="x" * (i % 50)))
                for i in range(3000)]
    frames = p.batch(messages, limit)
    batches = [f for f in frames if isinstance(p.decode(f), p.Batch)]
    assert batches if limit >= 1000 else not batches    # 64 bytes: no two fit together
    assert all(len(f) <= limit for f in batches)
    if limit == p.BATCH_BYTES:
        assert len(frames) < len(messages) / 50
    arrived = [m for f in frames for m, _ in p.Assembler(join=True).feed(f)]
    assert [m.id for m in arrived] == list(range(3000))


def test_a_batch_frame_larger_than_any_peer_makes_is_refused():
    """Its messages are not handled: the peer that sent it is not a pyfora one."""
    frame = p.encode(p.Batch(envelopes=[p.encode(p.Status(id=i)) for i in range(2000)]))
    assert len(frame) > p.BATCH_BYTES
    with pytest.raises(errors.ProtocolError, match="over the 16,384 a peer sends") as info:
        p.Assembler(join=False).feed(frame)
    assert info.value.close_code == 1009


def test_each_message_of_a_batch_is_counted_with_its_own_size():
    messages = [envelope(i) for i in range(5)]
    [frame] = p.batch(messages)
    arrived = p.Assembler(join=False).feed(frame)
    assert [size for _, size in arrived] == [len(m[0]) for m in messages]


def test_a_bad_message_in_a_batch_is_answered_alone_and_the_rest_go_on():
    good, bad = p.encode(p.Status(id=1)), msgpack.packb({"op": "fetch", "id": 2})
    frame = p.encode(p.Batch(envelopes=[good, bad, p.encode(p.Batch(envelopes=[])), good]))
    arrived = p.Assembler(join=False).feed(frame)
    assert [type(m) for m, _ in arrived] == [p.Status, errors.ProtocolError,
                                              errors.ProtocolError, p.Status]
    assert arrived[1][0].request_id == 2
    assert "batch inside a batch" in str(arrived[2][0])
    with pytest.raises(errors.ProtocolError, match="envelopes"):
        p.decode(msgpack.packb({"op": "batch", "envelopes": [1, 2]}))


def test_a_batch_holding_a_message_whose_buffers_would_follow_is_refused():
    declaring = p.encode(p.Submit(id=1, payload=b"", oob=[[10, True]]))
    assembler = p.Assembler(join=False)
    with pytest.raises(errors.ProtocolError, match="submit with buffers") as info:
        assembler.feed(p.encode(p.Batch(envelopes=[p.encode(p.Status(id=3)), declaring])))
    assert info.value.close_code == 1002
    # Buffers of size 0 have no frames to follow: such a message may share a batch.
    empty = p.encode(p.Submit(id=2, payload=b"", oob=[[0, True]]))
    [(message, _)] = assembler.feed(p.encode(p.Batch(envelopes=[empty])))
    assert message.id == 2 and message.frames == []


def test_large_buffers_go_through_shared_memory_and_are_taken_once(tmp_path):
    shm = shared_memory.Directory(str(tmp_path))
    # (over 2 MiB and not a multiple of it: read into huge pages, with a tail)
    big = bytes(range(256)) * (5 * shared_memory.MIN_SIZE // 256) + b"tail"
    writable = bytearray(b"w" * (3 * shared_memory.MIN_SIZE))
    frames = p.to_frames(buffers_message(big, writable, b"small"), shm)
    # only the small buffer follows the envelope; the large ones are named files
    oob = p.decode(frames[0]).oob
    assert [entry[:2] for entry in oob] == [[len(big), False], [len(writable), True],
                                            [5, False]]
    assert len(oob[0]) == len(oob[1]) == 3 and len(oob[2]) == 2
    assert sorted(os.listdir(tmp_path)) == sorted([oob[0][2], oob[1][2]])
    assert [bytes(f) for f in frames[1:]] == [b"small"]
    assembler = p.Assembler(join=True, shm=shm)
    [(message, size)] = [whole for frame in frames for whole in assembler.feed(bytes(frame))]
    assert size == len(frames[0]) + len(big) + len(writable) + 5
    got_big, got_writable, got_small = message.frames
    assert type(got_big) is bytes and got_big == big
    assert not got_writable.readonly and bytes(got_writable) == writable
    got_writable[0] = 0         # copy-on-write: the file's pages are not changed
    assert got_small == b"small"
    assert os.listdir(tmp_path) == []           # the receiver unlinked what it took


def test_the_coordinator_relays_shared_buffers_by_link_or_over_the_wire(tmp_path):
    shm = shared_memory.Directory(str(tmp_path))
    data = bytes(range(256)) * (shared_memory.MIN_SIZE // 256 * 5)      # over one chunk
    frames = p.to_frames(buffers_message(data), shm)
    [(message, _)] = p.Assembler(join=False, shm=shm).feed(frames[0])
    [held] = message.frames
    assert isinstance(held, shared_memory.Shared) and len(held) == len(data)
    # to a peer on this machine: a new name for the same file, taken by the receiver
    local = p.to_frames(message, shm)
    assert len(local) == 1 and len(os.listdir(tmp_path)) == 2
    [(got, _)] = p.Assembler(join=True, shm=shm).feed(local[0])
    assert got.frames == [data]
    # to a peer elsewhere: read, and sent in chunks
    remote = p.to_frames(message, None)
    assert p.decode(remote[0]).oob == [[len(data), False]]
    assert b"".join(remote[1:]) == data and len(remote) == 3
    del message, held, got
    assert os.listdir(tmp_path) == []           # the coordinator's name went with it


def test_a_buffer_that_cannot_be_written_to_shared_memory_goes_over_the_wire(tmp_path):
    gone = shared_memory.Directory(str(tmp_path / "removed"))
    data = b"x" * shared_memory.MIN_SIZE
    frames = p.to_frames(buffers_message(data), gone)
    assert p.decode(frames[0]).oob == [[len(data), False]]
    assert b"".join(frames[1:]) == data


@pytest.mark.parametrize("shm, name, words", [
    (False, "1-2-ab", "shares no memory"),
    (True, "../1-2-ab", "not a shared buffer name"),
    (True, "1-2-ab", "No such file"),
])
def test_the_assembler_refuses_a_bad_shared_buffer(tmp_path, shm, name, words):
    assembler = p.Assembler(join=True, shm=shared_memory.Directory(str(tmp_path)) if shm
                            else None)
    with pytest.raises(errors.ProtocolError, match=words) as info:
        assembler.feed(p.encode(p.Submit(id=1, payload=b"", oob=[[10, False, name]])))
    assert info.value.close_code == 1002
    status = p.encode(p.Status(id=2))       # the connection could go on
    assert assembler.feed(status) == [(p.Status(id=2), len(status))]


def test_a_message_whose_buffers_are_all_in_shared_memory_may_share_a_batch(tmp_path):
    shm = shared_memory.Directory(str(tmp_path))
    data = b"s" * shared_memory.MIN_SIZE
    messages = [p.to_frames(p.Status(id=1)), p.to_frames(buffers_message(data), shm),
                p.to_frames(p.Status(id=2))]
    assert [len(frames) for frames in messages] == [1, 1, 1]    # envelopes alone
    [frame] = p.batch(messages)
    arrived = p.Assembler(join=True, shm=shm).feed(frame)
    assert [m.op for m, _ in arrived] == ["status", "submit", "status"]
    assert arrived[1][0].frames == [data] and os.listdir(tmp_path) == []
