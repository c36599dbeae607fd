"""The layering holds by construction: which process a module runs in decides what it may
import (an AST test over the source, so it cannot rot), and the coordinator, run as
``python -X importtime -m cluster``, never loads the client API or cloudpickle."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys
import threading

import pytest
from conftest import UNIT

ROOT = pathlib.Path(__file__).resolve().parent.parent

#: What the modules under each folder may import of pyfora and cluster (by prefix).
ALLOWED = {
    "pyfora/wire": ["pyfora.errors", "pyfora.wire", "pyfora.net.shared_memory"],
    "pyfora/net": ["pyfora.errors", "pyfora.wire", "pyfora.net"],
    "cluster/coordinator": ["pyfora.errors", "pyfora.wire", "pyfora.net", "cluster.coordinator",
                            "cluster.scheduling"],
    # The Dask backend hands Dask the functions its workers run (``cluster.worker.dask_*``).
    "cluster/scheduling": ["pyfora.errors", "pyfora.wire", "pyfora.net", "cluster.scheduling",
                           "cluster.coordinator.store", "cluster.worker.dask_tasks",
                           "cluster.worker.dask_parallel"],
    # Workers unpickle and run user code: serialization, parallelism and the compiled tier.
    "cluster/worker": ["pyfora.errors", "pyfora.wire", "pyfora.net", "pyfora.serialization",
                       "pyfora.parallel", "pyfora.compiled", "cluster.worker",
                       "cluster.loop_factory"],
    "cluster/__main__.py": ["pyfora.net", "cluster.coordinator", "cluster.loop_factory"],
}
#: The one place the client reaches into cluster/: the embedded default's launcher.
CLIENT_INTO_CLUSTER = {"pyfora/aio/connection.py": "cluster.coordinator.embedded"}


def imports(path: pathlib.Path) -> set[str]:
    """Every pyfora or cluster module ``path`` imports, relative imports resolved."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(filter(None, [base, node.module or ""]))
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return {m for m in found if m.split(".")[0] in ("pyfora", "cluster")}


def modules(folder: str) -> list[pathlib.Path]:
    path = ROOT / folder
    return [path] if path.suffix == ".py" else sorted(path.rglob("*.py"))


def allowed(module: str, prefixes: list[str]) -> bool:
    # ``from pyfora import wire`` names ``pyfora`` itself: the package's __init__ is lazy.
    return module in ("pyfora", "cluster") or any(
        module == p or module.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_each_folder_imports_only_what_its_process_may(folder):
    wrong = {f"{path.relative_to(ROOT)} imports {module}"
             for path in modules(folder) for module in imports(path)
             if not allowed(module, ALLOWED[folder])
             # a module's own package and siblings, e.g. ``from cluster.worker import stats``
             and not module.startswith(".".join(path.relative_to(ROOT).parts[:2]))}
    assert not wrong, sorted(wrong)


def test_the_client_reaches_into_cluster_in_one_place_only():
    reaching = {str(path.relative_to(ROOT)): sorted(m for m in imports(path)
                                                    if m.startswith("cluster"))
                for path in modules("pyfora")}
    reaching = {k: v for k, v in reaching.items() if v}
    assert reaching == {k: [v] for k, v in CLIENT_INTO_CLUSTER.items()}


def test_the_checker_sees_a_violation(tmp_path):
    """The rules above would catch a coordinator module importing the client."""
    bad = ROOT / "cluster" / "coordinator" / "app.py"
    assert not allowed("pyfora.aio.session", ALLOWED["cluster/coordinator"])
    assert "pyfora.wire" in imports(bad)


def test_the_coordinator_never_loads_the_client_api_nor_cloudpickle():
    proc = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-m", "cluster", "--port", "0", "--workers", "1"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        assert proc.stdout.readline().startswith("http")     # serving, its worker joined
    finally:
        proc.terminate()
        proc.wait(30 * UNIT)
        reader.join(30 * UNIT)
    loaded = {line.rsplit("|", 1)[-1].strip() for line in err if line.startswith("import time:")}
    assert "cluster.coordinator.app" in loaded              # the measure is on
    for module in ("cloudpickle", "pyfora.serialization", "pyfora.aio", "pyfora.connection",
                   "pyfora.parallel", "pyfora.compiled"):
        assert module not in loaded, module
