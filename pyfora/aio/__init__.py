"""The asynchronous pyfora API: every remote operation is a coroutine.

    from pyfora import aio
    async with aio.connect("ws://cluster:8000/") as ex:
        proxy = await ex.submit(fn, *args)
        value = await proxy.toLocal()
"""

from .connection import connect
from .executor import Executor, PreparedCall
from .remote import RemotePythonObject

__all__ = ["Executor", "PreparedCall", "RemotePythonObject", "connect"]
