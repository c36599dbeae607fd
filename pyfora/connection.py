"""``pyfora.connect``: the synchronous way in. Bridges to ``pyfora.aio.connect``."""

from __future__ import annotations

from . import aio
from ._portal import get_portal
from .executor import Executor


def connect(url: str | None = None, *, token: str | None = None,
            workers: int | None = None) -> Executor:
    """Connect to a cluster and return an ``Executor``.

    Args:
        url: ``http://``, ``https://``, ``ws://`` or ``wss://`` address of a coordinator,
            with or without a trailing slash (``?token=`` allowed). None starts an embedded
            cluster (a coordinator and one worker per core) that the executor owns and
            stops on ``close()`` or at interpreter exit.
        token: the cluster's token (default: from the URL, else ``$PYFORA_TOKEN``).
        workers: with no URL, how many workers to start.

    Raises:
        ConnectionError: the cluster cannot be reached (``pyfora.ConnectionError``).
        AuthenticationError: the cluster refused the token.

    Blocks; any thread but pyfora's own event loop thread.
    """
    portal = get_portal()
    executor = Executor(portal.call(aio.connect(url, token=token, workers=workers)), portal)
    portal.closeables.add(executor)
    return executor
