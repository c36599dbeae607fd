"""The asynchronous pyfora API: every remote operation is a coroutine.

    from pyfora import aio
    async with aio.connect("ws://cluster:8000/") as ex:
        proxy = await ex.submit(fn, *args)
        value = await proxy.toLocal()
"""

from typing import TYPE_CHECKING

from .connection import connect

# The executor and what it needs (cloudpickle, the codec) load on first use (PEP 562):
# ``connect()`` with no URL starts its workers first, and imports them while they start
# (``connection``).
_LAZY = {"Executor": ".executor", "PreparedCall": ".executor",
         "RemotePythonObject": ".remote"}

if TYPE_CHECKING:
    from .executor import Executor, PreparedCall
    from .remote import RemotePythonObject


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pyfora.aio' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

__all__ = ["Executor", "PreparedCall", "RemotePythonObject", "connect"]
