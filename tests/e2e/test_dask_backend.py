"""The Dask backend in front of an existing Dask cluster (``--backend dask --scheduler``).

The rest of the end-to-end suite already runs on the Dask backend (``conftest.backend``),
with a local Dask cluster the coordinator starts. These tests are what only an existing
Dask cluster shows: a separate process runs a ``LocalCluster`` (scheduler, two worker
processes under nannies, as ``dask scheduler`` / ``dask worker`` would), the coordinator
is started with its address, and this test process also connects a plain Dask client to
the scheduler to look inside: which keys pyfora's proxies hold, and which worker to kill.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading

import pytest
from conftest import UNIT, ClusterProcess, async_wait_until

distributed = pytest.importorskip("distributed", reason="dask[distributed] is not installed "
                                  "(pip install -e '.[dask]')")

from pyfora import aio  # noqa: E402
from pyfora.errors import ComputationError  # noqa: E402

T = 60 * UNIT
TOKEN = "dask-backend-test-token-0123456789"

DASK_CLUSTER = """
import sys
from distributed import LocalCluster
cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                       host="127.0.0.1", dashboard_address=":0")
print(cluster.scheduler_address, flush=True)
sys.stdin.read()        # until the test closes our stdin
cluster.close()
"""


class DaskCluster:
    """A Dask cluster in its own process, as an operator would have running."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", DASK_CLUSTER], text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()),
                                  daemon=True)
        reader.start()
        reader.join(T)
        if not line or not line[0].startswith("tcp://"):
            self.proc.kill()
            raise RuntimeError(f"the Dask cluster did not print its address: {line!r}")
        self.address = line[0].strip()

    def stop(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(T)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(T)


@pytest.fixture(scope="module")
def dask_cluster():
    cluster = DaskCluster()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def dask_client(dask_cluster):
    with distributed.Client(dask_cluster.address, timeout=T) as client:
        yield client


@pytest.fixture(scope="module")
def coordinator(dask_cluster):
    cluster = ClusterProcess(0, "--backend", "dask", "--scheduler", dask_cluster.address,
                             "--token", TOKEN)
    yield cluster
    assert cluster.stop() == 0


def pyfora_keys(client, oid: int) -> list:
    """The keys on the scheduler that hold pyfora object ``oid``, and where they are."""
    who_has = client.who_has()
    return [(key, who_has[key]) for key in who_has if str(key).startswith(f"pyfora-{oid}-")]


def kill(client, worker: str) -> None:
    """``kill -9`` the process of Dask worker ``worker`` (its nanny starts a new one)."""
    pid = client.run(os.getpid, workers=[worker])[worker]
    os.kill(pid, signal.SIGKILL)


def make_list(n):
    return list(range(n))


def spin(seconds, value):
    import time
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return value


async def test_proxies_are_dask_futures_released_with_the_last_proxy(coordinator, dask_client):
    async with aio.connect(coordinator.url, token=TOKEN) as ex:
        assert await ex.getWorkerCount() == 2
        proxy = await ex.submit(make_list, 1000)
        oid = proxy.oid
        held = pyfora_keys(dask_client, oid)
        assert len(held) == 1 and held[0][1], held          # in memory on a Dask worker
        total = await (await ex.submit(sum, proxy)).toLocal()
        assert total == sum(range(1000))
        del proxy
        await async_wait_until(lambda: not pyfora_keys(dask_client, oid), T,
                               "the scheduler to forget the released proxy's key")


async def test_a_lost_dask_worker_is_recovered_from_lineage(coordinator, dask_client):
    async with aio.connect(coordinator.url, token=TOKEN) as ex:
        proxy = await ex.submit(make_list, 5000)
        [(key, holders)] = pyfora_keys(dask_client, proxy.oid)
        victim = holders[0]
        workers = set(dask_client.scheduler_info()["workers"])
        # Dask computes the lost value again from its task when the next task needs it.
        kill(dask_client, victim)
        await async_wait_until(lambda: victim not in dask_client.scheduler_info()["workers"],
                               T, f"the scheduler to see {victim} gone")
        assert await (await ex.submit(sum, proxy)).toLocal() == sum(range(5000))
        assert await proxy.toLocal() == list(range(5000))
        # A task running on a worker that dies is run again elsewhere.
        running = asyncio.ensure_future(ex.submit(spin, 1.0 * UNIT, "survived"))
        await async_wait_until(lambda: any(dask_client.processing().values()), T,
                               "the task to start")
        [where] = [w for w, keys in dask_client.processing().items() if keys]
        kill(dask_client, where)
        assert await (await running).toLocal() == "survived"
        await async_wait_until(
            lambda: len(dask_client.scheduler_info()["workers"]) == len(workers), T,
            "the nannies to replace both workers")


def _drop_done_events(dask_scheduler, drop=True):
    """On the scheduler: lose (or stop losing) every pyfora done event, as a scheduler
    might under load."""
    from cluster.worker.dask_tasks import DONE_TOPIC
    if not drop:
        dask_scheduler.__dict__.pop("log_event", None)
        return
    log_event = type(dask_scheduler).log_event.__get__(dask_scheduler)
    dask_scheduler.log_event = lambda topic, msg: (
        None if topic == DONE_TOPIC else log_event(topic, msg))


def fail(message):
    raise ValueError(message)


async def test_a_task_whose_done_event_is_lost_still_answers(coordinator, dask_client):
    dask_client.run_on_scheduler(_drop_done_events)
    try:
        async with aio.connect(coordinator.url, token=TOKEN) as ex:
            small, big, failed = await asyncio.wait_for(asyncio.gather(
                ex.submit(make_list, 3), ex.submit(make_list, 100_000),
                ex.submit(fail, "from the task"), return_exceptions=True), T)
            # The coordinator asked the workers instead (after DONE_LATE): the small
            # result still rides with the reply, the large one stays on Dask.
            assert small._inline is not None and big._inline is None
            assert await asyncio.wait_for(small.toLocal(), T) == [0, 1, 2]
            assert await asyncio.wait_for(big.toLocal(), T) == list(range(100_000))
            assert failed.failed
            with pytest.raises(ComputationError, match="from the task"):
                await asyncio.wait_for(failed.toLocal(), T)
    finally:
        dask_client.run_on_scheduler(_drop_done_events, drop=False)


def test_a_pyfora_worker_cannot_join_a_dask_backed_coordinator(coordinator):
    # Its worker token found where the coordinator left it: the door opens, the
    # backend refuses.
    done = subprocess.run([sys.executable, "-m", "cluster.worker.main", coordinator.url],
                          capture_output=True, text=True, timeout=T)
    assert done.returncode != 0
    assert "this coordinator runs its tasks on Dask: add Dask workers" in done.stderr, \
        done.stderr


def test_scheduler_without_dask_backend_is_a_usage_error():
    done = subprocess.run([sys.executable, "-m", "cluster", "--scheduler", "tcp://x:8786"],
                          capture_output=True, text=True, timeout=T)
    assert done.returncode == 2
    assert "--scheduler is the Dask scheduler: use it with --backend dask" in done.stderr
