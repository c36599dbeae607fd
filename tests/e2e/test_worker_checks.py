"""A worker is trusted with what it was given and nothing more (``cluster/scheduling/dispatcher.py``,
``cluster/coordinator/worker_link.py``): a raw connection on ``/api/worker`` (the ``websockets``
client speaking ``pyfora.wire``) that fetches an object it was not given is refused,
and its ``done``, ``output`` and ``progress`` for a task it was not given are dropped,
while the session whose task that is gets its real output and result.

Pool only: the Dask backend takes no ``pyfora-worker``s (its workers are Dask's).
"""

from __future__ import annotations

import contextlib
import os
import time

import cloudpickle
import pytest
from conftest import (UNIT, ClusterProcess, http_status, messages_of, upgrade_headers,
                      wait_until, ws_endpoint)
from websockets.sync.client import connect

from pyfora import serialization

from pyfora import wire as p

T = 30 * UNIT


@contextlib.contextmanager
def open_ws(url: str, path: str, role: str, **hello):
    """A raw websocket to ``path`` of the cluster at ``url``, opened as a ``role`` (its
    hello's other fields: ``hello``), past the ``welcome``."""
    with connect(ws_endpoint(url, path), open_timeout=T, max_size=None,
                 additional_headers=upgrade_headers(url, role, **hello)) as ws:
        welcome = p.decode(ws.recv(T))
        assert isinstance(welcome, p.Welcome), welcome
        yield ws


@pytest.fixture(scope="module")
def cluster():
    """One real worker; each test adds a worker of its own, an intruder."""
    process = ClusterProcess(1)
    yield process
    assert process.stop() == 0


class Ref:
    """Pickles as a reference to object ``oid``, as a client's proxy does."""

    def __init__(self, oid: int) -> None:
        self.oid = oid

    def __reduce__(self):
        return serialization.reduce_ref(self.oid, None)


def sum_when_released(values, path):
    """Prints, then holds its worker until the file ``path`` exists; ``sum(values)``."""
    print("the real output", flush=True)
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return sum(values)


class Victim:
    """A raw client session with one task running on the real worker, which waits for
    ``release``; every message it receives is kept (``received``)."""

    def __init__(self, ws, cluster, tmp_path) -> None:
        self.ws = ws
        self.received: list = []
        self.release = tmp_path / "release"
        self.ws.send(p.encode(p.Define(id=1, payload=cloudpickle.dumps([1, 2, 3]))))
        self.oid = self.reply(1).oid
        payload, deps = serialization.dumps_call(sum_when_released,
                                                 (Ref(self.oid), str(self.release)), {})
        self.ws.send(p.encode(p.Submit(id=2, payload=payload, deps=deps)))
        self.tid = wait_until(lambda: running_task(cluster.url), T, "the task to start")

    def reply(self, request_id: int):
        while True:
            for message in messages_of(self.ws.recv(T)):
                self.received.append(message)
                if isinstance(message, (p.Done, p.Value, p.Error)) and \
                        message.id == request_id:
                    return message

    def finish(self):
        """Let the task end; its ``done``, and the outputs and progress it was sent."""
        self.release.touch()
        done = self.reply(2)
        return (done, [m.text for m in self.received if isinstance(m, p.Output)],
                [m for m in self.received if isinstance(m, p.Progress)])


def running_task(url: str) -> int | None:
    return next((w["task"] for w in http_status(url)["workers"] if w["task"] is not None),
                None)


@pytest.fixture
def victim(cluster, tmp_path):
    # An intruder of an earlier test is gone: the victim's task goes to the real worker,
    # the first idle one.
    wait_until(lambda: len(http_status(cluster.url)["workers"]) == 1, T, "one worker")
    with open_ws(cluster.url, "/api/worker", "worker", name="intruder") as intruder:
        wait_until(lambda: len(http_status(cluster.url)["workers"]) == 2, T,
                   "the intruder to join")
        with open_ws(cluster.url, "/api/session", "client") as session:
            yield Victim(session, cluster, tmp_path), intruder


def pushed(intruder, *messages) -> None:
    """Send pushes, then wait until the coordinator has handled them (it answers a
    ``status`` after what came before it)."""
    for message in messages:
        intruder.send(p.encode(message))
    intruder.send(p.encode(p.Status(id=99)))
    while not any(isinstance(m, p.Info) and m.id == 99
                  for m in messages_of(intruder.recv(T))):
        pass


def assert_real_result(victim) -> None:
    done, outputs, progress = victim.finish()
    assert done.error is None, done.error
    assert cloudpickle.loads(done.value) == 6
    assert "".join(outputs) == "the real output\n"
    assert progress == []


def test_a_worker_may_not_fetch_an_object_it_was_not_given(victim):
    victim, intruder = victim
    intruder.send(p.encode(p.Get(id=1, oid=victim.oid)))
    [reply] = messages_of(intruder.recv(T))
    assert isinstance(reply, p.Error) and reply.kind == "ProtocolError", reply
    assert f"object {victim.oid} is not an input of a task given to this worker" in \
        reply.message
    assert_real_result(victim)


def test_a_worker_may_not_finish_a_task_it_was_not_given(victim):
    victim, intruder = victim
    pushed(intruder, p.Done(id=victim.tid, oid=10**6, size=3, type="int",
                            value=cloudpickle.dumps(999)))
    assert_real_result(victim)


def test_a_worker_may_not_write_to_a_task_it_was_not_given(victim):
    victim, intruder = victim
    pushed(intruder, p.Output(id=victim.tid, stream="stdout", text="forged\n"),
           p.Output(id=victim.tid, stream="stderr", text="forged\n"))
    assert_real_result(victim)


def test_a_worker_may_not_count_progress_of_a_task_it_was_not_given(victim):
    victim, intruder = victim
    pushed(intruder, p.Progress(target=victim.tid, done=5, total=10))
    assert_real_result(victim)
