"""What one end of a session has sent and received, so that a session whose connection
broke resumes with nothing lost and nothing twice (``Replay``), and request ids
(``RequestIds``).

Runs on any thread; no I/O.
"""

from __future__ import annotations

import collections
import itertools

from ..errors import ProtocolError
from .messages import Ack


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


class RequestIds:
    """Request ids for one connection: positive, increasing (0 means no reply wanted)."""

    def __init__(self) -> None:
        self._next = itertools.count(1).__next__

    def __call__(self) -> int:
        return self._next()
