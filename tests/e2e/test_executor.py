"""The synchronous facade end to end: ``pyfora.connect(url)`` against a real coordinator
and real worker subprocesses. Every future is a ``concurrent.futures.Future``."""

import asyncio
import concurrent.futures
import gc
import os
import socket
import threading
import time

import pytest
from conftest import UNIT, ClusterProcess, alive, busy, http_status, wait_until

import pyfora
from pyfora.net import local_tokens

T = 30 * UNIT       # a generous bound for one operation on a loaded machine


def square(x):
    return x * x


def add(a, b=0, *, c=0):
    return a + b + c


def fail(message):
    raise ValueError(message)


def chatty(n):
    for i in range(n):
        print(f"line {i} of task", flush=i % 2 == 0)
    print("to stderr", file=__import__("sys").stderr)
    print("part-", end="")
    print("whole")
    return n


def pid_and_blob(size):
    time.sleep(0.3)
    return os.getpid(), b"x" * size


def test_submit_gives_a_future_of_a_proxy(ufora):
    future = ufora.submit(square, 12)
    assert isinstance(future, concurrent.futures.Future)
    assert isinstance(future, pyfora.Future)
    proxy = future.result(timeout=T)
    assert isinstance(proxy, pyfora.RemotePythonObject)
    assert proxy.typeName == "int" and proxy.size > 0 and not proxy.failed
    local = proxy.toLocal()
    assert isinstance(local, concurrent.futures.Future)
    assert local.result(timeout=T) == 144


def test_define_and_proxy_calls(ufora):
    data = ufora.define([1, 2, 3]).result(timeout=T)
    assert data.typeName == "list"
    assert data.toLocal().result(timeout=T) == [1, 2, 3]
    remote_sum = ufora.define(sum).result(timeout=T)
    remote_add = ufora.define(add).result(timeout=T)
    assert remote_sum(data).result(timeout=T).toLocal().result(timeout=T) == 6
    three = remote_add(1, 2).result(timeout=T)
    assert remote_add(three, b=three, c=1).result(timeout=T).toLocal().result(timeout=T) == 7


def test_proxies_in_arguments_closures_defaults_and_containers(ufora):
    ten = ufora.submit(square, 10).result(timeout=T)      # 100, stays on the cluster
    five = ufora.define(5).result(timeout=T)

    def closure():
        return ten + 1

    def defaults(x=five):
        return x * 2

    def nested(items):
        return [item + 1 for item in items]

    assert ufora.submit(closure).result(timeout=T).toLocal().result(timeout=T) == 101
    assert ufora.submit(defaults).result(timeout=T).toLocal().result(timeout=T) == 10
    assert ufora.submit(nested, [ten, five]).result(timeout=T).toLocal().result(
        timeout=T) == [101, 6]
    assert ufora.submit(add, ten, b=five, c=five).result(timeout=T).toLocal().result(
        timeout=T) == 110
    # a lambda capturing a proxy, itself defined on the cluster, then called
    shifted = ufora.define(lambda y: y + ten).result(timeout=T)
    assert shifted(five).result(timeout=T).toLocal().result(timeout=T) == 105


def test_results_computed_on_one_worker_feed_a_task_on_another(ufora):
    # two concurrent slow tasks on an idle 2-worker cluster run on different workers; their
    # results are too big to ride along, so the consumer pulls one from the other worker
    first, second = ufora.submit(pid_and_blob, 100_000), ufora.submit(pid_and_blob, 200_000)
    a, b = first.result(timeout=T), second.result(timeout=T)
    assert a.size > 64 * 1024 and b.size > 64 * 1024

    def combine(x=a, y=b):
        return x[0], y[0], len(x[1]) + len(y[1])

    pid_a, pid_b, total = ufora.submit(combine).result(timeout=T).toLocal().result(timeout=T)
    assert pid_a != pid_b, "the two producers ran on the same worker"
    assert total == 300_000
    pid, blob = b.toLocal().result(timeout=T)   # not inline: fetched from its worker
    assert pid == pid_b and len(blob) == 200_000


def test_wait_and_as_completed(ufora):
    futures = [ufora.submit(square, i) for i in range(20)]
    done, not_done = concurrent.futures.wait(futures, timeout=T)
    assert not not_done and len(done) == 20
    locals_ = [p.result().toLocal() for p in futures]
    values = sorted(f.result() for f in concurrent.futures.as_completed(locals_, timeout=T))
    assert values == sorted(i * i for i in range(20))


def test_done_callbacks_run_off_the_loop_thread(ufora):
    seen = []
    called = threading.Event()

    def callback(future):
        seen.append((threading.current_thread().name, future.result()))
        called.set()

    future = ufora.submit(square, 3).result(timeout=T).toLocal()
    future.add_done_callback(callback)
    assert called.wait(T)
    name, value = seen[0]
    assert value == 9 and name.startswith("pyfora-callback")


async def test_sync_future_is_awaitable_on_any_loop(ufora):
    proxy = await asyncio.wait_for(ufora.submit(square, 4), T)
    assert await asyncio.wait_for(proxy.toLocal(), T) == 16


def test_remote_exception(ufora):
    proxy = ufora.submit(fail, "remote boom").result(timeout=T)   # the submit itself succeeds
    assert proxy.failed
    with pytest.raises(pyfora.ComputationError) as info:
        proxy.toLocal().result(timeout=T)
    error = info.value
    assert isinstance(error, pyfora.PyforaError)
    assert isinstance(error.remoteException, ValueError)
    assert error.remoteException.args == ("remote boom",)
    assert error.remoteTypeName == "ValueError"
    assert error.workerId and error.workerId.startswith(("worker-", "dask-worker@"))
    assert 'raise ValueError(message)' in error.remoteTraceback
    assert __file__ in error.remoteTraceback and "in fail" in error.remoteTraceback
    assert "cluster" + os.sep not in error.remoteTraceback      # internal frames trimmed
    # a task using the failed value fails with the same error, without running
    with pytest.raises(pyfora.ComputationError, match="remote boom"):
        ufora.submit(square, proxy).result(timeout=T).toLocal().result(timeout=T)


def test_remote_output_appears_on_local_stdout_in_whole_lines(ufora, capfd):
    assert ufora.submit(chatty, 5).result(timeout=T).toLocal().result(timeout=T) == 5
    out, err = capfd.readouterr()
    assert out.splitlines() == [f"line {i} of task" for i in range(5)] + ["part-whole"]
    assert err.splitlines() == ["to stderr"]


def test_concurrent_output_keeps_lines_whole(ufora, capfd):
    def shout(tag):
        for i in range(200):
            print(f"{tag}-{i}-" + "y" * 50)

    futures = [ufora.submit(shout, tag) for tag in "ab"]
    for f in futures:
        f.result(timeout=T)
    lines = capfd.readouterr().out.splitlines()
    expected = {f"{tag}-{i}-" + "y" * 50 for tag in "ab" for i in range(200)}
    assert sorted(lines) == sorted(expected)


def test_unpicklable_argument_is_refused_at_submit_and_nothing_is_sent(ufora, cluster_url):
    before = http_status(cluster_url)["tasks"]
    lock = threading.Lock()
    with pytest.raises(pyfora.PythonToForaConversionError) as info:
        ufora.submit(add, 1, lock)
    assert "argument 1 (lock)" in str(info.value)
    with pytest.raises(pyfora.PythonToForaConversionError, match="keyword argument 'c' "
                       r"\(lock\)"):
        ufora.submit(add, 1, c=lock)
    with pytest.raises(pyfora.PythonToForaConversionError, match="lock"):
        ufora.define({"lock": lock}).result(timeout=T)
    assert http_status(cluster_url)["tasks"] == before
    assert ufora.submit(square, 7).result(timeout=T).toLocal().result(timeout=T) == 49


def test_unpicklable_result_is_a_clear_remote_error(ufora):
    proxy = ufora.submit(threading.Lock).result(timeout=T)
    with pytest.raises(pyfora.ComputationError, match="lock"):
        proxy.toLocal().result(timeout=T)


def test_worker_count_and_status(ufora):
    assert ufora.getWorkerCount() == 2
    status = ufora.status()
    assert {"workers", "tasks", "objects"} <= status.keys()
    assert all(w["state"] in ("idle", "busy") for w in status["workers"])


def test_released_proxies_free_their_objects(ufora, cluster_url):
    def objects():
        return http_status(cluster_url)["objects"]

    baseline = objects()
    proxies = [ufora.submit(bytes, 1000).result(timeout=T) for _ in range(5)]
    held = objects()
    assert held["count"] == baseline["count"] + 5
    assert held["bytes"] >= baseline["bytes"] + 5000
    del proxies
    wait_until(lambda: objects() == baseline, T, "the released objects to be freed")


def test_finished_futures_and_their_proxies_keep_few_objects(ufora):
    # Every object a pending or finished call keeps is one more visit at each pass of
    # the garbage collector, and thousands are kept at once: a future (with its lock and
    # condition) and a proxy, not the closures that started or could cancel the call.
    def census() -> int:
        gc.collect()
        return len(gc.get_objects())

    n = 200
    before = census()
    futures = [ufora.submit(square, i) for i in range(n)]
    proxies = [f.result(timeout=T) for f in futures]
    kept = (census() - before) / n
    assert [p.toLocal().result(timeout=T) for p in proxies[:3]] == [0, 1, 4]
    assert kept <= 9, f"{kept:.1f} objects kept per call"


def test_closed_executor(cluster_url):
    ex = pyfora.connect(cluster_url)
    small = ex.submit(square, 2).result(timeout=T)
    fn = ex.define(square).result(timeout=T)
    assert not ex.isClosed()
    ex.close()
    ex.close()    # idempotent
    assert ex.isClosed()
    with pytest.raises(pyfora.ExecutorClosedError, match="closed"):
        ex.submit(square, 1)
    with pytest.raises(pyfora.ExecutorClosedError):
        ex.define(1).result(timeout=T)
    with pytest.raises(pyfora.ExecutorClosedError):
        fn(3)
    with pytest.raises(pyfora.ExecutorClosedError):
        small.toLocal().result(timeout=T)
    with pytest.raises(pyfora.ExecutorClosedError):
        ex.getWorkerCount()


def test_proxy_of_another_executor_or_cluster_is_refused(ufora, cluster_url, one_worker_url):
    with pyfora.connect(cluster_url) as other, pyfora.connect(one_worker_url) as elsewhere:
        mine = other.submit(square, 3).result(timeout=T)
        theirs = elsewhere.submit(square, 3).result(timeout=T)
        for proxy in (mine, theirs):
            with pytest.raises(pyfora.ForeignProxyError, match="another executor"):
                ufora.submit(square, proxy)
            with pytest.raises(pyfora.ForeignProxyError):
                ufora.submit(lambda: proxy + 1)
    with pytest.raises(pyfora.ForeignProxyError):   # its executor is closed now
        ufora.submit(square, mine)
    assert ufora.submit(square, 5).result(timeout=T).toLocal().result(timeout=T) == 25


@pytest.mark.parametrize("form", ["{http}", "{http}/", "{ws}", "{ws}/", "{ws}/api/session",
                                  "{http}/?token={token}", "{ws}/api/session?token={token}"])
def test_url_forms(cluster_url, form):
    http = cluster_url.rstrip("/")
    url = form.format(http=http, ws=http.replace("http://", "ws://"),
                      token=local_tokens.find(cluster_url))
    with pyfora.connect(url) as ex:
        assert ex.submit(square, 6).result(timeout=T).toLocal().result(timeout=T) == 36


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("url", ["http://127.0.0.1:{port}/", "ws://127.0.0.1:{port}",
                                 "ftp://127.0.0.1:{port}/", "not a url"])
def test_unreachable_cluster_is_a_connection_error(url):
    start = time.monotonic()
    with pytest.raises(pyfora.ConnectionError) as info:
        pyfora.connect(url.format(port=free_port()))
    assert isinstance(info.value, ConnectionError)
    assert time.monotonic() - start < 10 * UNIT


def test_not_a_pyfora_endpoint_is_a_connection_error(cluster_url):
    with pytest.raises(pyfora.ConnectionError, match="HTTP 404"):
        pyfora.connect(cluster_url + "nowhere/api/session")


# -- cancellation (one worker: a task that did not stop would block the next one) ---------

def test_cancel_a_running_computation_stops_it_on_the_worker(one_worker_url):
    with pyfora.connect(one_worker_url) as ex:
        future = ex.submit(busy, 60)
        wait_until(lambda: http_status(one_worker_url)["tasks"]["running"] == 1, T,
                   "the task to start")
        assert future.cancel() is True
        assert future.cancelled()
        with pytest.raises(pyfora.CancelledError):
            future.result(timeout=T)
        start = time.monotonic()
        after = ex.submit(square, 9).result(timeout=10 * UNIT)
        assert after.toLocal().result(timeout=T) == 81
        assert time.monotonic() - start < 10 * UNIT


def test_cancel_queued_and_just_submitted_computations(one_worker_url):
    with pyfora.connect(one_worker_url) as ex:
        running = ex.submit(busy, 60)
        queued = ex.submit(busy, 60)
        wait_until(lambda: http_status(one_worker_url)["tasks"] == {
            **http_status(one_worker_url)["tasks"], "running": 1, "queued": 1}, T,
            "one task running, one queued")
        assert queued.cancel() and running.cancel()
        # cancelled at once after submit: the cancel may overtake the task's start
        for _ in range(5):
            assert ex.submit(busy, 60).cancel()
        assert ex.submit(square, 4).result(timeout=10 * UNIT).toLocal().result(timeout=T) == 16
        wait_until(lambda: http_status(one_worker_url)["tasks"]["queued"] == 0, T,
                   "the queue to drain")


def test_close_fails_pending_futures_and_stops_their_work(one_worker_url):
    ex = pyfora.connect(one_worker_url)
    future = ex.submit(busy, 60)
    wait_until(lambda: http_status(one_worker_url)["tasks"]["running"] == 1, T,
               "the task to start")
    ex.close()
    with pytest.raises(pyfora.ConnectionError):
        future.result(timeout=T)
    with pyfora.connect(one_worker_url) as again:
        assert again.submit(square, 2).result(timeout=10 * UNIT).toLocal().result(T) == 4


def test_connection_drop_fails_pending_futures():
    cluster = ClusterProcess(1)
    workers = cluster.worker_pids()
    try:
        ex = pyfora.connect(cluster.url)
        pending = [ex.submit(busy, 60), ex.submit(busy, 60)]
        wait_until(lambda: cluster.status()["tasks"]["running"] == 1, T, "the task to start")
        cluster.proc.kill()             # SIGKILL: no goodbye from the coordinator
        for future in pending:
            with pytest.raises(pyfora.ConnectionError):
                future.result(timeout=10 * UNIT)
        assert ex.isClosed()
        with pytest.raises(pyfora.PyforaError):
            ex.submit(square, 1)
        ex.close()
    finally:
        cluster.wait(T)
    # the workers notice that their coordinator is gone and exit
    wait_until(lambda: not any(alive(pid) for pid in workers), T, "orphan workers")

