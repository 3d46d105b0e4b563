"""asyncio commands issued at the same moment share one flight: each task still gets its own
reply or its own error, and nothing else changes for the caller."""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio
import redis.cluster
from chat import turn
from conftest import VERSIONED

from pyhistory import InvalidSessionIdError, RedisChatMessageHistory, WrongTypeError, testing
from pyhistory._clients import async_client
from pyhistory._coalesce import Transaction, coalescer


def reads_processed(client: redis.Redis) -> int:
    return int(client.info("stats")["total_reads_processed"])


async def test_concurrent_tasks_each_get_their_own_reply(url: str, client: redis.Redis) -> None:
    histories = [RedisChatMessageHistory(f"s{i}", url=url, ttl=60) for i in range(64)]
    await histories[0].aadd_messages(turn(0))  # connected, functions loaded
    before = reads_processed(client)
    await asyncio.gather(*(h.aadd_messages(turn(i)) for i, h in enumerate(histories)))
    appended = reads_processed(client) - before - 1
    read = await asyncio.gather(*(h.aget_messages() for h in histories))
    for i, messages in enumerate(read):
        expected = [f"question {i}", f"answer {i}"]
        assert [m.content for m in messages][-2:] == expected
    # 64 appends at once travelled together: far fewer flights than commands.
    assert appended < 16, appended


async def test_a_lone_command_is_sent_by_its_caller(url: str) -> None:
    """On a busy event loop every pass runs everyone else's ready work: a command issued when
    the client is idle is sent by its caller, as redis-py sends it, instead of being queued for
    a flight that takes off and lands a pass later each (three loop passes more, counted before);
    a command issued while another is in the air joins the next flight."""
    history = RedisChatMessageHistory("s", url=url)
    await history.aadd_messages(turn(0))  # connected, functions loaded
    client = await async_client(url)
    assert isinstance(client, redis.asyncio.Redis)
    flights = coalescer(client)
    command = ("LRANGE", history.key, 0, -1)
    lone = flights.call(command)
    assert not isinstance(lone, asyncio.Future)  # the caller's own send
    in_the_air = asyncio.ensure_future(lone)
    await asyncio.sleep(0)  # written, its reply not read yet
    queued = flights.call(command)
    assert isinstance(queued, asyncio.Future)  # waits for the next flight
    assert len(await in_the_air) == len(await queued) == 2


async def test_a_lone_transaction_is_sent_by_its_caller(url: str, client: redis.Redis) -> None:
    """A transaction (a plain append, a checkpoint's put) on an idle client is sent at once by
    its caller too, and resolves as one in a flight does; one issued while it is in the air
    joins the next flight."""
    history = RedisChatMessageHistory("s", url=url)
    await history.aadd_messages(turn(0))  # connected, functions loaded
    aclient = await async_client(url)
    assert isinstance(aclient, redis.asyncio.Redis)
    flights = coalescer(aclient)

    def push(value: str) -> Transaction:
        commands = [("MULTI",), ("RPUSH", "k", value), ("EXEC",)]
        return Transaction(commands, [("RPUSH", "k", value)])

    lone = flights.call(push("a"))
    assert not isinstance(lone, asyncio.Future)
    in_the_air = asyncio.ensure_future(lone)
    await asyncio.sleep(0)
    queued = flights.call(push("b"))
    assert isinstance(queued, asyncio.Future)
    replies, again = await in_the_air
    assert again is None and replies[-1] == [1]
    replies, again = await queued
    assert again is None and replies[-1] == [2]
    assert client.lrange("k", 0, -1) == [b"a", b"b"]


async def test_an_error_reply_stays_with_its_command(url: str, client: redis.Redis) -> None:
    client.set("message_store:taken", "a string")
    good = [RedisChatMessageHistory(f"s{i}", url=url) for i in range(8)]
    bad = RedisChatMessageHistory("taken", url=url)
    appended = await asyncio.gather(
        *(h.aadd_messages(turn(i)) for i, h in enumerate(good)),
        bad.aadd_messages(turn(99)),
        return_exceptions=True,
    )
    assert appended[:8] == [None] * 8
    assert isinstance(appended[8], WrongTypeError)
    read = await asyncio.gather(
        *(h.aget_messages() for h in good), bad.aget_messages(), return_exceptions=True
    )
    assert isinstance(read[-1], WrongTypeError)
    for i, messages in enumerate(read[:-1]):
        assert [m.content for m in messages] == [f"question {i}", f"answer {i}"]  # type: ignore[union-attr]
    assert client.get("message_store:taken") == b"a string"


async def test_a_cancelled_caller_leaves_the_others_alone(url: str) -> None:
    histories = [RedisChatMessageHistory(f"s{i}", url=url) for i in range(16)]
    await asyncio.gather(*(h.aadd_messages(turn(i)) for i, h in enumerate(histories)))
    tasks = [asyncio.ensure_future(h.aget_messages()) for h in histories]
    await asyncio.sleep(0)  # queued, not yet sent
    tasks[3].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[3], asyncio.CancelledError)
    assert all(len(r) == 2 for i, r in enumerate(results) if i != 3)  # type: ignore[arg-type]


async def test_a_lost_server_fails_every_command_of_the_flight_typed(url: str) -> None:
    """A refused connection reaches each caller as the typed error it would get alone."""
    nowhere = "redis://127.0.0.1:1/0"  # nothing listens there
    client = redis.asyncio.Redis.from_url(nowhere, **VERSIONED)
    try:
        histories = [RedisChatMessageHistory(f"s{i}", async_redis_client=client) for i in range(4)]
        results = await asyncio.gather(
            *(h.aget_messages() for h in histories), return_exceptions=True
        )
    finally:
        await client.aclose()
    for result in results:
        assert isinstance(result, redis.ConnectionError), result
        assert type(result).__module__.startswith("pyhistory"), type(result)


async def test_bad_input_never_reaches_a_flight(url: str) -> None:
    with pytest.raises(InvalidSessionIdError):
        RedisChatMessageHistory("", url=url)


async def test_a_users_client_is_coalesced_without_being_changed(url: str) -> None:
    client = redis.asyncio.Redis.from_url(url, **VERSIONED)
    try:
        before = dict(vars(client))
        history = RedisChatMessageHistory("s", url=url, async_redis_client=client)
        await asyncio.gather(*(history.aadd_messages(turn(i)) for i in range(8)))
        assert len(await history.aget_messages()) == 16
        assert vars(client).keys() == before.keys()
        assert coalescer(client) is coalescer(client)
    finally:
        await client.aclose()


def test_our_cluster_client_routes_fcall_without_asking_the_server(
    cluster: testing.LocalCluster, cluster_client: redis.cluster.RedisCluster
) -> None:
    """The cluster clients pyhistory builds find an FCALL's keys themselves (redis-py would ask
    the server with COMMAND GETKEYS, a round trip per call); a client the user passes is left as
    redis-py made it. Fails if redis-py changes how its cluster client finds keys."""
    history = RedisChatMessageHistory("s", url=cluster.url, cluster=True, ttl=60)
    history.add_messages(turn(1))

    def getkeys() -> int:
        total = 0
        for info in cluster_client.info("commandstats", target_nodes="all").values():
            stats = info.get("cmdstat_command|getkeys") if isinstance(info, dict) else None
            total += int(stats["calls"]) if stats else 0
        return total

    before = getkeys()
    for i in range(5):
        history.add_messages(turn(i))
        assert history.touch() is True
    assert getkeys() == before

    original = cluster_client.commands_parser.get_keys
    theirs = RedisChatMessageHistory("t", redis_client=cluster_client, ttl=60)
    theirs.add_messages(turn(1))
    assert cluster_client.commands_parser.get_keys == original
