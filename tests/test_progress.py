"""The progress line (``pyfora/aio/progress.py``): when it shows, what it says, and that
a with-block running in a real terminal shows it while redirected output stays clean."""

from __future__ import annotations

import asyncio
import fcntl
import io
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import textwrap
import time

import pytest
from conftest import UNIT, wait_idle

from pyfora.aio import progress


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


def run_script(tmp_path, url: str, stderr_tty: bool, env: dict[str, str]) -> tuple[str, str]:
    """Run SCRIPT with stderr on a pseudo-terminal or a pipe; return (stdout, stderr)."""
    path = tmp_path / "block.py"
    path.write_text(SCRIPT)
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
