"""The pyfora cluster, one subpackage per process: ``coordinator`` (the aiohttp app and
what it holds), ``scheduling`` (where tasks run, also in the coordinator) and ``worker``
(inside worker processes).

The coordinator never unpickles user payloads; only workers do. The coordinator imports
``pyfora.wire``, ``pyfora.net`` and ``pyfora.errors`` only; workers also
``pyfora.serialization``, ``pyfora.parallel`` and ``pyfora.compiled``
(``tests/test_layering.py``).
"""


def loop_factory():
    """uvloop where installed: it halves the per-message cost of the event loop. (The
    client has its own copy in ``pyfora._portal``: ``pyfora`` does not import ``cluster``.)"""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
