"""Faults injected with real processes: workers that ``os._exit``, segfault, get
``kill -9`` or go over ``--memory-limit``; retries; objects lost with their worker and
computed again from lineage; a chaos run killing workers at random; SIGTERM on the
coordinator, a coordinator killed under a worker started by hand; timeouts; cancellation
at every stage; the tasks queued on a worker (their order while an input is fetched, a
cancel that overtakes a start, an input that cannot be loaded there)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
from conftest import (UNIT, ClusterProcess, alive, async_wait_until, busy, http_status,
                      wait_until)

import pyfora
from pyfora import aio

T = 30 * UNIT
BIG = 200_000          # bytes: over the inline limit, so only a worker holds the value
SMALL = 70_000         # just over it


# -- what tasks do ------------------------------------------------------------------

def exit_now(code):
    os._exit(code)


def segfault():
    import ctypes
    ctypes.string_at(0)


def hog(megabytes):
    block = bytearray(megabytes << 20)
    for i in range(0, len(block), 4096):     # touch every page: make it resident
        block[i] = 1
    time.sleep(30)
    return len(block)


def crash_once(marker):
    """Dies the first time (per marker file), answers the second."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(7)
    return "second time lucky"


def make_blob(seed, size=BIG):
    return bytes([seed % 256]) * size


def blob_sum(blob, extra=0):
    return sum(blob[:1000]) + len(blob) + extra


def mix(a, b):
    return bytes(x ^ y for x, y in zip(a, b))


def square(x):
    return x * x


def until_file(path, then_exit):
    """Runs until ``path`` exists (30 s at most), then exits its worker or returns."""
    deadline = time.monotonic() + 30
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    if then_exit:
        os._exit(9)
    return "released"


def log_line(path, word, *inputs):
    """Appends ``word`` to the file at ``path`` (what ran, in the order it ran); ``inputs``
    are only there to be fetched."""
    with open(path, "a") as log:
        log.write(word + "\n")
    return word


def refuse_to_load(why):
    raise ValueError(why)


class Unloadable:
    """Pickled anywhere; raises where it is unpickled (a worker fetching it as an input)."""

    def __reduce__(self):
        return refuse_to_load, ("this value cannot be loaded here",)


# -- helpers --------------------------------------------------------------------------

def worker_pids(cluster: ClusterProcess) -> dict[str, int]:
    """Live worker processes of ``cluster`` by name."""
    found = {}
    for child in psutil.Process(cluster.pid).children():
        try:
            cmdline = child.cmdline()
        except psutil.Error:
            continue
        if "--name" in cmdline and alive(child.pid):
            found[cmdline[cmdline.index("--name") + 1]] = child.pid
    return found


def full_strength(cluster: ClusterProcess, count: int) -> None:
    wait_until(lambda: len(http_status(cluster.url)["workers"]) == count
               and len(worker_pids(cluster)) == count, T, f"{count} workers")


def kill_all_workers(cluster: ClusterProcess, count: int) -> None:
    before = set(worker_pids(cluster).values())
    for pid in before:
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not before & set(worker_pids(cluster).values()), T, "the kills")
    full_strength(cluster, count)


@pytest.fixture(scope="module")
def cluster():
    cluster = ClusterProcess(2)
    yield cluster
    cluster.stop()


@pytest.fixture
def ex(cluster):
    full_strength(cluster, 2)
    with pyfora.connect(cluster.url) as executor:
        yield executor


# -- a worker dies ----------------------------------------------------------------------

@pytest.mark.parametrize("fn, args, words", [
    (exit_now, (3,), "exited with code 3"),
    (segfault, (), "SIGSEGV"),
])
def test_a_dying_worker_fails_its_task_only_and_is_replaced(cluster, ex, fn, args, words):
    slow = ex.submit(busy, 1.0)
    crashed = ex.submit(fn, *args).result(T)
    assert crashed.failed
    with pytest.raises(pyfora.WorkerCrashedError, match=words):
        crashed.toLocal().result(T)
    assert slow.result(T).toLocal().result(T) == "finished"
    full_strength(cluster, 2)
    assert ex.submit(square, 9).result(T).toLocal().result(T) == 81


def test_kill_9_of_a_running_task(cluster, ex):
    future = ex.submit(busy, 20.0)
    status = wait_until(lambda: (s := http_status(cluster.url))["tasks"]["running"] == 1 and s,
                        T, "the task to start")
    name = next(w["name"] for w in status["workers"] if w["state"] == "busy")
    os.kill(worker_pids(cluster)[name], signal.SIGKILL)
    with pytest.raises(pyfora.WorkerCrashedError, match="SIGKILL"):
        future.result(T).toLocal().result(T)
    full_strength(cluster, 2)


def test_retries_run_it_again(cluster, ex, tmp_path):
    assert ex.submit(crash_once, str(tmp_path / "m1"), retries=1).result(T).toLocal().result(
        T) == "second time lucky"
    with pytest.raises(pyfora.WorkerCrashedError, match="code 7"):
        ex.submit(crash_once, str(tmp_path / "m2")).result(T).toLocal().result(T)
    full_strength(cluster, 2)


def test_lost_objects_are_recomputed_from_lineage(cluster, ex):
    defined = ex.define(make_blob(5)).result(T)            # kept by the coordinator
    first = ex.submit(make_blob, 1).result(T)
    second = ex.submit(mix, first, defined).result(T)
    del first      # dormant now: only second's recipe needs it
    chained = ex.submit(blob_sum, second, 1).result(T)
    expected_second = mix(make_blob(1), make_blob(5))
    rebuilt = http_status(cluster.url)["lineage"]["rebuilt"]
    kill_all_workers(cluster, 2)
    # A task using the lost object: it is computed again first (and so is its input).
    assert ex.submit(blob_sum, second).result(T).toLocal().result(T) == blob_sum(
        expected_second)
    assert second.toLocal().result(T) == expected_second
    assert chained.toLocal().result(T) == blob_sum(expected_second, 1)   # inline: kept
    assert ex.submit(len, defined).result(T).toLocal().result(T) == BIG
    assert http_status(cluster.url)["lineage"]["rebuilt"] >= rebuilt + 2
    # A download of a lost object rebuilds it too.
    third = ex.submit(make_blob, 3).result(T)
    kill_all_workers(cluster, 2)
    assert third.toLocal().result(T) == make_blob(3)


def test_lineage_records_go_when_the_proxies_do(cluster, ex):
    wait_until(lambda: http_status(cluster.url)["objects"]["count"] == 0, T, "a clean start")
    base = ex.submit(make_blob, 1).result(T)
    chain = [base]
    for i in range(5):
        chain.append(ex.submit(mix, chain[-1], base).result(T))
    del base
    chain = chain[-1:]          # every step but the last is dormant: kept as lineage only
    # releases are messages: wait for the directory to settle, then check it exactly
    wait_until(lambda: http_status(cluster.url)["objects"]["count"] == 1, T,
               "the dropped proxies' releases")
    status = http_status(cluster.url)
    assert status["objects"]["count"] == 1 and status["lineage"]["records"] == 6
    chain.clear()
    wait_until(lambda: http_status(cluster.url)["lineage"]["records"] == 0, T,
               "every record to go")


def test_memory_limit():
    # Above a worker's own size once its compiled tier has warmed up (numba and LLVM:
    # about 160 MiB resident), which it does before joining.
    cluster = ClusterProcess(1, "--memory-limit", "300MiB")
    try:
        with pyfora.connect(cluster.url) as ex:
            proxy = ex.submit(hog, 600).result(T)
            with pytest.raises(pyfora.WorkerCrashedError, match="memory limit"):
                proxy.toLocal().result(T)
            full_strength(cluster, 1)
            assert ex.submit(square, 4).result(T).toLocal().result(T) == 16
    finally:
        cluster.stop()


def test_chaos_kill_9_at_random_while_200_tasks_pass_proxies(cluster):
    """200 tasks in waves, each using proxies made by the wave before (then dropped, so
    a lost object may need its whole history rebuilt), while a worker is killed (SIGKILL)
    0.4 to 0.9 s after the last one was replaced, 12 times. Every result is right or a
    WorkerCrashedError; nothing hangs; the cluster ends with its two workers."""
    full_strength(cluster, 2)
    # Each kill loses the history of what the killed worker held, to be computed again:
    # with no end to the kills a loaded machine could fall behind for ever.
    max_kills = 12
    rng = random.Random(1234)
    stop = threading.Event()
    kills = []

    def killer():
        # Each kill comes 0.4 to 0.9 s after the cluster is back to two workers: a
        # replacement takes half a second or more to start on a small, loaded machine, and
        # killing faster than that would leave no worker to make progress with at all.
        def joined() -> set[str]:
            return {w["name"] for w in http_status(cluster.url)["workers"]}

        while len(kills) < max_kills and not stop.wait(rng.uniform(0.4, 0.9)):
            pids = worker_pids(cluster)
            name = rng.choice(sorted(joined() & pids.keys()) or [None])
            if name is None:
                continue
            try:
                os.kill(pids[name], signal.SIGKILL)
            except ProcessLookupError:
                continue
            kills.append(pids[name])
            while not stop.is_set() and (name in joined() or len(joined()) < 2):
                stop.wait(0.05)

    async def workload():
        async with aio.connect(cluster.url) as ex:
            wave = [await ex.submit(make_blob, i, SMALL, retries=3) for i in range(10)]
            expected = [make_blob(i, SMALL) for i in range(10)]
            results, crashed = 0, 0
            while results + crashed < 190 or len(kills) < 5:    # 200 tasks at least
                pairs = [(rng.randrange(len(wave)), rng.randrange(len(wave)))
                         for _ in range(10)]
                submitted = await asyncio.gather(*(
                    ex.submit(mix, wave[a], wave[b], retries=3) for a, b in pairs))
                new_wave, new_expected = [], []
                for (a, b), proxy in zip(pairs, submitted):
                    want = mix(expected[a], expected[b])
                    try:
                        value = await proxy.toLocal()
                    except pyfora.WorkerCrashedError:
                        crashed += 1
                        continue
                    assert value == want
                    results += 1
                    new_wave.append(proxy)
                    new_expected.append(want)
                if new_wave:
                    wave, expected = new_wave, new_expected
                await asyncio.sleep(0.05)
            return results, crashed

    thread = threading.Thread(target=killer, daemon=True)
    started = time.monotonic()
    thread.start()
    try:
        results, crashed = asyncio.run(asyncio.wait_for(workload(), 60 * UNIT))
    finally:
        stop.set()
        thread.join(T)
    elapsed = time.monotonic() - started
    print(f"chaos: {len(kills)} kills in {elapsed:.1f} s")
    assert len(kills) >= 5, "the chaos did not happen"
    assert results + crashed >= 190 and results > crashed
    full_strength(cluster, 2)
    print(f"chaos: {results} right, {crashed} WorkerCrashedError, {len(kills)} kills, "
          f"{elapsed:.1f} s, rebuilt {http_status(cluster.url)['lineage']['rebuilt']}")


# -- the coordinator stops; timeouts; cancellation -----------------------------------

def test_sigterm_on_the_coordinator_fails_pending_futures_and_leaves_no_process():
    cluster = ClusterProcess(2)
    pids = [cluster.pid, *cluster.worker_pids()]
    ex = pyfora.connect(cluster.url)
    try:
        pending = [ex.submit(busy, 30.0) for _ in range(3)]
        wait_until(lambda: http_status(cluster.url)["tasks"]["running"] == 2, T, "running")
        cluster.signal(signal.SIGTERM)
        for future in pending:
            with pytest.raises(ConnectionError):
                future.result(T)
        assert cluster.wait(T) == 0
        wait_until(lambda: not any(alive(pid) for pid in pids), T, "no process left")
    finally:
        ex.close()
        if cluster.proc.poll() is None:
            cluster.proc.kill()


def test_a_hand_started_worker_exits_with_its_coordinator_even_mid_task():
    """The task thread does not hold the process: a worker whose coordinator is gone
    exits at once, not when its task ends."""
    cluster = ClusterProcess(0)
    worker = subprocess.Popen([sys.executable, "-m", "cluster.worker.main", cluster.url,
                               "--name", "by-hand"])
    ex = pyfora.connect(cluster.url)
    try:
        wait_until(lambda: ex.getWorkerCount() == 1, T, "the worker to join")
        ex.submit(busy, 10 * T)
        wait_until(lambda: ex.status()["tasks"]["running"] == 1, T, "running")
        cluster.proc.kill()
        assert worker.wait(T) == 0
    finally:
        ex.close()
        cluster.stop()
        if worker.poll() is None:
            worker.kill()
            worker.wait(T)


def test_submit_timeout_cancels_on_the_cluster(cluster, ex):
    started = time.monotonic()
    with pytest.raises(pyfora.PyforaTimeoutError, match="cancelled"):
        ex.submit(busy, 20.0, timeout=0.5).result(T)
    assert time.monotonic() - started < 5 * UNIT
    wait_until(lambda: http_status(cluster.url)["tasks"]["running"] == 0, T, "the cancel")


def test_result_timeout_leaves_the_computation_running(ex):
    future = ex.submit(busy, 1.0)
    with pytest.raises(pyfora.PyforaTimeoutError):
        future.result(timeout=0.1)
    assert future.result(T).toLocal().result(T) == "finished"


def test_cancel_queued_running_and_fetching_keeps_workers_and_directory_sound(one_worker_url):
    def objects():
        return http_status(one_worker_url)["objects"]["count"]

    with pyfora.connect(one_worker_url) as ex:
        wait_until(lambda: objects() == 0, T, "a clean start")
        running = ex.submit(busy, 20.0)
        wait_until(lambda: http_status(one_worker_url)["tasks"]["running"] == 1, T, "start")
        queued = ex.submit(busy, 20.0)
        wait_until(lambda: http_status(one_worker_url)["tasks"]["queued"] == 1, T, "queue")
        assert queued.cancel() and running.cancel()
        wait_until(lambda: http_status(one_worker_url)["tasks"] == {
            **http_status(one_worker_url)["tasks"], "queued": 0, "running": 0}, T, "idle")
        big = ex.submit(make_blob, 9).result(T)
        fetching = big.toLocal()
        fetching.cancel()
        assert ex.submit(square, 3).result(T).toLocal().result(T) == 9   # worker usable
        assert big.toLocal().result(T) == make_blob(9)
        wait_until(lambda: objects() == 1, T, "one live object")   # the square's proxy died
        del big
        wait_until(lambda: objects() == 0, T, "everything released")


# -- tasks queued in a worker's window (cluster.scheduling.dispatcher) --------------

@pytest.fixture
async def windowed(monkeypatch):
    """An embedded cluster of one worker whose window opens after any task (whatever the
    machine's load makes the tasks' times), so tasks queue on the worker itself. It opens
    within a stream of tasks: each test starts its stream with ``square(1)``."""
    from cluster.scheduling import dispatcher
    monkeypatch.setattr(dispatcher, "QUEUED_WORK", 3600.0)
    async with aio.connect(None, workers=1) as executor:
        yield executor


async def window(ex) -> int:
    return (await ex.status())["workers"][0]["window"]


async def _equals(awaitable, value) -> bool:
    return await awaitable == value


async def test_a_worker_dying_with_tasks_in_its_window_fails_the_running_one_only(
        windowed, tmp_path):
    marker = tmp_path / "go"
    first = asyncio.ensure_future(windowed.submit(square, 1))
    crasher = asyncio.ensure_future(windowed.submit(until_file, str(marker), True))
    queued = [asyncio.ensure_future(windowed.submit(square, i)) for i in range(10)]
    assert await (await asyncio.wait_for(first, T)).toLocal() == 1
    await async_wait_until(lambda: _equals(window(windowed), 11), T, "all 11 in its window")
    marker.touch()
    with pytest.raises(pyfora.WorkerCrashedError, match="code 9"):
        await (await asyncio.wait_for(crasher, T)).toLocal()
    # The queued ones never started: they run on the replacement, not fail.
    results = await asyncio.wait_for(asyncio.gather(*queued), T)
    assert [await r.toLocal() for r in results] == [i * i for i in range(10)]


async def test_a_task_cancelled_in_a_workers_window_never_runs(windowed, tmp_path):
    marker, ran = tmp_path / "go", tmp_path / "ran"
    first = asyncio.ensure_future(windowed.submit(square, 1))
    running = asyncio.ensure_future(windowed.submit(until_file, str(marker), False))
    queued = asyncio.ensure_future(windowed.submit(until_file, str(ran), False))
    assert await (await asyncio.wait_for(first, T)).toLocal() == 1
    await async_wait_until(lambda: _equals(window(windowed), 2), T, "both in the window")
    queued.cancel()
    marker.touch()
    assert await (await asyncio.wait_for(running, T)).toLocal() == "released"
    with pytest.raises(asyncio.CancelledError):
        await queued
    await async_wait_until(lambda: _equals(window(windowed), 0), T, "the window to empty")
    assert await (await windowed.submit(square, 6)).toLocal() == 36     # worker usable
    assert (await windowed.status())["tasks"]["queued"] == 0


async def test_long_tasks_after_a_stream_of_short_ones_are_not_queued_on_a_worker(
        monkeypatch, tmp_path):
    """Windows open within a stream of short tasks; a worker left idle starts from one,
    so a burst of long tasks waits centrally for whichever worker is free first."""
    from cluster.scheduling import dispatcher
    monkeypatch.setattr(dispatcher, "QUEUED_WORK", 3600.0)
    marker = tmp_path / "go"
    async with aio.connect(None, workers=2) as ex:
        await asyncio.wait_for(asyncio.gather(*(ex.submit(square, i) for i in range(50))), T)
        long = [asyncio.ensure_future(ex.submit(until_file, str(marker), False))
                for _ in range(4)]

        async def windows():
            status = await ex.status()
            return sorted(w["window"] for w in status["workers"]), status["tasks"]["queued"]
        await async_wait_until(lambda: _equals(windows(), ([1, 1], 2)), T,
                               "one long task per worker, two waiting centrally")
        marker.touch()
        for proxy in await asyncio.wait_for(asyncio.gather(*long), T):
            assert await proxy.toLocal() == "released"


async def test_tasks_behind_one_fetching_its_input_wait_for_it(windowed, tmp_path):
    """The worker fetches an input it does not hold (a defined value: the coordinator has
    it) before its task starts; the tasks that reach it meanwhile wait, in order."""
    marker, log = tmp_path / "go", tmp_path / "log"
    blob = await windowed.define(make_blob(5, 8_000_000))   # a fetch that takes a while
    running = asyncio.ensure_future(windowed.submit(until_file, str(marker), False))
    fetching = asyncio.ensure_future(windowed.submit(log_line, str(log), "fetching", blob))
    behind = [asyncio.ensure_future(windowed.submit(log_line, str(log), f"behind {i}"))
              for i in range(5)]

    async def queued():
        return (await windowed.status())["tasks"]["queued"]
    await async_wait_until(lambda: _equals(queued(), 6), T, "6 tasks queued behind one")
    # The running task took long enough to open the window wide: when it ends, the 6
    # are sent together, and the 5 reach the worker while it fetches the first's input.
    marker.touch()
    assert await (await asyncio.wait_for(running, T)).toLocal() == "released"
    assert await (await asyncio.wait_for(fetching, T)).toLocal() == "fetching"
    await asyncio.wait_for(asyncio.gather(*behind), T)
    assert log.read_text().splitlines() == ["fetching"] + [f"behind {i}" for i in range(5)]


async def test_a_cancel_that_overtakes_its_tasks_start_stops_it_there(windowed, tmp_path):
    """A Cancel the worker reads while the task waits behind another (here one with an
    input to fetch) is kept: the task never runs, the one after it does."""
    marker, log = tmp_path / "go", tmp_path / "log"
    blob = await windowed.define(make_blob(6))
    first = asyncio.ensure_future(windowed.submit(make_blob, 7))   # held by the worker only
    running = asyncio.ensure_future(windowed.submit(until_file, str(marker), False))
    queued = asyncio.ensure_future(windowed.submit(log_line, str(log), "cancelled", blob))
    after = asyncio.ensure_future(windowed.submit(log_line, str(log), "after"))
    held = await asyncio.wait_for(first, T)
    await async_wait_until(lambda: _equals(window(windowed), 3), T, "all 3 in its window")
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued        # its Cancel is posted: the fetch below follows it
    # The worker answers the fetch after it has read the Cancel (one connection, in order).
    assert await asyncio.wait_for(held.toLocal(), T) == make_blob(7)
    marker.touch()
    assert await (await asyncio.wait_for(running, T)).toLocal() == "released"
    assert await (await asyncio.wait_for(after, T)).toLocal() == "after"
    assert log.read_text().splitlines() == ["after"]


async def test_an_input_the_worker_cannot_load_fails_its_task_only(windowed):
    value = await windowed.define(Unloadable())
    failing = await asyncio.wait_for(windowed.submit(log_line, os.devnull, "ran", value), T)
    with pytest.raises(pyfora.ComputationError, match="cannot be loaded here"):
        await asyncio.wait_for(failing.toLocal(), T)
    assert await (await asyncio.wait_for(windowed.submit(square, 5), T)).toLocal() == 25



def _pid_once_warm() -> int:
    """This worker's pid, once its compiled tier has warmed up (numba's import grows a
    worker's memory once, on a thread of its own; a worker starts it after its first
    task, and this may be that task)."""
    from pyfora import compiled
    compiled.start_warm_up()
    compiled.wait_warm()
    return os.getpid()


async def test_a_tasks_arguments_are_freed_when_it_ends_not_when_the_next_comes(windowed):
    """The task thread waits for the next task without holding the last one."""
    pid = await (await asyncio.wait_for(windowed.submit(_pid_once_warm), T)).toLocal()
    worker = psutil.Process(pid)
    base = worker.memory_info().rss
    big = bytes(200 << 20)          # through shared memory; read into the worker's memory
    size = await asyncio.wait_for(windowed.submit(len, big), T)
    assert await asyncio.wait_for(size.toLocal(), T) == len(big)
    del big
    # No other task is sent: the memory must go with the task.
    await async_wait_until(lambda: worker.memory_info().rss < base + (100 << 20), 10 * UNIT,
                           "the worker to free the task's 200 MB argument")
