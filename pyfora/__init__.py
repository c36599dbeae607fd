"""pyfora: ship Python code to a cluster, run it in parallel, get the results back.

    import pyfora
    ufora = pyfora.connect()                  # or pyfora.connect("http://host:8000/")
    proxy = ufora.submit(fn, 1, 2).result()   # a RemotePythonObject
    value = proxy.toLocal().result()

The asynchronous API is ``pyfora.aio``; this package is a thin synchronous facade over it.
"""

from concurrent.futures import CancelledError

from .connection import connect
from .errors import (AuthenticationError, BadWithBlockError, CantGetSourceTextError,
                     ComputationError, ExecutorClosedError, ForeignProxyError, InternalError,
                     ProtocolError, PyforaConnectionError, PyforaError, PyforaTimeoutError,
                     PyforaUsageError, PythonToForaConversionError,
                     ResourceLimitError, ResultExceededBytecountThreshold, SessionClosedOK, SessionLost,
                     WorkerCrashedError)
from .executor import Executor
from .future import Future
from .remote import RemotePythonObject

ConnectionError = PyforaConnectionError  # noqa: A001 - pyfora's historical name

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
