"""The progress line (``pyfora/aio/progress.py``): when it shows, what it says, and that
a with-block running in a real terminal shows it while redirected output stays clean; a
map's count of elements done, from the runtime's count (``pyfora.parallel._runtime``)
through the coordinator to the line."""

from __future__ import annotations

import asyncio
import fcntl
import io
import os
import pickle
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import textwrap
import time

import pytest
from conftest import UNIT, wait_idle

from pyfora import wire as p
from pyfora import serialization
from pyfora.aio import progress
from pyfora.parallel import _runtime


class Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize("setting, env, tty, expected", [
    (None, None, True, True),          # a terminal: on
    (None, None, False, False),        # redirected: off
    (None, "0", True, False),          # the environment turns it off
    (None, "1", False, True),          # ... or on, even when redirected
    (False, "1", True, False),         # the argument wins over the environment
    (True, "0", False, True),
])
def test_when_it_shows(monkeypatch, setting, env, tty, expected):
    if env is None:
        monkeypatch.delenv(progress.ENV, raising=False)
    else:
        monkeypatch.setenv(progress.ENV, env)
    assert progress.wanted(setting, Stream(tty)) is expected


def test_describe():
    assert progress.describe(None) == ""
    assert progress.describe({"cpus": 2, "workers": 4, "queued": 0}) == "2/4 cores busy"
    status = {"workers": [{"state": "busy"}, {"state": "idle"}], "tasks": {"queued": 3}}
    assert progress.describe(status) == "1/2 cores busy, 3 queued"


async def test_line_appears_after_the_delay_and_is_removed():
    out = Stream(tty=True)
    polls = 0

    async def poll():
        nonlocal polls
        polls += 1
        return {"cpus": 2, "workers": 2, "queued": 5}

    line = progress.Progress("with-block", poll=poll, file=out, delay=0.3)
    task = asyncio.create_task(line.run())
    await asyncio.sleep(0.1)
    assert out.getvalue() == "" and polls == 0          # a short call shows nothing
    deadline = time.monotonic() + 5 * UNIT
    while "2/2 cores busy, 5 queued" not in out.getvalue():
        assert time.monotonic() < deadline, out.getvalue()
        await asyncio.sleep(0.02)
    assert "with-block, " in out.getvalue()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert line.bar.disable                 # closed: tqdm sets it on close()
    assert out.getvalue().endswith("\r")    # leave=False: the line was wiped


async def test_elements_done_where_known():
    out = Stream(tty=True)
    line = progress.Progress("map", total=10, file=out, delay=0)
    line.report({"cpus": 1, "workers": 2, "queued": 0})
    line.advance(4)
    line.draw()
    assert "4/10" in out.getvalue() and " 40%" in out.getvalue()
    assert "1/2 cores busy" in out.getvalue()
    line.bar.close()


def test_count_learns_the_total_and_redraws_with_a_bar():
    out = Stream(tty=True)
    line = progress.Progress("map", file=out, delay=0)     # over a proxy: no total yet
    line.draw()
    assert "/" not in out.getvalue().replace("cores busy", "")
    line.count(3, 12)
    line.draw()
    assert "3/12" in out.getvalue() and " 25%" in out.getvalue()
    line.count(2, 12)                   # an older count never moves the line back
    assert line.done == 3
    line.bar.close()


class CountingContext:
    """A worker context in-process: ``idle`` workers, pieces run at once on this thread
    (as another worker would run them, through ``run_piece``), counts recorded."""

    name = "test-worker"

    def __init__(self, idle: int) -> None:
        self.idle_workers = idle
        self.counts: list[tuple[int, int]] = []
        self.piece_counts: list[tuple[int, int]] = []
        self.in_piece = False
        self.ids = p.RequestIds()

    def idle(self) -> int:
        return self.idle_workers

    def start_piece(self, payload, on_reply) -> int:
        rid = self.ids()
        fn, args, kwargs = serialization.loads(payload)
        self.in_piece = True
        try:
            value = pickle.dumps(fn(*args, **kwargs))
        finally:
            self.in_piece = False
        on_reply(p.Done(id=rid, oid=0, size=len(value), type="tuple", value=value))
        return rid

    def split(self, rid):
        return None

    def cancel(self, rid) -> None:
        pass

    def set_splittable(self, state) -> None:
        pass

    def progress(self, done: int, total: int) -> None:
        (self.piece_counts if self.in_piece else self.counts).append((done, total))


def slow_square(x):
    end = time.perf_counter() + 0.0005
    while time.perf_counter() < end:
        pass
    return x * x


@pytest.mark.parametrize("idle", [0, 2])    # alone; split into pieces
def test_a_map_counts_each_element_once(monkeypatch, idle):
    context = CountingContext(idle)
    monkeypatch.setattr(_runtime, "_context", context)
    monkeypatch.setattr(_runtime, "REPORT_DELAY", 0.0)
    monkeypatch.setattr(_runtime, "REPORT", 0.0)        # every count is sent
    items = list(range(400))
    assert _runtime.pmap(slow_square, items) == [x * x for x in items]
    done = [d for d, _ in context.counts]
    assert {t for _, t in context.counts} == {400}
    assert done == sorted(done) and len(set(done)) > 2, done
    assert done[-1] == 400          # pieces and local batches, none counted twice
    assert bool(context.piece_counts) == (idle > 0)    # pieces count their own too


def test_no_count_for_a_short_map_or_a_comprehension(monkeypatch):
    context = CountingContext(0)
    monkeypatch.setattr(_runtime, "_context", context)
    monkeypatch.setattr(_runtime, "REPORT_DELAY", 60.0)    # a map shorter than that
    assert _runtime.pmap(slow_square, range(400)) == [x * x for x in range(400)]
    monkeypatch.setattr(_runtime, "REPORT_DELAY", 0.0)
    assert _runtime.listcomp(range(400), lambda it: list(map(slow_square, it)))[-1] == 399 ** 2
    assert context.counts == []


class Peer:
    """A session or worker link as the dispatcher sees one: what it was sent."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False
        self.task = None
        self.sent: list = []

    def send(self, message) -> None:
        self.sent.append(message)


def test_coordinator_adds_running_pieces_to_the_roots_count(monkeypatch):
    from cluster.scheduling import backend, dispatcher
    from cluster.coordinator.store import ObjectStore
    monkeypatch.setattr(backend, "PROGRESS_EVERY", 0.0)
    coordinator = dispatcher.Dispatcher(ObjectStore())
    client, a, b = Peer("client"), Peer("a"), Peer("b")
    coordinator.worker_joined(a)
    coordinator.worker_joined(b)
    coordinator.submit(client, p.Submit(id=7, payload=b"map"))
    root = a.task
    coordinator.piece(a, p.Piece(id=1, payload=b"piece"))
    piece = b.task

    def counts():
        return [(m.target, m.done, m.total) for m in client.sent
                if isinstance(m, p.Progress)]
    coordinator.task_progress(a, p.Progress(target=root.tid, done=30, total=100))
    coordinator.task_progress(b, p.Progress(target=piece.tid, done=20, total=50))
    assert counts() == [(7, 30, 100), (7, 50, 100)]     # the client's id; the map's total
    # The piece returns: the root counts its 50 from now on, the coordinator stops.
    coordinator.task_done(b, p.Done(id=piece.tid, oid=piece.oid, size=1, type="t",
                                    value=b"v"))
    coordinator.task_progress(a, p.Progress(target=root.tid, done=80, total=100))
    coordinator.task_progress(b, p.Progress(target=piece.tid, done=50, total=50))  # late
    assert counts()[2:] == [(7, 80, 100)]


async def test_async_map_feeds_the_line_with_counts(aex, monkeypatch):
    counts: list[tuple[int, int]] = []
    count = progress.Progress.count

    def spy(self, done, total):
        counts.append((done, total))
        count(self, done, total)
    monkeypatch.setattr(progress.Progress, "count", spy)
    aex.progress = True
    n = 300
    assert await asyncio.wait_for(aex.map(spin, [0.01 * UNIT] * n), 60 * UNIT) == \
        [0.01 * UNIT] * n
    done = [d for d, _ in counts]
    assert {t for _, t in counts} == {n}
    assert len(done) >= 2 and done == sorted(done) and done[-1] <= n, counts


def spin(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return seconds


async def test_track_is_a_no_op_when_off(monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)

    class Quiet:
        progress = False

    async with progress.track(Quiet(), "with-block") as line:
        assert line is None


SCRIPT = textwrap.dedent("""
    import sys, time
    import pyfora

    def spin(seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pass
        return seconds

    ex = pyfora.connect(sys.argv[1])
    seconds = float(sys.argv[2])       # here: in the block, sys would be the worker's
    with ex.remotely.downloadAll():
        result = spin(seconds)
    print("result", result, flush=True)
    ex.close()
""")


MAP_SCRIPT = textwrap.dedent("""
    import sys, time
    import pyfora

    def spin(seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pass
        return seconds

    ex = pyfora.connect(sys.argv[1])
    seconds = float(sys.argv[2])
    result = list(ex.map(spin, [seconds / 100] * 600))
    print("result", len(result), flush=True)
    ex.close()
""")


def run_script(tmp_path, url: str, stderr_tty: bool, env: dict[str, str],
               script: str = SCRIPT) -> tuple[str, str]:
    """Run ``script`` with stderr on a pseudo-terminal or a pipe; return (stdout, stderr)."""
    path = tmp_path / "block.py"
    path.write_text(script)
    environ = {k: v for k, v in os.environ.items() if k != progress.ENV} | env
    command = [sys.executable, str(path), url, str(1.6 * UNIT)]
    if not stderr_tty:
        done = subprocess.run(command, capture_output=True, text=True, env=environ,
                              timeout=60 * UNIT)
        assert done.returncode == 0, done.stderr
        return done.stdout, done.stderr
    leader, follower = pty.openpty()
    # A new pseudo-terminal is 0 columns wide, where tqdm draws nothing: make it 100.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=follower, env=environ,
                            text=True)
    os.close(follower)
    chunks = []
    deadline = time.monotonic() + 60 * UNIT
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.1)
        if ready:
            try:
                data = os.read(leader, 4096)
            except OSError:          # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(leader)
    stdout = proc.stdout.read()
    stderr = b"".join(chunks).decode(errors="replace")
    assert proc.wait(30 * UNIT) == 0, stderr
    return stdout, stderr


def test_with_block_in_a_terminal_shows_progress(tmp_path, cluster_url):
    wait_idle(cluster_url)
    stdout, stderr = run_script(tmp_path, cluster_url, stderr_tty=True, env={})
    assert stdout.startswith("result ")
    assert "with-block, " in stderr and "cores busy" in stderr, repr(stderr)


def test_redirected_output_stays_clean(tmp_path, cluster_url):
    wait_idle(cluster_url)
    stdout, stderr = run_script(tmp_path, cluster_url, stderr_tty=False, env={})
    assert stdout.startswith("result ")
    assert stderr == ""


def test_environment_turns_it_off_in_a_terminal(tmp_path, cluster_url):
    wait_idle(cluster_url)
    stdout, stderr = run_script(tmp_path, cluster_url, stderr_tty=True,
                                env={progress.ENV: "0"})
    assert stdout.startswith("result ")
    assert "with-block" not in stderr, repr(stderr)


def test_map_in_a_terminal_shows_elements_done(tmp_path, cluster_url):
    wait_idle(cluster_url)
    stdout, stderr = run_script(tmp_path, cluster_url, stderr_tty=True, env={},
                                script=MAP_SCRIPT)
    assert stdout.startswith("result 600")
    counts = [int(n) for n in re.findall(r"\b(\d+)/600\b", stderr)]
    assert len(set(counts)) >= 2, repr(stderr)        # it moved while the map ran
    assert counts == sorted(counts) and counts[-1] > 0 and counts[-1] <= 600, counts
    assert "map: " in stderr and "cores busy" in stderr, repr(stderr)
