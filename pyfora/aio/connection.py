"""``pyfora.aio.connect``: open an executor on a cluster, or on an embedded one.

``connect()`` with no URL starts a coordinator on this event loop and one worker
subprocess per core; the session's frames pass to it in memory, and the executor owns
it and stops it on ``close()``. This is the one place the client imports ``cluster``,
lazily.

Runs on the event loop that awaits it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import compiled
from ..net.tls import client_context

if TYPE_CHECKING:
    from .executor import Executor


class connect:  # noqa: N801 - used like a function: `await connect()`, `async with connect()`
    """Connect to a cluster.

    ``ex = await connect(url)`` or ``async with connect(url) as ex:``.

    Args:
        url: ``http://``, ``https://``, ``ws://`` or ``wss://`` address of a coordinator
            (``?token=`` allowed). None starts an embedded cluster owned by the executor.
        token: the cluster's token (default: from the URL, else ``$PYFORA_TOKEN``, else
            for a loopback URL the one a local ``pyfora-cluster`` left for its user).
        workers: with no URL, how many workers the embedded cluster starts (default: one
            per core).
        cafile: with ``https``/``wss``: trust the certificates in this PEM file (the
            cluster's own, if self-signed) instead of the system's authorities.
        verify: with ``https``/``wss``: False skips certificate verification (anyone
            answering at that address then gets the token).
        progress: show a progress line for with-blocks, ``map`` and ``toLocal`` calls
            that run longer than a second: True, False (the default here: a service's
            stderr is a log), or None for "when stderr is a terminal or a Jupyter cell"
            (``$PYFORA_PROGRESS=0``/``1`` decides then, if set). See
            ``pyfora.aio.progress``.
        compile: run split comprehensions and maps compiled on the workers
            (``pyfora.compiled``); None (the default) means yes unless
            ``$PYFORA_COMPILE=0``. The answers are the same either way.

    Raises:
        PyforaConnectionError: the cluster cannot be reached, or its certificate cannot
            be verified.
        AuthenticationError: the cluster refused the token.
        ResourceLimitError: the cluster has as many sessions as it takes
            (``pyfora-cluster --max-sessions``).
    """

    def __init__(self, url: str | None = None, *, token: str | None = None,
                 workers: int | None = None, cafile: str | None = None,
                 verify: bool = True, progress: bool | None = False,
                 compile: bool | None = None) -> None:  # noqa: A002 - the option's name
        self._url = url
        self._compile = compiled.default_on() if compile is None else compile
        self._progress = progress
        self._token = token
        self._workers = workers
        self._cafile = cafile
        self._verify = verify
        self._executor: Executor | None = None

    async def _open(self) -> Executor:
        cluster = None if self._url is not None else await _start_embedded(self._workers)
        # Here, not at the top: with no URL, they load while the workers start.
        from .executor import Executor
        from .session import Session

        if cluster is not None:
            # On this loop, as the client: no socket between them
            # (``cluster.coordinator.in_process``).
            session = Session(*cluster.coordinator.connect_local())
        else:
            assert self._url is not None
            context = None
            if self._cafile is not None or not self._verify:
                context = client_context(self._cafile, self._verify)
            session = await Session.open(self._url, self._token, ssl_context=context)
        executor = Executor(session, cluster)
        executor.progress = self._progress
        executor.compile = self._compile
        return executor

    def __await__(self):
        return self._open().__await__()

    async def __aenter__(self) -> Executor:
        self._executor = await self._open()
        return self._executor

    async def __aexit__(self, *exc_info: Any) -> None:
        if self._executor is not None:
            await self._executor.close()


async def _start_embedded(workers: int | None):
    from cluster.coordinator import embedded
    starting = await embedded.start_workers(workers)
    try:
        # The client's own modules, while the workers start (``_open`` finds them loaded).
        from . import executor, session  # noqa: F401
        return await embedded.start(starting)
    except BaseException:
        await starting.abandon()
        raise
