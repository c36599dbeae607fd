"""``pyfora.shared_memory``: the coordinator's directory and what is left of a dead one.
(Buffers through it: ``test_protocol.py`` and ``e2e/test_transfer.py``.)"""

import os
import subprocess
import sys

import pytest

from pyfora import shared_memory

pytestmark = pytest.mark.skipif(shared_memory.host_id() is None, reason="no /dev/shm")

COORDINATOR = """
from pyfora import shared_memory
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
        assert live.usage() == {"path": live.path, "files": 0, "bytes": 0}
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
