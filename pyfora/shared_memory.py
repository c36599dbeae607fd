"""Large buffers between processes of one machine, through files in shared memory.

A websocket moves a buffer through at least three copies per hop (the sender's, the
kernel's, the receiver's gathering), and a relay through the coordinator doubles that. When
client, coordinator and worker share a machine (the embedded default, and a one-machine
``pyfora-cluster``), a buffer of at least ``MIN_SIZE`` bytes is instead written to a file in
the coordinator's directory on ``/dev/shm`` (a tmpfs: the file's pages are memory), and
only its name travels in the envelope's ``oob`` entry (``[size, writable, name]``). The
coordinator relays it by hard-linking a new name: no copy at all. The receiver reads a
read-only buffer into ``bytes`` with one ``read`` (so ``bytes`` values stay ``bytes``) and
maps a writable one privately (copy-on-write: a numpy array is used in place, with no copy
until it is written to).

Who owns a name: its receiver. A client or a worker takes a buffer (``Directory.take``)
as its envelope arrives and unlinks the name at once; the coordinator keeps it as a
``Shared``, which unlinks it once nothing refers to it (a task's payload is kept until
the task has finished, to run it again if its worker dies). A name whose message never
arrived (its connection broke for good) stays until the coordinator stops and removes the
directory; the directory of a coordinator that was killed is removed by the next one to
start on the machine (it holds a lock on its ``.lock`` file while it lives).

Peers share a machine when their ``host_id`` is equal: the same boot, the same
``/dev/shm`` mount and the same user (files are created ``0600``). Without ``/dev/shm``
(not Linux), or when writing fails (a full tmpfs: a container's default is 64 MB), buffers
go over the websocket as before.

Why files and not ``multiprocessing.shared_memory``: that module maps a segment to write
it, and writing through a fresh mapping page-faults on every page (0.8 GB/s here against
2 GB/s for ``os.write`` into the file), and its resource tracker unlinks segments when
the creating process exits, even those handed to another process.

Runs on any thread.
"""

from __future__ import annotations

import ctypes
import fcntl
import glob
import itertools
import mmap
import os
import re
import secrets
import shutil
import tempfile
import weakref

#: Buffers smaller than this go over the websocket: a file costs a few system calls.
MIN_SIZE = 1 << 20
ROOT = "/dev/shm"

_NAME = re.compile(r"[0-9]+-[0-9]+-[0-9a-f]+\Z")
_counter = itertools.count()


def host_id() -> str | None:
    """What equal on two processes means they can hand each other files in ``ROOT``
    (None: this machine has no ``/dev/shm``)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        root = os.stat(ROOT)
    except OSError:
        return None
    return f"{boot}:{root.st_dev}:{root.st_ino}:{os.getuid()}"


class Directory:
    """The coordinator's directory in ``ROOT``, as each process on its machine uses it."""

    def __init__(self, path: str, lock: int | None = None) -> None:
        self.path = path
        self._lock = lock       # the coordinator's: held while it lives

    @classmethod
    def create(cls) -> Directory | None:
        """A new directory for a coordinator (None: there is no ``/dev/shm`` here), after
        removing those of coordinators that died without removing theirs."""
        if host_id() is None:
            return None
        for stale in glob.glob(os.path.join(ROOT, "pyfora-*")):
            if (lock := _lock(stale)) is not None:
                shutil.rmtree(stale, ignore_errors=True)
                os.close(lock)
        # Locked before it gets the name the sweep above looks for.
        try:
            made = tempfile.mkdtemp(prefix=".pyfora-", dir=ROOT)
        except OSError:
            return None
        lock = _lock(made)
        path = os.path.join(ROOT, os.path.basename(made)[1:])
        os.rename(made, path)
        return cls(path, lock)

    @classmethod
    def offered(cls, path: str | None) -> Directory | None:
        """The directory a coordinator's ``welcome`` offers, if it is one (a coordinator
        must not make a client write or unlink files anywhere else)."""
        if (path and os.path.dirname(path) == ROOT
                and os.path.basename(path).startswith("pyfora-") and os.path.isdir(path)):
            return cls(path)
        return None

    def remove(self) -> None:
        """Remove the directory and whatever was left in it."""
        shutil.rmtree(self.path, ignore_errors=True)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def usage(self) -> dict:
        """The directory, and the files and bytes in it now."""
        sizes = []
        with os.scandir(self.path) as entries:
            for entry in entries:
                if not _NAME.match(entry.name):
                    continue
                try:
                    sizes.append(entry.stat().st_size)
                except OSError:
                    pass        # unlinked meanwhile
        return {"path": self.path, "files": len(sizes), "bytes": sum(sizes)}

    def put(self, buffer) -> str | None:
        """Write ``buffer`` to a new file; its name, or None if it could not be written
        (send it over the websocket instead)."""
        name = _new_name()
        path = os.path.join(self.path, name)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError:
            return None
        try:
            view = memoryview(buffer).cast("B")
            written = 0
            while written < len(view):
                written += os.write(fd, view[written:written + (1 << 30)])
        except OSError:
            os.unlink(path)
            return None
        finally:
            os.close(fd)
        return name

    def take(self, name: str, size: int, writable: bool):
        """The buffer written to ``name`` (``size`` bytes), which is unlinked: ``bytes``,
        or a writable copy-on-write map.

        Raises:
            OSError: ``name`` is not a file of this directory of that size.
        """
        path = self._path(name)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.unlink(path)
            if os.fstat(fd).st_size != size:
                raise OSError(f"shared buffer {name}: not {size} bytes")
            if not writable:
                return _read(fd, size)
            if size == 0:
                return bytearray()
            return memoryview(mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE,
                                        prot=mmap.PROT_READ | mmap.PROT_WRITE))
        finally:
            os.close(fd)

    def keep(self, name: str) -> Shared:
        """The coordinator's hold on a received ``name`` (see ``Shared``)."""
        return Shared(self, name, os.stat(self._path(name)).st_size)

    def _path(self, name: str) -> str:
        if not _NAME.match(name):      # a peer must not name any other file
            raise OSError(f"not a shared buffer name: {name!r}")
        return os.path.join(self.path, name)


class Shared:
    """A buffer the coordinator holds in a file of its directory: relayed by hard links
    (``link``) or read (``read``, for a peer on another machine); the file is unlinked
    when the ``Shared`` is garbage."""

    __slots__ = ("directory", "name", "nbytes", "__weakref__")

    def __init__(self, directory: Directory, name: str, nbytes: int) -> None:
        self.directory, self.name, self.nbytes = directory, name, nbytes
        weakref.finalize(self, _unlink, directory._path(name))

    def link(self) -> str:
        """A new name for the same file, for the receiver to own."""
        name = _new_name()
        os.link(self.directory._path(self.name), self.directory._path(name))
        return name

    def read(self) -> bytes:
        fd = os.open(self.directory._path(self.name), os.O_RDONLY)
        try:
            return _read(fd, self.nbytes)
        finally:
            os.close(fd)

    def __len__(self) -> int:
        return self.nbytes


def _read(fd: int, size: int) -> bytes:
    """``size`` bytes of ``fd`` as ``bytes``, in one copy. Most of that copy's time is
    faulting in the new object's fresh pages, one per 4 KiB: when it can (CPython on
    Linux), this makes the object itself, asks for huge pages for its memory (one fault
    per 2 MiB), and reads into it before anything else sees it, as ``os.read`` does with
    the object it makes (2.0-2.5 GB/s against 0.9 for ``os.read``, 100 MB, this machine)."""
    if size >= _HUGE_PAGE and _libc is not None:
        data = _new_bytes(None, size)
        start = _bytes_address(data)
        first = -start % _HUGE_PAGE
        _libc.madvise(start + first, (size - first) // _HUGE_PAGE * _HUGE_PAGE,
                      _MADV_HUGEPAGE)       # advice only: a refusal changes nothing
        done = 0
        while done < size:      # a read may return less than asked (over 2 GiB on Linux)
            got = _libc.read(fd, start + done, size - done)
            if got <= 0:
                raise OSError(ctypes.get_errno(), f"shared buffer: {done} of {size} bytes")
            done += got
        return data
    parts = [os.read(fd, size)]
    while (done := sum(map(len, parts))) < size:
        part = os.read(fd, size - done)
        if not part:
            raise OSError(f"shared buffer: {done} of {size} bytes")
        parts.append(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


_HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14


def _bind_libc():
    """The C functions ``_read`` uses (None where there are none: not CPython, not
    Linux). ``read`` through ctypes releases the GIL, as ``os.read`` does."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        libc.read.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
        libc.read.restype = ctypes.c_ssize_t
        new = ctypes.pythonapi.PyBytes_FromStringAndSize
        new.argtypes, new.restype = [ctypes.c_void_p, ctypes.c_ssize_t], ctypes.py_object
        address = ctypes.pythonapi.PyBytes_AsString
        address.argtypes, address.restype = [ctypes.py_object], ctypes.c_void_p
    except (AttributeError, OSError):
        return None, None, None
    return libc, new, address


_libc, _new_bytes, _bytes_address = _bind_libc()


def _new_name() -> str:
    return f"{os.getpid()}-{next(_counter)}-{secrets.token_hex(4)}"


def _lock(directory: str) -> int | None:
    """An exclusive lock on ``directory``'s ``.lock`` file (None: another process holds
    it, or it cannot be had)."""
    try:
        fd = os.open(os.path.join(directory, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
