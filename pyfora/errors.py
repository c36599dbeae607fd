"""Every exception pyfora raises, in one place.

The tree::

    PyforaError
    ├── PyforaConnectionError (also ConnectionError; alias pyfora.ConnectionError)
    │   ├── AuthenticationError        wrong or missing token
    │   ├── SessionClosedOK            the cluster closed the session normally
    │   └── SessionLost                the connection dropped; pending futures fail with it
    ├── PyforaTimeoutError (also TimeoutError)
    ├── PyforaUsageError (also RuntimeError)
    │   ├── ExecutorClosedError        the executor (or the proxy's executor) is closed
    │   ├── ForeignProxyError          a proxy used with an executor it does not belong to
    │   ├── BadWithBlockError          `return`/`yield` directly in a with-block
    │   └── CantGetSourceTextError     a with-block whose source cannot be read
    ├── PythonToForaConversionError    a value cloudpickle cannot serialize
    ├── ResultExceededBytecountThreshold
    ├── ResourceLimitError             a limit of the cluster (pyfora-cluster --max-...) was reached
    ├── ComputationError               the remote code raised; .remoteException is what it raised
    │   └── WorkerCrashedError         the worker running it died
    ├── ProtocolError                  a malformed message or version skew
    └── InternalError                  a bug in pyfora: please report it

Cancellation uses the standard library's own types: ``pyfora.CancelledError`` is
``concurrent.futures.CancelledError`` and ``pyfora.aio`` raises ``asyncio.CancelledError``.

Runs on any thread.
"""

from __future__ import annotations

import builtins


class PyforaError(Exception):
    """Base of every error pyfora raises."""


class PyforaConnectionError(PyforaError, builtins.ConnectionError):
    """The cluster cannot be reached, or the connection to it was lost."""

    def __init__(self, message: str, code: int | None = None, reason: str = ""):
        super().__init__(message)
        self.code = code
        self.reason = reason


class AuthenticationError(PyforaConnectionError):
    """The cluster refused the token: pass ``token=`` or set ``PYFORA_TOKEN``."""


class SessionClosedOK(PyforaConnectionError):
    """The session was closed normally (by ``close()`` or by the cluster shutting down)."""


class SessionLost(PyforaConnectionError):
    """The connection dropped before the operation finished."""


class PyforaTimeoutError(PyforaError, builtins.TimeoutError):
    """An operation did not finish within its timeout."""


class PyforaUsageError(PyforaError, builtins.RuntimeError):
    """pyfora was used in a way it does not support; the message says what to do instead."""


class ExecutorClosedError(PyforaUsageError):
    """The executor was closed; connect again with ``pyfora.connect()``."""


class ForeignProxyError(PyforaUsageError):
    """A proxy was used with an executor (or cluster) other than the one that made it."""


class BadWithBlockError(PyforaUsageError):
    """A with-block contains something that cannot run remotely, such as a bare ``return``."""


class CantGetSourceTextError(PyforaUsageError):
    """The source of a with-block cannot be found (``python -c``, a REPL without history)."""


class PythonToForaConversionError(PyforaError):
    """A value could not be serialized to send to the cluster."""


class ResultExceededBytecountThreshold(PyforaError):
    """A result is larger than the byte count allowed for download."""


class ResourceLimitError(PyforaError):
    """The cluster refused a request, or a session, that would take it past one of its
    configured limits (sessions, a session's defined bytes or queued tasks, replies a
    client has not acknowledged). The message names the limit and the ``pyfora-cluster``
    flag that raises it; the session goes on (unless the message says it was closed)."""


class ComputationError(PyforaError):
    """The remote computation raised.

    Attributes:
        remoteException: the exception raised remotely, or None if it could not be
            unpickled on this side.
        remoteTypeName: the remote exception's qualified type name.
        remoteTraceback: the remote traceback, formatted as text.
        workerId: which worker ran the computation.
    """

    def __init__(self, remoteException, remoteTypeName: str, message: str,
                 remoteTraceback: str = "", workerId: str | None = None):
        super().__init__(f"{remoteTypeName}: {message}")
        self.remoteException = remoteException
        self.remoteTypeName = remoteTypeName
        self.remoteMessage = message
        self.remoteTraceback = remoteTraceback
        self.workerId = workerId

    def __str__(self) -> str:
        text = super().__str__()
        if self.remoteTraceback:
            text += "\n\nRemote traceback:\n" + self.remoteTraceback.rstrip()
        return text

    def _render_traceback_(self) -> list[str]:
        """IPython shows the remote traceback instead of pyfora's own frames."""
        return (self.remoteTraceback or str(self)).splitlines()


class WorkerCrashedError(ComputationError):
    """The worker running the computation died (exit code, signal or memory in the message)."""


class ProtocolError(PyforaError):
    """A malformed message, or client and cluster speak different protocol versions.

    Attributes:
        request_id: the ``id`` of the offending frame when it could be read, else 0.
        close_code: set when the connection cannot go on (the websocket close code to
            end it with), else None.
    """

    request_id: int = 0
    close_code: int | None = None


class InternalError(PyforaError):
    """A bug in pyfora. Please report it with the traceback."""
