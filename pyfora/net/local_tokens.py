"""The tokens of this user's own clusters, left where only this user can read them.

``pyfora-cluster`` always has a client token and a worker token (generated when none is
given). So that ``pyfora.connect("http://127.0.0.1:8000/")`` and ``pyfora-worker
ws://127.0.0.1:8000`` keep working with no extra step, it writes both to a file named by
its port in the user's runtime directory, as Jupyter does with its server files:
``$XDG_RUNTIME_DIR/pyfora`` (a per-user tmpfs on systemd hosts), else
``~/.local/share/pyfora/runtime``, or ``$PYFORA_RUNTIME_DIR``. The directory is ``0700``
and each file ``0600``, both checked to be this user's and no one else's before they are
trusted: another user who can plant a file there could hand us a token of theirs and
receive our code. A client reads the file only for a loopback URL, and only when no token
was given otherwise.

Runs on any thread; plain file I/O only.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import stat
import urllib.parse

_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 with or without brackets) is this
    machine only."""
    host = host.strip("[]").lower()
    if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def runtime_dir() -> str:
    """Where this user's clusters leave their tokens (not created here)."""
    if os.environ.get("PYFORA_RUNTIME_DIR"):
        return os.environ["PYFORA_RUNTIME_DIR"]
    if os.environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(os.environ["XDG_RUNTIME_DIR"], "pyfora")
    return os.path.join(os.path.expanduser("~"), ".local", "share", "pyfora", "runtime")


def _path(port: int) -> str:
    return os.path.join(runtime_dir(), f"cluster-{port}.json")


def _private(st: os.stat_result, kind: int) -> bool:
    """Whether ``st`` is of ``kind``, this user's, and closed to everyone else."""
    return (stat.S_IFMT(st.st_mode) == kind and st.st_uid == os.getuid()
            and st.st_mode & 0o077 == 0)


def write(port: int, url: str, token: str, worker_token: str) -> str:
    """Leave the tokens of the cluster serving on ``port``; return the file's path.

    Raises:
        OSError: the runtime directory cannot be made private to this user (its error
            names the directory).
    """
    directory = runtime_dir()
    os.makedirs(directory, mode=0o700, exist_ok=True)
    if not _private(os.lstat(directory), stat.S_IFDIR):
        raise PermissionError(f"{directory} is not a directory private to this user "
                              "(mode 0700): fix it, or set PYFORA_RUNTIME_DIR")
    path = _path(port)
    temporary = f"{path}.{os.getpid()}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with open(fd, "w") as file:
        json.dump({"url": url, "token": token, "worker_token": worker_token,
                   "pid": os.getpid()}, file)
    os.replace(temporary, path)
    return path


def remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def find(url: str, key: str = "token") -> str | None:
    """The ``token`` (or ``worker_token``) a local cluster left for the address ``url``,
    if ``url`` is on this machine's loopback and this user's file for its port exists."""
    parts = urllib.parse.urlsplit(url)
    try:
        host, port = (parts.hostname or "").lower(), parts.port
    except ValueError:
        return None
    if port is None or not is_loopback(host):
        return None
    try:
        fd = os.open(_path(port), os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with open(fd) as file:
        if not _private(os.fstat(fd), stat.S_IFREG):
            return None
        try:
            value = json.load(file).get(key)
        except (ValueError, AttributeError):
            return None
    return value if isinstance(value, str) else None


def read_file(path: str) -> str:
    """The token in the file at ``path`` (its first line), for ``--token-file`` options.

    Raises:
        argparse.ArgumentTypeError: it cannot be read, or holds no token.
    """
    try:
        with open(path) as file:
            token = file.readline().strip()
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read the token file: {exc}") from None
    if not token:
        raise argparse.ArgumentTypeError(f"the token file {path} is empty")
    return token
