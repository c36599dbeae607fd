"""The synchronous ``RemotePythonObject``: a proxy whose operations return futures.

Runs on any thread; each method delegates once to its ``pyfora.aio`` twin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import aio
from .future import Future

if TYPE_CHECKING:
    from .executor import Executor


class RemotePythonObject:
    """A proxy for a value on the cluster.

    Pass it to ``submit``, call it, name it in a with-block or capture it in a function,
    and the cluster uses the value where it is; ``toLocal()`` downloads it.
    """

    __slots__ = ("_aio", "_executor")

    def __init__(self, twin: aio.RemotePythonObject, executor: Executor) -> None:
        self._aio = twin
        self._executor = executor

    @property
    def size(self) -> int:
        """The size of the value's pickle, in bytes."""
        return self._aio.size

    @property
    def typeName(self) -> str:
        """The value's type, qualified by its module."""
        return self._aio.typeName

    @property
    def failed(self) -> bool:
        """True when the computation that made this raised."""
        return self._aio.failed

    def toLocal(self) -> Future:
        """Download the value: a Future of it. Its ``result()`` raises
        ``ComputationError`` if the computation that made the value raised."""
        return self._executor._portal.submit(self._aio.toLocal())

    def __call__(self, *args: Any, **kwargs: Any) -> Future:
        """Call the remote value on the cluster: a Future of a proxy of the result."""
        return self._executor.submit(self, *args, **kwargs)

    def __reduce__(self):
        return self._aio.__reduce__()

    def __repr__(self) -> str:
        return repr(self._aio)
