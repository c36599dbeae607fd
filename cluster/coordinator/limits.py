"""What one client may make the coordinator hold, and what happens when it asks for more.

Every limit is a field of ``app.Config`` and a ``pyfora-cluster`` flag, with a default no
well-behaved client reaches:

- ``max_sessions`` (``--max-sessions``): sessions at once, detached ones (kept for their
  client to resume) included. One more is refused at its handshake.
- ``max_session_bytes`` (``--max-session-bytes``): bytes of the values one session has
  ``define``d that the coordinator still holds (in its memory, or in ``/dev/shm``). A
  ``define`` that would go over it is refused.
- ``max_queued_tasks`` (``--max-queued-tasks``): tasks one session has queued or running.
  A ``submit`` over it is refused.
- ``max_unacked_bytes`` (``--max-unacked-bytes``): bytes of replies sent to one session
  that its client has not acknowledged (``wire.Replay``), see below.

A refused request fails alone with ``ResourceLimitError``, whose message names the limit
and its flag; the session and everything it holds go on.

Replies not yet acknowledged are kept to be sent again if the connection breaks, and those
not yet written wait in the session's ``Sender``: the same frames, so one count bounds
both (``CountedReplay``, a counter per message, never a scan). A buffer that went through
shared memory is counted too: its envelope is small, but its file in ``/dev/shm`` stays
until the client takes it. Two kinds of reply fill that count, and are limited apart:

- Fetched values (``fetch``): the client asks for them, and may ask for many large ones
  at once (``downloadAll``). They are held back (flow control): a fetch starts only while
  what is unacknowledged, with the fetches under way, leaves room for it (``Window``).
  A client that acknowledges gets them all, in turn; one that never does holds at most
  the limit (not 30 values of 10 MiB because it asked 30 times), and its fetches wait.
- Everything else (task results, printed output, status) is sent as it comes, and is
  small unless a client reads without acknowledging; a session whose unacknowledged
  replies of this kind go over the limit is closed (``ResourceLimitError``, then close
  code 1008 with the limit's flag in the reason), releasing all it held.

Why not stop reading the client's socket when over the limit (the usual backpressure):
acknowledgements come on that socket, behind the requests the client sent before them;
a coordinator that waits for an acknowledgement it does not read waits forever, however
well the client behaves. Holding back fetches keeps reading. Why a fetch may start with
up to ``wire.Replay.ACK_BYTES`` unacknowledged even when it does not fit: a client
acknowledges every ``ACK_BYTES`` received, so it may hold its acknowledgement of less for
as long as nothing more comes; waiting for it would wait forever. This also lets one
value larger than the limit through, alone.

Runs on the coordinator's event loop.
"""

from __future__ import annotations

import asyncio
import collections

from pyfora import wire as p
from pyfora.errors import ResourceLimitError

#: Below this, ``--max-unacked-bytes`` would close well-behaved sessions: a client may
#: leave up to ``Replay.ACK_BYTES`` unacknowledged while it waits for more.
MIN_UNACKED_BYTES = 4 * p.Replay.ACK_BYTES


class CountedReplay(p.Replay):
    """``wire.Replay`` that counts the bytes it keeps (``bytes``), and of them those
    of fetched values (``fetched``)."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0
        self.fetched = 0
        # Of each message kept: its size, negated for a fetched value (a tuple per
        # message would cost more on every send; a fetched value of 0 bytes counts as
        # either).
        self._sizes: collections.deque[int] = collections.deque()

    def record(self, frames: list, size: int = 0, fetched: bool = False) -> None:
        """Keep a message (``to_frames``) of ``size`` bytes on the wire, its buffers in
        shared memory included; ``fetched``: the reply to a ``fetch``."""
        # ``Replay.record``'s two lines, not a call to it: this is on every send.
        self.sent += 1
        self._unacked.append(frames)
        self.bytes += size
        if fetched:
            self.fetched += size
            size = -size
        self._sizes.append(size)

    def acked(self, count: int) -> None:
        first = self.sent - len(self)
        super().acked(count)
        for _ in range(count - first):
            size = self._sizes.popleft()
            if size < 0:
                self.fetched += size
                size = -size
            self.bytes -= size

    @property
    def others(self) -> int:
        """Bytes kept of replies other than fetched values."""
        return self.bytes - self.fetched


#: Fetches of one session that may wait for room at once: a client that never
#: acknowledges could otherwise queue fetches without end (each a small coroutine).
MAX_WAITING_FETCHES = 10_000


class Window:
    """The flow control of one session's fetches: each waits its turn (first come, first
    served) until the replies not acknowledged, with the fetches under way, leave room
    for its value; ``MAX_WAITING_FETCHES`` at most wait at once."""

    def __init__(self, replay: CountedReplay, limit: int) -> None:
        self.limit = limit
        self._replay = replay
        self._reserved = 0          # bytes of the values of fetches under way
        self._waiting: collections.deque[tuple[int, asyncio.Future]] = collections.deque()

    async def enter(self, size: int) -> bool:
        """Wait until a value of ``size`` bytes may be fetched, and reserve room for it
        (give it back with ``leave``). False: the session ended while it waited.
        Cancelling the caller gives back its turn.

        Raises:
            ResourceLimitError: ``MAX_WAITING_FETCHES`` wait already.
        """
        if not self._waiting and self._fits(size):
            self._reserved += size
            return True
        if len(self._waiting) >= MAX_WAITING_FETCHES:
            raise ResourceLimitError(
                f"fetch refused: {len(self._waiting):,} fetches of this session wait for "
                "its client to acknowledge what it was sent (pyfora-cluster "
                "--max-unacked-bytes); a pyfora client acknowledges what it reads")
        turn = asyncio.get_running_loop().create_future()
        self._waiting.append((size, turn))
        try:
            return await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled() and turn.result():
                self.leave(size)        # granted as it was cancelled
            else:
                self._waiting = collections.deque(w for w in self._waiting if w[1] is not turn)
            raise

    def leave(self, size: int) -> None:
        """The fetch that reserved ``size`` bytes sent its reply (now counted by the
        replay) or failed."""
        self._reserved -= size
        self.wake()

    def wake(self) -> None:
        """Let in the fetches whose turn it is and that now fit (after an ``ack``)."""
        while self._waiting and self._fits(self._waiting[0][0]):
            size, turn = self._waiting.popleft()
            if not turn.done():
                self._reserved += size
                turn.set_result(True)

    def close(self) -> None:
        """The session ended: fetches waiting give up."""
        while self._waiting:
            _, turn = self._waiting.popleft()
            if not turn.done():
                turn.set_result(False)

    def _fits(self, size: int) -> bool:
        held = self._replay.bytes + self._reserved
        return held + size <= self.limit or (
            self._reserved == 0 and self._replay.bytes < p.Replay.ACK_BYTES)


def too_many_unacked(held: int, limit: int) -> ResourceLimitError:
    return ResourceLimitError(
        f"the session was closed: its client did not acknowledge {held:,} bytes of replies, "
        f"over the limit of {limit:,} (pyfora-cluster --max-unacked-bytes); a pyfora "
        "client acknowledges what it reads, so this one is not reading, or not pyfora")


#: The close reason that goes with ``too_many_unacked`` (at most 123 bytes).
UNACKED_CLOSE_REASON = b"over --max-unacked-bytes: replies not acknowledged"


def check_session_count(count: int, limit: int) -> None:
    """Raises ``ResourceLimitError`` unless a new session may join ``count`` others."""
    if count >= limit:
        raise ResourceLimitError(
            f"the cluster has {count:,} sessions, its limit (pyfora-cluster "
            "--max-sessions): close sessions no longer used, or raise the limit")


def check_define(held: int, size: int, limit: int) -> None:
    """Raises ``ResourceLimitError`` unless a session holding ``held`` bytes of defined
    values may define one more of ``size`` bytes."""
    if held + size > limit:
        raise ResourceLimitError(
            f"define of {size:,} bytes refused: this session's defined values would hold "
            f"{held + size:,} bytes, over the limit of {limit:,} (pyfora-cluster "
            "--max-session-bytes); release values no longer needed (a released value "
            "counts until the results computed from it are released too)")


def check_submit(queued: int, limit: int) -> None:
    """Raises ``ResourceLimitError`` unless a session with ``queued`` tasks queued or
    running may submit one more."""
    if queued >= limit:
        raise ResourceLimitError(
            f"submit refused: this session has {queued:,} tasks queued or running, its "
            "limit (pyfora-cluster --max-queued-tasks); wait for some to finish")

