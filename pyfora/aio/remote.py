"""``RemotePythonObject``: a handle to a value that lives on the cluster.

Runs on the event loop thread; ``__del__``, which releases the remote value, may run on
any thread and only posts a message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import serialization
from .. import wire as p

if TYPE_CHECKING:
    from .executor import Executor


class RemotePythonObject:
    """A proxy for a value on the cluster.

    Pass it to ``submit``, call it, or capture it in a function sent to the cluster, and the
    worker uses the value where it is; ``await proxy.toLocal()`` downloads it.

    Attributes:
        size: the size of the value's pickle, in bytes.
        typeName: the value's type, qualified by its module.
    """

    __slots__ = ("_executor", "oid", "size", "typeName", "_inline", "_error", "__weakref__")

    def __init__(self, executor: Executor, done: p.Done) -> None:
        self._executor = executor
        self.oid = done.oid
        self.size = done.size
        self.typeName = done.type
        self._inline = done.value
        self._error = done.error

    def __del__(self) -> None:
        # Not a ``weakref.finalize``: that is four more objects per proxy for the garbage
        # collector to visit, and thousands of proxies are alive at once. At interpreter
        # exit the executor is closed first, and ``_release`` then does nothing.
        self._executor._release(self.oid)

    @property
    def failed(self) -> bool:
        """True when the computation that made this raised (``toLocal`` raises it)."""
        return self._error is not None

    async def toLocal(self) -> Any:
        """Download the value.

        Raises:
            ComputationError: the computation that made this value raised.
            ExecutorClosedError: the executor was closed.
            SessionLost: the connection dropped meanwhile.

        Cancelling it abandons the download; the remote value stays.
        """
        return await self._executor._download(self)

    def __call__(self, *args: Any, **kwargs: Any):
        """Call the remote value with these arguments, on the cluster: as ``submit``, a
        future of a proxy of the result."""
        return self._executor.submit(self, *args, **kwargs)

    def __reduce__(self):
        return serialization.reduce_ref(self.oid, self._executor)

    def __repr__(self) -> str:
        state = " failed" if self._error is not None else ""
        return f"<RemotePythonObject {self.typeName} #{self.oid}{state} ({self.size:,} bytes)>"
