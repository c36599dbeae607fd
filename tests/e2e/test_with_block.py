"""With-blocks end to end: policies, scopes, assignment semantics, errors, tracing, output.

Module-level behaviour is tested by running real script files (``runpy`` in-process, or a
subprocess); the rest runs in test functions, which are function scopes themselves.
"""

from __future__ import annotations

import contextlib
import os
import runpy
import subprocess
import sys
import textwrap
import threading
import traceback

import pytest

import pyfora
from tests.conftest import UNIT


def isPrime(p):
    x = 2
    while x*x <= p:
        if p%x == 0:
            return 0
        x = x + 1
    return 1


def _tasks_done(ufora) -> int:
    status = ufora.status()
    return status["tasks"]["done"] + status["tasks"]["failed"]


# -- policies -------------------------------------------------------------------------

def test_download_all_brings_values_back(ufora):
    with ufora.remotely.downloadAll():
        result = sum(isPrime(x) for x in range(2000))
    assert result == sum(isPrime(x) for x in range(2000))


def test_remote_all_is_the_default_and_gives_proxies(ufora):
    with ufora.remotely:
        primes = [x for x in range(2000) if isPrime(x)]
    assert isinstance(primes, pyfora.RemotePythonObject)
    assert primes.typeName == "list"
    assert primes.toLocal().result(timeout=30 * UNIT) == [x for x in range(2000) if isPrime(x)]


def test_proxy_is_used_remotely_in_a_later_block(ufora):
    with ufora.remotely.remoteAll():
        primes = [x for x in range(20000) if isPrime(x)]
    with ufora.remotely.downloadAll():
        lastFewPrimes = primes[-100:]
        kind = type(primes).__name__       # on the cluster the proxy is the list itself
    expected = [x for x in range(20000) if isPrime(x)]
    assert lastFewPrimes == expected[-100:]
    assert kind == "list"


def test_proxy_from_submit_is_used_in_a_block(ufora):
    proxy = ufora.define(list(range(10))).result(timeout=30 * UNIT)
    with ufora.remotely.downloadAll():
        total = sum(proxy)
    assert total == 45


def test_download_small_splits_by_size(ufora):
    with ufora.remotely.downloadSmall(bytecount=100 * 1024):
        small = list(range(10))
        large = list(range(100_000))
    assert small == list(range(10))
    assert isinstance(large, pyfora.RemotePythonObject)
    assert large.size > 100 * 1024
    assert large.toLocal().result(timeout=30 * UNIT) == list(range(100_000))


def test_policy_methods_chain_and_one_context_serves_several_blocks(ufora):
    calls = []
    ctx = ufora.remotely.downloadAll().withStatusCallback(calls.append)
    assert isinstance(ctx, type(ufora.remotely))
    with ctx:
        a = 1 + 1
    with ctx:
        b = a * 10
    assert (a, b) == (2, 20)


def test_status_callback_reports_busy_cores(ufora):
    seen = []
    done = threading.Event()

    def callback(status):
        seen.append(status)
        done.set()

    with ufora.remotely.downloadAll().withStatusCallback(callback):
        import time
        t0 = time.time()
        while time.time() - t0 < 0.6:
            pass
        finished = True
    assert finished
    assert done.wait(10 * UNIT)
    assert "cpus" in seen[0] and seen[0]["cpus"] >= 0
    assert any(s["cpus"] >= 1 for s in seen)


# -- scopes ---------------------------------------------------------------------------

SCALE = 1


@pytest.mark.parametrize("sequential", [False, True])
def test_a_block_run_again_is_compiled_again_only_when_its_inputs_change(ufora, sequential,
                                                                         monkeypatch):
    from pyfora.aio import with_block as core
    global SCALE
    compiles = []
    compile_block = core._compile
    monkeypatch.setattr(core, "_compile", lambda *args: compiles.append(args[4]) or
                        compile_block(*args))
    monkeypatch.setattr(core, "_compiled", {})
    remotely = ufora.remotely.sequential() if sequential else ufora.remotely
    results = []
    for i in range(4):
        SCALE = 10 * (i + 1)          # a global the block reads: shipped as it is now
        with remotely.downloadAll():
            got = [x * SCALE + i for x in range(3)]
        results.append(got)
    assert results == [[x * 10 * (i + 1) + i for x in range(3)] for i in range(4)]
    # once before ``got`` was bound, once after (the block then also takes it in)
    assert compiles == [["i"], ["got", "i"]]


def test_module_level_block(cluster_url, tmp_path):
    script = tmp_path / "module_block.py"
    script.write_text(textwrap.dedent(f"""
        import pyfora
        ufora = pyfora.connect({cluster_url!r})
        base = 10
        counter = 1
        def helper(x):
            return x + base
        with ufora.remotely.downloadAll():
            value = helper(5)
            counter += 1
        with ufora.remotely.remoteAll():
            proxy = [value] * 3
        ufora.close()
    """))
    namespace = runpy.run_path(str(script))
    assert namespace["value"] == 15
    assert namespace["counter"] == 2
    assert isinstance(namespace["proxy"], pyfora.RemotePythonObject)


class Accumulator:
    def __init__(self, ufora):
        self.ufora = ufora
        self.total = 0

    def add_squares(self, n):
        with self.ufora.remotely.downloadAll():
            total = sum(i * i for i in range(n))
        self.total += total
        return self.total


def test_block_in_a_method(ufora):
    assert Accumulator(ufora).add_squares(10) == 285


def test_block_in_nested_function_reads_closure_and_writes_locals(ufora):
    factor = 3

    def outer(n):
        offset = 100

        def inner():
            with ufora.remotely.downloadAll():
                result = [factor * i + offset for i in range(n)]
            return result
        return inner()

    assert outer(4) == [100, 103, 106, 109]


def test_block_in_class_body(ufora):
    class Config:
        with ufora.remotely.downloadAll():
            size = 6 * 7
    assert Config.size == 42


def test_user_module_is_shipped_by_value(ufora, tmp_path, monkeypatch):
    (tmp_path / "only_on_client_helper.py").write_text("def triple(x):\n    return 3 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import only_on_client_helper
    with ufora.remotely.downloadAll():
        tripled = only_on_client_helper.triple(14)
        where = __import__("os").getpid()
    assert tripled == 42
    assert where != os.getpid()


def test_ipython_cells(ufora):
    pytest.importorskip("IPython")
    from IPython.core.interactiveshell import InteractiveShell
    shell = InteractiveShell.instance()
    try:
        shell.user_ns["ufora"] = ufora
        for cell in ["def cube(x):\n    return x ** 3\n",
                     "with ufora.remotely.downloadAll():\n    cubes = [cube(i) for i in range(5)]\n",
                     "with ufora.remotely.remoteAll():\n    remote_cubes = cubes * 2\n"]:
            result = shell.run_cell(cell)
            assert result.success, result.error_in_exec
        assert shell.user_ns["cubes"] == [0, 1, 8, 27, 64]
        assert isinstance(shell.user_ns["remote_cubes"], pyfora.RemotePythonObject)
    finally:
        InteractiveShell.clear_instance()


def test_no_source_is_a_clear_error_before_anything_runs(ufora):
    # Code compiled from a string under a name linecache cannot read: the case of a REPL
    # without history (and of `python -c` before 3.13, which keeps -c source).
    code = "with ufora.remotely.downloadAll():\n    ran_locally = True\n"
    namespace = {"ufora": ufora}
    done_before = _tasks_done(ufora)
    with pytest.raises(pyfora.CantGetSourceTextError, match="cannot read the source"):
        exec(compile(code, "<no-source>", "exec"), namespace)
    assert "ran_locally" not in namespace
    assert _tasks_done(ufora) == done_before


# -- assignment semantics -------------------------------------------------------------

def test_assignment_semantics_match_python(ufora):
    before = "untouched"
    reassigned = 1
    augmented = 10
    with ufora.remotely.downloadAll():
        if False:
            before = "assigned"
            never_bound = 1
        reassigned = reassigned + 1
        augmented += 5
        for loop_var in range(3):
            pass
        import math as imported
        def defined():
            return "def"
        class Defined:
            pass
        with contextlib.nullcontext("entered") as handle:
            pass
        try:
            raise KeyError("k")
        except KeyError as caught:
            message = str(caught)
        walrus_list = [y for x in range(3) if (y := x * 2)]
        while (count := 5) < 3:
            pass
    assert before == "untouched"
    assert "never_bound" not in locals()
    assert reassigned == 2
    assert augmented == 15
    assert loop_var == 2
    assert imported.pi > 3
    assert defined() == "def"
    assert Defined.__name__ == "Defined"
    assert handle == "entered"
    assert message == "'k'"
    assert walrus_list == [2, 4] and y == 4 and count == 5


def test_unassigned_names_stay_local_under_remote_all(ufora):
    value = 5
    with ufora.remotely.remoteAll():
        if value > 100:
            value = 0
        other = value + 1
    assert value == 5                     # untouched: not turned into a proxy
    assert other.toLocal().result(timeout=30 * UNIT) == 6


# -- errors ---------------------------------------------------------------------------

def f():
    raise UserWarning("message")


def g():
    f()


def test_remote_exception_is_reraised_with_remote_frames(ufora):
    first = second = None
    with pytest.raises(UserWarning, match="message") as info:
        with ufora.remotely.downloadAll():
            first = "bound"
            g()
            second = "never"
    assert first == "bound"
    assert second is None
    text = "".join(traceback.format_exception(info.value))
    assert 'raise UserWarning("message")' in text
    assert "in f" in text and "in g" in text
    assert __file__ in text


def test_return_in_block_is_rejected_before_sending(ufora):
    done_before = _tasks_done(ufora)

    def uses_return():
        with ufora.remotely.downloadAll():
            x = 1
            return x

    def uses_yield():
        with ufora.remotely.downloadAll():
            yield 1

    with pytest.raises(pyfora.BadWithBlockError, match="return"):
        uses_return()
    with pytest.raises(pyfora.BadWithBlockError, match="yield"):
        next(uses_yield())
    assert _tasks_done(ufora) == done_before


def test_return_inside_functions_defined_in_block_is_fine(ufora):
    with ufora.remotely.downloadAll():
        def twice(x):
            return 2 * x
        gen = list(i for i in range(3))
        doubled = twice(21)
    assert doubled == 42 and gen == [0, 1, 2]


# -- tracing and output ---------------------------------------------------------------

def test_previous_trace_function_is_restored(ufora):
    events = []

    def tracer(frame, event, arg):
        if event == "call":
            events.append(frame.f_code.co_name)
        return None

    sys.settrace(tracer)
    try:
        with ufora.remotely.downloadAll():
            x = 40 + 2
        assert sys.gettrace() is tracer
    finally:
        sys.settrace(None)
    assert x == 42


def test_block_under_coverage(cluster_url, tmp_path):
    pytest.importorskip("coverage")
    script = tmp_path / "covered.py"
    script.write_text(textwrap.dedent(f"""
        import pyfora
        ufora = pyfora.connect({cluster_url!r})
        with ufora.remotely.downloadAll():
            x = 41
        after = x + 1
        print("AFTER", after)
        ufora.close()
    """))
    proc = subprocess.run([sys.executable, "-m", "coverage", "run", "--data-file",
                           str(tmp_path / ".cov"), str(script)], capture_output=True, text=True,
                          timeout=60 * UNIT, cwd=tmp_path)
    assert "AFTER 42" in proc.stdout, proc.stderr
    report = subprocess.run([sys.executable, "-m", "coverage", "report", "-m", "--data-file",
                             str(tmp_path / ".cov")], capture_output=True, text=True,
                            timeout=60 * UNIT, cwd=tmp_path)
    line = next(ln for ln in report.stdout.splitlines() if "covered.py" in ln)
    missing = line.split("%", 1)[1].strip()
    # the block body runs remotely, so only its line may be missing; the line after it ran
    assert missing in ("5", ""), report.stdout


def test_remote_prints_appear_locally_in_order(ufora, capsys):
    with ufora.remotely.downloadAll():
        for i in range(5):
            print("line", i)
        done = True
    assert done
    out = capsys.readouterr().out
    assert [ln for ln in out.splitlines() if ln.startswith("line")] == \
        [f"line {i}" for i in range(5)]
