"""Durable writes on a cluster keep the failure bound: a write whose key's primary hangs (SIGSTOP,
with no replica to promote) raises a typed error within FAILURE_BOUND, from several threads at
once, and those threads share their topology refreshes instead of each starting its own on every
attempt (pyhistory.functions._run_durable)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from chat import turn
from conftest import EXTERNAL_URL, any_kind

import pyhistory
from pyhistory import RedisChatMessageHistory, _clients, functions, testing

# As tests/test_production.py: what a test measuring from the outside on a loaded machine may see
# beyond the bound (thread scheduling, not waits of the library's own).
SCHEDULING_MARGIN = 2.0
THREADS = 8
# Each round of failed attempts on the hung node takes one reply timeout; one refresh per round
# at most, however many threads fail in it.
ROUNDS = math.ceil(_clients.FAILURE_BOUND / _clients.COMMAND_TIMEOUT)


@pytest.fixture(scope="module")
def lone_primaries() -> Iterator[testing.LocalCluster]:
    """A cluster of 3 primaries without replicas, of its own: this module hangs one of them."""
    if EXTERNAL_URL:
        pytest.skip("PYHISTORY_TEST_REDIS_URL names one server; the cluster tests start their own")
    with testing.start_cluster(any_kind(), replicas_per_primary=0) as started:
        yield started


def topology_refreshes(nodes: list[testing.LocalServer]) -> int:
    """CLUSTER SLOTS and CLUSTER SHARDS (what redis-py asks to learn the topology) that ``nodes``
    served since their last CONFIG RESETSTAT."""
    total = 0
    for node in nodes:
        with node.client() as client:
            stats = client.info("commandstats")
        for name in ("cmdstat_cluster|slots", "cmdstat_cluster|shards"):
            total += int(stats.get(name, {}).get("calls", 0))
    return total


@pytest.mark.cluster
def test_durable_writes_to_a_hung_primary_fail_within_the_bound(
    lone_primaries: testing.LocalCluster,
) -> None:
    cluster = lone_primaries
    cluster.wait_healthy()
    session = "hung-primary"
    RedisChatMessageHistory(session, url=cluster.url, cluster=True).add_messages(turn(1))
    client = _clients.sync_client(cluster.url, cluster=True)
    assert isinstance(client, redis.cluster.RedisCluster)
    owner = client.get_node_from_key("message_store:" + session)
    victim = next(n for n in cluster.nodes if n.port == owner.port)
    others = [n for n in cluster.nodes if n is not victim]
    for node in others:
        with node.client() as admin:
            admin.config_resetstat()

    outcomes: list[tuple[BaseException | None, float]] = []
    lock = threading.Lock()

    def write(i: int) -> None:
        history = RedisChatMessageHistory(
            session, url=cluster.url, cluster=True, wait_for_replicas=1, wait_timeout_ms=100
        )
        started = time.monotonic()
        try:
            history.add_messages(turn(i))
            error: BaseException | None = None
        except BaseException as raised:
            error = raised
        with lock:
            outcomes.append((error, time.monotonic() - started))

    victim.pause()
    try:
        threads = [threading.Thread(target=write, args=(i,)) for i in range(THREADS)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + _clients.FAILURE_BOUND + SCHEDULING_MARGIN
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0))
        refreshes = topology_refreshes(others)
    finally:
        victim.resume()
    for thread in threads:
        thread.join(120)  # past the bound (before the fix): the resumed node lets them finish
    assert len(outcomes) == THREADS, "a write did not finish"
    slowest = max(took for _, took in outcomes)
    print(f"hung primary: {THREADS} durable writes, slowest {slowest:.2f} s, {refreshes} refreshes")
    assert slowest <= _clients.FAILURE_BOUND + SCHEDULING_MARGIN
    assert 1 <= refreshes <= ROUNDS, refreshes
    for error, _ in outcomes:
        assert isinstance(error, pyhistory.ServerTimeoutError), repr(error)
        assert isinstance(error, redis.exceptions.TimeoutError)


@pytest.mark.cluster
def test_durable_writes_to_a_killed_primary_fail_within_the_bound(
    lone_primaries: testing.LocalCluster,
) -> None:
    """The primary is gone (refused connections, no replica to promote): attempts fail at once,
    so the writes retry until the window is over; their refreshes stay one at a time, paced
    (pyhistory.functions._TOPOLOGY_PAUSE), not one per thread per attempt. Runs last here: the
    node stays down."""
    cluster = lone_primaries
    cluster.wait_healthy()
    session = "killed-primary"
    RedisChatMessageHistory(session, url=cluster.url, cluster=True).add_messages(turn(1))
    client = _clients.sync_client(cluster.url, cluster=True)
    assert isinstance(client, redis.cluster.RedisCluster)
    owner = client.get_node_from_key("message_store:" + session)
    victim = next(n for n in cluster.nodes if n.port == owner.port)
    others = [n for n in cluster.nodes if n is not victim]
    for node in others:
        with node.client() as admin:
            admin.config_resetstat()

    outcomes: list[tuple[BaseException | None, float]] = []
    starts: list[float] = []
    lock = threading.Lock()

    def write(i: int) -> None:
        history = RedisChatMessageHistory(
            session, url=cluster.url, cluster=True, wait_for_replicas=1, wait_timeout_ms=100
        )
        started = time.monotonic()
        with lock:
            starts.append(started)
        try:
            history.add_messages(turn(i))
            error: BaseException | None = None
        except BaseException as raised:
            error = raised
        with lock:
            outcomes.append((error, time.monotonic() - started))

    victim.kill()
    threads = [threading.Thread(target=write, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    refreshes = topology_refreshes(others)
    assert len(outcomes) == THREADS, "a write did not finish"
    slowest = max(took for _, took in outcomes)
    print(
        f"killed primary: {THREADS} durable writes, slowest {slowest:.2f} s, {refreshes} refreshes"
    )
    assert slowest <= _clients.FAILURE_BOUND + SCHEDULING_MARGIN
    # One refresh at a time, each at least a pause after the last, while any write's window is
    # open (the threads start a moment apart): never one per thread per attempt.
    # redis-py also refreshes by itself, unpaced, when a command names a slot its topology no
    # longer covers (SlotNotCoveredError, once the dead node's slots are dropped): allowed for
    # as much again, still far below one per thread per attempt.
    open_for = _clients.RETRY_WINDOW + max(starts) - min(starts)
    paced = 1 + math.ceil(open_for / functions._TOPOLOGY_PAUSE)
    assert 1 <= refreshes <= 2 * paced, refreshes
    for error, _ in outcomes:
        assert isinstance(error, pyhistory.ServerConnectionError), repr(error)
