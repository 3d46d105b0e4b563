"""The plain append's transaction is written on a pooled connection of redis-py's with its own
connection methods (pyhistory.functions.run_plain_first): these tests fail when redis-py changes
what that relies on, in both protocols (RESP2, RESP3), sync and asyncio."""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio
from conftest import VERSIONED

import pyhistory
from pyhistory import _core
from pyhistory.functions import arun_plain_first, run_plain_first

PARSERS = pytest.mark.parametrize("protocol", [2, 3], ids=["resp2", "resp3"])


def transaction(key: str) -> tuple[list[tuple[object, ...]], pyhistory._library.Call]:
    call = _core.append(key, ['{"a": 1}', '{"b": 2}'], 3, 60)
    return _core.plain_append(call), call


@PARSERS
def test_sync_transaction_replies_and_the_connection_goes_back(
    url: str, client: redis.Redis, protocol: int
) -> None:
    app = redis.Redis.from_url(url, protocol=protocol)
    commands, call = transaction("message_store:p")
    for _ in range(3):
        replies, fallback = run_plain_first(app, commands, call)
        assert fallback is None and replies is not None
    length, trim_due = _core.plain_append_reply(call, replies)
    assert (length, trim_due) == (3, False)
    assert client.lrange("message_store:p", 0, -1) == [b'{"b": 2}', b'{"a": 1}', b'{"b": 2}']
    assert 0 < client.ttl("message_store:p") <= 60
    assert client.strlen(_core.batches_key("message_store:p")) == 3 * _core.BATCH_ID_LEN
    pool = app.connection_pool
    assert len(pool._in_use_connections) == 0  # released: the same connection serves on
    assert app.ping()


@PARSERS
def test_sync_refusals_come_back_typed(url: str, client: redis.Redis, protocol: int) -> None:
    app = redis.Redis.from_url(url, protocol=protocol)
    commands, call = transaction("message_store:p")
    with pytest.raises(pyhistory.HistoryError, match=r"unknown command"):  # refused when queued
        run_plain_first(app, [*commands[:-1], ("NOSUCHCOMMAND",), ("EXEC",)], call)
    assert client.exists("message_store:p") == 0  # EXEC aborted the whole transaction
    client.set("message_store:p", "a string")
    replies, _ = run_plain_first(app, commands, call)
    assert replies is not None
    with pytest.raises(redis.ResponseError, match=r"^WRONGTYPE"):  # in place, as EXEC answers
        _core.plain_append_reply(call, replies)
    assert app.ping()


@PARSERS
def test_asyncio_transaction_and_a_cancelled_caller(
    url: str, client: redis.Redis, protocol: int
) -> None:
    async def main() -> None:
        app = redis.asyncio.Redis.from_url(url, protocol=protocol, **VERSIONED)
        commands, call = transaction("message_store:q")
        replies, fallback = await arun_plain_first(app, commands, call)
        assert fallback is None and replies is not None
        assert _core.plain_append_reply(call, replies) == (2, False)
        # a caller cancelled with its replies unread leaves no connection behind that would
        # hand them to the next caller
        await asyncio.to_thread(client.execute_command, "CLIENT", "PAUSE", 300, "ALL")
        task = asyncio.ensure_future(arun_plain_first(app, commands, call))
        await asyncio.sleep(0.1)  # written, its replies held back by the pause
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await app.ping()
        assert await app.lrange("message_store:q", 0, 0) == [b'{"b": 2}']
        await app.aclose()

    asyncio.run(main())
