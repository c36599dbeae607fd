"""Pins the public surface: ``__all__`` of ``pyfora`` and ``pyfora.aio``, the camelCase
method names shared by both layers, the error tree, and the import layering."""

import ast
import builtins
import concurrent.futures
import pathlib

import pyfora
from pyfora import aio, errors

PYFORA_ALL = [
    "AuthenticationError", "BadWithBlockError", "CancelledError", "CantGetSourceTextError",
    "ComputationError", "ConnectionError", "Executor", "ExecutorClosedError",
    "ForeignProxyError", "Future", "InternalError", "ProtocolError", "PyforaConnectionError",
    "PyforaError", "PyforaTimeoutError", "PyforaUsageError", "PythonToForaConversionError",
    "RemotePythonObject", "ResourceLimitError", "ResultExceededBytecountThreshold",
    "SessionClosedOK", "SessionLost", "WorkerCrashedError", "connect",
]

#: Public methods and attributes, identical in pyfora and pyfora.aio.
EXECUTOR_NAMES = {"submit", "define", "getWorkerCount", "status", "isClosed", "close"}
PROXY_NAMES = {"toLocal", "size", "typeName", "failed"}


def test_pyfora_all_is_pinned_and_sorted():
    assert sorted(pyfora.__all__, key=str.lower) == sorted(PYFORA_ALL, key=str.lower)
    assert set(PYFORA_ALL) <= set(pyfora.__all__)
    assert pyfora.__all__ == sorted(pyfora.__all__)
    for name in pyfora.__all__:
        assert hasattr(pyfora, name), name


def test_aio_all():
    assert set(aio.__all__) >= {"Executor", "RemotePythonObject", "connect"}
    assert aio.__all__ == sorted(aio.__all__)
    for name in aio.__all__:
        assert hasattr(aio, name), name


def test_same_camel_case_names_in_both_layers():
    for cls in (pyfora.Executor, aio.Executor):
        missing = {n for n in EXECUTOR_NAMES if not hasattr(cls, n)}
        assert not missing, (cls, missing)
    for cls in (pyfora.RemotePythonObject, aio.RemotePythonObject):
        names = set(dir(cls)) | set(getattr(cls, "__slots__", ()))
        assert PROXY_NAMES <= names, (cls, PROXY_NAMES - names)
    # no PEP 8 aliases in v1, and no Async prefix / _sync suffix
    for cls in (pyfora.Executor, aio.Executor, pyfora.RemotePythonObject,
                aio.RemotePythonObject):
        for alias in ("to_local", "get_worker_count", "is_closed", "type_name"):
            assert not hasattr(cls, alias), (cls, alias)
    assert not [n for n in dir(pyfora) + dir(aio) if n.startswith("Async") or n.endswith("_sync")]


def test_stdlib_types_and_aliases():
    assert pyfora.CancelledError is concurrent.futures.CancelledError
    assert pyfora.ConnectionError is pyfora.PyforaConnectionError
    assert issubclass(pyfora.Future, concurrent.futures.Future)


def test_error_tree():
    tree = {
        errors.PyforaConnectionError: (errors.PyforaError, builtins.ConnectionError),
        errors.AuthenticationError: (errors.PyforaConnectionError,),
        errors.SessionClosedOK: (errors.PyforaConnectionError,),
        errors.SessionLost: (errors.PyforaConnectionError,),
        errors.PyforaTimeoutError: (errors.PyforaError, builtins.TimeoutError),
        errors.PyforaUsageError: (errors.PyforaError, builtins.RuntimeError),
        errors.ExecutorClosedError: (errors.PyforaUsageError,),
        errors.ForeignProxyError: (errors.PyforaUsageError,),
        errors.BadWithBlockError: (errors.PyforaUsageError,),
        errors.CantGetSourceTextError: (errors.PyforaUsageError,),
        errors.PythonToForaConversionError: (errors.PyforaError,),
        errors.ResultExceededBytecountThreshold: (errors.PyforaError,),
        errors.ResourceLimitError: (errors.PyforaError,),
        errors.ComputationError: (errors.PyforaError,),
        errors.WorkerCrashedError: (errors.ComputationError,),
        errors.ProtocolError: (errors.PyforaError,),
        errors.InternalError: (errors.PyforaError,),
    }
    for cls, bases in tree.items():
        for base in bases:
            assert issubclass(cls, base), (cls, base)
        assert cls.__name__ in errors.__doc__, f"{cls.__name__} missing from the drawn tree"
    assert not issubclass(errors.ComputationError, builtins.ConnectionError)


def _imports(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_only_the_bridge_modules_of_the_sync_facade_import_asyncio():
    package = pathlib.Path(pyfora.__file__).parent
    users = sorted(p.name for p in package.glob("*.py") if "asyncio" in _imports(p))
    assert users == ["_portal.py", "future.py"]


def test_pyfora_never_imports_cluster_at_module_level():
    package = pathlib.Path(pyfora.__file__).parent
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text())
        top = {n.module.split(".")[0] for n in tree.body
               if isinstance(n, ast.ImportFrom) and n.module and n.level == 0}
        top |= {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import)
                for a in n.names}
        assert "cluster" not in top, path
