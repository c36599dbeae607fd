"""The compiled tier's disk cache (``pyfora.compiled._disk``): a fresh process finds what
another compiled, or refused, and loads it instead of compiling; what the code depends on
names its directory; an unsafe root is not used. What was found is read from the counts
(``cache_hits``), never from timing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("numba")

from pyfora.compiled import _disk, _pieces  # noqa: E402

SCRIPT = '''
import json
from pyfora import compiled


def isPrime(p):
    x = 2
    while x * x <= p:
        if p % x == 0:
            return 0
        x = x + 1
    return 1


def labelled(x):
    return {"x": x}["x"]


SRC = {"sum": "(isPrime(x) for x in _pyfora_it)", "list": "[labelled(x) for x in _pyfora_it]"}
names = {"isPrime": isPrime, "labelled": labelled}
kind = KIND
fallback = eval("lambda _pyfora_it: " + SRC[kind], dict(names))
made = compiled.piece(kind, SRC[kind], fallback, names)
value = None if made is None else sum(made(range(1000)))
print(json.dumps({"value": value, "counts": compiled.counts()}))
'''


def fresh_process(tmp_path, kind: str) -> dict:
    script = tmp_path / "piece.py"
    script.write_text(SCRIPT.replace("KIND", repr(kind)))
    env = {**os.environ, "PYFORA_COMPILE_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                         text=True, check=True, timeout=120).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_a_fresh_process_loads_a_compiled_piece_from_disk(tmp_path):
    first = fresh_process(tmp_path, "sum")
    assert first["value"] == 170            # primes below 1000, and 0 and 1
    assert first["counts"]["compiled"] == 1 and first["counts"]["cache_hits"] == 0
    second = fresh_process(tmp_path, "sum")
    assert second["value"] == 170
    assert second["counts"]["compiled"] == 1 and second["counts"]["cache_hits"] == 1
    assert os.stat(tmp_path / "cache").st_mode & 0o777 == 0o700


def test_a_fresh_process_finds_a_refusal_on_disk(tmp_path):
    first = fresh_process(tmp_path, "list")
    assert first["value"] is None
    assert first["counts"]["fallbacks"] == 1 and first["counts"]["cache_hits"] == 0
    second = fresh_process(tmp_path, "list")
    assert second["counts"]["fallbacks"] == 1 and second["counts"]["cache_hits"] == 1
    assert second["counts"]["reasons"] == first["counts"]["reasons"]


def _uses(limit):
    g: dict = {}
    exec("def uses(x):\n    return x + LIMIT", g)
    g["LIMIT"] = limit
    return _pieces._key({"uses": g["uses"]}, set())


def test_the_directory_follows_what_the_code_depends_on(tmp_path, monkeypatch):
    monkeypatch.setenv("PYFORA_COMPILE_CACHE", str(tmp_path))
    _disk.root.cache_clear()
    try:
        assert _disk.directory(_uses(1)) == _disk.directory(_uses(1))
        assert _disk.directory(_uses(1)) != _disk.directory(_uses(2))
        assert _disk.directory(_uses(1)) != _disk.directory(_uses(1.0))
        assert os.path.dirname(_disk.directory(_uses(1))) == str(tmp_path)
    finally:
        _disk.root.cache_clear()


def test_a_root_others_may_write_to_is_not_used(tmp_path, monkeypatch):
    root = tmp_path / "shared"
    root.mkdir()
    root.chmod(0o777)
    monkeypatch.setenv("PYFORA_COMPILE_CACHE", str(root))
    _disk.root.cache_clear()
    try:
        assert _disk.root() is None
        assert _disk.directory(_uses(1)) is None
    finally:
        _disk.root.cache_clear()
