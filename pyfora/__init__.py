"""pyfora: ship Python code to a cluster, run it in parallel, get the results back.

    import pyfora
    ufora = pyfora.connect()                  # or pyfora.connect("http://host:8000/")
    proxy = ufora.submit(fn, 1, 2).result()   # a RemotePythonObject
    value = proxy.toLocal().result()

The asynchronous API is ``pyfora.aio``; this package is a thin synchronous facade over it.
"""

from concurrent.futures import CancelledError
from typing import TYPE_CHECKING

from ._lazy import exports
from .errors import (
    AuthenticationError,
    BadWithBlockError,
    CantGetSourceTextError,
    ComputationError,
    ExecutorClosedError,
    ForeignProxyError,
    InternalError,
    ProtocolError,
    PyforaConnectionError,
    PyforaError,
    PyforaTimeoutError,
    PyforaUsageError,
    PythonToForaConversionError,
    ResourceLimitError,
    ResultExceededBytecountThreshold,
    SessionClosedOK,
    SessionLost,
    WorkerCrashedError,
)

ConnectionError = PyforaConnectionError  # noqa: A001 - pyfora's historical name

# The client API loads on first use (PEP 562): the coordinator and the workers import
# ``pyfora.wire``, ``pyfora.net`` and ``pyfora.errors``, and must not pay for, or depend
# on, the client (its event loop thread, cloudpickle, the with-block machinery).
_LAZY = {"connect": ".connection", "Executor": ".executor", "Future": ".future",
         "RemotePythonObject": ".remote"}


if TYPE_CHECKING:
    from .connection import connect
    from .executor import Executor
    from .future import Future
    from .remote import RemotePythonObject


__getattr__, __dir__ = exports(__name__, _LAZY)


__all__ = [
    "AuthenticationError",
    "BadWithBlockError",
    "CancelledError",
    "CantGetSourceTextError",
    "ComputationError",
    "ConnectionError",
    "Executor",
    "ExecutorClosedError",
    "ForeignProxyError",
    "Future",
    "InternalError",
    "ProtocolError",
    "PyforaConnectionError",
    "PyforaError",
    "PyforaTimeoutError",
    "PyforaUsageError",
    "PythonToForaConversionError",
    "RemotePythonObject",
    "ResourceLimitError",
    "ResultExceededBytecountThreshold",
    "SessionClosedOK",
    "SessionLost",
    "WorkerCrashedError",
    "connect",
]
