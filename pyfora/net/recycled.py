"""Large ``bytes`` a client or a worker received, read over with its next buffer once
nothing else refers to them.

Reading a buffer from shared memory into a new ``bytes`` costs, before the copy itself, a
fault and a zero-fill for each page of the new object's memory, and on a VM whose freed
memory goes back to the host (free page reporting) the host's own fault too: from 40 ms to
over 500 ms per 100 MB on the 2-core benchmark VM, against 10-15 ms to copy into memory
already there. So the receiver keeps the last large ``bytes`` it made (``Recycler``), and
when a buffer comes while one of them is referred to by the recycler alone, nothing can
see that object any more (a ``memoryview`` or a numpy array of it holds a reference of its
own), and the buffer is read into its memory: its length and cached hash are reset, and
it is handed out again. That is what ``PyBytes_FromStringAndSize(NULL, n)`` followed by a
fill does with a new object (``shared_memory._read`` does it too), on an object that no
other code has, as the C API asks.

Why not a ``bytes`` mapped from the file, with no copy at all: a ``bytes`` keeps its data
inside the object, allocated and freed by CPython's allocator, so one over a mapping
would have to forge the allocator's own header (glibc's, for a chunk it mapped) for
``free`` to unmap it: it works, but only with glibc's ``malloc`` and without Python's
debug allocator hooks, and crashes the process otherwise.

The cost is memory: the objects the user has dropped stay in the process's RSS, at most
``KEEP`` of them and ``KEEP_BYTES`` in all, until a buffer reuses them or ``close``; a
buffer that needs more than an object holds, or a quarter less, gets a new one. CPython
only: the object's layout is checked once (where its data, length and hash are), and
elsewhere every buffer is a new object.

Runs on any thread (a client's and a worker's receive on their event loop).
"""

from __future__ import annotations

import ctypes
import sys
import threading

#: Objects a process keeps, and their bytes in all.
KEEP = 2
KEEP_BYTES = 256 << 20

# Where CPython keeps a ``bytes``'s length, cached hash (-1: not computed) and data.
_SIZE, _HASH, _DATA = 16, 24, 32


class Recycler:
    """The large ``bytes`` one process received, for its next buffers (see the module
    docstring)."""

    def __init__(self) -> None:
        # [capacity, object]: the length it was made with, which its memory holds.
        self._kept: list[list] = []
        self._lock = threading.Lock()
        self._closed = False

    def reusable(self, size: int) -> bytes | None:
        """A ``bytes`` of length ``size`` that no other code refers to, to read a buffer
        into before anything else sees it (its contents are stale until then); None if
        there is none."""
        if not _LAYOUT_OK:
            return None
        with self._lock:
            for i in range(len(self._kept)):
                capacity = self._kept[i][0]
                # 2: the list entry's reference, and getrefcount's own argument.
                if (size <= capacity and size > capacity - capacity // 4
                        and sys.getrefcount(self._kept[i][1]) == 2):
                    data = self._kept.pop(i)[1]
                    break
            else:
                return None
        address = id(data)
        ctypes.c_ssize_t.from_address(address + _SIZE).value = size
        ctypes.c_ssize_t.from_address(address + _HASH).value = -1
        ctypes.c_char.from_address(address + _DATA + size).value = b"\0"
        return data

    def keep(self, data: bytes) -> None:
        """Remember ``data``, handed out just now, for a later buffer (dropping the oldest
        past ``KEEP`` or ``KEEP_BYTES``)."""
        if not _LAYOUT_OK or len(data) > KEEP_BYTES:
            return
        with self._lock:
            if self._closed:
                return
            self._kept.append([len(data), data])
            while (len(self._kept) > KEEP
                   or sum(capacity for capacity, _ in self._kept) > KEEP_BYTES):
                self._kept.pop(0)

    def close(self) -> None:
        """Forget every object (the session or worker has ended): those the user dropped
        are freed."""
        with self._lock:
            self._closed = True
            self._kept = []


def _layout_ok() -> bool:
    """Whether ``bytes`` objects are laid out here as ``Recycler`` assumes: checked on one
    made for the purpose."""
    if sys.implementation.name != "cpython":
        return False
    try:
        probe = bytes(range(64)) * 2
        if len(probe) != 128 or ctypes.c_ssize_t.from_address(id(probe) + _SIZE).value != 128:
            return False
        if ctypes.string_at(id(probe) + _DATA, 128) != probe:
            return False
        cached = ctypes.c_ssize_t.from_address(id(probe) + _HASH)
        if cached.value != -1:      # not computed yet
            return False
        return hash(probe) == cached.value
    except (OSError, ValueError, AttributeError):
        return False


_LAYOUT_OK = _layout_ok()
