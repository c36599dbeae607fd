"""The asynchronous pyfora API: every remote operation is a coroutine.

    from pyfora import aio
    async with aio.connect("ws://cluster:8000/") as ex:
        proxy = await ex.submit(fn, *args)
        value = await proxy.toLocal()
"""

from typing import TYPE_CHECKING

from .._lazy import exports
from .connection import connect

# The executor and what it needs (cloudpickle, the codec) load on first use (PEP 562):
# ``connect()`` with no URL starts its workers first, and imports them while they start
# (``connection``).
_LAZY = {"Executor": ".executor", "PreparedCall": ".executor",
         "RemotePythonObject": ".remote"}

if TYPE_CHECKING:
    from .executor import Executor, PreparedCall
    from .remote import RemotePythonObject


__getattr__, __dir__ = exports(__name__, _LAZY)

__all__ = ["Executor", "PreparedCall", "RemotePythonObject", "connect"]
