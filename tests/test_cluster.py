"""On a Redis Cluster of 3 primaries + 3 replicas: the core behaviours, routing with no extra
round trips, loading on every primary, healing a primary that lost the library, replica reads."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import pytest
import redis
import redis.asyncio.cluster
import redis.cluster
from chat import assert_ttl, check_asyncio_methods, turn
from conftest import VERSIONED
from langchain_core.messages import HumanMessage, message_to_dict

import pyhistory
from pyhistory import RedisChatMessageHistory, _core, testing

pytestmark = pytest.mark.cluster


def command_calls(cluster: testing.LocalCluster) -> Counter[str]:
    """Commands run on all nodes since the last reset, as INFO commandstats counts them."""
    total: Counter[str] = Counter()
    for node in cluster.nodes:
        with node.client() as c:
            for name, stats in c.info("commandstats").items():
                total[name.removeprefix("cmdstat_")] += int(stats["calls"])
    return total


def reset_stats(cluster: testing.LocalCluster) -> None:
    for node in cluster.nodes:
        with node.client() as c:
            c.config_resetstat()


def libraries_on(node: testing.LocalServer) -> list[bytes]:
    with node.client() as c:
        return [lib[1] for lib in c.function_list()]


def test_core_behaviours(cluster_client: redis.cluster.RedisCluster) -> None:
    history = RedisChatMessageHistory(
        "s", redis_client=cluster_client, ttl=60, max_messages=5, window=4
    )
    for i in range(4):
        history.add_messages(turn(i))
    assert [m.content for m in history.messages] == [
        "question 2",
        "answer 2",
        "question 3",
        "answer 3",
    ]
    assert len(history) == 5
    assert_ttl(cluster_client, history.key, 60)
    assert history.touch() is True
    history.clear()
    assert history.messages == [] and len(history) == 0


async def test_core_behaviours_asyncio(
    cluster: testing.LocalCluster, cluster_client: redis.cluster.RedisCluster
) -> None:
    host, port = cluster.startup_nodes[0]
    client = redis.asyncio.cluster.RedisCluster(host=host, port=port, **VERSIONED)
    try:
        history = RedisChatMessageHistory("a", async_redis_client=client, ttl=60, max_messages=3)
        await check_asyncio_methods(history, cluster_client)
    finally:
        await client.aclose()


def test_from_a_cluster_url(cluster: testing.LocalCluster, cluster_client: Any) -> None:
    histories = [RedisChatMessageHistory(f"u{i}", url=cluster.url, cluster=True) for i in range(3)]
    for h in histories:
        h.add_user_message("hi")
        assert [m.content for m in h.messages] == ["hi"]
    assert histories[0].redis_client is histories[2].redis_client


def test_lazy_load_reaches_every_primary(
    cluster: testing.LocalCluster, cluster_client: redis.cluster.RedisCluster
) -> None:
    RedisChatMessageHistory("s", redis_client=cluster_client).add_user_message("x")
    for primary in cluster.primaries():  # replicas receive FUNCTION LOAD by replication
        with primary.client() as c:
            assert c.wait(1, 10_000) == 1, primary.port
    for node in cluster.nodes:
        assert libraries_on(node) == [_core.LIBRARY.encode()], node.port


def test_sessions_spread_over_all_primaries(
    cluster: testing.LocalCluster, cluster_client: redis.cluster.RedisCluster
) -> None:
    for i in range(60):
        RedisChatMessageHistory(f"user-{i}", redis_client=cluster_client).add_user_message("x")
    sizes = []
    for node in cluster.primaries():
        with node.client() as c:
            sizes.append(len(c.keys("message_store:*")))
    assert sum(sizes) == 60 and all(size > 0 for size in sizes), sizes


def test_each_operation_is_one_command_with_no_key_lookups(
    cluster: testing.LocalCluster,
) -> None:
    """On the cluster client pyhistory builds: an append is one FCALL, a read one LRANGE (the
    append set the TTL a moment ago, so the read refreshes nothing), and no FCALL makes redis-py
    ask the server for its keys. (A client the user passes in routes FCALL as redis-py does.)"""
    history = RedisChatMessageHistory("s", url=cluster.url, cluster=True, ttl=60, window=20)
    history.add_messages(turn(0))
    _ = history.messages  # warm-up: library loaded, slots known
    reset_stats(cluster)
    for i in range(10):
        history.add_messages(turn(i))
        _ = history.messages
    calls = command_calls(cluster)
    assert calls["fcall"] == 10 and calls["lrange"] == 10, calls
    assert "command|getkeys" not in calls  # redis-py would ask for each FCALL's keys
    assert "command" not in calls


async def test_asyncio_cluster_sends_no_key_lookups(cluster: testing.LocalCluster) -> None:
    history = RedisChatMessageHistory("s", url=cluster.url, cluster=True, ttl=60)
    await history.aadd_messages(turn(0))
    reset_stats(cluster)
    for i in range(5):
        await history.aadd_messages(turn(i))
        await history.aget_messages()
    calls = command_calls(cluster)
    assert calls["fcall"] == 5 and calls["lrange"] == 5 and "command|getkeys" not in calls, calls


def test_a_primary_that_lost_the_library_is_healed(
    cluster: testing.LocalCluster, cluster_client: redis.cluster.RedisCluster
) -> None:
    history = RedisChatMessageHistory("s", redis_client=cluster_client)
    history.add_user_message("before")
    owner = cluster_client.get_node_from_key(history.key)
    cluster_client.execute_command("FUNCTION FLUSH", target_nodes=owner)
    history.add_user_message("after")
    assert [m.content for m in history.messages] == ["before", "after"]


def test_other_fcalls_still_route_by_their_own_keys(
    cluster_client: redis.cluster.RedisCluster,
) -> None:
    pyhistory.load_functions(cluster_client)
    for key in ("a", "b", "{tag}x"):
        ids, batch = _core.batches_key(key), _core.new_batch_id()
        cluster_client.execute_command("FCALL", _core.APPEND, 2, key, ids, 0, 0, batch, "v")
        assert cluster_client.execute_command("FCALL_RO", _core.LENGTH, 1, key) == 1


def test_reads_from_replicas(cluster: testing.LocalCluster, cluster_client: Any) -> None:
    writer = RedisChatMessageHistory("r", url=cluster.url, cluster=True, ttl=60)
    writer.add_messages(turn(1))
    # CLUSTER SLOTS leaves out replicas that have not replicated anything yet, and redis-py
    # learns its replicas from it: wait until every slot range lists one.
    deadline = time.monotonic() + 10
    while any(not slot["replicas"] for slot in cluster_client.cluster_slots().values()):
        assert time.monotonic() < deadline, "replicas never showed up in CLUSTER SLOTS"
        for key in "abcdefgh":  # writes on every primary give its replica an offset
            cluster_client.set(f"warm:{key}", 1)
        time.sleep(0.1)
    reader = RedisChatMessageHistory(
        "r", url=cluster.url, cluster=True, ttl=60, read_from_replicas=True
    )
    deadline = time.monotonic() + 5
    while [m.content for m in reader.messages] != ["question 1", "answer 1"]:
        assert time.monotonic() < deadline, "replicas never caught up"
        time.sleep(0.05)
    reset_stats(cluster)
    for _ in range(20):
        assert len(reader.messages) == 2
    served: Counter[str] = Counter()
    for node in cluster.nodes:
        with node.client() as c:
            served[str(node.port)] = int(
                c.info("commandstats").get("cmdstat_lrange", {}).get("calls", 0)
            )
    port = cluster_client.get_node_from_key(writer.key).port
    (owner,) = [p for p in cluster.primaries() if p.port == port]
    (replica,) = cluster.replicas_of(owner)
    # every read, by the replica of the session's primary
    assert served == Counter({str(replica.port): 20}), served


def test_read_from_replicas_needs_somewhere_to_read() -> None:
    with pytest.raises(pyhistory.InvalidArgumentError, match="read_from_replicas"):
        RedisChatMessageHistory("s", url="redis://127.0.0.1:1/0", read_from_replicas=True)


def test_durable_write_follows_ask_during_a_slot_migration(
    cluster: testing.LocalCluster, cluster_client: redis.cluster.RedisCluster
) -> None:
    """An append names two keys (the session and its batch ids): a migrating slot serves it
    where both are, the source before they move, the target after (ASK), as any multi-key
    command; where only one of them is, the server answers TRYAGAIN until they are together."""
    history = RedisChatMessageHistory(
        "migrating", redis_client=cluster_client, wait_for_replicas=1, wait_timeout_ms=2000
    )
    pyhistory.load_functions(cluster_client)
    history.add_user_message("before the move")
    slot = cluster_client.keyslot(history.key)
    source = cluster_client.get_node_from_key(history.key)
    target = next(p for p in cluster_client.get_primaries() if p.name != source.name)
    source_id = cluster_client.execute_command("CLUSTER MYID", target_nodes=source)
    target_id = cluster_client.execute_command("CLUSTER MYID", target_nodes=target)
    ids = {source.name: source_id, target.name: target_id}
    cluster_client.execute_command(
        "CLUSTER SETSLOT", slot, "IMPORTING", ids[source.name], target_nodes=target
    )
    cluster_client.execute_command(
        "CLUSTER SETSLOT", slot, "MIGRATING", ids[target.name], target_nodes=source
    )
    try:
        history.add_user_message("on the source")  # both keys still there
        ids = _core.batches_key(history.key)
        cluster_client.execute_command(
            "MIGRATE", target.host, target.port, "", 0, 5000, "KEYS", history.key, ids,
            target_nodes=source,
        )  # fmt: skip
        history.add_user_message("on the target")  # the source answers ASK: keys not there
        with target.redis_connection.pipeline(transaction=False) as pipe:
            pipe.execute_command("ASKING")
            pipe.lrange(history.key, 0, -1)
            assert pipe.execute()[1] == [
                json.dumps(message_to_dict(HumanMessage(text))).encode()
                for text in ("on the target", "on the source", "before the move")
            ]
    finally:
        for node in (source, target):
            cluster_client.execute_command("CLUSTER SETSLOT", slot, "STABLE", target_nodes=node)
        cluster_client.flushall(target_nodes=redis.cluster.RedisCluster.PRIMARIES)


async def test_asyncio_durable_writes_on_a_cluster_url(
    cluster: testing.LocalCluster, cluster_client: Any
) -> None:
    history = RedisChatMessageHistory(
        "durable-async", url=cluster.url, cluster=True, wait_for_replicas=1
    )
    await history.aadd_messages(turn(1))
    owner = cluster_client.get_node_from_key(history.key)
    (primary,) = [p for p in cluster.primaries() if p.port == owner.port]
    (replica,) = cluster.replicas_of(primary)
    with replica.client(single_connection_client=True) as c:  # acknowledged: the replica has it
        c.execute_command("READONLY")  # a cluster replica serves its primary's keys only then
        assert c.llen(history.key) == 2
    assert [m.content for m in await history.aget_messages()] == ["question 1", "answer 1"]
