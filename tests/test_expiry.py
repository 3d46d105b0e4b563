"""Sliding expiry that does not cost every read a refresh: after any read or append by this
process, a session lives at least ``ttl - ttl_refresh_interval`` seconds more (0.9 x ttl by
default); a read refreshes the TTL only when that promise needs it; ``touch()`` always does."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import redis
from langchain_core.messages import HumanMessage

from pyhistory import InvalidTTLError, RedisChatMessageHistory
from pyhistory._expiry import Expiries


def fcalls(client: redis.Redis) -> int:
    """FCALLs the server ran so far (the refreshes and appends; reads are plain LRANGEs)."""
    stats = client.info("commandstats").get("cmdstat_fcall")
    return int(stats["calls"]) if stats else 0


def check_promise(client: redis.Redis, key: str, done_at: float, promised: float) -> None:
    """The session will live at least ``promised`` seconds after ``done_at`` (when the read or
    append returned): its PTTL now, plus the time since then, is at least that."""
    pttl = client.pttl(key)
    since = time.monotonic() - done_at
    assert pttl / 1000 + since >= promised, (pttl, since, promised)


def exercise(
    client: redis.Redis, key: str, read: Callable[[], Any], append: Callable[[], Any]
) -> tuple[int, int]:
    """Reads every 50 ms for 2.5 s of a session with ttl 3 s and interval 1 s, an append in the
    middle; checks the promise after each. Returns (reads, refreshes the reads sent)."""
    append()
    before = fcalls(client)
    reads = appends = 0
    started = time.monotonic()
    while time.monotonic() - started < 2.5:
        if reads == 25:
            append()
            appends += 1
            check_promise(client, key, time.monotonic(), 2.0)
        read()
        reads += 1
        check_promise(client, key, time.monotonic(), 2.0)
        time.sleep(0.05)
    return reads, fcalls(client) - before - appends


def test_reads_keep_the_promise_with_few_refreshes(url: str, client: redis.Redis) -> None:
    history = RedisChatMessageHistory("s", url=url, ttl=3, ttl_refresh_interval=1)
    reads, refreshes = exercise(
        client, history.key, lambda: history.messages, lambda: history.add_user_message("hi")
    )
    # Without skipping, every read would refresh. With it, a refresh once the session has lost a
    # second of its TTL since the last append or refresh: a handful in 2.5 s.
    assert reads >= 25
    assert 1 <= refreshes <= 4, refreshes


def test_asyncio_reads_keep_the_promise(url: str, client: redis.Redis) -> None:
    history = RedisChatMessageHistory("s", url=url, ttl=3, ttl_refresh_interval=1)
    loop = asyncio.new_event_loop()
    try:
        reads, refreshes = exercise(
            client,
            history.key,
            lambda: loop.run_until_complete(history.aget_messages()),
            lambda: loop.run_until_complete(history.aadd_messages([HumanMessage("hi")])),
        )
    finally:
        loop.close()
    assert reads >= 25
    assert 1 <= refreshes <= 4, refreshes


def test_the_default_interval_is_a_tenth_of_the_ttl(url: str) -> None:
    assert RedisChatMessageHistory("s", url=url, ttl=3600).ttl_refresh_interval == 360
    history = RedisChatMessageHistory("s", url=url, ttl=timedelta(minutes=10))
    assert history.ttl_refresh_interval == 60
    history.ttl = 100  # follows the TTL while it was not set explicitly
    assert history.ttl_refresh_interval == 10


def test_interval_zero_refreshes_on_every_read(url: str, client: redis.Redis) -> None:
    history = RedisChatMessageHistory("s", url=url, ttl=60, ttl_refresh_interval=0)
    history.add_user_message("hi")
    before = fcalls(client)
    for _ in range(5):
        client.expire(history.key, 5)
        _ = history.messages
        assert client.pttl(history.key) > 59_000
    assert fcalls(client) - before == 5


def test_touch_is_always_exact(url: str, client: redis.Redis) -> None:
    history = RedisChatMessageHistory("s", url=url, ttl=60)
    history.add_user_message("hi")
    client.expire(history.key, 5)
    _ = history.messages  # skipped: this process set the TTL a moment ago
    assert client.pttl(history.key) <= 5_000
    assert history.touch() is True
    assert client.pttl(history.key) > 59_000


def test_a_session_new_to_this_process_is_refreshed_by_its_first_read(
    url: str, client: redis.Redis
) -> None:
    client.rpush("message_store:other", '{"type": "human", "data": {"content": "x"}}')
    client.expire("message_store:other", 5)
    history = RedisChatMessageHistory("other", url=url, ttl=60)
    assert [m.content for m in history.messages] == ["x"]
    assert client.pttl(history.key) > 59_000


def test_clear_forgets_the_session(url: str, client: redis.Redis) -> None:
    history = RedisChatMessageHistory("s", url=url, ttl=60)
    history.add_user_message("hi")
    history.clear()
    # Written again by another writer that sets no TTL: our next read sets one.
    client.rpush(history.key, '{"type": "human", "data": {"content": "x"}}')
    _ = history.messages
    assert client.pttl(history.key) > 59_000


@pytest.mark.parametrize("interval", [-1, 60, 61, True, "1", float("nan")])
def test_a_bad_interval_is_refused(url: str, interval: Any) -> None:
    with pytest.raises(InvalidTTLError):
        RedisChatMessageHistory("s", url=url, ttl=60, ttl_refresh_interval=interval)


def test_what_the_process_remembers_is_bounded() -> None:
    known = Expiries(max_keys=3)
    now = time.monotonic()
    for i in range(5):
        known.refreshed(f"k{i}", 60, now)
    assert len(known) == 3
    assert known.due("k0", 60, 6) and known.due("k1", 60, 6)  # forgotten: refreshed again
    assert not known.due("k4", 60, 6)
    assert known.due("k4", 60, 0)  # interval 0: always due


def test_one_record_per_session_bounds_both_what_it_knows() -> None:
    known = Expiries(max_keys=3)
    known.refreshed("k0", 60, time.monotonic())
    for i in range(1, 4):
        known.found_list(f"k{i}")
    assert len(known) == 3  # k0 forgotten, its TTL and its plain appends alike
    assert known.due("k0", 60, 6) and not known.takes_plain("k0")
    assert all(known.takes_plain(f"k{i}") for i in range(1, 4))
    known.found_list("k1")  # known already: kept where it was, no lock taken
    known.doubt("k2")
    assert not known.takes_plain("k2") and known.takes_plain("k1")
    known.refreshed("k2", 60, time.monotonic())  # the most recent now
    known.found_list("k4")
    assert not known.takes_plain("k1") and not known.due("k2", 60, 6)
