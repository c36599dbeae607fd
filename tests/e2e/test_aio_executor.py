"""The async core end to end: ``pyfora.aio.connect(url)`` against a real coordinator and
real worker subprocesses, every await bounded by a timeout."""

import asyncio
import os
import threading
import time
import urllib.parse

import pytest
from conftest import UNIT, ClusterProcess, async_wait_until, busy, http_status

import pyfora
from pyfora import aio

T = 30 * UNIT


def square(x):
    return x * x


def fail(message):
    raise KeyError(message)


def greet(name):
    print(f"hello {name}")
    return name


async def wait(aw, timeout=T):
    return await asyncio.wait_for(aw, timeout)


async def status(url):
    return await asyncio.to_thread(http_status, url)


def embedded_url(ex) -> str:
    """The address of ``ex``'s embedded cluster, with the token it gives no one else."""
    cluster = ex._cluster
    return f"{cluster.url}?token={cluster.coordinator.config.token}"


async def test_submit_define_and_proxy_calls(aex):
    proxy = await wait(aex.submit(square, 12))
    assert isinstance(proxy, aio.RemotePythonObject)
    assert proxy.typeName == "int" and not proxy.failed
    assert await wait(proxy.toLocal()) == 144
    fn = await wait(aex.define(square))
    data = await wait(aex.define(7))
    assert await wait((await wait(fn(data))).toLocal()) == 49
    assert await wait(aex.getWorkerCount()) == 2


async def test_proxies_in_closures_and_default_arguments(aex):
    base = await wait(aex.submit(square, 3))
    offset = await wait(aex.define(100))

    def closure():
        return base + offset

    def defaults(x=base, *, y=offset):
        return x * y

    assert await wait((await wait(aex.submit(closure))).toLocal()) == 109
    assert await wait((await wait(aex.submit(defaults))).toLocal()) == 900
    holder = await wait(aex.define({"base": base, "more": [offset]}))
    assert await wait(holder.toLocal()) == {"base": 9, "more": [100]}


async def test_gather_over_1000_submits_on_one_session(aex):
    proxies = await wait(asyncio.gather(*(aex.submit(square, i) for i in range(1000))),
                         90 * UNIT)
    assert len({p.oid for p in proxies}) == 1000
    values = await wait(asyncio.gather(*(p.toLocal() for p in proxies)))
    assert values == [i * i for i in range(1000)]
    # and they combine on the cluster without being downloaded
    total = await wait(aex.submit(lambda: sum(p for p in proxies)))
    assert await wait(total.toLocal()) == sum(i * i for i in range(1000))


async def test_remote_exception(aex):
    proxy = await wait(aex.submit(fail, "missing"))
    assert proxy.failed
    with pytest.raises(pyfora.ComputationError) as info:
        await wait(proxy.toLocal())
    assert isinstance(info.value.remoteException, KeyError)
    assert info.value.remoteException.args == ("missing",)
    assert "raise KeyError(message)" in info.value.remoteTraceback
    assert __file__ in info.value.remoteTraceback


async def test_remote_output(aex, capfd):
    await wait(aex.submit(greet, "async world"))
    assert capfd.readouterr().out == "hello async world\n"


async def test_unpicklable_argument_raises_at_submit_and_the_session_goes_on(aex):
    with pytest.raises(pyfora.PythonToForaConversionError, match=r"argument 0 \(lock\)"):
        await wait(aex.submit(square, threading.Lock()))
    assert await wait((await wait(aex.submit(square, 3))).toLocal()) == 9


async def test_closed_executor(cluster_url):
    ex = await wait(aio.connect(cluster_url))
    proxy = await wait(ex.submit(square, 2))
    await wait(ex.close())
    await wait(ex.close())
    assert ex.isClosed()
    for attempt in (lambda: ex.submit(square, 1), lambda: ex.define(1), proxy.toLocal,
                    lambda: proxy(1), ex.getWorkerCount):
        with pytest.raises(pyfora.ExecutorClosedError):
            await wait(attempt())


async def test_foreign_proxy(aex, cluster_url):
    async with aio.connect(cluster_url) as other:
        theirs = await wait(other.submit(square, 2))
        with pytest.raises(pyfora.ForeignProxyError):
            await wait(aex.submit(square, theirs))
    assert await wait((await wait(aex.submit(square, 4))).toLocal()) == 16


async def test_many_sessions_at_once(cluster_url):
    async def one(i):
        async with aio.connect(cluster_url) as ex:
            return await wait((await wait(ex.submit(square, i))).toLocal())

    assert await wait(asyncio.gather(*(one(i) for i in range(10)))) == [
        i * i for i in range(10)]


# -- cancellation -------------------------------------------------------------------------

async def test_cancelling_the_awaiting_task_cancels_the_remote_computation(one_worker_url):
    async with aio.connect(one_worker_url) as ex:
        task = asyncio.ensure_future(ex.submit(busy, 60))
        await async_wait_until(
            async_running(one_worker_url, 1), T, "the task to start")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        start = time.monotonic()
        after = await wait(ex.submit(square, 5), 10 * UNIT)
        assert await wait(after.toLocal()) == 25
        assert time.monotonic() - start < 10 * UNIT


async def test_timeout_cancels_the_remote_computation(one_worker_url):
    async with aio.connect(one_worker_url) as ex:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ex.submit(busy, 60), 1 * UNIT)
        assert await wait((await wait(ex.submit(square, 6), 10 * UNIT)).toLocal()) == 36


async def test_cancel_at_once_after_submit(one_worker_url):
    # the Cancel may reach the worker before its task has started there: it must still stop
    # it (a lost cancel leaves the only worker busy for 60 s and the next submit times out)
    async with aio.connect(one_worker_url) as ex:
        for i in range(60):
            task = asyncio.ensure_future(ex.submit(busy, 60))
            await asyncio.sleep((i % 20) * 0.0005)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await wait((await wait(ex.submit(square, i), 10 * UNIT)).toLocal()) == i * i


async def test_submit_sends_at_once_and_its_future_cancels_on_the_cluster(one_worker_url):
    # As Dask's and Ray's: the call is on its way before anything awaits it.
    async with aio.connect(one_worker_url) as ex:
        future = ex.submit(busy, 60)
        assert isinstance(future, asyncio.Future)
        await async_wait_until(async_running(one_worker_url, 1), T, "the task to start")
        assert future.cancel()
        await async_wait_until(async_running(one_worker_url, 0), T, "the cancel")
        assert await wait((await wait(ex.submit(square, 7))).toLocal()) == 49


async def test_submit_timeout_cancels_on_the_cluster(one_worker_url):
    async with aio.connect(one_worker_url) as ex:
        with pytest.raises(pyfora.PyforaTimeoutError, match="cancelled"):
            await wait(ex.submit(busy, 60, timeout=0.5 * UNIT))
        await async_wait_until(async_running(one_worker_url, 0), T, "the cancel")
        assert await wait((await wait(ex.submit(square, 8))).toLocal()) == 64


async def test_submit_from_another_thread_says_where_to_call_it(aex):
    with pytest.raises(pyfora.PyforaUsageError, match="event loop"):
        await asyncio.to_thread(aex.submit, square, 2)
    assert await wait((await wait(aex.submit(square, 9))).toLocal()) == 81


def async_running(url, count):
    async def check():
        return (await status(url))["tasks"]["running"] == count
    return check


async def test_connection_drop_fails_pending_operations():
    cluster = await asyncio.to_thread(ClusterProcess, 1)
    try:
        ex = await wait(aio.connect(cluster.url))
        pending = [asyncio.ensure_future(ex.submit(busy, 60)) for _ in range(3)]
        await async_wait_until(async_running(cluster.url, 1), T, "the task to start")
        cluster.proc.kill()
        results = await wait(asyncio.gather(*pending, return_exceptions=True), 10 * UNIT)
        assert all(isinstance(r, pyfora.ConnectionError) for r in results), results
        assert all(isinstance(r, pyfora.SessionLost) for r in results), results
        with pytest.raises(pyfora.ConnectionError, match="connect again"):
            await wait(ex.submit(int))          # later calls name the lost connection too
        await wait(ex.close())
        with pytest.raises(pyfora.ExecutorClosedError):
            await wait(ex.submit(int))
    finally:
        await asyncio.to_thread(cluster.wait, T)


async def test_unreachable_cluster():
    with pytest.raises(pyfora.ConnectionError):
        await wait(aio.connect("ws://127.0.0.1:9/"))


async def test_embedded_cluster_is_owned_by_the_executor():
    import psutil
    me = psutil.Process()
    before = {c.pid for c in me.children(recursive=True)}
    async with aio.connect(workers=1) as ex:
        assert await wait(ex.getWorkerCount()) == 1
        worker = await wait((await wait(ex.submit(os.getpid))).toLocal())
        assert worker != os.getpid()
        spawned = {c.pid for c in me.children(recursive=True)} - before
        # the worker, and the fork server it was forked from (cluster.worker.forkserver)
        assert worker in spawned and len(spawned) == 2
    gone = {c.pid for c in me.children(recursive=True)} & spawned
    assert not gone, f"embedded workers outlived close(): {gone}"


def _sockets_to(port: int) -> list:
    """This process's TCP connections to ``port`` (as a client: its websockets)."""
    import psutil
    return [c for c in psutil.Process().net_connections("tcp")
            if c.raddr and c.raddr.port == port]


async def test_the_embedded_session_needs_no_socket_and_loses_nothing():
    """The embedded default's session passes its frames in memory (``cluster.coordinator.in_process``):
    no connection from this process to its coordinator, while the workers' are real."""
    blob = os.urandom(3 << 20)      # large enough for shared memory
    async with aio.connect(workers=1) as ex:
        url = embedded_url(ex)
        port = urllib.parse.urlsplit(url).port
        assert _sockets_to(port) == []
        defined = await wait(ex.define(blob))
        digest = await wait(ex.submit(sha256, defined))
        assert await wait(digest.toLocal()) == sha256(blob)
        assert await wait(defined.toLocal()) == blob
        assert await wait((await wait(ex.submit(bytes, blob))).toLocal()) == blob
        info = await status(url)
        assert info["sessions"] == 1 and len(info["workers"]) == 1
        assert info["objects"]["count"] >= 2
        del defined, digest
        # (The coordinator runs on this loop: its status is read from another thread.)
        await async_wait_until(lambda: _holds(url, objects=0), T,
                               "the released proxies to be freed")
        assert _sockets_to(port) == []


async def test_closing_the_embedded_executor_fails_what_it_waits_for():
    async with aio.connect(workers=1) as ex:
        url = embedded_url(ex)
        pending = asyncio.ensure_future(ex.submit(busy, 60))
        await async_wait_until(lambda: _holds(url, running=1), T, "the task to start")
        await wait(ex.close())
        with pytest.raises(pyfora.SessionClosedOK, match="closed by the client"):
            await wait(pending)
        with pytest.raises(pyfora.ExecutorClosedError):
            await wait(ex.submit(square, 2))


async def _holds(url: str, objects: int | None = None, running: int | None = None) -> bool:
    info = await status(url)
    return ((objects is None or info["objects"]["count"] == objects)
            and (running is None or info["tasks"]["running"] == running))


def sha256(data: bytes) -> str:
    import hashlib
    return hashlib.sha256(data).hexdigest()


async def test_proxies_dropped_together_are_released_in_one_message():
    async with aio.connect(workers=1) as ex:
        url = embedded_url(ex)
        [session] = ex._cluster.coordinator.resumable.values()
        proxies = [await wait(ex.submit(square, i)) for i in range(50)]
        assert await _holds(url, objects=50)
        before = session.replay.received       # messages from the client, acks aside
        while proxies:      # one by one, the loop running between them
            proxies.pop()
            await asyncio.sleep(0)
        await async_wait_until(lambda: _holds(url, objects=0), T, "the objects to be freed")
        assert session.replay.received - before <= 5    # not one message per proxy
