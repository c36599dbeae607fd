"""Large buffers between processes of one machine, through files in shared memory.

A websocket moves a buffer through at least three copies per hop (the sender's, the
kernel's, the receiver's gathering), and a relay through the coordinator doubles that. When
client, coordinator and worker share a machine (the embedded default, and a one-machine
``pyfora-cluster``), a buffer of at least ``MIN_SIZE`` bytes is instead written to a file in
the coordinator's directory on ``/dev/shm`` (a tmpfs: the file's pages are memory), and
only its name travels in the envelope's ``oob`` entry (``[size, writable, name]``). The
coordinator relays it by hard-linking a new name: no copy at all. The receiver maps a
writable buffer privately (copy-on-write: a numpy array is used in place, with no copy
until it is written to), and takes a read-only one as ``bytes`` (so ``bytes`` values stay
``bytes``) whose data is, where it can be, the file's pages mapped the same way under a
new object (``_read``): the file of such a buffer starts with a head of ``BYTES_HEAD``
bytes, which puts the buffer at the page offset of that object's data.

Who owns a name: its receiver. A client or a worker takes a buffer (``Directory.take``)
as its envelope arrives and unlinks the name at once; the coordinator keeps it as a
``Shared``, which unlinks it once nothing refers to it (a task's payload is kept until
the task has finished, to run it again if its worker dies). A name's first part is the
pid of the process that wrote it. Names whose message is never taken are reclaimed by
the coordinator, by who was to take them:

* Written by the coordinator for a peer: each peer's link has a view of the directory
  (``for_peer``) that remembers the names written through it, and when the peer's
  connection ends for good (a worker's, or a session's once it cannot be resumed: until
  then a resume sends those names again) the names it never took are unlinked
  (``reclaim``).
* Written by a peer for the coordinator, whose message never arrived (the writer was
  killed mid-message, or its connection broke and it did not resume): the coordinator
  never learns such a name, so whenever a peer's connection ends it unlinks the names
  whose writer is dead and which it does not hold (``sweep``). A live writer's may
  still come, sent again by a resume. A message still on its way from a writer that has
  just died may find its buffer gone: it fails as a protocol error, on a connection
  that is ending anyway.

Warm files: a page of a new ``/dev/shm`` file costs a fault and a zero-fill, and on a VM
whose freed memory goes back to the host (free page reporting) the host's own fault too:
about 1 ms per MB, more than the 67 ms a 100 MB buffer has at 1.5 GB/s (rewriting a file
whose pages are there takes about 30). So a client or a worker writes a buffer to a file
under a ``.warm`` name of its own (its pid first), which it keeps open, and sends a second
name for it (a hard link); once that name is gone, taken and unlinked by the receiver or
let go by the coordinator, the file is written over by its next buffer, whose pages are
then already there. A warm file is written to only while this process alone can reach it:
one name left, its own, and no other open file or mapping, which a write lease proves
(``_exclusive``): a buffer that another process still reads or maps (a numpy array mapped
from it) never changes under it. Only the process that made a warm file ever writes to it,
so it holds nothing that process did not send; each reuse truncates it to the new size
first, so it holds nothing of the last buffer past it. A process keeps at most
``WARM_FILES`` files and ``WARM_BYTES`` bytes (nor an eighth of the tmpfs), dropping the
least recently used first; all of them when a write finds the tmpfs full, and when its
session or worker ends (``close``). A ``.warm`` name is never a buffer's name (``_path``
refuses it), and a dead process's are swept like its buffers.

Whatever is left (a coordinator killed) goes with the directory: the coordinator removes
it when it stops, and the directory of a coordinator that was killed is removed by the
next one to start on the machine (it holds a lock on its ``.lock`` file while it lives).
That start-up sweep touches only real directories owned by this user and writable by
nobody else, opened without following links, and removes their entries through that
open directory, never by a path another user could redirect (``/dev/shm`` is shared by
every user of the machine; its sticky bit keeps them from renaming or removing our
entries, not from planting their own).

Peers share a machine when their ``host_id`` is equal: the same boot, the same
``/dev/shm`` mount, the same user (directories are created ``0700``, files ``0600``) and
the same pid namespace (the pids in names must mean the same processes to every peer).
Without ``/dev/shm`` (not Linux), or when writing fails (a full tmpfs: a container's
default is 64 MB), buffers go over the websocket as before.

Why files and not ``multiprocessing.shared_memory``: that module maps a segment to write
it, and writing through a fresh mapping page-faults on every page (0.8 GB/s here against
2 GB/s for ``os.write`` into the file), and its resource tracker unlinks segments when
the creating process exits, even those handed to another process.

Runs on any thread; a coordinator's directory and its views (``for_peer``), which keep
what it holds and wrote, on its event loop.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import itertools
import mmap
import os
import re
import secrets
import signal
import stat
import tempfile
import threading
import weakref

#: Buffers smaller than this go over the websocket: a file costs a few system calls.
MIN_SIZE = 1 << 20
ROOT = "/dev/shm"

#: The warm files a client or a worker keeps at most (see the module docstring), and their
#: bytes.
WARM_FILES = 8
WARM_BYTES = 512 << 20

_NAME = re.compile(r"[0-9]+-[0-9]+-[0-9a-f]+\Z")
_WARM = re.compile(r"[0-9]+-[0-9]+-[0-9a-f]+\.warm\Z")
_counter = itertools.count()


def host_id() -> str | None:
    """What equal on two processes means they can hand each other files in ``ROOT``
    (None: this machine has no ``/dev/shm``)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        root = os.stat(ROOT)
        pids = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    return f"{boot}:{root.st_dev}:{root.st_ino}:{os.getuid()}:{pids}"


class Directory:
    """The coordinator's directory in ``ROOT``, as each process on its machine uses it."""

    def __init__(self, path: str, lock: int | None = None) -> None:
        self.path = path
        self._lock = lock       # the coordinator's: held while it lives
        # The coordinator's, shared by its views: the names it holds, as ``Shared``s.
        self._held: weakref.WeakValueDictionary[str, Shared] | None = None
        # A view's (``for_peer``): the names written through it, for its peer to take.
        self._written: set[str] | None = None
        self._prune_at = _PRUNE_AT
        # A client's or a worker's (``offered``): its warm files, least recently used
        # first, as [name, open file, size]; None where there are none (and once closed).
        self._warm: list[list] | None = None
        self._warm_lock = threading.Lock()      # ``put`` runs on the loop and task threads

    @classmethod
    def create(cls) -> Directory | None:
        """A new directory for a coordinator (None: there is no ``/dev/shm`` here), after
        removing those of coordinators that died without removing theirs."""
        if host_id() is None:
            return None
        try:
            root = os.open(ROOT, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            _remove_stale(root)
            return cls._make(root)
        finally:
            os.close(root)

    @classmethod
    def _make(cls, root: int) -> Directory | None:
        try:
            made = os.path.basename(tempfile.mkdtemp(prefix=".pyfora-", dir=ROOT))  # 0700
        except OSError:
            return None
        name = made[1:]
        fd = _open_own(root, made)
        if fd is None:
            return None
        try:
            # Locked before it gets the name the start-up sweep looks for.
            lock = _lock(fd)
            if lock is None:
                return None
            try:
                os.rename(made, name, src_dir_fd=root, dst_dir_fd=root)
                there = os.stat(name, dir_fd=root, follow_symlinks=False)
            except OSError:
                os.close(lock)
                return None
            here = os.fstat(fd)
            if (there.st_dev, there.st_ino) != (here.st_dev, here.st_ino):
                os.close(lock)      # not ours under that name after all: leave it
                return None
        finally:
            os.close(fd)
        directory = cls(os.path.join(ROOT, name), lock)
        directory._held = weakref.WeakValueDictionary()
        return directory

    @classmethod
    def offered(cls, path: str | None) -> Directory | None:
        """The directory a coordinator's ``welcome`` offers, if it is one (a coordinator
        must not make a client write or unlink files anywhere else): in ``ROOT``, named
        as a coordinator names its own, a real directory of this user that nobody else
        may write to."""
        if not (path and os.path.dirname(path) == ROOT
                and os.path.basename(path).startswith("pyfora-")):
            return None
        try:
            root = os.open(ROOT, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            fd = _open_own(root, os.path.basename(path))
        finally:
            os.close(root)
        if fd is None:
            return None
        os.close(fd)
        directory = cls(path)
        directory._warm = []
        return directory

    def close(self) -> None:
        """Unlink this process's warm files (its session or worker has ended); buffers
        written after this go to new files, not kept."""
        with self._warm_lock:
            warm, self._warm = self._warm or [], None
        self._unlink_warm(warm)

    def for_peer(self) -> Directory:
        """A view of the coordinator's directory for one peer's link: it remembers the
        names written through it (``put``, ``link``), which are the peer's to take, so
        that ``reclaim`` can unlink those it never took."""
        view = Directory(self.path)
        view._held = self._held
        view._written = set()
        return view

    def reclaim(self) -> None:
        """Unlink the names written through this view that its peer has not taken (its
        connection has ended for good: it never will)."""
        written, self._written = self._written or set(), set()
        for name in written:
            _unlink(os.path.join(self.path, name))

    def sweep(self) -> list[str]:
        """Unlink the names written by processes that are dead, which the coordinator
        does not hold (their messages never arrived, and never will); return them. Names
        written by this process are left to ``reclaim``."""
        held = self._held if self._held is not None else {}
        mine = os.getpid()
        swept: list[str] = []
        try:
            names = os.listdir(self.path)
        except OSError:
            return swept
        for name in names:
            if not (_NAME.match(name) or _WARM.match(name)) or name in held:
                continue
            writer = int(name.split("-", 1)[0])
            if writer != mine and not _alive(writer):
                _unlink(os.path.join(self.path, name))
                swept.append(name)
        return swept

    def remove(self) -> None:
        """Remove the directory and whatever was left in it."""
        parent, name = os.path.split(self.path)
        try:
            root = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            root = None
        if root is not None:
            try:
                fd = _open_own(root, name)
                if fd is not None:
                    _clear(root, name, fd)
            finally:
                os.close(root)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def usage(self) -> dict:
        """The directory, and the buffers' names and bytes in it now; apart, its peers'
        warm files (a buffer in flight from a peer has both kinds of name)."""
        sizes: dict[bool, list[int]] = {False: [], True: []}
        with os.scandir(self.path) as entries:
            for entry in entries:
                warm = bool(_WARM.match(entry.name))
                if not (warm or _NAME.match(entry.name)):
                    continue
                try:
                    sizes[warm].append(entry.stat().st_size)
                except OSError:
                    pass        # unlinked meanwhile
        return {"path": self.path, "files": len(sizes[False]), "bytes": sum(sizes[False]),
                "warm_files": len(sizes[True]), "warm_bytes": sum(sizes[True])}

    def put(self, buffer, readonly: bool = False) -> str | None:
        """Write ``buffer`` to a file (a warm one, where this process keeps them); its
        name, or None if it could not be written (send it over the websocket instead).
        ``readonly``: its receiver takes it as ``bytes`` (``take``), and the file starts
        with ``BYTES_HEAD`` zero bytes, so that the receiver can map its pages under the
        ``bytes``' data (``_read``)."""
        view = memoryview(buffer).cast("B")
        head = BYTES_HEAD if readonly else 0
        name = _new_name()
        if self._warm is None:
            written = self._write_new(name, view, head)
        else:
            written = self._write_warm(name, view, head)
            if not written and self._drop_warm():
                written = self._write_warm(name, view, head)  # the tmpfs was full of them?
        if not written:
            return None
        self._wrote(name)
        return name

    def _write_new(self, name: str, view: memoryview, head: int) -> bool:
        path = os.path.join(self.path, name)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError:
            return False
        try:
            _write(fd, view, head)      # the head before it is a hole: zeros
        except OSError:
            os.unlink(path)
            return False
        finally:
            os.close(fd)
        return True

    def _write_warm(self, name: str, view: memoryview, head: int) -> bool:
        """``view`` written to a warm file (a new one if none is free) after ``head``
        zero bytes, linked as ``name``; False if it could not be."""
        size = head + len(view)
        chosen = self._free_warm(size)
        if chosen is None:
            warm = _new_name() + ".warm"
            try:
                fd = os.open(os.path.join(self.path, warm),
                             os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except OSError:
                return False
            if not _quiet_leases(fd):       # its lease could end this process: not kept
                self._unlink_warm([[warm, fd, 0]])
                return self._write_new(name, view, head)
        else:
            warm, fd, _ = chosen
        try:
            os.ftruncate(fd, size)      # first: nothing of the last buffer stays past it
            if head:
                os.pwrite(fd, bytes(head), 0)   # nor in the head
            _write(fd, view, head)
            os.link(os.path.join(self.path, warm), os.path.join(self.path, name))
        except OSError:
            self._unlink_warm([[warm, fd, 0]])
            return False
        self._keep_warm(warm, fd, size)
        return True

    def _free_warm(self, size: int) -> list | None:
        """Take out of the pool the warm file nearest ``size`` that only this process
        reaches (the smallest that holds it, else the largest: the fewest pages freed or
        added), or None."""
        with self._warm_lock:
            order = sorted(self._warm or (), key=lambda w: (w[2] < size, abs(w[2] - size)))
            chosen = next((w for w in order if _exclusive(w[1])), None)
            if chosen is not None:
                self._warm.remove(chosen)   # type: ignore[union-attr]
        return chosen

    def _keep_warm(self, name: str, fd: int, size: int) -> None:
        """Put the warm file back in the pool, most recently used, dropping the least
        recently used past the limits (a buffer still in flight keeps its other name)."""
        with self._warm_lock:
            if self._warm is None:      # closed meanwhile
                dropped = [[name, fd, size]]
            else:
                self._warm.append([name, fd, size])
                limit = min(WARM_BYTES, _tmpfs_bytes(self.path) // 8)
                dropped = []
                while len(self._warm) > WARM_FILES or sum(w[2] for w in self._warm) > limit:
                    dropped.append(self._warm.pop(0))
        self._unlink_warm(dropped)

    def _drop_warm(self) -> bool:
        """Unlink every warm file (a write failed: the tmpfs may be full of them); whether
        there were any."""
        with self._warm_lock:
            warm = self._warm or []
            if self._warm is not None:
                self._warm = []
        self._unlink_warm(warm)
        return bool(warm)

    def _unlink_warm(self, warm: list) -> None:
        for name, fd, _ in warm:
            _unlink(os.path.join(self.path, name))
            os.close(fd)

    def link(self, shared: Shared) -> str:
        """A new name for the file ``shared`` holds, for this view's peer to take."""
        name = _new_name()
        os.link(shared.directory._path(shared.name), self._path(name))
        self._wrote(name)
        return name

    def _wrote(self, name: str) -> None:
        if self._written is None:
            return
        self._written.add(name)
        if len(self._written) >= self._prune_at:
            # Most were taken long ago: forget those, so a long-lived peer's set stays small.
            self._written = {n for n in self._written
                             if os.path.lexists(os.path.join(self.path, n))}
            self._prune_at = max(_PRUNE_AT, 2 * len(self._written))

    def take(self, name: str, size: int, writable: bool):
        """The buffer written to ``name`` (``size`` bytes, after the file's head), which
        is unlinked: ``bytes``, or a writable copy-on-write map.

        Raises:
            OSError: ``name`` is not a file of this directory of that size.
        """
        path = self._path(name)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.unlink(path)
            head = _head(name, os.fstat(fd).st_size, size)
            if not writable:
                return _read(fd, size, head)
            if size == 0:
                return bytearray()
            view = memoryview(mmap.mmap(fd, head + size, flags=mmap.MAP_PRIVATE,
                                        prot=mmap.PROT_READ | mmap.PROT_WRITE))
            return view[head:] if head else view
        finally:
            os.close(fd)

    def keep(self, name: str, size: int | None = None) -> Shared:
        """The coordinator's hold on a received ``name`` of ``size`` bytes after its head
        (None: the whole file; see ``Shared``).

        Raises:
            OSError: ``name`` is not a file of this directory of that size.
        """
        whole = os.stat(self._path(name)).st_size
        size = whole if size is None else size
        shared = Shared(self, name, size, _head(name, whole, size))
        if self._held is not None:
            self._held[name] = shared
        return shared

    def _path(self, name: str) -> str:
        if not _NAME.match(name):      # a peer must not name any other file, nor a warm one
            raise OSError(f"not a shared buffer name: {name!r}")
        return os.path.join(self.path, name)


class Shared:
    """A buffer the coordinator holds in a file of its directory: relayed by hard links
    (``Directory.link``) or read (``read``, for a peer on another machine); the file is unlinked
    when the ``Shared`` is garbage."""

    __slots__ = ("directory", "name", "nbytes", "head", "__weakref__")

    def __init__(self, directory: Directory, name: str, nbytes: int, head: int = 0) -> None:
        self.directory, self.name, self.nbytes, self.head = directory, name, nbytes, head
        weakref.finalize(self, _unlink, directory._path(name))

    def read(self) -> bytes:
        fd = os.open(self.directory._path(self.name), os.O_RDONLY)
        try:
            return _read(fd, self.nbytes, self.head)
        finally:
            os.close(fd)

    def __len__(self) -> int:
        return self.nbytes


def _write(fd: int, view: memoryview, offset: int = 0) -> None:
    """All of ``view`` to ``fd`` from ``offset`` (a write may stop short: at 2 GiB on
    Linux)."""
    written = 0
    while written < len(view):
        written += os.pwrite(fd, view[written:written + (1 << 30)], offset + written)


def _head(name: str, whole: int, size: int) -> int:
    """The bytes before a buffer of ``size`` bytes in its file of ``whole`` bytes: none,
    or ``BYTES_HEAD`` (``put``).

    Raises:
        OSError: the file is not of that size.
    """
    head = whole - size
    if head not in (0, BYTES_HEAD):
        raise OSError(f"shared buffer {name}: not {size} bytes")
    return head


def _quiet_leases(fd: int) -> bool:
    """Have a break of a lease on ``fd`` signalled by ``SIGURG``, which is ignored unless
    handled, rather than ``SIGIO``, which ends the process: ``_exclusive`` holds a lease
    for a few microseconds, and a process that opened the file then (none of pyfora's
    opens a warm name) would break it. False if that cannot be had."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGURG)
    except (OSError, AttributeError):
        return False
    return True


def _exclusive(fd: int) -> bool:
    """Whether only this open file reaches its file: one name, and no other open file
    nor mapping (a write lease is refused while there is one; where leases cannot be had,
    the answer is no)."""
    try:
        if os.fstat(fd).st_nlink != 1:
            return False
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
    except OSError:
        return False
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    return True


def _tmpfs_bytes(path: str) -> int:
    """The size of the file system ``path`` is on (0 if it cannot be had)."""
    try:
        info = os.statvfs(path)
    except OSError:
        return 0
    return info.f_blocks * info.f_frsize


def _read(fd: int, size: int, head: int = 0) -> bytes:
    """``size`` bytes of ``fd``, after ``head``, as ``bytes``. Copying them into a new
    object would cost more than the copy: its memory is fresh, and faulting it in (and, on
    a VM whose freed memory goes back to the host, the host's own faults) costs up to
    several ms per MB. So, when it can (CPython with glibc's malloc, on Linux), this makes
    the object itself and maps the file's pages under its data (``_map_under``); else it
    asks for huge pages for the object's memory (one fault per 2 MiB) and reads into it
    before anything else sees it, as ``os.read`` does with the object it makes."""
    if size < _HUGE_PAGE or _libc is None:
        os.lseek(fd, head, os.SEEK_SET)
        parts = [os.read(fd, size)]
        while (done := sum(map(len, parts))) < size:
            part = os.read(fd, size - done)
            if not part:
                raise OSError(f"shared buffer: {done} of {size} bytes")
            parts.append(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)
    data = _new_bytes(None, size)
    start = _bytes_address(data)
    if not _map_under(data, start, fd, size, head):
        first = -start % _HUGE_PAGE
        _libc.madvise(start + first, (size - first) // _HUGE_PAGE * _HUGE_PAGE,
                      _MADV_HUGEPAGE)       # advice only: a refusal changes nothing
        _read_into(fd, start, size, head)
    return data


def _map_under(data: bytes, start: int, fd: int, size: int, head: int) -> bool:
    """Map the file's pages (copy-on-write, and populated: nothing is left to fault in
    later) over the whole pages of the new ``data``, whose ``size`` bytes are at
    ``start``, and read only its partial first and last pages; False, with nothing done,
    where it cannot be: the data's page offset is not the file's (``BYTES_HEAD``), or its
    memory is not a mapping of its own. glibc's ``malloc`` maps each large block apart
    and ``free`` unmaps it whole, the file's pages with it: the object holds them exactly
    as long as it lives, like the map ``take`` gives a writable buffer."""
    first = -start % _PAGE
    length = (size - first) // _PAGE * _PAGE
    if (head + first) % _PAGE or length <= 0 or not _own_mapping(id(data), start + size + 1):
        return False
    target = start + first
    # Mapped read-only to be populated (populating a writable private map would copy
    # every page), then made writable as the rest of the object is (copy-on-write).
    if _libc.mmap(target, length, mmap.PROT_READ, _MAP_PRIVATE_FIXED | _MAP_POPULATE, fd,
                  head + first) != target:
        if ctypes.get_errno() != errno.ENOMEM:
            return False    # refused before the range was touched (huge TLB pages, say)
        return _anonymous_under(target, length)
    if _libc.mprotect(target, length, _RW) != 0:
        return _anonymous_under(target, length)
    _read_into(fd, start, first, head)
    _read_into(fd, target + length, size - first - length, head + first + length)
    return True


def _anonymous_under(target: int, length: int) -> bool:
    """False, once fresh memory is mapped back over a range that a failed ``mmap`` may
    have unmapped (out of memory) or left read-only.

    Raises:
        MemoryError: it cannot be.
    """
    if _libc.mmap(target, length, _RW, _MAP_PRIVATE_FIXED | mmap.MAP_ANONYMOUS,
                  -1, 0) != target:
        raise MemoryError(f"shared buffer: {length} bytes")
    return False


def _own_mapping(block: int, end: int) -> bool:
    """Whether the memory ``malloc`` gave at ``block`` (up to at least ``end``) is a
    mapping of its own, which ``free`` unmaps: glibc's chunk header, the two words before
    the block, starts a page, and its size word has the ``IS_MMAPPED`` bit."""
    chunk = block - 2 * _WORD
    if not _glibc or chunk % _PAGE:
        return False
    header = ctypes.c_size_t.from_address(block - _WORD).value
    return bool(header & _IS_MMAPPED) and chunk + (header & ~7) >= end


def _read_into(fd: int, address: int, size: int, offset: int) -> None:
    done = 0
    while done < size:      # a read may return less than asked (over 2 GiB on Linux)
        got = _libc.pread(fd, address + done, size - done, offset + done)
        if got <= 0:
            raise OSError(ctypes.get_errno(), f"shared buffer: {done} of {size} bytes")
        done += got


_HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14
_PAGE = mmap.PAGESIZE
_WORD = ctypes.sizeof(ctypes.c_size_t)
_IS_MMAPPED = 2
_RW = mmap.PROT_READ | mmap.PROT_WRITE
_MAP_PRIVATE_FIXED = mmap.MAP_PRIVATE | 0x10        # MAP_FIXED, Linux
_MAP_POPULATE = 0x8000
#: The head of a file that is to be read as ``bytes`` (``put``): the page offset of a
#: large ``bytes``' data, after glibc's chunk header (two words) and the object's own.
BYTES_HEAD = 2 * _WORD + bytes.__basicsize__ - 1


def _bind_libc():
    """The C functions ``_read`` uses (None where there are none: not CPython, not
    Linux), and whether the C library is glibc. ``pread`` through ctypes releases the
    GIL, as ``os.pread`` does."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        libc.pread.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t,
                               ctypes.c_int64]
        libc.pread.restype = ctypes.c_ssize_t
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_int64]
        libc.mmap.restype = ctypes.c_void_p
        libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        new = ctypes.pythonapi.PyBytes_FromStringAndSize
        new.argtypes, new.restype = [ctypes.c_void_p, ctypes.c_ssize_t], ctypes.py_object
        address = ctypes.pythonapi.PyBytes_AsString
        address.argtypes, address.restype = [ctypes.py_object], ctypes.c_void_p
    except (AttributeError, OSError):
        return None, None, None, False
    return libc, new, address, hasattr(libc, "gnu_get_libc_version")


_libc, _new_bytes, _bytes_address, _glibc = _bind_libc()


def _new_name() -> str:
    return f"{os.getpid()}-{next(_counter)}-{secrets.token_hex(4)}"


#: Names a view remembers before it forgets those already taken.
_PRUNE_AT = 256


def _open_own(root: int, name: str) -> int | None:
    """``name`` in the directory ``root``, opened, if it is a real directory (not a link
    to one) of this user that nobody else may write to; else None."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=root)
    except OSError:
        return None
    if is_own_directory(os.fstat(fd)):
        return fd
    os.close(fd)
    return None


def is_own_directory(info: os.stat_result) -> bool:
    """Whether ``info`` is of a directory of this user that nobody else may write to:
    one whose files no other user can have planted or swapped."""
    return (stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()
            and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def _remove_stale(root: int) -> None:
    """Remove the directories in ``root`` of coordinators that died (see the module
    docstring for which it touches)."""
    for name in os.listdir(root):
        if not name.startswith("pyfora-"):
            continue
        fd = _open_own(root, name)
        if fd is None:
            continue
        try:
            lock = _lock(fd)
            if lock is not None:
                _clear(root, name, fd)
                os.close(lock)
        finally:
            os.close(fd)


def _clear(root: int, name: str, fd: int) -> None:
    """Unlink the entries of the open directory ``fd`` (``name`` in ``root``), then the
    directory. Through ``fd``: a path could be redirected meanwhile, the open directory
    cannot. ``unlink`` never follows a link; a subdirectory (none of ours) is left, and
    so is the directory then."""
    for entry in os.listdir(fd):
        try:
            os.unlink(entry, dir_fd=fd)
        except OSError:
            pass
    try:
        os.rmdir(name, dir_fd=root)
    except OSError:
        pass


def _lock(directory: int) -> int | None:
    """An exclusive lock on the ``.lock`` file of the open ``directory`` (None: another
    process holds it, or it cannot be had)."""
    try:
        fd = os.open(".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=directory)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet waited for, does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            info = f.read()
    except FileNotFoundError:
        return False
    except OSError:
        return True         # unknown: keep its names
    return info.rpartition(b")")[2].split()[:1] != [b"Z"]


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
