"""The clients built from a URL pack commands with hiredis (pyhistory._clients), and asyncio
flights read their replies under one timer (pyhistory._wire). These fail when redis-py changes
what either relies on: the asyncio connection's ``pack_command``, the pool's
``connection_class``, the sync connection's ``command_packer``,
``read_response(timeout=math.inf)``, a write without ``asyncio.wait_for`` on a connection whose
``socket_timeout`` is None, the client's ``get_retry`` and ``response_callbacks``."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.asyncio.connection
from redis.exceptions import DataError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pyhistory import _clients, testing
from pyhistory._coalesce import coalescer
from pyhistory._wire import awrite_once
from pyhistory.functions import _write_once

COMMANDS: list[tuple[Any, ...]] = [
    ("PING",),
    ("SET", "k", "v"),
    ("SET", b"k", b"\x00\xff binary"),
    ("SET", "k", "é and 漢字"),
    ("SET", "k", 0),
    ("SET", "k", -17),
    ("SET", "k", 10**30),
    ("SET", "k", 0.1),
    ("SET", "k", 1 / 3),
    ("SET", "k", 2.5e300),
    ("SET", "k", memoryview(b"a view")),
    ("SET", "k", bytearray(b"an array")),
    ("CONFIG GET", "maxmemory"),
    (b"CONFIG GET", "maxmemory"),
    ("LPUSH", "k", "x" * 100_000),
]


def counted_packing(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """From now on, the commands hiredis packs for pyhistory's clients, in order."""
    packed: list[tuple[Any, ...]] = []
    original = _clients._hiredis_pack
    assert original is not None

    def counting(args: tuple[Any, ...]) -> bytes:
        packed.append(args)
        return original(args)

    monkeypatch.setattr(_clients, "_hiredis_pack", counting)
    return packed


async def connection_of(url: str) -> Any:
    client = await _clients.async_client(url)
    assert isinstance(client, redis.asyncio.Redis)
    return client.connection_pool.make_connection()


@pytest.mark.parametrize("args", COMMANDS, ids=[repr(c)[:30] for c in COMMANDS])
async def test_commands_are_packed_as_redis_py_packs_them(url: str, args: tuple[Any, ...]) -> None:
    ours = await connection_of(url)
    assert isinstance(ours, _clients._HiredisPacking)
    theirs = redis.asyncio.connection.Connection()
    assert b"".join(ours.pack_command(*args)) == b"".join(theirs.pack_command(*args))
    assert b"".join(ours.pack_commands([args, args])) == b"".join(
        theirs.pack_commands([args, args])
    )


@pytest.mark.parametrize("bad", [None, True, object()])
async def test_bad_arguments_are_refused_as_redis_py_refuses_them(url: str, bad: object) -> None:
    ours = await connection_of(url)
    with pytest.raises(DataError):
        ours.pack_command("SET", "k", bad)
    with pytest.raises(DataError):
        redis.asyncio.connection.Connection().pack_command("SET", "k", bad)


async def test_another_encoding_is_packed_by_redis_py(url: str) -> None:
    ours = await connection_of(f"{url}?encoding=latin-1")
    theirs = redis.asyncio.connection.Connection(encoding="latin-1")
    assert b"\xe9" in b"".join(ours.pack_command("SET", "k", "é"))
    assert ours.pack_command("SET", "k", "é") == theirs.pack_command("SET", "k", "é")


async def test_redis_py_packs_through_the_connection(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await _clients.async_client(url)
    assert isinstance(client, redis.asyncio.Redis)
    assert await client.ping()  # connected: what a new connection sends is packed already
    packed = counted_packing(monkeypatch)
    assert await client.execute_command("PING")
    assert await client.pipeline(transaction=False).ping().echo("x").execute() == [True, b"x"]
    assert await awrite_once(client, [("PING",)]) == [b"PONG"]
    names = [a[0] if isinstance(a[0], str) else a[0].decode() for a in packed]
    assert names == ["PING", "PING", "ECHO", "PING"]


async def test_a_users_client_is_left_as_it_is(url: str) -> None:
    client = redis.asyncio.Redis.from_url(url)
    try:
        await client.ping()
        assert client.connection_pool.connection_class is redis.asyncio.connection.Connection
    finally:
        await client.aclose()


# --- sync clients: redis-py's ``command_packer`` ------------------------------------------------


def sync_connection_of(url: str) -> Any:
    client = _clients.sync_client(url)
    assert isinstance(client, redis.Redis)
    return client.connection_pool.make_connection()


@pytest.mark.parametrize("args", COMMANDS, ids=[repr(c)[:30] for c in COMMANDS])
def test_sync_commands_are_packed_as_redis_py_packs_them(url: str, args: tuple[Any, ...]) -> None:
    ours = sync_connection_of(url)
    theirs = redis.connection.Connection()
    assert b"".join(ours.pack_command(*args)) == b"".join(theirs.pack_command(*args))
    assert b"".join(ours.pack_commands([args, args])) == b"".join(
        theirs.pack_commands([args, args])
    )


@pytest.mark.parametrize("bad", [None, True, object()])
def test_sync_bad_arguments_are_refused_as_redis_py_refuses_them(url: str, bad: object) -> None:
    with pytest.raises(DataError):
        sync_connection_of(url).pack_command("SET", "k", bad)
    with pytest.raises(DataError):
        redis.connection.Connection().pack_command("SET", "k", bad)


def test_sync_another_encoding_is_packed_by_redis_py(url: str) -> None:
    client = _clients.sync_client(f"{url}?encoding=latin-1")
    assert isinstance(client, redis.Redis)
    assert "command_packer" not in client.connection_pool.connection_kwargs
    ours = client.connection_pool.make_connection()
    theirs = redis.connection.Connection(encoding="latin-1")
    assert b"\xe9" in b"".join(ours.pack_command("SET", "k", "é"))
    assert ours.pack_command("SET", "k", "é") == theirs.pack_command("SET", "k", "é")


def test_sync_redis_py_packs_through_the_packer(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every way a sync client sends commands packs them with the packer given to its
    connections: a command, a pipeline, a transaction and a flight written on a connection."""
    client = _clients.sync_client(url)
    assert isinstance(client, redis.Redis)
    assert client.ping()  # connected: what a new connection sends is packed already
    packed = counted_packing(monkeypatch)
    assert client.execute_command("PING")
    assert client.pipeline(transaction=False).ping().echo("x").execute() == [True, b"x"]
    assert client.pipeline(transaction=True).ping().execute() == [True]
    assert _write_once(client, [("PING",)]) == [b"PONG"]
    names = [a[0] if isinstance(a[0], str) else a[0].decode() for a in packed]
    assert names == ["PING", "PING", "ECHO", "MULTI", "PING", "EXEC", "PING"]


def test_sync_a_users_client_is_left_as_it_is(url: str) -> None:
    with redis.Redis.from_url(url) as client:
        assert client.ping()
        assert "command_packer" not in client.connection_pool.connection_kwargs


def busy(seconds: float) -> tuple[Any, ...]:
    """A script that keeps the server busy for ``seconds`` (its reply comes that much later)."""
    script = (
        "local t = redis.call('TIME') local start = t[1] * 1e6 + t[2] "
        "repeat t = redis.call('TIME') until t[1] * 1e6 + t[2] - start > tonumber(ARGV[1]) "
        "return 1"
    )
    return ("EVAL", script, 0, int(seconds * 1e6))


async def test_each_reply_gets_the_read_timeout_from_the_one_before(url: str) -> None:
    """Three replies 0.2 s apart (each BLPOP gives up after 0.2 s, and the server sends its
    reply before it takes the next command), a read timeout of 0.35 s: the flight takes 0.6 s,
    no reply waits longer than the timeout, so none times out (one fixed timer would)."""
    client = await _clients.async_client(f"{url}?socket_timeout=0.35")
    assert isinstance(client, redis.asyncio.Redis)
    started = time.monotonic()
    blpop = ("BLPOP", "empty", 0.2)
    assert await awrite_once(client, [blpop, blpop, blpop]) == [None, None, None]
    assert time.monotonic() - started >= 0.6


async def test_a_reply_late_by_the_read_timeout_times_out(url: str, client: redis.Redis) -> None:
    app = await _clients.async_client(f"{url}?socket_timeout=0.3")
    assert isinstance(app, redis.asyncio.Redis)
    started = time.monotonic()
    with pytest.raises(RedisTimeoutError, match="Timeout reading from"):
        await awrite_once(app, [("PING",), busy(0.8)])
    assert time.monotonic() - started < 0.7
    await asyncio.sleep(0.6)  # the script ends
    pool = app.connection_pool
    assert not pool._in_use_connections  # type: ignore[attr-defined]  # closed and given back
    assert await app.ping()


async def test_error_replies_stay_in_place(url: str, client: redis.Redis) -> None:
    client.set("a string", "x")
    app = await _clients.async_client(url)
    assert isinstance(app, redis.asyncio.Redis)
    replies = await awrite_once(app, [("LPUSH", "a string", "x"), ("PING",)])
    assert isinstance(replies[0], ResponseError) and replies[1] == b"PONG"


async def test_a_flight_parses_replies_as_a_command_sent_alone(
    url: str, client: redis.Redis
) -> None:
    """Commands that fly together get what redis-py's response callbacks make of their replies,
    exactly as when each is sent by itself."""
    client.hset("h", mapping={"a": "1"})
    app = await _clients.async_client(url)
    assert isinstance(app, redis.asyncio.Redis)
    commands: list[tuple[Any, ...]] = [
        ("SET", "k", "v"),
        ("EXPIRE", "k", 100),
        ("TTL", "k"),
        ("HGETALL", "h"),
        ("LRANGE", "nothing", 0, -1),
        ("PING",),
    ]
    alone = [await app.execute_command(*command) for command in commands]
    flights = coalescer(app)
    first = asyncio.ensure_future(flights.call(("PING",)))  # in the air: the rest fly together
    await asyncio.sleep(0)
    together = await asyncio.gather(*(flights.call(command) for command in commands))
    await first
    assert together == alone
    assert alone[:2] == [True, True] and alone[3] == {b"a": b"1"}


async def test_a_flight_writes_without_a_task_of_its_own(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py bounds a write with ``asyncio.wait_for`` when the connection has a socket
    timeout (before Python 3.12 a task and two loop passes per write); a flight writes with no
    socket timeout on its connection, under its own timer, and gives the timeout back."""
    app = await _clients.async_client(url)
    assert isinstance(app, redis.asyncio.Redis)
    assert await app.ping()

    def no_wait_for(awaitable: Any, *args: Any, **kwargs: Any) -> Any:
        awaitable.close()
        raise AssertionError("a write under asyncio.wait_for")

    monkeypatch.setattr(asyncio, "wait_for", no_wait_for)
    assert await awrite_once(app, [("PING",), ("ECHO", "x")]) == [b"PONG", b"x"]
    assert await coalescer(app).call(("ECHO", "alone")) == b"alone"
    pool = app.connection_pool
    connection = await pool.get_connection()
    try:
        assert connection.socket_timeout == _clients.COMMAND_TIMEOUT
    finally:
        await pool.release(connection)
    with pytest.raises(AssertionError, match="wait_for"):
        await app.execute_command("PING")  # what redis-py's own write does


async def test_a_write_that_cannot_finish_times_out(local_server: testing.LocalServer) -> None:
    """A stopped server reads nothing: a value larger than the socket buffers cannot be written,
    and the flight's timer ends the write within the read timeout."""
    app = await _clients.async_client(f"{local_server.url}?socket_timeout=0.5")
    assert isinstance(app, redis.asyncio.Redis)
    assert await app.ping()
    local_server.pause()
    try:
        started = time.monotonic()
        with pytest.raises(RedisTimeoutError, match="Timeout writing to"):
            await awrite_once(app, [("SET", "big", b"x" * (64 << 20))])
        assert time.monotonic() - started < 1.5
    finally:
        local_server.resume()
    assert await app.ping()
