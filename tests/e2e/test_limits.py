"""Bounded memory per client (``cluster/coordinator/limits.py``), against real coordinators started
with small limits: a client that never acknowledges what it fetches cannot make the
coordinator hold more than ``--max-unacked-bytes`` (its fetches wait, and all arrive once
it acknowledges), nor through files in ``/dev/shm``; one that reads other replies without
acknowledging them is closed, saying why; a request over a per-session limit fails alone
with ``ResourceLimitError`` and the session goes on with nothing lost; and a batch frame
larger than any client makes is refused while the cluster serves others.

Raw clients (the ``websockets`` library speaking ``pyfora.wire``) all open their
websocket through ``raw_session``."""

from __future__ import annotations

import asyncio
import operator
import os
import time

import psutil
import pytest
import websockets
from conftest import (UNIT, ClusterProcess, async_wait_until, http_status, upgrade_headers,
                      ws_endpoint)

from pyfora import aio, serialization

from pyfora.net import shared_memory
from pyfora import wire as p
from pyfora.errors import ResourceLimitError

T = 30 * UNIT
MiB = 1 << 20
UNACKED = 32 * MiB          # --max-unacked-bytes of the clusters here
VALUE = 10 * MiB            # the result fetched again and again
FETCHES = 30


async def raw_session(url: str, **hello) -> tuple[websockets.ClientConnection, p.Welcome]:
    """A websocket on ``url``'s session endpoint, opened with a ``hello`` (with ``hello``'s
    fields), past its ``welcome``. Every raw websocket of this module is opened here."""
    ws = await websockets.connect(ws_endpoint(url), open_timeout=T, max_size=None,
                                  additional_headers=upgrade_headers(url, **hello))
    welcome = p.decode(await asyncio.wait_for(ws.recv(), T))
    assert isinstance(welcome, p.Welcome), welcome
    return ws, welcome


class _Untaken(shared_memory.Directory):
    """A client's view of the coordinator's shared memory that never takes a buffer: its
    file stays in ``/dev/shm``, as with a client that reads envelopes and nothing more."""

    def keep(self, name: str, size: int | None = None):
        return _Sized(os.stat(self._path(name)).st_size if size is None else size)


class _Sized:
    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size


class RawClient:
    """Messages of one raw session, counted as ``wire.Replay`` counts them; it
    acknowledges only when told to (``ack``)."""

    def __init__(self, ws, welcome: p.Welcome) -> None:
        self.ws = ws
        shm = _Untaken(welcome.shm) if welcome.shm else None
        self._assembler = p.Assembler(join=False, shm=shm)
        self._arrived: list[p.Message] = []
        self.received = 0

    async def send(self, message: p.Message) -> None:
        for frame in p.to_frames(message):
            await self.ws.send(frame)

    async def next(self, timeout: float = T) -> p.Message:
        while not self._arrived:
            frame = await asyncio.wait_for(self.ws.recv(), timeout)
            for message, _ in self._assembler.feed(frame):
                if not isinstance(message, p.Ack):
                    self.received += 1
                    self._arrived.append(message)
        return self._arrived.pop(0)

    async def reply(self, request_id: int) -> p.Message:
        """The next message answering ``request_id`` (pushed ``info`` skipped)."""
        while True:
            message = await self.next()
            if getattr(message, "id", 0) == request_id:
                return message

    async def ack(self) -> None:
        await self.ws.send(p.encode(p.Ack(count=self.received)))


def coordinator_rss(cluster: ClusterProcess) -> int:
    return psutil.Process(cluster.pid).memory_info().rss


@pytest.fixture(scope="module")
def limited():
    """A one-worker coordinator with small per-session limits, buffers over websockets."""
    cluster = ClusterProcess(1, "--no-shared-memory", "--max-unacked-bytes", str(UNACKED),
                             "--max-session-bytes", "4MiB", "--max-queued-tasks", "4",
                             "--session-grace", "0")
    yield cluster
    assert cluster.stop() == 0


@pytest.fixture(scope="module")
def limited_shm():
    """The same, with large buffers through ``/dev/shm``."""
    cluster = ClusterProcess(1, "--max-unacked-bytes", str(UNACKED), "--session-grace", "0")
    yield cluster
    assert cluster.stop() == 0


async def fetch_without_acknowledging(client: RawClient, oid: int) -> int:
    """Ask for object ``oid`` ``FETCHES`` times; read what comes until nothing more does
    for a while; return how many values came."""
    for i in range(FETCHES):
        await client.send(p.Fetch(id=100 + i, oid=oid))
    values = 0
    while values < FETCHES:
        try:
            message = await client.next(timeout=2 * UNIT)
        except TimeoutError:
            break       # the rest wait for room (the test checks it is not all of them)
        if isinstance(message, p.Value):
            values += 1
    return values


async def result_of(client: RawClient, fn, *args, request_id: int = 1, **submit) -> p.Done:
    payload, _ = serialization.dumps_call(fn, args, {})
    await client.send(p.Submit(id=request_id, payload=payload, **submit))
    done = await client.reply(request_id)
    assert isinstance(done, p.Done) and done.error is None, done
    return done


async def test_fetching_without_acknowledging_holds_at_most_the_limit(limited):
    client = RawClient(*await raw_session(limited.url))
    try:
        done = await result_of(client, bytes, VALUE)
        before = coordinator_rss(limited)
        values = await fetch_without_acknowledging(client, done.oid)
        grown = coordinator_rss(limited) - before
        # Without the limit the replay keeps all 30 values (300 MiB) for a resume.
        assert grown < 100 * MiB, f"the coordinator grew by {grown / MiB:.0f} MiB"
        # The window lets in what fits under the limit, then nothing until an ack.
        assert values <= UNACKED // VALUE + 1, values
        # Nothing is lost: acknowledged, the rest come.
        deadline = time.monotonic() + T
        while values < FETCHES:
            await client.ack()
            assert time.monotonic() < deadline, f"{values} of {FETCHES} values came"
            if isinstance(await client.next(), p.Value):
                values += 1
    finally:
        await client.ws.close()


async def test_a_client_that_acknowledges_gets_more_than_the_limit_at_once(limited):
    """Flow control, not refusal: ten fetches of 10 MiB at once, and one value larger than
    the limit, all come (each waits its turn for the acknowledgements)."""
    async with aio.connect(limited.url) as ex:
        value = await ex.submit(bytes, VALUE)
        got = await asyncio.wait_for(asyncio.gather(*(value.toLocal() for _ in range(10))), T)
        assert [len(v) for v in got] == [VALUE] * 10
        large = await ex.submit(bytes, UNACKED + VALUE)
        assert len(await asyncio.wait_for(large.toLocal(), T)) == UNACKED + VALUE


async def test_files_in_shared_memory_held_for_a_client_count_too(limited_shm):
    """Values for a client on this machine go as files in /dev/shm; one that never takes
    them (nor acknowledges) leaves at most the limit there."""
    client = RawClient(*await raw_session(limited_shm.url, host=shared_memory.host_id()))
    try:
        done = await result_of(client, bytes, VALUE)
        values = await fetch_without_acknowledging(client, done.oid)
        held = http_status(limited_shm.url)["shared_memory"]["bytes"]
        assert held <= UNACKED + VALUE, f"{held / MiB:.0f} MiB in /dev/shm"
        assert values <= UNACKED // VALUE + 1, values
    finally:
        await client.ws.close()


async def test_reading_replies_without_acknowledging_them_closes_the_session(limited):
    client = RawClient(*await raw_session(limited.url))
    # Results of 10 MiB sent inline (a str is pickled in band): more than the limit in all.
    payload, _ = serialization.dumps_call(operator.mul, ("x", VALUE), {})
    count = UNACKED // VALUE + 1
    for i in range(1, count + 1):
        await client.send(p.Submit(id=i, payload=payload, inline=1 << 30))
    seen = []
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            seen.append(await client.next())
    errors = [m for m in seen if isinstance(m, p.Error)]
    assert [e.kind for e in errors] == ["ResourceLimitError"], seen
    assert "did not acknowledge" in errors[0].message
    assert "--max-unacked-bytes" in errors[0].message
    assert closed.value.rcvd.code == 1008
    assert "--max-unacked-bytes" in closed.value.rcvd.reason
    async with aio.connect(limited.url) as ex:      # others carry on
        assert await (await ex.submit(pow, 3, 2)).toLocal() == 9


async def test_define_over_the_session_bytes_fails_alone(limited):
    async with aio.connect(limited.url) as ex:
        kept = await ex.define(b"a" * (3 * MiB))
        with pytest.raises(ResourceLimitError, match=r"--max-session-bytes"):
            await ex.define(b"b" * (2 * MiB))
        assert await kept.toLocal() == b"a" * (3 * MiB)     # nothing lost
        assert await (await ex.submit(len, kept)).toLocal() == 3 * MiB
        del kept        # released: room again (the release is sent shortly after)

        async def defined():
            try:
                return await ex.define(b"b" * (2 * MiB))
            except ResourceLimitError:
                return None
        again = await async_wait_until(defined, T, "room after the release")
        assert await again.toLocal() == b"b" * (2 * MiB)


def wait_for_file(path: str, value: int) -> int:
    deadline = time.monotonic() + 30
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return value


async def test_submit_over_the_queued_tasks_fails_alone(limited, tmp_path):
    gate = str(tmp_path / "go")
    async with aio.connect(limited.url) as ex:
        # Sent in this order, each as its task first runs (``submit`` awaits the result).
        queued = [asyncio.ensure_future(ex.submit(wait_for_file, gate, i)) for i in range(4)]
        over = asyncio.ensure_future(ex.submit(wait_for_file, gate, 4))
        with pytest.raises(ResourceLimitError, match=r"4 tasks queued or running.*"
                                                     r"--max-queued-tasks"):
            await asyncio.wait_for(over, T)
        open(gate, "w").close()
        results = await asyncio.wait_for(asyncio.gather(*queued), T)    # nothing lost
        assert [await r.toLocal() for r in results] == [0, 1, 2, 3]
        assert await (await ex.submit(pow, 2, 10)).toLocal() == 1024


async def test_sessions_over_the_limit_are_refused_and_others_go_on():
    cluster = ClusterProcess(0, "--max-sessions", "2", "--session-grace", "0")
    try:
        async with aio.connect(cluster.url) as first, aio.connect(cluster.url) as second:
            with pytest.raises(ResourceLimitError, match=r"2 sessions.*--max-sessions"):
                await aio.connect(cluster.url)
            assert (await first.status())["sessions"] == 2
            await second.close()

            async def third():
                try:
                    return await aio.connect(cluster.url)
                except ResourceLimitError:
                    return None
            ex = await async_wait_until(third, T, "room for a session after a close")
            await ex.close()
            assert (await first.status())["sessions"] == 1
    finally:
        assert cluster.stop() == 0


async def test_a_batch_frame_larger_than_a_client_makes_is_refused(limited):
    async with aio.connect(limited.url) as ex:
        ws, _ = await raw_session(limited.url)
        big = p.encode(p.Batch(envelopes=[p.encode(p.Status(id=i)) for i in range(2000)]))
        assert len(big) > p.BATCH_BYTES
        await ws.send(big)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), T)
        assert closed.value.rcvd.code == 1009
        assert "batch frame of" in closed.value.rcvd.reason
        assert await (await ex.submit(pow, 3, 3)).toLocal() == 27      # others carry on
    assert limited.proc.poll() is None
