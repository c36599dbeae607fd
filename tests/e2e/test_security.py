"""Who may use a cluster: tokens (given, from the environment or a file, generated and
left for the owner otherwise; the workers' apart from the clients'), the Origin and Host
checks that keep web pages out, and TLS with a self-signed certificate made here. Real
coordinators, real workers, real sockets on this machine."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import os
import re
import stat
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request

import aiohttp
import cloudpickle
import psutil
import pytest
from conftest import UNIT, http_status, upgrade_headers, wait_until

import pyfora
from pyfora import aio
from pyfora.net import local_tokens
from pyfora import wire as p

T = 30 * UNIT
TOKEN = "s3cret-token-for-the-tests-0123456789"


def square(x):
    return x * x


class LoggedCluster:
    """``python -m cluster`` with its stderr (logs, the printed token) kept in a file."""

    def __init__(self, tmp_path, *args: str, env: dict | None = None) -> None:
        self.log_path = tmp_path / f"cluster-{os.urandom(4).hex()}.log"
        self._log = open(self.log_path, "w")    # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cluster", "--port", "0", "--workers", "1", *args],
            stdout=subprocess.PIPE, stderr=self._log, text=True, env=env)
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()),
                                  daemon=True)
        reader.start()
        reader.join(60 * UNIT)
        if not line or not line[0].startswith("http"):
            self.stop()
            raise RuntimeError(f"the cluster did not print its URL: {line!r}: {self.log()}")
        self.url, _, self.printed_token = line[0].strip().partition("?token=")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(30 * UNIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30 * UNIT)
        self._log.close()


def env_without_token() -> dict:
    return {k: v for k, v in os.environ.items()
            if k not in ("PYFORA_TOKEN", "PYFORA_WORKER_TOKEN")}


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """This test's clients look for local clusters' tokens in an empty directory, as a
    client of another user would (it cannot read ours)."""
    monkeypatch.setenv("PYFORA_RUNTIME_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.delenv("PYFORA_TOKEN", raising=False)


@pytest.fixture(scope="module")
def token_cluster(tmp_path_factory):
    cluster = LoggedCluster(tmp_path_factory.mktemp("token"), "--token", TOKEN,
                            "--log-level", "DEBUG", env=env_without_token())
    yield cluster
    cluster.stop()


def with_token(url: str, token: str) -> str:
    return url.rstrip("/") + "/?" + urllib.parse.urlencode({"token": token})


def status(url: str, token: str | None = None) -> dict:
    """``/api/status``, with the token as the dashboard takes it."""
    with urllib.request.urlopen(urllib.request.Request(
            url.rstrip("/") + "/api/status",
            headers={"Authorization": f"Bearer {token}"} if token else {}),
            timeout=10 * UNIT) as reply:
        return json.loads(reply.read())


# -- tokens ---------------------------------------------------------------------------

async def test_missing_or_wrong_token_is_an_authentication_error(token_cluster, elsewhere):
    for kwargs in ({}, {"token": "wrong"}, {"token": TOKEN[:-1]}):
        with pytest.raises(pyfora.AuthenticationError, match="refused the token") as info:
            await asyncio.wait_for(aio.connect(token_cluster.url, **kwargs), T)
        assert isinstance(info.value, ConnectionError)
    with pytest.raises(pyfora.AuthenticationError):
        await asyncio.wait_for(aio.connect(with_token(token_cluster.url, "wrong")), T)


@pytest.mark.parametrize("how", ["argument", "url", "environment"])
async def test_the_right_token_is_accepted_three_ways(token_cluster, monkeypatch, elsewhere,
                                                     how):
    url, kwargs = token_cluster.url, {}
    if how == "argument":
        kwargs = {"token": TOKEN}
    elif how == "url":
        url = with_token(url, TOKEN)
    else:
        monkeypatch.setenv("PYFORA_TOKEN", TOKEN)
    async with aio.connect(url, **kwargs) as ex:
        proxy = await asyncio.wait_for(ex.submit(square, 7), T)
        assert await proxy.toLocal() == 49


def test_sync_connect_with_a_wrong_token(token_cluster, elsewhere):
    with pytest.raises(pyfora.AuthenticationError):
        pyfora.connect(token_cluster.url, token="wrong")
    with pyfora.connect(token_cluster.url, token=TOKEN) as ex:
        assert ex.submit(square, 3).result(T).toLocal().result(T) == 9


def _write_marker(path):
    with open(path, "w") as f:
        f.write("ran")


def ws_frame(data: bytes) -> bytes:
    """``data`` as one masked binary websocket frame, as a client sends it."""
    from websockets.frames import Frame, Opcode
    return Frame(Opcode.BINARY, data).serialize(mask=True, extensions=[])


async def test_nothing_runs_without_the_token(token_cluster, tmp_path):
    """Frames sent right behind an upgrade with a wrong token (no waiting for the answer)
    are never read: the upgrade is refused before any frame is."""
    marker = tmp_path / "marker"
    before = status(token_cluster.url, TOKEN)["tasks"]
    port = urllib.parse.urlsplit(token_cluster.url).port
    headers = upgrade_headers(token_cluster.url, token="wrong")
    request = (f"GET /api/session HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
               "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()
    payload = cloudpickle.dumps((_write_marker, (str(marker),), {}))
    frames = b"".join(ws_frame(p.encode(p.Submit(id=i, payload=payload))) for i in range(1, 4))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request + frames)
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T)
        assert answer.startswith(b"HTTP/1.1 401"), answer
    finally:
        writer.close()
    # A client with the token goes through the same one worker: once its task has run,
    # anything queued before it would have run too.
    async with aio.connect(token_cluster.url, token=TOKEN) as ex:
        assert await (await asyncio.wait_for(ex.submit(square, 2), T)).toLocal() == 4
    assert not marker.exists()
    after = status(token_cluster.url, TOKEN)["tasks"]
    assert after["done"] == before["done"] + 1


def test_status_wants_the_token_too(token_cluster):
    with pytest.raises(urllib.error.HTTPError, match="401|403"):
        status(token_cluster.url)
    assert status(token_cluster.url, TOKEN)["workers"]


async def test_the_token_is_never_logged(token_cluster, monkeypatch):
    """At DEBUG level, after good and bad handshakes and a URL with ?token=."""
    monkeypatch.delenv("PYFORA_TOKEN", raising=False)
    async with aio.connect(with_token(token_cluster.url, TOKEN)) as ex:
        await asyncio.wait_for(ex.submit(square, 1), T)
    with pytest.raises(pyfora.AuthenticationError) as info:
        await aio.connect(with_token(token_cluster.url, TOKEN + "x"))
    assert TOKEN not in str(info.value)
    with pytest.raises(pyfora.ConnectionError) as info:   # nothing listens on port 9
        await aio.connect(with_token("http://127.0.0.1:9/", TOKEN))
    assert TOKEN not in str(info.value) and "***" in str(info.value)
    query_url = with_token(token_cluster.url, TOKEN).replace("/?", "/api/status?")
    await asyncio.to_thread(lambda: urllib.request.urlopen(query_url, timeout=T).close())
    log = wait_until(lambda: "/api/status" in token_cluster.log() and token_cluster.log(),
                     T, "the access log line")
    assert "aiohttp.access" in log            # logging is on, at DEBUG level
    assert TOKEN not in log


@pytest.mark.parametrize("token", ["wrong", TOKEN])
def test_worker_with_a_wrong_token_or_the_clients_is_refused(token_cluster, token):
    url = token_cluster.url
    worker = subprocess.run(
        [sys.executable, "-m", "cluster.worker.main", url, "--token", token, "--name", "intruder"],
        check=False, capture_output=True, text=True, timeout=T, env=env_without_token())
    assert worker.returncode != 0
    assert "refused the worker token" in worker.stderr and "PYFORA_WORKER_TOKEN" in worker.stderr
    names = [w["name"] for w in status(url, TOKEN)["workers"]]
    assert "intruder" not in names and len(names) == 1


def test_a_hand_started_worker_finds_the_worker_token_of_a_local_cluster(token_cluster):
    """No token given: ``pyfora-worker`` reads the one the cluster left for its user."""
    worker = subprocess.Popen(
        [sys.executable, "-m", "cluster.worker.main", token_cluster.url, "--name", "by-hand"],
        env=env_without_token())
    try:
        wait_until(lambda: "by-hand" in [w["name"] for w in
                                         status(token_cluster.url, TOKEN)["workers"]],
                   T, "the worker to join")
    finally:
        worker.terminate()
        worker.wait(T)


def test_a_loopback_cluster_has_tokens_too_and_leaves_them_for_its_user(tmp_path, monkeypatch):
    runtime = tmp_path / "runtime"
    env = dict(env_without_token(), PYFORA_RUNTIME_DIR=str(runtime))
    cluster = LoggedCluster(tmp_path, env=env)
    try:
        printed = wait_until(lambda: re.findall(r"^(token|worker token): (\S+)$",
                                                cluster.log(), re.M), T, "the tokens")
        tokens = dict(printed)
        assert len(printed) == 2 and tokens["token"] != tokens["worker token"]
        assert cluster.printed_token == tokens["token"] and len(tokens["token"]) >= 32
        # Never on a command line, where ps shows it to every user.
        for proc in [psutil.Process(cluster.proc.pid),
                     *psutil.Process(cluster.proc.pid).children(recursive=True)]:
            assert not any(t in " ".join(proc.cmdline()) for t in tokens.values())
        (saved,) = runtime.iterdir()
        assert stat.S_IMODE(runtime.stat().st_mode) == 0o700
        assert stat.S_IMODE(saved.stat().st_mode) == 0o600
        monkeypatch.setenv("PYFORA_RUNTIME_DIR", str(runtime))
        with pyfora.connect(cluster.url) as ex:         # found by itself
            assert ex.submit(square, 5).result(T).toLocal().result(T) == 25
        monkeypatch.setenv("PYFORA_RUNTIME_DIR", str(tmp_path / "another-users"))
        with pytest.raises(pyfora.AuthenticationError, match="refused the token"):
            pyfora.connect(cluster.url)
        with pytest.raises(urllib.error.HTTPError, match="401"):
            status(cluster.url)
    finally:
        cluster.stop()
    assert not saved.exists()


def test_a_file_planted_by_another_user_is_not_trusted(tmp_path, monkeypatch):
    """A tokens' file that is not ours alone (another owner, or readable by others) is
    ignored, so no one can hand our clients a token of theirs."""
    from pyfora.net import local_tokens
    runtime = tmp_path / "runtime"
    monkeypatch.setenv("PYFORA_RUNTIME_DIR", str(runtime))
    path = local_tokens.write(8123, "http://127.0.0.1:8123/", "t", "w")
    assert local_tokens.find("http://127.0.0.1:8123/") == "t"
    assert local_tokens.find("http://localhost:8123/", "worker_token") == "w"
    assert local_tokens.find("http://example.com:8123/") is None
    os.chmod(path, 0o644)
    assert local_tokens.find("http://127.0.0.1:8123/") is None
    os.chmod(path, 0o600)
    os.chown(path, 65534, -1)
    assert local_tokens.find("http://127.0.0.1:8123/") is None


def test_non_loopback_bind_generates_and_prints_a_token(tmp_path, elsewhere):
    cluster = LoggedCluster(tmp_path, "--host", "0.0.0.0", env=dict(
        env_without_token(), PYFORA_RUNTIME_DIR=str(tmp_path / "the-clusters")))
    try:
        lines = wait_until(lambda: [line for line in cluster.log().splitlines()
                                    if line.startswith("token: ")], T, "the printed token")
        assert len(lines) == 1
        token = lines[0].removeprefix("token: ").strip()
        assert len(token) >= 32
        local = cluster.url.replace("0.0.0.0", "127.0.0.1")
        with pytest.raises(pyfora.AuthenticationError):
            pyfora.connect(local)
        with pyfora.connect(local, token=token) as ex:      # its worker joined with it too
            assert ex.submit(square, 5).result(T).toLocal().result(T) == 25
    finally:
        cluster.stop()


def test_non_loopback_bind_uses_the_token_from_the_environment(tmp_path, monkeypatch):
    env = dict(env_without_token(), PYFORA_TOKEN=TOKEN)
    cluster = LoggedCluster(tmp_path, "--host", "0.0.0.0", env=env)
    try:
        # Known to whoever set it: not printed (the workers' one was made here, and is,
        # on stderr just after the URL on stdout).
        log = wait_until(lambda: "worker token:" in cluster.log() and cluster.log(), T,
                         "the printed worker token")
        assert not re.search("^token:", log, re.M) and TOKEN not in log
        assert not cluster.printed_token
        local = cluster.url.replace("0.0.0.0", "127.0.0.1")
        monkeypatch.setenv("PYFORA_RUNTIME_DIR", str(tmp_path / "elsewhere"))
        monkeypatch.delenv("PYFORA_TOKEN", raising=False)
        with pytest.raises(pyfora.AuthenticationError):
            pyfora.connect(local)
        monkeypatch.setenv("PYFORA_TOKEN", TOKEN)
        with pyfora.connect(local) as ex:
            assert ex.submit(square, 6).result(T).toLocal().result(T) == 36
    finally:
        cluster.stop()


# -- web pages ------------------------------------------------------------------------

async def _handshake(url: str, path: str, headers: dict) -> int:
    """The HTTP status of a websocket handshake with these headers and the right token
    and hello (101: upgraded)."""
    role = "client" if path == "/api/session" else "worker"
    headers = {**upgrade_headers(url, role), **headers}
    async with aiohttp.ClientSession() as http:
        try:
            async with http.ws_connect(url.rstrip("/") + path, headers=headers,
                                       timeout=aiohttp.ClientWSTimeout(ws_close=T)) as ws:
                await ws.close()
                return 101
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status


@pytest.mark.parametrize("path", ["/api/session", "/api/worker"])
@pytest.mark.parametrize("origin", ["https://evil.example", "http://evil.example:8000",
                                    "null", "http://127.0.0.1.evil.example",
                                    "http://localhost:9999", "https://127.0.0.1:{port}",
                                    "http://127.0.0.1"])
async def test_a_foreign_web_page_is_refused(cluster_url, path, origin):
    before = http_status(cluster_url)
    origin = origin.format(port=urllib.parse.urlsplit(cluster_url).port)
    assert await _handshake(cluster_url, path, {"Origin": origin}) == 403
    after = http_status(cluster_url)
    assert after["sessions"] == before["sessions"]
    assert len(after["workers"]) == len(before["workers"])


@pytest.mark.parametrize("path", ["/api/session", "/api/worker"])
async def test_dns_rebinding_is_refused(cluster_url, path):
    """A foreign name resolving to 127.0.0.1 makes the page same-origin with us: the
    loopback-bound coordinator refuses any Host that is not a loopback name."""
    port = urllib.parse.urlsplit(cluster_url).port
    host = f"rebind.evil.example:{port}"
    assert await _handshake(cluster_url, path, {"Host": host, "Origin": f"http://{host}"}) == 403
    assert await _handshake(cluster_url, path, {"Host": host}) == 403


async def test_a_page_on_the_clusters_own_host_is_allowed(cluster_url):
    port = urllib.parse.urlsplit(cluster_url).port
    for name in ("127.0.0.1", "localhost"):
        headers = {"Host": f"{name}:{port}", "Origin": f"http://{name}:{port}"}
        assert await _handshake(cluster_url, "/api/session", headers) == 101
    # Exactly its own: the page's host is the one the request names.
    headers = {"Host": f"127.0.0.1:{port}", "Origin": f"http://localhost:{port}"}
    assert await _handshake(cluster_url, "/api/session", headers) == 403


def test_http_routes_check_the_host_too(cluster_url):
    """DNS rebinding of the dashboard's data: a foreign name is refused even with the
    token (a rebinding page has not got it, but nothing else should answer it either)."""
    port = urllib.parse.urlsplit(cluster_url).port
    request = urllib.request.Request(cluster_url.rstrip("/") + "/api/status", headers={
        "Host": f"rebind.evil.example:{port}",
        "Authorization": f"Bearer {local_tokens.find(cluster_url)}"})
    with pytest.raises(urllib.error.HTTPError, match="403"):
        urllib.request.urlopen(request, timeout=T)


# -- TLS ------------------------------------------------------------------------------

def make_self_signed(directory) -> tuple[str, str]:
    """A self-signed certificate for localhost and 127.0.0.1, and its key (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pyfora test cluster")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return str(certfile), str(keyfile)


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tls")
    certfile, keyfile = make_self_signed(directory)
    cluster = LoggedCluster(directory, "--certfile", certfile, "--keyfile", keyfile,
                            env=env_without_token())
    cluster.certfile = certfile
    yield cluster
    cluster.stop()


def test_tls_cluster_serves_https_and_its_workers_join_over_wss(tls_cluster):
    assert tls_cluster.url.startswith("https://127.0.0.1:")
    with pyfora.connect(tls_cluster.url, cafile=tls_cluster.certfile) as ex:
        assert ex.getWorkerCount() == 1
        assert ex.submit(square, 11).result(T).toLocal().result(T) == 121


async def test_tls_aio_connect_with_cafile_and_wss_url(tls_cluster):
    wss = tls_cluster.url.replace("https://", "wss://", 1)
    async with aio.connect(wss, cafile=tls_cluster.certfile) as ex:
        proxy = await asyncio.wait_for(ex.submit(square, 12), T)
        assert await proxy.toLocal() == 144


async def test_tls_clients_verify_by_default(tls_cluster):
    with pytest.raises(pyfora.ConnectionError, match="could not be verified.*cafile="):
        await asyncio.wait_for(aio.connect(tls_cluster.url), T)
    with pytest.raises(pyfora.ConnectionError, match="could not be verified"):
        pyfora.connect(tls_cluster.url)


async def test_tls_verify_false_opts_out(tls_cluster):
    async with aio.connect(tls_cluster.url, verify=False) as ex:
        assert await (await asyncio.wait_for(ex.submit(square, 4), T)).toLocal() == 16
    with pyfora.connect(tls_cluster.url, verify=False) as ex:
        assert ex.submit(square, 5).result(T).toLocal().result(T) == 25


async def test_tls_port_refuses_plain_websockets(tls_cluster):
    plain = tls_cluster.url.replace("https://", "http://", 1)
    with pytest.raises(pyfora.ConnectionError):
        await asyncio.wait_for(aio.connect(plain), T)


def test_tls_hand_started_worker_verifies_the_certificate(tls_cluster):
    """Without --cafile the worker stops at the certificate; with it, the TLS handshake
    succeeds and the coordinator answers its hello (this cluster's workers need its
    internal token, so the answer is a refusal)."""
    def run(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "cluster.worker.main", tls_cluster.url, *extra],
            check=False, capture_output=True, text=True, timeout=T, env=env_without_token())
    unverified = run()
    assert unverified.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in unverified.stderr
    verified = run("--cafile", tls_cluster.certfile, "--token", "guess")
    assert verified.returncode != 0 and "refused the worker token" in verified.stderr
