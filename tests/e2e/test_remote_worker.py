"""A built-in worker joining from another host: two network namespaces stand in for two
machines.

Namespace "c" runs ``pyfora-cluster --workers 0`` (a coordinator with no workers of its
own) bound to its address on a veth pair; namespace "w", at the other end of that pair,
runs ``pyfora-worker ws://<c's address>:<port> --token T``. This test process is the
client: a second veth pair joins the root namespace to "c", with a route to the pair's
subnet, so the coordinator is reached at the very address the worker dials. Tasks report
``/proc/self/ns/net``, which proves they ran in "w".

Needs root and iproute2; where a namespace cannot be made the tests are skipped with the
failed command's message. Names carry this process's pid; leftovers of runs that died
(their pid is gone) are removed first, and everything made here is removed afterwards,
also when a test fails: deleting a namespace deletes the veths inside it and their peers.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest
from conftest import UNIT, ClusterProcess, wait_until

import pyfora

T = 30 * UNIT
TOKEN = "netns-test-token-0123456789abcdef"
WORKER_TOKEN = "netns-test-worker-token-0123456789"
PREFIX = "pyfora-t"                      # namespaces: pyfora-t<pid>-c, pyfora-t<pid>-w
LINK_PREFIX = "pfr"                       # the root end of the client's veth: pfr<pid>


def ip(*args: str, ns: str | None = None) -> str:
    """Run ``ip``, in namespace ``ns`` if given; its stdout, or RuntimeError with stderr."""
    command = ["ip", *(["-n", ns] if ns else []), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=T, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(command)}` failed: {done.stderr.strip()}")
    return done.stdout


def remove_leftovers() -> None:
    """Namespaces and links of earlier runs whose process is gone (killed mid-test)."""
    for name in re.findall(rf"^({PREFIX}(\d+)-[cw])\b", ip("netns", "list"), re.M):
        if not psutil.pid_exists(int(name[1])):
            subprocess.run(["ip", "netns", "del", name[0]], capture_output=True, check=False)
    for name, pid in re.findall(rf"^\d+: ({LINK_PREFIX}(\d+))[@:]", ip("-o", "link"), re.M):
        if not psutil.pid_exists(int(pid)):
            subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)


def free_subnet() -> str:
    """A /29's first three octets in 198.18.0.0/15 (reserved for network tests) that no
    route of this host uses yet: ``.0/30`` joins c and w, ``.4/30`` the root and c."""
    routes = ip("-4", "route", "show", "table", "all")
    for i in range(512):
        n = (os.getpid() + i) % 512
        net = f"198.{18 + n // 256}.{n % 256}"
        if f"{net}." not in routes:
            return net
    raise RuntimeError("no free /24 in 198.18.0.0/15")


class Namespaces:
    """Two namespaces c (coordinator) and w (worker) joined by a veth pair, and the root
    namespace joined to c by another."""

    def __init__(self) -> None:
        pid = os.getpid()
        self.c, self.w = f"{PREFIX}{pid}-c", f"{PREFIX}{pid}-w"
        net = free_subnet()
        self.c_addr, self.w_addr, self.root_gw = f"{net}.1", f"{net}.2", f"{net}.5"
        self.made: list[str] = []
        try:
            for ns in (self.c, self.w):
                ip("netns", "add", ns)
                self.made.append(ns)
                ip("link", "set", "lo", "up", ns=ns)
            ip("link", "add", f"pfc{pid}", "netns", self.c, "type", "veth",
               "peer", "name", f"pfw{pid}", "netns", self.w)
            ip("link", "add", f"{LINK_PREFIX}{pid}", "type", "veth",
               "peer", "name", f"pfh{pid}", "netns", self.c)
            for ns, dev, addr in ((self.c, f"pfc{pid}", f"{self.c_addr}/30"),
                                  (self.w, f"pfw{pid}", f"{self.w_addr}/30"),
                                  (self.c, f"pfh{pid}", f"{self.root_gw}/30"),
                                  (None, f"{LINK_PREFIX}{pid}", f"{net}.6/30")):
                ip("addr", "add", addr, "dev", dev, ns=ns)
                ip("link", "set", dev, "up", ns=ns)
            ip("route", "add", f"{net}.0/30", "via", self.root_gw)
        except BaseException:
            self.remove()
            raise

    def inode(self, ns: str) -> str:
        """How ``/proc/<pid>/ns/net`` reads for a process in namespace ``ns``."""
        return f"net:[{os.stat(f'/run/netns/{ns}').st_ino}]"

    def exec(self, ns: str, *command: str) -> list[str]:
        """``command`` run in namespace ``ns``. ``ip netns exec`` execs it, so the pid of
        the process started is the command's own (a signal reaches it)."""
        return ["ip", "netns", "exec", ns, *command]

    def remove(self) -> None:
        for ns in reversed(self.made):      # the veths, their peers and the route go too
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False,
                           timeout=T)
        self.made.clear()


@pytest.fixture(scope="module")
def netns():
    reason = None
    if shutil.which("ip") is None:
        reason = "no `ip` command (iproute2)"
    else:
        try:
            remove_leftovers()
            spaces = Namespaces()
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            reason = str(exc)
    if reason is not None:
        pytest.skip(f"network namespaces unavailable: {reason}")
    try:
        yield spaces
    finally:
        spaces.remove()


def pyfora_worker(netns: Namespaces, url: str, *args: str) -> list[str]:
    """``pyfora-worker URL ...`` (the installed console script) in namespace w."""
    return netns.exec(netns.w, os.path.join(os.path.dirname(sys.executable), "pyfora-worker"),
                      url, *args)


def run_to_end(command: list[str]) -> subprocess.CompletedProcess:
    """Run a command that should exit by itself (killed if it does not in time)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYFORA_TOKEN", "PYFORA_WORKER_TOKEN")}
    return subprocess.run(command, capture_output=True, text=True, timeout=T, env=env,
                          check=False)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(T)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(T)


@pytest.fixture(scope="module")
def coordinator(netns, tmp_path_factory):
    worker_token = tmp_path_factory.mktemp("tokens") / "worker-token"
    worker_token.write_text(WORKER_TOKEN + "\n")
    cluster = ClusterProcess(0, "--host", netns.c_addr, "--token", TOKEN,
                             "--worker-token-file", str(worker_token),
                             command=netns.exec(netns.c, sys.executable, "-m", "cluster"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def remote(netns, coordinator):
    """``pyfora-worker ws://c:port --token W --name remote-1`` in w, once it has joined."""
    ws_url = coordinator.url.replace("http://", "ws://")
    command = pyfora_worker(netns, ws_url, "--token", WORKER_TOKEN, "--name", "remote-1")
    worker = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        with pyfora.connect(coordinator.url, token=TOKEN) as ufora:
            wait_until(lambda: worker.poll() is not None or names(ufora) == ["remote-1"], T,
                       "remote-1 to join")
            assert worker.poll() is None, worker.stderr.read()
        yield worker
    finally:
        stop(worker)


@pytest.fixture
def ufora(coordinator, remote):
    with pyfora.connect(coordinator.url, token=TOKEN) as executor:
        yield executor


def names(ufora) -> list[str]:
    return [w["name"] for w in ufora.status()["workers"]]


def where(peer: str) -> tuple[str, str]:
    """Which network namespace this runs in, and the address it reaches ``peer`` from."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((peer, 9))            # UDP: picks the route, sends nothing
        return os.readlink("/proc/self/ns/net"), probe.getsockname()[0]


def test_the_remote_worker_joins_and_runs_tasks_and_blocks(netns, ufora):
    assert names(ufora) == ["remote-1"]
    proxy = ufora.submit(where, netns.c_addr).result(timeout=T)
    assert proxy.toLocal().result(timeout=T) == (netns.inode(netns.w), netns.w_addr)
    assert netns.inode(netns.w) != os.readlink("/proc/self/ns/net")

    peer = netns.c_addr
    with ufora.remotely.downloadAll():
        ran_at = where(peer)
    assert ran_at == (netns.inode(netns.w), netns.w_addr)

    with ufora.remotely:                    # results stay on remote-1 as proxies
        squares = [x * x for x in range(10_000)]
    assert isinstance(squares, pyfora.RemotePythonObject)
    assert squares.toLocal().result(timeout=T) == [x * x for x in range(10_000)]


def test_a_worker_with_a_wrong_token_is_refused(netns, coordinator, ufora):
    ws_url = coordinator.url.replace("http://", "ws://")
    intruder = run_to_end(pyfora_worker(netns, ws_url, "--token", "wrong", "--name", "intruder"))
    assert intruder.returncode != 0
    err = intruder.stderr
    assert "refused the worker token" in err and "--token" in err and "Traceback" not in err
    assert names(ufora) == ["remote-1"]


def test_a_coordinator_out_of_reach_is_reported_clearly(netns):
    # Nothing listens on port 9 of c: the worker says so, without a traceback.
    lost = run_to_end(pyfora_worker(netns, f"ws://{netns.c_addr}:9", "--token", WORKER_TOKEN))
    assert lost.returncode != 0
    err = lost.stderr
    assert f"cannot reach the coordinator at ws://{netns.c_addr}:9" in err
    assert "Traceback" not in err


def test_killing_the_remote_worker_fails_its_task(ufora, remote):
    # Last in the module: remote-1 is shared by the tests above and does not come back.
    future = ufora.submit(time.sleep, 60)
    wait_until(lambda: ufora.status()["workers"][0]["state"] == "busy", T,
               "the task to start on remote-1")
    remote.kill()
    with pytest.raises(pyfora.WorkerCrashedError) as info:
        future.result(timeout=T).toLocal().result(timeout=T)
    assert info.value.workerId == "remote-1"
    assert "disconnected" in str(info.value)
    wait_until(lambda: names(ufora) == [], T, "remote-1 to leave the status")
