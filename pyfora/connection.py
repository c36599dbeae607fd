"""``pyfora.connect``: the synchronous way in. Bridges to ``pyfora.aio.connect``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import aio
from ._portal import get_portal

if TYPE_CHECKING:
    from .executor import Executor


def connect(url: str | None = None, *, token: str | None = None,
            workers: int | None = None, cafile: str | None = None,
            verify: bool = True, progress: bool | None = None,
            compile: bool | None = None) -> Executor:  # noqa: A002 - the option's name
    """Connect to a cluster and return an ``Executor``.

    Args:
        url: ``http://``, ``https://``, ``ws://`` or ``wss://`` address of a coordinator,
            with or without a trailing slash (``?token=`` allowed). None starts an embedded
            cluster (a coordinator and one worker per core) that the executor owns and
            stops on ``close()`` or at interpreter exit.
        token: the cluster's token (default: from the URL, else ``$PYFORA_TOKEN``, else
            for a loopback URL the one a local ``pyfora-cluster`` left for its user).
        workers: with no URL, how many workers to start.
        cafile: with ``https``/``wss``: trust the certificates in this PEM file (the
            cluster's own, if self-signed) instead of the system's authorities.
        verify: with ``https``/``wss``: False skips certificate verification (anyone
            answering at that address then gets the token).
        progress: show a progress line (busy cores, elapsed time) for with-blocks,
            ``map`` and ``toLocal`` calls that run longer than a second. None (the
            default): when stderr is a terminal or in Jupyter, unless
            ``$PYFORA_PROGRESS=0``; ``$PYFORA_PROGRESS=1`` turns it on everywhere. True
            or False decide regardless of the environment.
        compile: run split comprehensions and maps compiled on the workers
            (``pyfora.compiled``; same answers, faster). None (the default): yes, unless
            ``$PYFORA_COMPILE=0``.

    Raises:
        ConnectionError: the cluster cannot be reached, or its certificate cannot be
            verified (``pyfora.ConnectionError``).
        AuthenticationError: the cluster refused the token.
        ResourceLimitError: the cluster has as many sessions as it takes
            (``pyfora-cluster --max-sessions``).

    Blocks; any thread but pyfora's own event loop thread.
    """
    portal = get_portal()
    twin = portal.call(aio.connect(url, token=token, workers=workers, cafile=cafile,
                                   verify=verify, progress=progress, compile=compile))
    # Here, not at the top: it imports the client's core, which loads while an embedded
    # cluster's workers start (``aio.connect``).
    from .executor import Executor

    executor = Executor(twin, portal)
    portal.closeables.add(executor)
    return executor
