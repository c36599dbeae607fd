"""A message and its out-of-band buffers as frames (``to_frames``), and frames back into
messages (``Assembler``).

Out-of-band buffers (pickle protocol 5: the memory of large ``bytes``, ``bytearray`` and
numpy arrays) never go through msgpack: the envelope's ``oob`` field gives the size of each
buffer, and its bytes follow as frames of at most ``CHUNK`` bytes, in order, none
straddling two buffers. So msgpack never copies a large value, the sender sends views of
the value's own memory, the receiver gathers each buffer once, the coordinator relays the
frames as they came (``Assembler`` with ``join=False``), and no frame exceeds the frame
limit however large the value. Between processes of one machine, a large buffer goes
through shared memory instead, and the envelope names its file: the files are the
``pyfora.net.shared_memory.Directory`` given, which does their I/O.

Runs on any thread; imports no asyncio nor websockets.
"""

from __future__ import annotations

import io
from typing import Any

from ..errors import ProtocolError
from ..net.shared_memory import MIN_SIZE as SHARED_MIN_SIZE
from ..net.shared_memory import Directory, Shared
from .codec import decode, encode, message_size
from .messages import BATCH_BYTES, CHUNK, MAX_FRAME, Batch, Message


def to_frames(message: Message, shm: Directory | None = None) -> list:
    """Every frame of one message: its envelope, then its buffers in ``CHUNK``-sized
    frames (views, not copies). Send them in order, with no other frame in between.

    ``shm``: the receiver shares this machine's memory, through that directory. Buffers
    of at least ``SHARED_MIN_SIZE`` bytes then go as files (a buffer the coordinator
    holds as a ``Shared``, by a new link to it), and the envelope names them."""
    buffers = getattr(message, "frames", None)     # only messages that carry a pickle
    if not buffers:
        return [encode(message)]
    layout: list = getattr(message, "oob", [])     # those with frames carry a pickle
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
            name = shm.put(pieces[0], readonly=not writable)
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
    frames[0] = encode(message, oob)
    return frames


def _nbytes(part: Any) -> int:
    return part.nbytes if isinstance(part, Shared) else memoryview(part).nbytes




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
                         f"{BATCH_BYTES:,} a peer sends (wire.BATCH_BYTES)")
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
            return self.shm.keep(name, size)
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
