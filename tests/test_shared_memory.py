"""``pyfora.net.shared_memory``: the coordinator's directory and what is left of a dead one.
(Buffers through it: ``test_protocol.py`` and ``e2e/test_transfer.py``.)"""

import errno
import os
import stat
import subprocess
import sys

import pytest
from conftest import UNIT, wait_until

from pyfora.net import shared_memory

pytestmark = pytest.mark.skipif(shared_memory.host_id() is None, reason="no /dev/shm")

COORDINATOR = """
from pyfora.net import shared_memory
directory = shared_memory.Directory.create()
open(directory.path + "/1-2-ab", "wb").write(b"left behind")
print(directory.path, flush=True)
import sys
sys.stdin.read()        # until killed
"""


def test_a_dead_coordinators_directory_is_removed_by_the_next_one_not_a_live_ones():
    proc = subprocess.Popen([sys.executable, "-c", COORDINATOR], stdout=subprocess.PIPE,
                            stdin=subprocess.PIPE, text=True)
    try:
        path = proc.stdout.readline().strip()
        assert sorted(os.listdir(path)) == [".lock", "1-2-ab"]
        live = shared_memory.Directory.create()
        assert os.path.isdir(path), "the directory of a live coordinator was removed"
    finally:
        proc.kill()
        proc.wait(30)
    again = shared_memory.Directory.create()
    try:
        assert not os.path.exists(path), "the directory of a dead coordinator was kept"
        assert os.path.isdir(live.path)
        assert live.usage() == {"path": live.path, "files": 0, "bytes": 0,
                                "warm_files": 0, "warm_bytes": 0}
    finally:
        live.remove()
        again.remove()
    assert not os.path.exists(live.path)


def test_a_client_takes_only_a_coordinators_directory_in_dev_shm(tmp_path):
    directory = shared_memory.Directory.create()
    try:
        assert shared_memory.Directory.offered(directory.path).path == directory.path
    finally:
        directory.remove()
    for path in (None, "", str(tmp_path), "/etc", "/dev/shm", "/dev/shm/../etc",
                 directory.path):       # removed by now
        assert shared_memory.Directory.offered(path) is None, path


# -- the start-up sweep touches only this user's own directories ---------------------------

def planted(tmp_path, name):
    """A path in ``ROOT`` named as a coordinator names its directory, for a test to plant
    something at; and a victim directory holding a file, for it to point at."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_bytes(b"theirs")
    return os.path.join(shared_memory.ROOT, f"pyfora-test{os.getpid()}-{name}"), victim


def sweep():
    """What a coordinator starting now does to ``ROOT`` (and then stops)."""
    started = shared_memory.Directory.create()
    assert started is not None
    started.remove()


def test_the_sweep_follows_no_symlink_named_like_a_coordinators_directory(tmp_path):
    path, victim = planted(tmp_path, "link")
    os.symlink(victim, path)
    try:
        sweep()
        assert sorted(os.listdir(victim)) == ["precious"], "the sweep wrote or removed there"
        assert shared_memory.Directory.offered(path) is None, "a client would write there"
    finally:
        os.unlink(path)


@pytest.mark.parametrize("how", ["another user's", "writable by others"])
def test_the_sweep_leaves_a_directory_that_is_not_only_ours(tmp_path, how):
    path, _ = planted(tmp_path, "dir")
    os.mkdir(path, 0o700)
    try:
        with open(os.path.join(path, "1-2-ab"), "wb") as f:
            f.write(b"theirs")
        if how == "another user's":
            os.chown(path, 65534, 65534)     # tests may run as root: ownership is by uid
        else:
            os.chmod(path, 0o777)
        sweep()
        assert sorted(os.listdir(path)) == ["1-2-ab"], "the sweep wrote or removed there"
        assert shared_memory.Directory.offered(path) is None, "a client would write there"
    finally:
        for name in os.listdir(path):
            os.unlink(os.path.join(path, name))
        os.rmdir(path)


def test_the_sweep_removes_a_dead_coordinators_directory_with_what_is_in_it(tmp_path):
    path, _ = planted(tmp_path, "dead")
    os.mkdir(path, 0o700)
    for name in (".lock", "1-2-ab", "3-4-cd"):          # nobody holds the lock
        with open(os.path.join(path, name), "wb") as f:
            f.write(b"left behind")
    sweep()
    assert not os.path.lexists(path)


def test_a_coordinators_directory_is_its_users_alone():
    directory = shared_memory.Directory.create()
    try:
        info = os.lstat(directory.path)
        assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700
        assert info.st_uid == os.getuid()
    finally:
        directory.remove()


# -- names nobody will take are reclaimed ---------------------------------------------------

WRITER = """
import os, signal, sys
from pyfora.net import shared_memory
name = shared_memory.Directory(sys.argv[1]).put(b"x" * 4096)
print(name, flush=True)
os.kill(os.getpid(), signal.SIGKILL if sys.argv[2] == "die" else signal.SIGSTOP)
"""


def test_names_written_by_a_dead_process_and_not_held_are_swept():
    directory = shared_memory.Directory.create()
    try:
        names = {}
        procs = []
        for fate in ("die", "live"):
            proc = subprocess.Popen([sys.executable, "-c", WRITER, directory.path, fate],
                                    stdout=subprocess.PIPE, text=True)
            procs.append(proc)
            names[fate] = proc.stdout.readline().strip()
        procs[0].wait(30 * UNIT)
        held = directory.for_peer().keep(directory.for_peer().put(b"held" * 1024))
        mine = directory.for_peer().put(b"mine")      # this process is alive: reclaim's
        assert directory.sweep() == [names["die"]]
        assert sorted(os.listdir(directory.path)) == sorted(
            [".lock", names["live"], held.name, mine])
        procs[1].kill()
        procs[1].wait(30 * UNIT)
        wait_until(lambda: names["live"] in directory.sweep(), 10 * UNIT,
                   "the name of the writer that was killed to be swept")
        assert sorted(os.listdir(directory.path)) == sorted([".lock", held.name, mine])
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(30 * UNIT)
        directory.remove()


def test_names_written_for_a_peer_are_reclaimed_when_it_is_gone():
    directory = shared_memory.Directory.create()
    try:
        peer, other = directory.for_peer(), directory.for_peer()
        held = directory.for_peer().keep(directory.for_peer().put(b"h" * 100))
        taken, left, linked = peer.put(b"a"), peer.put(b"b"), peer.link(held)
        kept = other.put(b"c")
        directory.take(taken, 1, writable=False)
        peer.reclaim()
        assert sorted(os.listdir(directory.path)) == sorted([".lock", held.name, kept])
        assert left and linked
    finally:
        directory.remove()


def test_a_view_forgets_the_names_its_peer_took():
    directory = shared_memory.Directory.create()
    try:
        peer = directory.for_peer()
        for _ in range(3 * shared_memory._PRUNE_AT):
            directory.take(peer.put(b"x"), 1, writable=False)
        assert len(peer._written) < shared_memory._PRUNE_AT
    finally:
        directory.remove()


# -- warm files: a client's or a worker's next buffer goes where its last one went --------

MiB = 1 << 20


def _inode(directory, name: str) -> int:
    return os.stat(os.path.join(directory.path, name)).st_ino


def test_a_process_writes_its_next_buffer_into_its_last_file_holding_only_the_new_one():
    coordinator = shared_memory.Directory.create()
    try:
        client = shared_memory.Directory.offered(coordinator.path)
        worker = shared_memory.Directory.offered(coordinator.path)
        first = client.put(b"a" * (2 * MiB))
        file = _inode(coordinator, first)
        assert worker.take(first, 2 * MiB, writable=False) == b"a" * (2 * MiB)
        second = client.put(b"b" * MiB)
        assert _inode(coordinator, second) == file, "a new file, not the warm one"
        assert worker.take(second, MiB, writable=False) == b"b" * MiB
        assert coordinator.usage() | {"path": ""} == {
            "path": "", "files": 0, "bytes": 0, "warm_files": 1, "warm_bytes": MiB}
        client.close()
        assert coordinator.usage()["warm_files"] == 0
        assert client.put(b"c" * MiB) and coordinator.usage()["warm_files"] == 0
    finally:
        coordinator.remove()


def test_a_warm_file_is_not_written_while_another_name_or_a_mapping_reaches_it():
    coordinator = shared_memory.Directory.create()
    try:
        client = shared_memory.Directory.offered(coordinator.path)
        worker = shared_memory.Directory.offered(coordinator.path)
        sent = client.put(b"a" * MiB)
        file = _inode(coordinator, sent)
        held = coordinator.keep(sent)       # the coordinator holds it: a second name
        other = client.put(b"b" * MiB)
        assert _inode(coordinator, other) != file
        assert held.read() == b"a" * MiB
        mapped = worker.take(coordinator.for_peer().link(held), MiB, writable=True)
        del held
        mapped_too = client.put(b"c" * MiB)     # the array mapped from it still lives
        assert _inode(coordinator, mapped_too) != file
        assert bytes(mapped) == b"a" * MiB
        del mapped
        again = client.put(b"d" * MiB)
        assert _inode(coordinator, again) == file
    finally:
        coordinator.remove()


def _mapped(inode: int) -> bool:
    """Whether this process maps the file ``inode`` (the ``inode`` column of its maps)."""
    with open("/proc/self/maps") as maps:
        return any(line.split()[4] == str(inode) for line in maps if len(line.split()) > 4)


@pytest.mark.skipif(not shared_memory._glibc, reason="maps under bytes only with glibc")
def test_a_large_bytes_taken_is_its_files_pages_for_as_long_as_it_lives_and_no_longer():
    """Not a copy into fresh memory; dropped, its memory leaves the process, and the
    writer may write its next buffer over that file."""
    size = 48 * MiB     # over glibc's largest mmap threshold: a mapping of its own
    payload = bytes(range(256)) * (size // 256) + b"tail"
    coordinator = shared_memory.Directory.create()
    try:
        client = shared_memory.Directory.offered(coordinator.path)
        worker = shared_memory.Directory.offered(coordinator.path)
        sent = client.put(payload, readonly=True)
        file = _inode(coordinator, sent)
        data = worker.take(sent, len(payload), writable=False)
        assert type(data) is bytes and data == payload
        assert _mapped(file)
        assert _inode(coordinator, client.put(b"b" * MiB, readonly=True)) != file
        del data
        assert not _mapped(file)
        assert _inode(coordinator, client.put(b"c" * MiB, readonly=True)) == file
    finally:
        coordinator.remove()


@pytest.mark.parametrize("readonly", [True, False])
@pytest.mark.parametrize("writable", [True, False])
def test_a_buffer_is_taken_whole_whichever_head_its_file_has(readonly, writable):
    """A file without the head a ``bytes`` is mapped under is read instead."""
    payload = os.urandom(3 * MiB + 5)
    coordinator = shared_memory.Directory.create()
    try:
        client = shared_memory.Directory.offered(coordinator.path)
        worker = shared_memory.Directory.offered(coordinator.path)
        held = coordinator.keep(client.put(payload, readonly=readonly), len(payload))
        assert len(held) == len(payload) and held.read() == payload
        taken = worker.take(coordinator.for_peer().link(held), len(payload), writable)
        assert bytes(taken) == payload
        with pytest.raises(OSError, match="not"):
            coordinator.keep(coordinator.for_peer().link(held), len(payload) + 1)
    finally:
        coordinator.remove()


def test_warm_files_are_bounded_and_a_dead_processs_are_swept(monkeypatch):
    monkeypatch.setattr(shared_memory, "WARM_FILES", 2)
    coordinator = shared_memory.Directory.create()
    try:
        client = shared_memory.Directory.offered(coordinator.path)
        names = [client.put(b"x" * MiB) for _ in range(4)]    # none taken: none free
        assert coordinator.usage()["warm_files"] == 2
        assert coordinator.usage()["files"] == 4, "a dropped warm file took its buffer"
        dead = f"{2 ** 22 + 7}-0-ab.warm"    # over the largest pid Linux gives
        open(os.path.join(coordinator.path, dead), "wb").close()
        assert dead in coordinator.sweep()
        for name in names:
            coordinator.take(name, MiB, writable=False)
        with pytest.raises(OSError, match="not a shared buffer name"):
            coordinator.take(client._warm[0][0], MiB, writable=False)
    finally:
        coordinator.remove()


def test_a_full_tmpfs_drops_this_processs_warm_files_then_falls_back(monkeypatch):
    coordinator = shared_memory.Directory.create()
    write, refused = shared_memory._write, []

    def on_a_5_mib_tmpfs(fd, view, offset=0):
        used = sum(os.stat(entry.path).st_blocks * 512 for entry in os.scandir(coordinator.path)
                   if entry.name != ".lock")
        if used + len(view) > 5 * MiB:
            refused.append(len(view))
            raise OSError(errno.ENOSPC, "No space left on device")
        write(fd, view, offset)

    monkeypatch.setattr(shared_memory, "_write", on_a_5_mib_tmpfs)
    try:
        client = shared_memory.Directory.offered(coordinator.path)
        worker = shared_memory.Directory.offered(coordinator.path)
        sent = [client.put(fill * MiB) for fill in (b"a", b"b")]   # two in flight: two files
        for name in sent:
            worker.take(name, MiB, writable=False)
        assert coordinator.usage()["warm_files"] == 2
        big = client.put(b"c" * (4 * MiB))      # 2 + 4 MiB: refused, then 4 once they are gone
        assert refused == [4 * MiB]
        assert big and worker.take(big, 4 * MiB, writable=False) == b"c" * (4 * MiB)
        assert coordinator.usage()["warm_files"] == 1
        assert client.put(b"d" * (6 * MiB)) is None, "over the tmpfs: the websocket, then"
        assert coordinator.usage()["files"] == 0
    finally:
        coordinator.remove()


def test_another_process_opening_a_warm_file_during_the_check_does_not_end_this_one():
    """``_exclusive`` holds a write lease for a moment; an open by another process breaks
    it, with a signal that must not be SIGIO's (which ends the process). Run in a child."""
    child = subprocess.run([sys.executable, "-c", LEASE_BROKEN], capture_output=True,
                           text=True, timeout=30 * UNIT, check=False)
    assert child.returncode == 0 and child.stdout == "alive\n", (child.returncode, child.stderr)


LEASE_BROKEN = """
import fcntl, os, subprocess, sys, time
from pyfora.net import shared_memory
directory = shared_memory.Directory.create()
try:
    client = shared_memory.Directory.offered(directory.path)
    directory.take(client.put(b"x" * (1 << 20)), 1 << 20, writable=False)
    name, fd, _ = client._warm[0]
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
    opener = subprocess.Popen([sys.executable, "-c", "import sys; open(sys.argv[1], 'rb')",
                               os.path.join(directory.path, name)])
    deadline = time.monotonic() + 20
    while fcntl.fcntl(fd, fcntl.F_GETLEASE) == fcntl.F_WRLCK:    # until the open breaks it
        assert time.monotonic() < deadline, "the open did not break the lease"
        time.sleep(0.001)
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    assert opener.wait(30) == 0
    print("alive")
finally:
    directory.remove()
"""
