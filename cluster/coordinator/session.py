"""The coordinator's handler for one client session (``/api/session``).

A session outlives a broken connection by ``Config.session_grace`` seconds. The client
closing it (a close frame), or the cluster shutting down, ends it at once: everything it
queued or ran is cancelled and everything it held is released. A connection that breaks
without a close frame (a network cut, a client that died) only *detaches* it: its tasks
go on, its objects stay, and what the dispatcher sends it meanwhile is kept. A client
that comes back within the grace period with the session's resume secret (given in
``welcome``, sent nowhere else and never logged) gets it back, and both ends send again
what the other missed (``pyfora.wire.Replay``), so replies that finished meanwhile
arrive and requests lost in the cut are handled once. Past the grace period the session
ends as if closed.

Why keep the session object itself rather than rebuild one on resume: it is the owner of
its objects in the store and the session of its tasks in the dispatcher, so keeping it
means neither needs to know about resuming; while detached it is not ``closed``, so
results are recorded and their replies buffered exactly as if it were connected.

What a session may make the coordinator hold is bounded (``cluster.coordinator.limits``): its
requests over a limit fail alone, its fetches wait for room among the replies not yet
acknowledged, and a session whose other unacknowledged replies go over that limit is
closed.

Runs on the coordinator's event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import secrets
from typing import TYPE_CHECKING

from websockets.frames import CloseCode

from cluster.coordinator import limits
from cluster.coordinator.link import Link, Socket
from pyfora import wire as p
from pyfora.errors import PyforaError, ResourceLimitError
from pyfora.net.sender import Sender
from pyfora.net.shared_memory import Directory

if TYPE_CHECKING:
    from cluster.coordinator.coordinator import Coordinator

log = logging.getLogger("cluster")
#: Seconds a session closed for a limit has to take the error saying so before the close.
FLUSH_BEFORE_CLOSE = 5.0
_names = itertools.count(1)


class ClientSession(Link):
    def __init__(self, ws: Socket, coordinator: Coordinator,
                 shm: Directory | None = None) -> None:
        super().__init__(ws, f"session-{next(_names)}", coordinator.config.max_frame, shm)
        self.coordinator = coordinator
        self.backend = coordinator.backend
        self.resume_token = secrets.token_urlsafe(32)
        self.config = coordinator.config
        self.replay = limits.CountedReplay()
        self._max_unacked = self.config.max_unacked_bytes
        self.window = limits.Window(self.replay, self._max_unacked)
        self.attached = True            # a socket is connected to it
        self._expiry: asyncio.TimerHandle | None = None

    def send(self, message: p.Message, fetched: bool = False) -> None:
        """Send ``message`` (``fetched``: the value a ``fetch`` asked for), and keep it
        until the client acknowledges it."""
        if self.closed:
            return
        direct = self._direct
        if direct is not None and not getattr(message, "frames", None):
            direct(message)     # in-process: neither counted nor kept (``in_process``)
            return
        if not self.attached and isinstance(message, p.Info) and message.id == 0:
            return      # load pushes are stale by the time it resumes: not worth keeping
        frames = p.to_frames(message, self.shm)
        # Its size on the wire, buffers in shared memory included (``p.message_size``).
        oob = getattr(message, "oob", None)
        size = len(frames[0]) + sum([entry[0] for entry in oob]) if oob else len(frames[0])
        replay = self.replay
        replay.record(frames, size, fetched)
        if direct is not None:      # at once, so that it keeps its place among direct ones
            for frame in frames:
                direct(frame)
        elif self.attached:
            self._sender.send(frames)
        if replay.bytes - replay.fetched > self._max_unacked:
            self._close_over_limit()

    def arrived(self, message: p.Message | None, size: int) -> None:
        if isinstance(message, p.Ack):
            return
        ack = self.replay.got(size)
        if ack is not None and self.attached:
            self._sender.send([p.encode(ack)])      # acks are not counted nor kept

    # -- connection and resumption ----------------------------------------------------

    def welcome(self, received: int = 0) -> p.Welcome:
        grace = self.coordinator.config.session_grace
        return p.Welcome(session=self.name, workers=len(self.backend.workers),
                         cluster=self.coordinator.cluster_id,
                         resume=self.resume_token if grace > 0 else None, grace=grace,
                         received=self.replay.received,
                         max_frame=self.coordinator.config.max_frame,
                         shm=self.shm.path if self.shm is not None else None)

    def resume(self, ws: Socket, received: int) -> None:
        """Attach a new socket from a client that has ``received`` frames of this session.

        Raises:
            ProtocolError: ``received`` does not fit what was sent.
        """
        missed = self.replay.after(received)
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        old = self.ws
        self._sender.close()
        self.attach(ws)         # written once serve starts, after the welcome
        self.attached = True
        for frames in missed:
            self._sender.send(frames)
        self.window.wake()      # what the client had received is forgotten: room for fetches
        if not old.closed:      # a half-open socket the client has given up on
            self.spawn(old.close(code=CloseCode.GOING_AWAY, message=b"session resumed"))
        log.info("%s resumed; %d messages sent again", self.name, len(missed))

    def disconnected(self, ws: Socket) -> None:
        if ws is not self.ws or self.closed:
            return      # a socket replaced by a resume
        self.attached = False
        grace = self.coordinator.config.session_grace
        # aiohttp reports a connection that ended without a close frame as 1006.
        broken = ws.close_code in (None, CloseCode.ABNORMAL_CLOSURE)
        if broken and grace > 0 and not self.coordinator.stopping:
            log.info("%s lost its connection; kept %.3g s for it to resume", self.name, grace)
            self._expiry = asyncio.get_running_loop().call_later(grace, self.end)
        else:
            self.end()

    def end(self) -> None:
        """Cancel everything the session queued or ran, release everything it held."""
        if self.closed:
            return
        self.closed = True
        self._release()

    def _release(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self.attached = False
        self.window.close()
        self.coordinator.session_ended(self)
        self.backend.session_closed(self)

    def _close_over_limit(self) -> None:
        """Its client reads replies without acknowledging them: end the session, telling
        it why (an ``error``, then the close reason)."""
        error = limits.too_many_unacked(self.replay.others, self.config.max_unacked_bytes)
        log.warning("%s: %s", self.name, error)
        self.closed = True      # nothing more is sent or kept from here
        # The rest later: this runs inside the dispatcher's loops over its sessions.
        asyncio.get_running_loop().call_soon(self._release)
        if self.attached:
            self._sender.send([p.encode(p.Error(id=0, kind=type(error).__name__,
                                                message=str(error)))])
            self.spawn(self._close_socket(self.ws, self._sender))

    @staticmethod
    async def _close_socket(ws: Socket, sender: Sender) -> None:
        try:
            await asyncio.wait_for(sender.wait(), FLUSH_BEFORE_CLOSE)
        except TimeoutError:
            pass        # it does not read either: the reason is in the close frame
        await ws.close(code=CloseCode.POLICY_VIOLATION, message=limits.UNACKED_CLOSE_REASON)

    # -- requests ---------------------------------------------------------------------

    def handle(self, message: p.Message) -> None:
        match message:
            case p.Submit():
                limits.check_submit(self.backend.active[self], self.config.max_queued_tasks)
                self.backend.submit(self, message)
            case p.Define():
                limits.check_define(self.backend.store.defined_bytes(self),
                                    p.value_size(message.payload, message.oob),
                                    self.config.max_session_bytes)
                self.send(self.backend.define(self, message))
            case p.Fetch():
                self.spawn(self._fetch(message))
            case p.Release():
                for oid in message.oids:
                    self.backend.store.release(oid, self)
            case p.Cancel():
                self.backend.cancel(self, message.target)
            case p.Status():
                self.send(p.Info(id=message.id, info=self.coordinator.status()))
            case p.Ack():
                self.replay.acked(message.count)
                self.window.wake()
            case _:
                raise _unexpected(message)

    async def _fetch(self, message: p.Fetch) -> None:
        record = self.backend.store.get(message.oid)
        size = record.size if record is not None else 0
        try:
            if not await self.window.enter(size):
                return      # the session ended while the fetch waited for room
        except ResourceLimitError as exc:
            self.send_error(message.id, exc)
            return
        try:
            value = await self.backend.object_bytes(message.oid, session=self)
        except (PyforaError, ConnectionError) as exc:
            self.send_error(message.id, exc)
        else:
            self.send(dataclasses.replace(value, id=message.id), fetched=True)
        finally:
            self.window.leave(size)


def _unexpected(message: p.Message) -> PyforaError:
    from pyfora.errors import ProtocolError
    return ProtocolError(f"a client may not send {message.op!r}")
