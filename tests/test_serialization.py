"""``pyfora.serialization``: cloudpickle in and out, proxy references, remote errors.

Unit tests with no cluster: a stand-in proxy uses the same ``reduce_ref`` hook as the real
``RemotePythonObject``.
"""

import pickle
import sys
import threading

import pytest

from pyfora import serialization
from pyfora.errors import (ComputationError, ForeignProxyError, PythonToForaConversionError,
                           WorkerCrashedError)


class FakeProxy:
    def __init__(self, oid, owner):
        self.oid, self.owner = oid, owner

    def __reduce__(self):
        return serialization.reduce_ref(self.oid, self.owner)


OWNER = object()


def local_function(x):
    return x + 1


def test_round_trip_of_plain_values_and_functions():
    value = {"a": [1, 2.5, "x"], "b": (None, b"bytes"), "f": local_function,
             "g": lambda y: y * 3}
    data, refs = serialization.dumps(value, OWNER)
    assert refs == []
    back = serialization.loads(data)
    assert back["a"] == [1, 2.5, "x"] and back["b"] == (None, b"bytes")
    assert back["f"](1) == 2 and back["g"](2) == 6


def test_proxies_become_references_resolved_on_the_other_side():
    a, b = FakeProxy(7, OWNER), FakeProxy(8, OWNER)
    default = FakeProxy(9, OWNER)

    def closure(z=default):
        return (a, z)

    data, refs = serialization.dumps_call(closure, (b,), {"k": [a]}, OWNER)
    assert sorted(set(refs)) == [7, 8, 9]   # each proxy once: pickle memoizes it
    values = {7: "seven", 8: "eight", 9: "nine"}
    fn, args, kwargs = serialization.loads(data, values.__getitem__)
    assert fn() == ("seven", "nine")
    assert args == ("eight",) and kwargs == {"k": ["seven"]}


def test_reference_outside_the_cluster_cannot_be_unpickled():
    data = pickle.dumps(FakeProxy(5, OWNER))     # outside dumps: no owner check
    with pytest.raises(pickle.UnpicklingError, match="object 5.*only be unpickled on the cluster"):
        serialization.loads(data)


def test_foreign_proxy_is_refused():
    with pytest.raises(ForeignProxyError, match="another executor"):
        serialization.dumps_call(local_function, (FakeProxy(1, object()),), {}, OWNER)
    with pytest.raises(ForeignProxyError):
        serialization.dumps(FakeProxy(1, object()), OWNER)
    # the per-call context is cleaned up after a failure
    assert serialization._local.refs is None and serialization._local.owner is None


@pytest.mark.parametrize("args, kwargs, words", [
    ((1, threading.Lock()), {}, "argument 1 (lock) cannot be sent"),
    ((), {"flag": threading.Lock()}, "keyword argument 'flag' (lock) cannot be sent"),
])
def test_unpicklable_argument_is_named_with_its_type(args, kwargs, words):
    with pytest.raises(PythonToForaConversionError) as info:
        serialization.dumps_call(local_function, args, kwargs, OWNER)
    assert words in str(info.value)


def test_unpicklable_function_is_named():
    lock = threading.Lock()

    def uses_lock():
        return lock

    with pytest.raises(PythonToForaConversionError, match="the function .*cannot be sent"):
        serialization.dumps_call(uses_lock, (), {}, OWNER)


def test_unpicklable_value_gives_a_conversion_error_naming_its_type():
    with pytest.raises(PythonToForaConversionError, match="lock"):
        serialization.dumps({"x": threading.Lock()}, OWNER)


def test_frame_limit(monkeypatch):
    monkeypatch.setattr(serialization, "MAX_FRAME", 10_000)
    with pytest.raises(PythonToForaConversionError, match="over the 10,000-byte frame limit"):
        serialization.dumps(b"x" * 20_000)
    with pytest.raises(PythonToForaConversionError, match="frame limit"):
        serialization.dumps_call(local_function, (b"x" * 20_000,), {})


def test_large_buffers_go_out_of_band_and_come_back_without_copies():
    import numpy as np
    big = serialization.OOB_MIN
    blob, array = b"b" * big, np.arange(big // 8, dtype=np.float64)
    args = (blob, bytearray(big), memoryview(bytearray(big)), array, b"small", [b"x" * big])
    buffers: list = []
    data, _ = serialization.dumps_call(local_function, args, {"again": blob}, OWNER,
                                       buffers=buffers)
    # five out of band (the keyword repeats an argument); small and nested bytes in band
    assert [view.nbytes for view in buffers] == [big] * 4
    assert big < len(data) < 2 * big
    # as pyfora.wire.Assembler(join=True) gives them: read-only ones as bytes,
    # writable ones as writable memoryviews
    received = [bytes(v) if v.readonly else memoryview(bytearray(v)) for v in buffers]
    fn, back, kwargs = serialization.loads(data, buffers=received)
    assert back[0] is received[0] and kwargs["again"] is received[0]    # no copy
    assert type(back[1]) is bytearray and back[1] == bytearray(big)
    assert back[2] is received[2]
    assert np.array_equal(back[3], array) and back[3].flags.writeable
    assert back[4:] == (b"small", [b"x" * big])
    value, _ = serialization.dumps((blob, array), buffers=(value_buffers := []))
    assert len(value_buffers) == 2


def test_frame_limit_counts_buffers(monkeypatch):
    monkeypatch.setattr(serialization, "MAX_FRAME", serialization.OOB_MIN * 2)
    with pytest.raises(PythonToForaConversionError, match="frame limit"):
        serialization.dumps(b"x" * serialization.OOB_MIN * 2, buffers=[])


def test_type_name():
    assert serialization.type_name(int) == "int"
    assert serialization.type_name(threading.Thread) == "threading.Thread"
    assert serialization.type_name(FakeProxy).endswith("FakeProxy")


def failing(n):
    if n > 0:
        return failing(n - 1)
    raise ValueError("remote boom")


def test_exception_round_trip_with_remote_traceback():
    code_map = serialization.CodeMap()
    data, _ = serialization.dumps(failing, code_map=code_map)
    fn = serialization.loads(data)
    try:
        fn(2)
    except ValueError as exc:
        error = serialization.describe_exception(exc, "worker-9")
    assert error["type"] == "ValueError" and error["worker"] == "worker-9"
    assert len(error["frames"]) >= 3
    exc = serialization.computation_error(error, code_map)
    assert type(exc) is ComputationError
    assert isinstance(exc.remoteException, ValueError)
    assert exc.remoteException.args == ("remote boom",)
    assert exc.remoteTypeName == "ValueError" and exc.workerId == "worker-9"
    text = exc.remoteTraceback
    assert text.startswith("Traceback (most recent call last):")
    assert 'raise ValueError("remote boom")' in text
    assert text.count("in failing") == 3
    assert text.rstrip().endswith("ValueError: remote boom")
    assert "Remote traceback" in str(exc) and exc._render_traceback_()[-1] == \
        "ValueError: remote boom"


def test_code_map_restores_file_names_of_functions_shipped_by_value():
    code_map = serialization.CodeMap()
    code_map.add(failing.__code__)
    assert code_map.filename(failing.__code__.co_qualname,
                             failing.__code__.co_firstlineno) == __file__
    error = {"type": "ValueError", "message": "m",
             "frames": [["<dynamic-code>", failing.__code__.co_firstlineno + 3, "failing",
                         failing.__code__.co_firstlineno, None]]}
    text = serialization.format_remote_traceback(error, code_map)
    assert f'File "{__file__}"' in text
    assert 'raise ValueError("remote boom")' in text   # source line read on this side


def test_installed_names_are_the_standard_librarys():
    """What decides which modules ship by value, read without the standard library's cost:
    the same names (3.12 also counts directories that hold no ``.py`` file)."""
    import importlib.metadata
    ours = serialization._installed_top_level_names()
    theirs = set(importlib.metadata.packages_distributions())
    assert ours == theirs if sys.version_info < (3, 12) else ours <= theirs
    assert {"cloudpickle", "pyfora"} <= ours


def test_unpicklable_remote_exception_still_gives_a_readable_error():
    class Local(Exception):
        def __reduce__(self):
            raise TypeError("no")

    try:
        raise Local("odd")
    except Local as exc:
        error = serialization.describe_exception(exc)
    assert error["exc"] is None
    exc = serialization.computation_error(error)
    assert exc.remoteException is None
    assert "Local: odd" in str(exc)


def test_worker_crash_payload_becomes_worker_crashed_error():
    exc = serialization.computation_error({
        "type": "pyfora.WorkerCrashedError", "message": "killed by SIGKILL", "frames": [],
        "exc": None, "worker": "worker-1"})
    assert isinstance(exc, WorkerCrashedError) and isinstance(exc, ComputationError)
    assert "SIGKILL" in str(exc) and exc.workerId == "worker-1"


def test_dumps_is_thread_safe():
    errors = []

    def work(i):
        try:
            for _ in range(50):
                mine = FakeProxy(i, OWNER)
                _, refs = serialization.dumps([mine, i], OWNER)
                assert refs == [i]
        except BaseException as exc:   # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []


SCALE = 2


def scaled(x):
    return x * SCALE


def test_a_function_is_pickled_once_while_what_it_pickles_is_unchanged(monkeypatch):
    calls = []
    dumps = serialization._dumps

    def counting(obj, owner, code_map):
        calls.append(obj)
        return dumps(obj, owner, code_map)
    monkeypatch.setattr(serialization, "_dumps", counting)
    for i in range(3):
        data, _ = serialization.dumps_call(scaled, (i,), {}, OWNER)
        fn, args, kwargs = serialization.loads(data)
        assert fn(*args, **kwargs) == 2 * i
    # The first call pickles the whole call; the second the function alone, kept.
    assert [c for c in calls if c is scaled] == [scaled]


@pytest.mark.parametrize("change", ["redefine", "global", "code", "default"])
def test_the_pickle_of_a_function_follows_its_changes(monkeypatch, change):
    namespace = {"__name__": "__main__", "K": 1}
    exec("def f(x, d=10):\n    return x + K + d\n", namespace)
    f = namespace["f"]
    serialization.dumps_call(f, (0,), {}, OWNER)       # registers __main__
    data, _ = serialization.dumps_call(f, (0,), {}, OWNER)
    fn, args, _ = serialization.loads(data)
    assert fn(*args) == 11
    if change == "redefine":        # a notebook cell run again
        exec("def f(x, d=10):\n    return x - K - d\n", namespace)
        f = namespace["f"]
    elif change == "global":
        namespace["K"] = 100
    elif change == "code":          # IPython's autoreload patches the code in place
        exec("def g(x, d=10):\n    return x * K * d\n", namespace)
        f.__code__ = namespace["g"].__code__
    else:
        f.__defaults__ = (1000,)
    data, _ = serialization.dumps_call(f, (0,), {}, OWNER)
    fn, args, _ = serialization.loads(data)
    assert fn(*args) == {"redefine": -11, "global": 110, "code": 0, "default": 1001}[change]


def test_a_function_naming_something_mutable_is_pickled_every_time():
    namespace = {"__name__": "__main__", "TABLE": {"k": 1}}
    exec("def lookup(key):\n    return TABLE[key]\n", namespace)
    lookup = namespace["lookup"]
    serialization.dumps_call(lookup, ("k",), {}, OWNER)
    namespace["TABLE"]["k"] = 2         # changed in place: same object
    data, _ = serialization.dumps_call(lookup, ("k",), {}, OWNER)
    fn, args, _ = serialization.loads(data)
    assert fn(*args) == 2


def _unpickled_twice(source: str, name: str) -> tuple:
    namespace = {"__name__": "__main__", "COUNT": 0}
    exec(source, namespace)
    fn = namespace[name]
    serialization.dumps_call(fn, (), {}, OWNER)         # registers __main__
    first, second = (serialization.loads(serialization.dumps_call(fn, (), {}, OWNER)[0])[0]
                     for _ in range(2))
    return first, second


def test_a_shipped_function_is_unpickled_once_where_it_runs():
    first, second = _unpickled_twice("def f():\n    return COUNT + 1\n", "f")
    assert first is second and first() == 1


@pytest.mark.parametrize("source", [
    "def f():\n    global COUNT\n    COUNT += 1\n    return COUNT\n",
    "def f():\n    globals()['COUNT'] += 1\n    return COUNT\n",
    "def f(n=0):\n    def inner():\n        global COUNT\n        COUNT += 1\n"
    "        return COUNT\n    return inner()\n",
])
def test_a_function_that_changes_its_globals_is_unpickled_afresh_for_each_call(source):
    first, second = _unpickled_twice(source, "f")
    assert first is not second
    assert (first(), second(), first()) == (1, 1, 2)    # each task sees the client's value
