"""The pyfora cluster: an aiohttp coordinator and its worker processes.

The coordinator never unpickles user payloads; only workers do. This package may import
``pyfora.wire``, ``pyfora.serialization`` (workers only) and ``pyfora.errors``.
"""


def loop_factory():
    """uvloop where installed: it halves the per-message cost of the event loop. (The
    client has its own copy in ``pyfora._portal``: ``pyfora`` does not import ``cluster``.)"""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
