"""RedisChatMessageHistory against real servers: behaviour, round trips, connections, bad input."""

from __future__ import annotations

import asyncio
import datetime
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis
import redis.asyncio
from chat import CommandLog, assert_ttl, check_asyncio_methods, turn
from conftest import VERSIONED
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

import pyhistory
from pyhistory import RedisChatMessageHistory, _clients

# --- behaviour --------------------------------------------------------------------------------


def test_add_and_read_in_order(url: str) -> None:
    history = RedisChatMessageHistory("s", url=url)
    assert history.messages == []
    history.add_user_message("hi!")
    history.add_ai_message("whats up?")
    history.add_messages([*turn(1), *turn(2)])
    assert [m.content for m in history.messages] == [
        "hi!",
        "whats up?",
        "question 1",
        "answer 1",
        "question 2",
        "answer 2",
    ]
    assert len(history) == 6
    assert history.key == "message_store:s"


def test_max_messages_bounds_what_is_stored(url: str, client: redis.Redis) -> None:
    history = RedisChatMessageHistory("s", url=url, max_messages=3)
    for i in range(5):
        history.add_messages(turn(i))
    assert client.llen(history.key) == 3
    assert [m.content for m in history.messages] == ["answer 3", "question 4", "answer 4"]


def test_window_bounds_what_is_read(url: str, client: redis.Redis) -> None:
    history = RedisChatMessageHistory("s", url=url, window=4)
    for i in range(5):
        history.add_messages(turn(i))
    assert client.llen(history.key) == 10
    assert [m.content for m in history.messages] == [
        "question 3",
        "answer 3",
        "question 4",
        "answer 4",
    ]
    assert len(history) == 10


def test_ttl_is_set_by_appends_and_slides_on_reads(url: str, client: redis.Redis) -> None:
    # Every read refreshes the TTL (interval 0), so a TTL lowered behind its back is restored.
    history = RedisChatMessageHistory("s", url=url, ttl=120, ttl_refresh_interval=0)
    history.add_user_message("hi")
    assert_ttl(client, history.key, 120)
    client.expire(history.key, 5)
    _ = history.messages
    assert_ttl(client, history.key, 120)
    client.expire(history.key, 5)
    assert history.touch() is True
    assert_ttl(client, history.key, 120)
    history.clear()
    assert history.touch() is False


def test_refresh_on_read_can_be_turned_off(url: str, client: redis.Redis) -> None:
    history = RedisChatMessageHistory("s", url=url, ttl=120, refresh_ttl_on_read=False)
    history.add_user_message("hi")
    client.expire(history.key, 5)
    assert len(history.messages) == 1
    assert client.ttl(history.key) <= 5


@pytest.mark.parametrize("ttl", [None, 0])
def test_no_ttl_leaves_the_key_persistent(url: str, client: redis.Redis, ttl: int | None) -> None:
    history = RedisChatMessageHistory("s", url=url, ttl=ttl)
    history.add_user_message("hi")
    _ = history.messages
    assert client.ttl(history.key) == -1


def test_clear_deletes_only_this_session(url: str, client: redis.Redis) -> None:
    a = RedisChatMessageHistory("a", url=url)
    b = RedisChatMessageHistory("b", url=url)
    a.add_user_message("x")
    b.add_user_message("y")
    a.clear()
    assert a.messages == [] and client.exists(a.key) == 0
    assert [m.content for m in b.messages] == ["y"]


def test_key_prefix(url: str, client: redis.Redis) -> None:
    history = RedisChatMessageHistory("s", url=url, key_prefix="tenant-7:chat:")
    history.add_user_message("x")
    # the session, and its batch ids (docs/exactly-once.md)
    assert sorted(client.keys()) == [b"pyhistory:batches:{tenant-7:chat:s}", b"tenant-7:chat:s"]


def test_messages_cannot_be_assigned(url: str) -> None:
    history = RedisChatMessageHistory("s", url=url)
    with pytest.raises(NotImplementedError):
        history.messages = []


async def test_asyncio_methods(url: str, client: redis.Redis) -> None:
    await check_asyncio_methods(
        RedisChatMessageHistory("s", url=url, ttl=60, max_messages=3), client
    )


async def test_asyncio_with_only_a_sync_client_runs_in_a_thread(url: str) -> None:
    history = RedisChatMessageHistory("s", redis_client=redis.Redis.from_url(url))
    await history.aadd_messages(turn(1))
    assert [m.content for m in await history.aget_messages()] == ["question 1", "answer 1"]
    assert await history.alength() == 2
    await history.aclear()
    assert await asyncio.to_thread(lambda: history.messages) == []


async def test_injected_async_client(url: str, aclient: redis.asyncio.Redis) -> None:
    history = RedisChatMessageHistory("s", async_redis_client=aclient)
    await history.aadd_messages(turn(1))
    assert len(await history.aget_messages()) == 2
    with pytest.raises(pyhistory.HistoryError, match="only an async_redis_client"):
        _ = history.messages


def test_decoded_responses_client_works_too(url: str) -> None:
    history = RedisChatMessageHistory(
        "s", redis_client=redis.Redis.from_url(url, decode_responses=True)
    )
    history.add_messages(turn(1))
    assert [m.content for m in history.messages] == ["question 1", "answer 1"]


def test_settings_are_checked_when_changed(url: str) -> None:
    history = RedisChatMessageHistory("s", url=url)
    history.ttl = 30
    assert history.ttl == 30
    with pytest.raises(pyhistory.InvalidTTLError):
        history.ttl = -1
    with pytest.raises(pyhistory.InvalidSizeError):
        history.max_messages = 0
    assert history.ttl == 30 and history.max_messages is None


# --- orphan tool results ----------------------------------------------------------------------


def tool_conversation() -> list[Any]:
    call = {"name": "weather", "args": {"city": "Oslo"}, "id": "call_1", "type": "tool_call"}
    call2 = {"name": "time", "args": {"tz": "CET"}, "id": "call_2", "type": "tool_call"}
    return [
        SystemMessage("be brief"),
        HumanMessage("weather and time in Oslo?"),
        AIMessage("", tool_calls=[call, call2]),
        ToolMessage("4 degrees", tool_call_id="call_1"),
        ToolMessage("14:00", tool_call_id="call_2"),
        AIMessage("4 degrees at 14:00"),
    ]


@pytest.mark.parametrize("bound", ["window", "max_messages"])
@pytest.mark.parametrize("size", [1, 2, 3])
def test_a_window_never_starts_with_an_orphan_tool_result(url: str, bound: str, size: int) -> None:
    history = RedisChatMessageHistory("s", url=url, **{bound: size})
    history.add_messages(tool_conversation())
    got = history.messages
    # size 3 cuts the AIMessage that called the tools; sizes 1-2 leave no tool result
    assert [m.content for m in got] == ["4 degrees at 14:00"]


def test_a_window_that_holds_the_tool_call_keeps_its_results(url: str) -> None:
    history = RedisChatMessageHistory("s", url=url, window=4)
    history.add_messages(tool_conversation())
    assert [type(m).__name__ for m in history.messages] == [
        "AIMessage",
        "ToolMessage",
        "ToolMessage",
        "AIMessage",
    ]


# --- one round trip per operation -------------------------------------------------------------


def round_trips_of(client: redis.Redis, operation: Callable[[], Any]) -> int:
    """The read events the server processed during ``operation``: one per flight of commands a
    client wrote (INFO's own read is counted in both samples)."""
    before = int(client.info("stats")["total_reads_processed"])
    operation()
    return int(client.info("stats")["total_reads_processed"]) - before - 1


def test_each_sync_operation_is_one_round_trip(url: str, client: redis.Redis) -> None:
    # Interval 0: every read refreshes the TTL, in the same flight.
    history = RedisChatMessageHistory(
        "s", url=url, ttl=60, max_messages=50, window=20, ttl_refresh_interval=0
    )
    log = CommandLog(url)
    operations: dict[str, Callable[[], Any]] = {
        "add_messages": lambda: history.add_messages(turn(1) * 5),
        "add_message": lambda: history.add_user_message("x"),
        "messages": lambda: history.messages,
        "len": lambda: len(history),
        "touch": history.touch,
        "clear": history.clear,
    }
    for name, operation in operations.items():
        operation()  # warm-up: connection made, functions loaded
        assert round_trips_of(client, operation) == 1, name
        # a read and its TTL refresh, in one flight; an append to a list: one transaction
        expected = {"messages": 2, "add_messages": len(PLAIN), "add_message": len(PLAIN)}
        assert len(log.commands_of(operation)) == expected.get(name, 1), name
    assert log.commands_of(lambda: history.add_messages(turn(2))) == PLAIN
    assert log.commands_of(lambda: history.messages) == ["LRANGE", "FCALL"]
    assert log.commands_of(lambda: len(history)) == ["LLEN"]
    history.ttl = None
    assert log.commands_of(lambda: history.messages) == ["LRANGE"]  # no refresh: plain read
    # The default interval: a read soon after an append or a refresh is a plain read.
    recent = RedisChatMessageHistory("new", url=url, ttl=60, window=20)
    # the first append to a session this process has not read: the library's (it checks the
    # key's type before writing); later ones are plain
    assert log.commands_of(lambda: recent.add_messages(turn(3))) == ["FCALL"]
    assert log.commands_of(lambda: recent.messages) == ["LRANGE"]
    assert log.commands_of(lambda: recent.add_messages(turn(3)))[0] == "MULTI"
    # a caller's idempotency key: the library's (its first attempt may be a retry too)
    assert log.commands_of(lambda: recent.add_messages(turn(3), idempotency_key="k")) == ["FCALL"]


# An append to a session this process found holding a list (pyhistory._core.plain_append).
PLAIN = ["MULTI", "LPUSH", "LTRIM", "EXPIRE", "APPEND", "EXPIRE", "EXEC"]


def test_each_asyncio_operation_is_one_round_trip(url: str, client: redis.Redis) -> None:
    history = RedisChatMessageHistory(
        "s", url=url, ttl=60, max_messages=50, window=20, ttl_refresh_interval=0
    )
    log = CommandLog(url)
    operations: dict[str, Callable[[], Awaitable[Any]]] = {
        "aadd_messages": lambda: history.aadd_messages(turn(1) * 5),
        "aget_messages": history.aget_messages,
        "alength": history.alength,
        "atouch": history.atouch,
        "aclear": history.aclear,
    }
    loop = asyncio.new_event_loop()
    try:
        for name, operation in operations.items():
            loop.run_until_complete(operation())  # warm-up
            run = lambda op=operation: loop.run_until_complete(op())  # noqa: E731
            assert round_trips_of(client, run) == 1, name
            commands = log.commands_of(run)
            expected = {"aget_messages": 2, "aadd_messages": len(PLAIN)}.get(name, 1)
            assert len(commands) == expected, (name, commands)
    finally:
        loop.close()


# --- connection reuse -------------------------------------------------------------------------


def connected_clients(client: redis.Redis) -> int:
    return int(client.info("clients")["connected_clients"])


def test_a_thousand_histories_from_one_url_share_one_pool(url: str, client: redis.Redis) -> None:
    before = connected_clients(client)
    for i in range(1000):
        RedisChatMessageHistory(f"s{i % 10}", url=url).add_user_message("x")
    assert connected_clients(client) - before <= 1
    assert RedisChatMessageHistory("a", url=url).redis_client is _clients.sync_client(url)


def test_threads_share_the_pool_too(url: str, client: redis.Redis) -> None:
    before = connected_clients(client)

    def worker(n: int) -> None:
        for i in range(100):
            RedisChatMessageHistory(f"t{n}", url=url).add_user_message(str(i))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert connected_clients(client) - before <= 8
    assert sum(client.llen(f"message_store:t{n}") for n in range(8)) == 800


async def test_asyncio_histories_share_one_pool_per_loop(url: str, client: redis.Redis) -> None:
    before = connected_clients(client)
    for i in range(1000):
        await RedisChatMessageHistory(f"s{i % 10}", url=url).aadd_messages([HumanMessage("x")])
    assert connected_clients(client) - before <= 1


# --- bad input: a typed error, and nothing stored changes -------------------------------------


def stored(client: redis.Redis) -> dict[bytes, Any]:
    return {key: (client.type(key), client.dump(key)) for key in client.keys()}  # noqa: SIM118 (a Redis command)


@pytest.mark.parametrize("session_id", ["", None, 42, b"bytes"])
def test_bad_session_id(url: str, session_id: Any) -> None:
    with pytest.raises(pyhistory.InvalidSessionIdError):
        RedisChatMessageHistory(session_id, url=url)


@pytest.mark.parametrize("name", ["max_messages", "window"])
@pytest.mark.parametrize("value", [0, -1, 1.5, True, "10", 2**31])
def test_bad_sizes(url: str, name: str, value: Any) -> None:
    with pytest.raises(pyhistory.InvalidSizeError):
        RedisChatMessageHistory("s", url=url, **{name: value})


@pytest.mark.parametrize(
    "ttl", [-1, 1.5, "60", True, 2**31, datetime.timedelta(milliseconds=500), datetime.timedelta(0)]
)
def test_bad_ttl(url: str, ttl: Any) -> None:
    with pytest.raises(pyhistory.InvalidTTLError):
        RedisChatMessageHistory("s", url=url, ttl=ttl)


UNSERIALISABLE = {
    "datetime in artifact": ToolMessage("ok", tool_call_id="c", artifact=datetime.datetime.now()),
    "bytes in additional_kwargs": AIMessage("ok", additional_kwargs={"raw": b"\x00"}),
    "a set in response_metadata": AIMessage("ok", response_metadata={"tags": {"a"}}),
    "not a message": "just a string",
}


@pytest.mark.parametrize("bad", list(UNSERIALISABLE.values()), ids=list(UNSERIALISABLE))
async def test_unserialisable_message_stores_nothing(
    url: str, client: redis.Redis, bad: Any
) -> None:
    history = RedisChatMessageHistory("s", url=url, ttl=60)
    await asyncio.to_thread(history.add_user_message, "kept")
    before = stored(client)
    with pytest.raises(pyhistory.SerializationError):
        await asyncio.to_thread(history.add_messages, [HumanMessage("good"), bad])
    with pytest.raises(pyhistory.SerializationError):
        await history.aadd_messages([bad, HumanMessage("good")])
    assert stored(client) == before


def test_oversized_batch_stores_nothing(url: str, client: redis.Redis) -> None:
    history = RedisChatMessageHistory("s", url=url)
    with pytest.raises(pyhistory.BatchTooLargeError):
        history.add_messages([HumanMessage("x")] * (pyhistory.MAX_BATCH + 1))
    assert client.dbsize() == 0
    history.add_messages([HumanMessage("x")] * pyhistory.MAX_BATCH)
    assert len(history) == pyhistory.MAX_BATCH


async def test_key_of_another_type(url: str, client: redis.Redis) -> None:
    client.hset("message_store:s", "field", "value")
    before = stored(client)
    history = RedisChatMessageHistory("s", url=url, ttl=60, max_messages=5)
    for operation in (
        lambda: history.add_user_message("x"),
        lambda: history.messages,
        lambda: len(history),
    ):
        with pytest.raises(pyhistory.WrongTypeError):
            await asyncio.to_thread(operation)
    with pytest.raises(pyhistory.WrongTypeError):
        await history.aadd_messages([HumanMessage("x")])
    with pytest.raises(pyhistory.WrongTypeError):
        await history.aget_messages()
    with pytest.raises(pyhistory.WrongTypeError):  # a read with no TTL to refresh: LRANGE alone
        await asyncio.to_thread(lambda: RedisChatMessageHistory("s", url=url).messages)
    assert stored(client) == before


@pytest.mark.parametrize(
    "entry",
    [b"not json", b'{"type": "human"', b"[1, 2]", b'{"type": "alien", "data": {}}', b'"text"'],
)
async def test_corrupt_entry_is_reported_and_kept(
    url: str, client: redis.Redis, entry: bytes
) -> None:
    history = RedisChatMessageHistory("s", url=url)
    await asyncio.to_thread(history.add_user_message, "fine")
    client.lpush(history.key, entry)
    before = stored(client)
    with pytest.raises(pyhistory.CorruptEntryError):
        await asyncio.to_thread(lambda: history.messages)
    with pytest.raises(pyhistory.CorruptEntryError):
        await history.aget_messages()
    assert stored(client) == before


def test_errors_share_one_base_and_the_usual_builtins() -> None:
    for name in pyhistory.__all__:
        obj = getattr(pyhistory, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, pyhistory.HistoryError)
    assert issubclass(pyhistory.InvalidTTLError, ValueError)
    assert issubclass(pyhistory.SerializationError, TypeError)


async def test_reads_and_touch_work_when_the_server_is_out_of_memory(
    url: str, client: redis.Redis
) -> None:
    """Under maxmemory with noeviction a server refuses writes; a read that refreshes the TTL
    (window) and touch() write only a TTL, so they are flagged allow-oom and still run."""
    history = RedisChatMessageHistory("s", url=url, ttl=60)
    await asyncio.to_thread(history.add_messages, turn(1))
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", "1")  # every write that may grow memory is refused now
    try:
        read = await asyncio.to_thread(lambda: history.messages)
        assert [m.content for m in read] == ["question 1", "answer 1"]
        assert len(await history.aget_messages()) == 2
        assert await asyncio.to_thread(history.touch) is True
        assert await history.atouch() is True
        with pytest.raises(redis.exceptions.OutOfMemoryError) as raised:
            await asyncio.to_thread(history.add_messages, turn(2))
        assert isinstance(raised.value, pyhistory.OutOfMemoryError)
        with pytest.raises(pyhistory.OutOfMemoryError):
            await history.aadd_messages(turn(2))
    finally:
        client.config_set("maxmemory", "0")
    assert await history.alength() == 2


def test_integers_beyond_64_bits_are_read_exactly(url: str) -> None:
    """As langchain_community reads them (json): orjson alone would give floats."""
    big = {"a": 2**70, "b": -(2**63) - 1, "c": [1, 2**64, {"d": 10**30}], "e": 2**64 - 1}
    history = RedisChatMessageHistory("big", url=url)
    history.add_messages([AIMessage("n", additional_kwargs=big, response_metadata={"id": 2**65})])
    (message,) = history.messages
    assert message.additional_kwargs == big
    assert message.response_metadata == {"id": 2**65}
    assert type(message.additional_kwargs["a"]) is int
    assert type(message.additional_kwargs["c"][2]["d"]) is int  # type: ignore[index]
    text = "call me at 12345678901234567890, please"  # digits in a string: read the same
    history.add_messages([HumanMessage(text)])
    assert history.messages[-1].content == text


def test_a_message_nested_too_deep_is_a_serialization_error(url: str) -> None:
    nested: dict[str, object] = {}
    inner = nested
    for _ in range(10_000):
        inner["a"] = inner = {}
    history = RedisChatMessageHistory("deep", url=url)
    with pytest.raises(pyhistory.SerializationError, match="recursion"):
        history.add_messages([HumanMessage("x", additional_kwargs=nested)])
    assert len(history) == 0


def test_an_asyncio_client_of_a_closed_loop_is_a_typed_error_that_says_what_to_do(
    server: Any, url: str
) -> None:
    client = redis.asyncio.Redis.from_url(url, **VERSIONED)
    history = RedisChatMessageHistory("loop", async_redis_client=client, ttl=60)
    asyncio.run(history.aadd_messages([HumanMessage("first loop")]))  # that loop is now closed

    async def again() -> None:
        await history.aadd_messages([HumanMessage("x")])

    with pytest.raises(pyhistory.WrongEventLoopError, match="inside the loop that uses it") as e:
        asyncio.run(again())
    assert isinstance(e.value, RuntimeError)
    assert e.value.may_have_been_applied  # its request may have left before the reply was lost
