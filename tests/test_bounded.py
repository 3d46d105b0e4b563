"""Bounded memory beyond a count, on real servers: compaction with a summary (compare-and-swap),
removal and replacement by message id, the sessions index; sync and asyncio, standalone and
cluster."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.cluster
from chat import CommandLog, assert_ttl, expires_at
from langchain_community.chat_message_histories import (
    RedisChatMessageHistory as CommunityHistory,
)
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    ToolMessage,
    message_to_dict,
)
from redis.exceptions import ResponseError

import pyhistory
from pyhistory import (
    CrossSlotError,
    EditResult,
    InvalidArgumentError,
    MessageStore,
    _bounded,
    _core,
    is_summary,
    list_sessions,
    summary_message,
)
from pyhistory.errors import (
    BatchTooLargeError,
    InvalidSizeError,
    SessionTooLongError,
    WrongTypeError,
)


def numbered(n: int, start: int = 0) -> list[BaseMessage]:
    """Messages m<i> with ids id<i>, alternating human and AI."""
    kinds = (HumanMessage, AIMessage)
    return [kinds[i % 2](f"m{i}", id=f"id{i}") for i in range(start, start + n)]


def contents(store: MessageStore) -> list[Any]:
    return [m.content for m in store.messages]


def stored(client: Any, key: str) -> list[bytes]:
    return list(client.lrange(key, 0, -1))


def tool_turn() -> list[BaseMessage]:
    """A question, a tool call with two results, and the answer."""
    call = AIMessage(
        "",
        id="call-msg",
        tool_calls=[
            {"name": "lookup", "args": {"q": "a"}, "id": "c1", "type": "tool_call"},
            {"name": "lookup", "args": {"q": "b"}, "id": "c2", "type": "tool_call"},
        ],
    )
    return [
        HumanMessage("look up a and b", id="q"),
        call,
        ToolMessage("result a", tool_call_id="c1", id="r1"),
        ToolMessage("result b", tool_call_id="c2", id="r2"),
        AIMessage("a and b", id="answer"),
    ]


# --- summaries ---------------------------------------------------------------------------------


def test_summary_message_is_marked_as_langchains_summarization_middleware_marks_it() -> None:
    from langchain.agents.middleware.summarization import SummarizationMiddleware

    theirs = SummarizationMiddleware._build_new_messages("they talked")[0]
    ours = summary_message("they talked")
    assert message_to_dict(ours) == message_to_dict(theirs)
    assert is_summary(ours) and is_summary(theirs)
    assert not is_summary(HumanMessage("Here is a summary of the conversation to date:\n\nx"))
    with pytest.raises(InvalidArgumentError):
        summary_message(3)  # type: ignore[arg-type]


# --- compaction ----------------------------------------------------------------------------------


def test_compact_replaces_the_oldest_by_a_summary_where_they_were(
    url: str, client: redis.Redis
) -> None:
    store = MessageStore("s", url=url, ttl=60)
    store.add_messages(numbered(6))
    oldest = store.oldest(4)
    assert [m.content for m in oldest.messages] == ["m0", "m1", "m2", "m3"]
    assert oldest.length == len(oldest) == 4 and not oldest.complete
    client.persist(store.key)
    assert store.compact(oldest, 3, "m0 to m2")
    assert contents(store) == [
        "Here is a summary of the conversation to date:\n\nm0 to m2",
        "m3",
        "m4",
        "m5",
    ]
    assert is_summary(store.messages[0])
    assert_ttl(client, store.key, 60)  # set again, as an append sets it
    # the summary is stored as langchain_community writes a message, and it reads it back
    assert (
        stored(client, store.key)[-1]
        == json.dumps(message_to_dict(summary_message("m0 to m2"))).encode()
    )
    theirs = CommunityHistory("s", url=url).messages
    assert theirs[0].additional_kwargs == {"lc_source": "summarization"}
    assert [m.content for m in theirs[1:]] == ["m3", "m4", "m5"]


def test_compact_keeps_a_ttl_it_does_not_set(url: str, client: redis.Redis) -> None:
    store = MessageStore("s", url=url)
    store.add_messages(numbered(3))
    client.expire(store.key, 100)
    assert store.compact(store.oldest(3), 3, AIMessage("all of it"))
    assert contents(store) == ["all of it"]
    assert_ttl(client, store.key, 100)


def test_appends_during_a_compaction_survive_it(url: str) -> None:
    store = MessageStore("s", url=url)
    store.add_messages(numbered(4))
    oldest = store.oldest(2)
    other = CommunityHistory("s", url=url)  # another client, langchain_community's own writer
    for message in numbered(2, start=4):  # while the summary is written
        other.add_message(message)
    assert store.compact(oldest, 2, "early")
    assert contents(store)[1:] == ["m2", "m3", "m4", "m5"]


def test_an_append_after_reading_the_whole_session_is_a_change(url: str) -> None:
    """The caller saw no message after those it compacts: one appended since could be the tool
    result of a call it summarises, so the session changed."""
    store = MessageStore("s", url=url)
    store.add_messages(numbered(3))
    oldest = store.oldest(5)
    assert oldest.complete and oldest.length == 3
    with redis.Redis.from_url(url) as other:  # another client appends
        other.lpush(store.key, json.dumps(message_to_dict(numbered(1, start=3)[0])))
    before = contents(store)
    assert store.compact(oldest, 3, "everything") is False
    assert contents(store) == before
    again = store.oldest(5)
    assert store.compact(again, 3, "everything")
    assert contents(store)[1:] == ["m3"]


@pytest.mark.parametrize("count", [2, 3])
def test_an_edit_between_the_read_and_the_compaction_is_a_change(
    url: str, client: redis.Redis, count: int
) -> None:
    """An edit of a compacted message (count 3) or of the first kept one (count 2: the boundary),
    by another client, makes the compaction refuse."""
    store = MessageStore("s", url=url)
    store.add_messages(numbered(5))
    oldest = store.oldest(3)
    with redis.Redis.from_url(url) as other:
        other.lset(store.key, -3, json.dumps(message_to_dict(HumanMessage("edited", id="id2"))))
    before = stored(client, store.key)
    assert store.compact(oldest, count, "summary") is False
    assert stored(client, store.key) == before


def test_a_removal_or_a_trim_between_the_read_and_the_compaction_is_a_change(url: str) -> None:
    store = MessageStore("s", url=url)
    store.add_messages(numbered(5))
    oldest = store.oldest(2)
    assert store.remove_messages(["id1"]) == EditResult(1, ())
    assert store.compact(oldest, 2, "summary") is False
    trimmed = MessageStore("t", url=url, max_messages=4)
    trimmed.add_messages(numbered(4))
    oldest = trimmed.oldest(2)
    trimmed.add_messages(numbered(1, start=4))  # pushes m0 out
    assert trimmed.compact(oldest, 2, "summary") is False


def test_of_two_compactions_of_one_read_one_applies(url: str) -> None:
    store = MessageStore("s", url=url)
    store.add_messages(numbered(8))
    first, second = store.oldest(4), store.oldest(4)
    assert store.compact(first, 4, "first")
    assert store.compact(second, 4, "second") is False
    assert contents(store)[0].endswith("first") and len(contents(store)) == 5


def test_concurrent_compactors_one_wins(url: str) -> None:
    store = MessageStore("s", url=url)
    store.add_messages(numbered(10))
    reads = [MessageStore("s", url=url).oldest(5) for _ in range(8)]
    results: list[bool] = []
    start = threading.Barrier(len(reads))

    def compactor(i: int) -> None:
        start.wait()
        results.append(MessageStore("s", url=url).compact(reads[i], 5, f"by {i}"))

    threads = [threading.Thread(target=compactor, args=(i,)) for i in range(len(reads))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    assert contents(store)[1:] == ["m5", "m6", "m7", "m8", "m9"]


def test_a_compaction_never_leaves_an_orphan_tool_result(url: str, client: redis.Redis) -> None:
    store = MessageStore("s", url=url)
    store.add_messages(tool_turn())
    oldest = store.oldest(5)
    # cutting after the call or after one of its results leaves a result first: refused
    assert [oldest.safe_count(n) for n in range(6)] == [0, 1, 1, 1, 4, 5]
    before = stored(client, store.key)
    for count in (2, 3):
        with pytest.raises(InvalidArgumentError, match="tool result"):
            store.compact(oldest, count, "summary")
    assert stored(client, store.key) == before
    # the boundary beyond what was read counts too: oldest(3) read the message after them
    assert store.oldest(3).safe_count(3) == 1
    assert store.compact(oldest, oldest.safe_count(3), "asked")
    assert [m.type for m in store.messages] == ["human", "ai", "tool", "tool", "ai"]


def test_bad_compactions_are_refused_before_anything_is_sent(url: str, client: redis.Redis) -> None:
    store = MessageStore("s", url=url)
    store.add_messages(numbered(3))
    oldest = store.oldest(2)
    before = stored(client, store.key)
    for count in (0, -1, 3, True, 1.0, _bounded.MAX_COMPACT + 1):
        with pytest.raises(InvalidArgumentError):
            store.compact(oldest, count, "s")  # type: ignore[arg-type]
    for bad_read in (0, -2, "3", _bounded.MAX_COMPACT + 1):
        with pytest.raises(InvalidSizeError):
            store.oldest(bad_read)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        store.compact(store.messages, 1, "s")  # type: ignore[arg-type]
    with pytest.raises(pyhistory.SerializationError):
        store.compact(oldest, 1, object())  # type: ignore[arg-type]
    assert stored(client, store.key) == before


def compact_call(client: redis.Redis, key: str, *args: object) -> object:
    return client.execute_command("FCALL", _bounded.COMPACT, 1, key, *args)


DIGEST = "0" * 40


@pytest.mark.parametrize(
    ("args", "code"),
    [
        ([1, 1, 0, DIGEST], "BADARGS"),
        ([0, 1, 0, DIGEST, "x"], "BADSIZE"),
        (["one", 1, 0, DIGEST, "x"], "BADSIZE"),
        ([1001, 1, 0, DIGEST, "x"], "TOOMANY"),
        ([1, 2, 0, DIGEST, "x"], "BADARGS"),
        ([1, 1, -1, DIGEST, "x"], "BADTTL"),
        ([1, 1, 0, "0" * 39, "x"], "BADARGS"),
        ([1, 1, 0, "A" * 40, "x"], "BADARGS"),
    ],
)
def test_the_compact_function_checks_every_argument(
    url: str, client: redis.Redis, args: list[object], code: str
) -> None:
    MessageStore("s", url=url, ttl=40).add_messages(numbered(3))
    before = (stored(client, "message_store:s"), expires_at(client, "message_store:s"))
    with pytest.raises(ResponseError) as caught:
        compact_call(client, "message_store:s", *args)
    assert str(caught.value).startswith(code + " ")
    assert (stored(client, "message_store:s"), expires_at(client, "message_store:s")) == before


def test_the_compact_function_refuses_another_type(url: str, client: redis.Redis) -> None:
    MessageStore("s", url=url).add_messages(numbered(1))  # loads the library
    client.set("k", "v")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        compact_call(client, "k", 1, 0, 0, DIGEST, "x")
    assert client.get("k") == b"v"


def test_the_digest_is_sha1_of_length_prefixed_entries(url: str, client: redis.Redis) -> None:
    """What a client in another language computes: the contract in docs/functions.md."""
    MessageStore("s", url=url).add_messages(numbered(1))
    client.rpush("k", "b:c", "a")  # newest first: "a" is the oldest
    import hashlib

    expected = hashlib.sha1(b"1:a3:b:c").hexdigest()
    assert _bounded.digest([b"a", b"b:c"]) == expected
    assert compact_call(client, "k", 1, 0, 0, expected, "s") == 0  # a boundary is there
    assert compact_call(client, "k", 1, 1, 0, expected, "s") == 1
    assert client.lrange("k", 0, -1) == [b"b:c", b"s"]


async def test_compaction_asyncio(url: str, aclient: redis.asyncio.Redis) -> None:
    store = MessageStore("s", async_redis_client=aclient, ttl=60)
    await store.aadd_messages(numbered(6))
    first, second = await asyncio.gather(store.aoldest(3), store.aoldest(3))
    results = await asyncio.gather(
        store.acompact(first, 2, "one"), store.acompact(second, 2, "two")
    )
    assert sorted(results) == [False, True]
    messages = await store.aget_messages()
    assert is_summary(messages[0]) and [m.content for m in messages[1:]] == [
        "m2",
        "m3",
        "m4",
        "m5",
    ]
    with pytest.raises(InvalidArgumentError):
        await store.acompact(first, 4, "too many")
    url_store = MessageStore("s", url=url)
    oldest = await url_store.aoldest(10)
    assert oldest.complete and await url_store.acompact(oldest, 5, "all")
    assert len(await url_store.aget_messages()) == 1


def test_every_new_call_loads_the_library_again_when_the_server_lost_it(
    url: str, client: redis.Redis
) -> None:
    store = MessageStore("s", url=url, ttl=60, **TAGGED)
    store.add_messages(numbered(4))
    oldest = store.oldest(1)
    calls = (
        lambda: store.compact(oldest, 1, "first"),
        lambda: store.remove_messages(["id1"]),
        lambda: store.replace_message("id2", HumanMessage("two")),
        lambda: list_sessions("sessions:{alice}", url=url),
        lambda: store.add_messages(numbered(1, start=4)),
        store.clear,
    )
    for call in calls:
        client.function_flush()
        call()
    assert client.dbsize() == 0


# --- edits by id ---------------------------------------------------------------------------------


def test_remove_messages_keeps_the_order_and_reports_the_missing(
    url: str, client: redis.Redis
) -> None:
    store = MessageStore("s", url=url, ttl=60)
    store.add_messages(numbered(6))
    client.persist(store.key)
    assert store.remove_messages(["id4", "nope", "id1", "id4", "gone"]) == EditResult(
        2, ("nope", "gone")
    )
    assert contents(store) == ["m0", "m2", "m3", "m5"]
    assert_ttl(client, store.key, 60)
    assert store.remove_messages(["none", "at all"]) == EditResult(0, ("none", "at all"))
    assert contents(store) == ["m0", "m2", "m3", "m5"]


def test_remove_every_message_deletes_the_session(url: str, client: redis.Redis) -> None:
    store = MessageStore("s", url=url, ttl=60)
    store.add_messages(numbered(2))
    assert store.remove_messages(["id0", "id1"]) == EditResult(2, ())
    assert client.exists(store.key) == 0
    assert MessageStore("nothing", url=url).remove_messages(["x"]) == EditResult(0, ("x",))


def test_duplicates_match_all_messages_without_ids_and_other_entries_never(
    url: str, client: redis.Redis
) -> None:
    no_id = HumanMessage("no id")
    # "dup" as a tool call's id, in its arguments and in the content: never an id match
    call = AIMessage(
        "dup",
        id="other",
        tool_calls=[{"name": "f", "args": {"id": "dup"}, "id": "dup", "type": "tool_call"}],
    )
    store = MessageStore("s", url=url)
    store.add_messages([HumanMessage("a", id="dup"), no_id, AIMessage("b", id="dup"), call])
    others = [b'not json "dup"', b'{"id": "dup"}', b"[1, 2]", b'{"data": "dup"}']
    client.lpush(store.key, *others)
    assert store.remove_messages(["dup"]) == EditResult(2, ())
    assert stored(client, store.key) == [
        *reversed(others),
        json.dumps(message_to_dict(call)).encode(),
        json.dumps(message_to_dict(no_id)).encode(),
    ]


def test_ids_with_escaped_characters_are_found(url: str) -> None:
    """Ids that JSON escapes (quotes, backslashes, non-ASCII, controls) skip the plain-text
    filter and are still found."""
    ids = ['say "hi"', "back\\slash", "café", "emoji 🎉", "tab\there", "slash/ok"]
    store = MessageStore("s", url=url)
    store.add_messages([HumanMessage(i, id=i) for i in ids])
    assert store.remove_messages(ids[::2]) == EditResult(3, ())
    assert contents(store) == ids[1::2]


def test_replace_message_in_place(url: str, client: redis.Redis) -> None:
    store = MessageStore("s", url=url, ttl=60)
    store.add_messages(numbered(4))
    assert store.replace_message("id1", AIMessage("one, shorter")) == EditResult(1, ())
    messages = store.messages
    assert [m.content for m in messages] == ["m0", "one, shorter", "m2", "m3"]
    assert messages[1].id == "id1"  # kept: the new message had none
    assert store.replace_message("id2", HumanMessage("new id", id="fresh")).changed == 1
    assert store.messages[2].id == "fresh"
    before = stored(client, store.key)
    assert store.replace_message("id2", HumanMessage("x")) == EditResult(0, ("id2",))
    assert stored(client, store.key) == before
    assert CommunityHistory("s", url=url).messages[1].content == "one, shorter"


def test_bad_edits_are_typed_and_change_nothing(url: str, client: redis.Redis) -> None:
    store = MessageStore("s", url=url)
    store.add_messages(numbered(3))
    before = stored(client, store.key)
    for ids in ("id0", [], ["id0", ""], ["id0", 3], None, ["x"] * (_bounded.MAX_IDS + 1)):
        with pytest.raises(InvalidArgumentError):
            store.remove_messages(ids)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        store.replace_message("", HumanMessage("x"))
    with pytest.raises(pyhistory.SerializationError):
        store.replace_message("id0", "not a message")  # type: ignore[arg-type]
    assert stored(client, store.key) == before
    edit = _bounded.EDIT
    for args, code in (
        ([0, "remove"], "BADARGS"),
        ([0, "drop", "id0"], "BADARGS"),
        ([0, "replace", "id0"], "BADARGS"),
        ([0, "remove", ""], "BADARGS"),
        (["x", "remove", "id0"], "BADTTL"),
        ([0, "remove", *["i"] * 1001], "TOOMANY"),
    ):
        with pytest.raises(ResponseError) as caught:
            client.execute_command("FCALL", edit, 1, store.key, *args)
        assert str(caught.value).startswith(code + " ")
    assert stored(client, store.key) == before
    client.set("str", "v")
    with pytest.raises(WrongTypeError):
        MessageStore("str", url=url, key_prefix="").remove_messages(["id0"])


def test_an_edit_refuses_a_session_longer_than_it_reads(url: str, client: redis.Redis) -> None:
    store = MessageStore("s", url=url)
    store.add_messages(numbered(1))
    client.rpush(store.key, *["x"] * _bounded.MAX_SCAN)
    with pytest.raises(SessionTooLongError):
        store.remove_messages(["id0"])
    assert client.llen(store.key) == _bounded.MAX_SCAN + 1


async def test_edits_asyncio(url: str, aclient: redis.asyncio.Redis) -> None:
    store = MessageStore("s", async_redis_client=aclient)
    await store.aadd_messages(numbered(4))
    assert await store.aremove_messages(["id0", "x"]) == EditResult(1, ("x",))
    assert await store.areplace_message("id3", HumanMessage("three")) == EditResult(1, ())
    assert [m.content for m in await store.aget_messages()] == ["m1", "m2", "three"]
    url_store = MessageStore("s", url=url)
    assert (await url_store.aremove_messages(["id1"])).changed == 1


# --- the sessions index --------------------------------------------------------------------------

TAGGED = {"key_prefix": "chat:{alice}:", "sessions_index": "sessions:{alice}"}


def test_appends_keep_the_index_newest_first_and_listing_pages(
    url: str, client: redis.Redis
) -> None:
    for name in ("a", "b", "c", "d"):
        MessageStore(name, url=url, ttl=60, **TAGGED).add_messages(numbered(1))
        time.sleep(0.003)  # distinct milliseconds
    MessageStore("b", url=url, ttl=60, **TAGGED).add_messages(numbered(1))
    listed = list_sessions("sessions:{alice}", url=url, key_prefix="chat:{alice}:", ttl=60)
    assert [s.session_id for s in listed] == ["b", "d", "c", "a"]
    assert listed[0].key == "chat:{alice}:b"
    assert listed[0].last_activity >= listed[1].last_activity
    assert abs(listed[0].last_activity.timestamp() - time.time()) < 30
    pages = [
        [s.session_id for s in list_sessions("sessions:{alice}", url=url, offset=o, count=3)]
        for o in (0, 3, 6)
    ]
    assert pages == [
        ["chat:{alice}:b", "chat:{alice}:d", "chat:{alice}:c"],  # the keys: no key_prefix given
        ["chat:{alice}:a"],
        [],
    ]
    assert_ttl(client, "sessions:{alice}", 60)
    # no index: the append is the plain one, and the index is untouched
    MessageStore("e", url=url, key_prefix="chat:{alice}:").add_messages(numbered(1))
    assert client.zcard("sessions:{alice}") == 4


def test_every_append_of_a_session_read_before_keeps_its_index(
    url: str, client: redis.Redis
) -> None:
    """A session this process has read takes plain appends (pyhistory._core.plain_append), but
    not with an index: every append is the library's, which scores the session."""
    store = MessageStore("a", url=url, ttl=60, **TAGGED)
    log = CommandLog(url)
    store.add_messages(numbered(1))
    store.messages  # noqa: B018 - a read: the key holds a list
    scores = []
    for _ in range(3):
        time.sleep(0.003)  # distinct milliseconds
        assert log.commands_of(lambda: store.add_messages(numbered(1))) == ["FCALL"]
        scores.append(client.zscore("sessions:{alice}", "chat:{alice}:a"))
    assert scores == sorted(set(scores))


def test_an_indexed_append_is_exactly_once(url: str, client: redis.Redis) -> None:
    store = MessageStore("a", url=url, ttl=60, **TAGGED)
    for _ in range(2):
        store.add_messages(numbered(2), idempotency_key="request-1")
    assert len(store) == 2
    assert client.zrange("sessions:{alice}", 0, -1) == [b"chat:{alice}:a"]


def test_clear_removes_the_session_from_the_index_atomically(url: str, client: redis.Redis) -> None:
    a = MessageStore("a", url=url, **TAGGED)
    a.add_messages(numbered(1), idempotency_key="k")
    MessageStore("b", url=url, **TAGGED).add_messages(numbered(1))
    a.clear()
    assert client.exists(a.key, _core.batches_key(a.key)) == 0
    assert client.zrange("sessions:{alice}", 0, -1) == [b"chat:{alice}:b"]


def test_expired_sessions_are_dropped_by_appends_and_by_the_listing(
    url: str, client: redis.Redis
) -> None:
    MessageStore("live", url=url, ttl=60, **TAGGED).add_messages(numbered(1))
    old_ms = int(time.time() * 1000) - 120_000  # two TTLs ago
    client.zadd("sessions:{alice}", {"chat:{alice}:old1": old_ms, "chat:{alice}:old2": old_ms})
    listed = list_sessions("sessions:{alice}", url=url, key_prefix="chat:{alice}:", ttl=60)
    assert [s.session_id for s in listed] == ["live"]
    assert client.zcard("sessions:{alice}") == 1
    assert len(list_sessions("sessions:{alice}", url=url)) == 1
    client.zadd("sessions:{alice}", {"chat:{alice}:old3": old_ms})
    assert len(list_sessions("sessions:{alice}", url=url)) == 2  # no ttl: everything listed
    MessageStore("next", url=url, ttl=60, **TAGGED).add_messages(numbered(1))
    assert sorted(client.zrange("sessions:{alice}", 0, -1)) == [
        b"chat:{alice}:live",
        b"chat:{alice}:next",
    ]


def test_a_call_drops_at_most_a_bounded_number_of_expired_sessions(
    url: str, client: redis.Redis
) -> None:
    MessageStore("live", url=url, ttl=60, **TAGGED).add_messages(numbered(1))
    old_ms = int(time.time() * 1000) - 120_000
    client.zadd("sessions:{alice}", {f"chat:{{alice}}:old{i}": old_ms for i in range(150)})
    for left in (50, 0):
        listed = list_sessions("sessions:{alice}", url=url, ttl=60)
        assert [s.key for s in listed] == ["chat:{alice}:live"]  # the expired are never listed
        assert client.zcard("sessions:{alice}") == 1 + left


def test_index_and_session_must_share_a_slot(url: str) -> None:
    with pytest.raises(CrossSlotError, match=r"chat:\{alice\}"):
        MessageStore("s", url=url, sessions_index="sessions:alice")
    store = MessageStore("s", url=url, **TAGGED)
    with pytest.raises(CrossSlotError):
        store.key_prefix = "chat:{bob}:"
    with pytest.raises(CrossSlotError):
        store.sessions_index = "sessions:{bob}"
    with pytest.raises(InvalidArgumentError):
        store.sessions_index = ""  # type: ignore[assignment]
    # a session id may carry the tag itself, with the default prefix
    MessageStore("{alice}:1", url=url, sessions_index="sessions:{alice}")
    assert store.key == "chat:{alice}:s" and store.sessions_index == "sessions:{alice}"


def test_an_index_of_another_type_refuses_the_append_before_any_write(
    url: str, client: redis.Redis
) -> None:
    client.set("sessions:{alice}", "not a zset")
    store = MessageStore("s", url=url, ttl=60, **TAGGED)
    with pytest.raises(WrongTypeError):
        store.add_messages(numbered(1))
    assert client.exists(store.key, _core.batches_key(store.key)) == 0
    with pytest.raises(WrongTypeError):
        store.clear()


def test_bad_listings_are_typed(url: str, client: redis.Redis) -> None:
    for kwargs in ({"offset": -1}, {"count": 0}, {"count": 1001}, {"ttl": -1}, {"count": "2"}):
        with pytest.raises(InvalidArgumentError):
            list_sessions("sessions:{alice}", url=url, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        list_sessions("", url=url)
    MessageStore("s", url=url).add_messages(numbered(1))  # loads the library
    for args, code in (([0, 0, 1001], "TOOMANY"), ([0, -1, 5], "BADSIZE"), ([0, 0], "BADARGS")):
        with pytest.raises(ResponseError) as caught:
            client.execute_command("FCALL", _bounded.SESSIONS, 1, "i", *args)
        assert str(caught.value).startswith(code + " ")
    assert isinstance(pyhistory.errors.translate(ResponseError("TOOMANY x")), BatchTooLargeError)


async def test_sessions_index_asyncio(url: str, aclient: redis.asyncio.Redis) -> None:
    store = MessageStore("a", async_redis_client=aclient, ttl=60, **TAGGED)
    await store.aadd_messages(numbered(2))
    await MessageStore("b", url=url, ttl=60, **TAGGED).aadd_messages(numbered(1))
    listed = await pyhistory.alist_sessions(
        "sessions:{alice}", async_redis_client=aclient, key_prefix="chat:{alice}:"
    )
    assert [s.session_id for s in listed] == ["b", "a"]
    await store.aclear()
    listed = await pyhistory.alist_sessions(
        "sessions:{alice}", url=url, key_prefix="chat:{alice}:", ttl=60
    )
    assert [s.session_id for s in listed] == ["b"]


# --- on a cluster --------------------------------------------------------------------------------


@pytest.mark.cluster
def test_on_a_cluster(cluster_client: redis.cluster.RedisCluster) -> None:
    with pytest.raises(CrossSlotError):
        MessageStore("s", redis_client=cluster_client, sessions_index="sessions")
    users = ("alice", "bob", "carol")  # tags on different slots, probably different nodes
    for user in users:
        prefix, index = f"chat:{{{user}}}:", f"sessions:{{{user}}}"
        for name in ("1", "2"):
            store = MessageStore(
                name,
                redis_client=cluster_client,
                key_prefix=prefix,
                sessions_index=index,
                ttl=60,
            )
            store.add_messages(numbered(4))
        oldest = store.oldest(2)
        store.add_messages(numbered(1, start=4))
        assert store.compact(oldest, 2, f"{user}'s start")
        assert store.remove_messages(["id3", "x"]) == EditResult(1, ("x",))
        assert store.replace_message("id2", HumanMessage("two")).changed == 1
        assert [m.content for m in store.messages][1:] == ["two", "m4"]
        listed = list_sessions(index, redis_client=cluster_client, key_prefix=prefix, ttl=60)
        assert [s.session_id for s in listed] == ["2", "1"]
        store.clear()
        assert [s.session_id for s in list_sessions(index, redis_client=cluster_client)] == [
            f"chat:{{{user}}}:1"
        ]


@pytest.mark.cluster
async def test_on_a_cluster_asyncio(cluster: Any, cluster_client: Any) -> None:
    store = MessageStore("1", url=cluster.url, cluster=True, ttl=60, **TAGGED)
    await store.aadd_messages(numbered(4))
    oldest = await store.aoldest(2)
    assert await store.acompact(oldest, 2, "start")
    assert (await store.aremove_messages(["id2"])).changed == 1
    listed = await pyhistory.alist_sessions(
        "sessions:{alice}", url=cluster.url, cluster=True, key_prefix="chat:{alice}:"
    )
    assert [s.session_id for s in listed] == ["1"]
    await store.aclear()
    assert not await pyhistory.alist_sessions("sessions:{alice}", url=cluster.url, cluster=True)
