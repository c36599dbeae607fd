"""``pyfora._portal``: the bridge from sync code to the loop thread.

A blocking call on the loop thread raises instead of deadlocking; calls from many threads
overlap; Ctrl-C in ``result()`` cancels the work on the loop; after ``fork`` the child gets
a fresh portal; ``close()`` (and interpreter exit) leave no threads or processes behind.
"""

import _thread
import asyncio
import concurrent.futures
import os
import subprocess
import sys
import threading
import time

import psutil
import pytest
from conftest import UNIT, alive, wait_until

import pyfora
from pyfora import _portal
from pyfora.errors import PyforaUsageError

T = 30 * UNIT


@pytest.fixture
def portal():
    return _portal.get_portal()


def test_one_portal_per_process(portal):
    assert _portal.get_portal() is portal
    assert portal.pid == os.getpid()
    assert not portal.on_loop_thread()


def test_call_and_submit(portal):
    async def answer():
        await asyncio.sleep(0)
        return 42

    assert portal.call(answer(), timeout=T) == 42
    future = portal.submit(answer(), wrap=lambda v: v + 1)
    assert isinstance(future, pyfora.Future)
    assert future.result(timeout=T) == 43


def test_exceptions_cross_the_bridge(portal):
    async def boom():
        raise KeyError("k")

    with pytest.raises(KeyError):
        portal.call(boom(), timeout=T)


def test_blocking_call_on_the_loop_thread_raises(portal):
    pending = portal.submit(asyncio.sleep(T))

    async def misuse():
        assert portal.on_loop_thread()
        errors = []
        coro = asyncio.sleep(0)
        try:
            portal.call(coro)
        except PyforaUsageError as exc:
            errors.append(exc)
        finally:
            coro.close()
        try:
            pending.result(timeout=T)
        except PyforaUsageError as exc:
            errors.append(exc)
        return errors

    start = time.monotonic()
    errors = portal.call(misuse(), timeout=T)
    assert len(errors) == 2 and all("event loop thread" in str(e) for e in errors)
    assert time.monotonic() - start < 5 * UNIT
    assert pending.cancel()


def test_timeout_is_a_pyfora_timeout_error_and_the_work_goes_on(portal):
    future = portal.submit(asyncio.sleep(0.3 * UNIT, result="late"))
    with pytest.raises(pyfora.PyforaTimeoutError) as info:
        future.result(timeout=0.01)
    assert isinstance(info.value, TimeoutError)
    assert future.result(timeout=T) == "late"


def test_threads_calling_at_once_overlap(portal):
    spans = []
    lock = threading.Lock()

    def worker():
        start = time.monotonic()
        portal.call(asyncio.sleep(0.5 * UNIT), timeout=T)
        with lock:
            spans.append((start, time.monotonic()))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(T)
    assert len(spans) == 8
    assert max(s for s, _ in spans) < min(e for _, e in spans), "the calls ran one by one"


def test_cancelling_the_future_cancels_the_coroutine(portal):
    cancelled = threading.Event()

    async def long():
        try:
            await asyncio.sleep(T)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    future = portal.submit(long())
    time.sleep(0)   # let it start or not: both must work
    assert future.cancel()
    assert cancelled.wait(T) or not future.running()
    with pytest.raises(pyfora.CancelledError):
        future.result(timeout=T)


def test_a_future_has_every_field_of_a_concurrent_future_and_its_condition_works(portal):
    # pyfora.Future sets concurrent.futures.Future's fields itself (with a lighter
    # condition): a new field there must show here.
    assert set(vars(concurrent.futures.Future())) <= set(vars(pyfora.Future(portal)))
    futures = [portal.submit(asyncio.sleep(i * 0.01, i)) for i in range(4)]
    done, _ = concurrent.futures.wait(futures, timeout=T)
    assert done == set(futures)
    assert [f.result(timeout=T) for f in futures] == [0, 1, 2, 3]
    waiting = pyfora.Future(portal)
    threading.Timer(0.05, waiting.set_result, ["set"]).start()
    assert waiting.result(timeout=T) == "set"


def test_ctrl_c_in_result_cancels_the_work(portal):
    started, cancelled = threading.Event(), threading.Event()

    async def long():
        started.set()
        try:
            await asyncio.sleep(T)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    future = portal.submit(long())
    assert started.wait(T)
    timer = threading.Timer(0.2 * UNIT, _thread.interrupt_main)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            future.result(timeout=T)
    finally:
        timer.cancel()
    assert future.cancelled()
    assert cancelled.wait(T)


def test_after_fork_the_child_gets_a_fresh_portal(portal):
    portal.call(asyncio.sleep(0), timeout=T)     # the parent's loop thread is running
    pid = os.fork()
    if pid == 0:   # the child: report through the exit code, never return into pytest
        code = 1
        try:
            try:
                portal.call(asyncio.sleep(0))
                code = 2
            except PyforaUsageError as exc:
                code = 3 if "fork" not in str(exc) else 0
            coro = asyncio.sleep(0)
            try:
                portal.submit(coro)
                code = code or 5
            except PyforaUsageError:
                pass
            fresh = _portal.get_portal()
            if code == 0 and not (fresh is not portal and fresh.pid == os.getpid()
                                  and fresh.call(asyncio.sleep(0, result=7), 10) == 7):
                code = 4
        finally:
            os._exit(code)
    deadline = time.monotonic() + T
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung")
        time.sleep(0.02)
    assert os.waitstatus_to_exitcode(status) == 0
    assert _portal.get_portal() is portal        # the parent's is untouched


def _threads():
    return {t for t in threading.enumerate() if t.is_alive()}


def test_close_leaves_no_threads_or_processes_behind(portal):
    me = psutil.Process()
    with pyfora.connect(workers=1) as warm:      # first use may start lazy pools
        warm.getWorkerCount()
    threads, children = _threads(), {c.pid for c in me.children(recursive=True)}
    for _ in range(2):
        ex = pyfora.connect(workers=1)
        assert ex.getWorkerCount() == 1
        assert ex.submit(os.getpid).result(timeout=T).toLocal().result(timeout=T) != os.getpid()
        ours = {c.pid for c in me.children(recursive=True)} - children
        assert ours, "the embedded cluster started no worker"
        ex.close()
        assert ex.isClosed()
        wait_until(lambda: not ({c.pid for c in me.children(recursive=True)} - children), T,
                   "the embedded workers to exit")
        wait_until(lambda: _threads() <= threads, T,
                   lambda: f"threads to end: {_threads() - threads}")
        assert not any(alive(pid) for pid in ours)


SCRIPT = """
import os, psutil, pyfora
ex = pyfora.connect()            # embedded: one worker per core, never closed by hand
assert ex.getWorkerCount() == (os.cpu_count() or 1), ex.getWorkerCount()
assert ex.submit(abs, -3).result(30).toLocal().result(30) == 3
print(" ".join(str(c.pid) for c in psutil.Process().children(recursive=True)), flush=True)
"""


def test_interpreter_exit_stops_the_embedded_cluster():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=60 * UNIT)
    assert proc.returncode == 0, proc.stderr
    pids = [int(p) for p in proc.stdout.split()]
    assert len(pids) >= (os.cpu_count() or 1)
    wait_until(lambda: not any(alive(p) for p in pids), T,
               "the embedded workers to exit with the interpreter")
