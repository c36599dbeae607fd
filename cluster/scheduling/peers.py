"""What the scheduling layer uses of the peers it is handed, as Protocols: a *session*
(where a task's replies go) and a *worker* (a ``pyfora-worker`` the ``Dispatcher`` gives
tasks to).

The coordinator's ``ClientSession`` and ``WorkerLink`` (``cluster.coordinator``) are
what it hands over; a worker asking for a piece of its task is that piece's session.
They are Protocols, not base classes: the scheduling layer imports no coordinator module
but the store (``tests/test_layering.py``), and tests hand the backends stand-ins that
only record what they were sent.

Nothing here runs: the types are for mypy and for readers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from pyfora import wire as p

if TYPE_CHECKING:
    from cluster.scheduling.dispatcher import Task

#: What the coordinator asks of a worker and awaits the reply to (``Worker.request``).
Request = p.Fetch | p.Split


class Session(Protocol):
    """Who submitted a task and gets its replies (``done``, ``output``, ``progress``,
    load pushes), and owns the objects it made: a client's session; for a piece, the
    worker running the task that asked for it."""

    @property
    def name(self) -> str: ...

    @property
    def closed(self) -> bool:
        """It has ended: what is sent to it is dropped, and its tasks' results are not
        kept."""
        ...

    def send(self, message: p.Message) -> None:
        """Send ``message``, or queue it behind those still being written; never awaits,
        so the backends send from plain functions."""
        ...


class WorkerView(Protocol):
    """A worker as ``/api/status`` and the dashboard show it, whichever the backend."""

    @property
    def name(self) -> str: ...

    def describe(self) -> dict[str, Any]:
        """Its row in ``/api/status``: ``name``, ``state``, ``task``, ``rss``, ..."""
        ...


class Worker(Session, WorkerView, Protocol):
    """A ``pyfora-worker`` linked to the coordinator, as the ``Dispatcher`` drives it: it
    is sent tasks (``run``), asked for objects it holds (``fetch``) and splits of the
    pieces it runs, and is the session of the pieces it asks for."""

    #: The task it runs now (the first of its window), or None; set by the dispatcher.
    task: Task | None

    async def request(self, message: Request) -> p.Message:
        """Send ``message`` under a new request id and await the reply.

        Raises:
            ConnectionError: the worker went away before it replied.
            PyforaError: its reply was an ``error``.
        """
        ...
