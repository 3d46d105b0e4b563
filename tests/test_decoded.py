"""Messages decoded once per process and reused: what a read returns belongs to the caller, and
equals what LangChain itself decodes from the same bytes."""

from __future__ import annotations

import gc
import json

import redis
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    message_to_dict,
    messages_from_dict,
)

from pyhistory import CorruptEntryError, RedisChatMessageHistory
from pyhistory._core import DECODED, DecodedCache, decode


def rich() -> list[BaseMessage]:
    """Messages with every kind of mutable part a stored message has."""
    return [
        SystemMessage("be brief", id="sys-1"),
        HumanMessage(
            content=[{"type": "text", "text": "what is this?"}, {"type": "image", "url": "x"}],
            additional_kwargs={"tags": ["a", {"deep": [1, 2]}]},
            name="ann",
        ),
        AIMessage(
            "let me look",
            tool_calls=[{"name": "lookup", "args": {"q": ["x", {"n": 1}]}, "id": "call-1"}],
            response_metadata={"model": "m", "usage": {"in": 3, "out": [1, 2]}},
            usage_metadata={"input_tokens": 3, "output_tokens": 4, "total_tokens": 7},
        ),
        ToolMessage("found it", tool_call_id="call-1", artifact={"rows": [1, 2, 3]}),
        AIMessage("it is a cat", additional_kwargs={}, response_metadata={}),
        HumanMessage("and this?", custom={"k": [1, {"deep": [2]}]}),  # a field of its own (extra)
    ]


def vandalise(messages: list[BaseMessage]) -> None:
    """Change everything a caller could change in what a read returned."""
    for message in messages:
        if isinstance(message.content, list):
            message.content.append("extra")
            first = message.content[0]
            if isinstance(first, dict):
                first["text"] = "changed"
        message.additional_kwargs["new"] = 1
        for value in message.additional_kwargs.values():
            if isinstance(value, list):
                value.clear()
        message.response_metadata["new"] = 2
        if isinstance(message.response_metadata.get("usage"), dict):
            message.response_metadata["usage"]["out"].append(3)
        message.name = "someone else"
        message.id = "changed"
        if isinstance(message, AIMessage):
            message.tool_calls[0:0] = [{"name": "x", "args": {}, "id": "y"}]
            for call in message.tool_calls:
                call["args"]["q"] = "changed"
            if message.usage_metadata:
                message.usage_metadata["input_tokens"] = 99
        if isinstance(message, ToolMessage):
            message.artifact["rows"].append(4)
        custom = (message.__pydantic_extra__ or {}).get("custom")
        if isinstance(custom, dict):
            custom["k"].append(3)
            custom["k"][1]["deep"].clear()
        message.unheard_of = "set"  # pydantic keeps it among the extras
    messages.reverse()
    messages.pop()


def test_mutating_a_read_never_changes_a_later_read(url: str) -> None:
    history = RedisChatMessageHistory("s", url=url)
    history.add_messages(rich())
    first = history.messages  # decoded now (and remembered)
    expected = [m.model_copy(deep=True) for m in first]
    assert first == rich()
    for _ in range(3):  # each later read is built from what was remembered
        read = history.messages
        assert read == expected
        vandalise(read)
    assert history.messages == expected == rich()


async def test_mutating_an_asyncio_read_never_changes_a_later_read(url: str) -> None:
    history = RedisChatMessageHistory("s", url=url)
    await history.aadd_messages(rich())
    for _ in range(3):
        read = await history.aget_messages()
        assert read == rich()
        vandalise(read)
    assert await history.aget_messages() == rich()


def as_stored(messages: list[BaseMessage]) -> list[bytes]:
    """The stored entries of ``messages``, newest first."""
    return [json.dumps(message_to_dict(m)).encode() for m in reversed(messages)]


def same(a: BaseMessage, b: BaseMessage) -> None:
    assert type(a) is type(b)
    assert a == b
    assert a.model_dump() == b.model_dump()
    assert a.model_fields_set == b.model_fields_set
    assert a.__pydantic_extra__ == b.__pydantic_extra__


def test_a_reused_message_equals_what_langchain_decodes(url: str, client: redis.Redis) -> None:
    """Field by field, with pydantic's own bookkeeping (fields set, extras), on the first read
    (decoded) and on later ones (rebuilt), including entries written by other clients with fewer
    fields than LangChain writes today."""
    entries = [
        *as_stored(rich()),
        b'{"type": "human", "data": {"content": "older layout"}}',
        b'{"type": "ai", "data": {"content": "x", "example": true, "custom": {"k": [1]}}}',
    ]
    langchain = messages_from_dict([json.loads(e) for e in reversed(entries)])
    for _ in range(2):
        ours = decode(entries)
        assert len(ours) == len(langchain)
        for a, b in zip(ours, langchain, strict=True):
            same(a, b)


def test_leading_tool_results_are_dropped_whether_decoded_or_reused() -> None:
    entries = as_stored([ToolMessage("orphan", tool_call_id="c"), HumanMessage("hi")])
    for _ in range(2):
        assert [m.content for m in decode(entries)] == ["hi"]


def test_the_cache_is_bounded_in_bytes() -> None:
    cache = DecodedCache(max_bytes=1000, max_entry_bytes=300)
    entries = [json.dumps(message_to_dict(HumanMessage(f"m{i}"))).encode() for i in range(40)]
    for entry in entries:
        cache.put(entry, messages_from_dict([json.loads(entry)])[0])
    assert cache.size <= 1000
    assert cache.get(entries[-1]) is not None
    assert cache.get(entries[0]) is None  # the oldest went first
    big = json.dumps(message_to_dict(HumanMessage("x" * 400))).encode()
    cache.put(big, HumanMessage("x" * 400))
    assert cache.get(big) is None  # larger than an entry may be
    assert DECODED.max_bytes == 4 << 20


class _Made(HumanMessage):
    """A message class that makes its instances itself."""

    def __new__(cls, *args: object, **kwargs: object) -> _Made:
        made = super().__new__(cls)
        object.__setattr__(made, "_made_here", True)
        return made


def test_a_class_with_a_new_of_its_own_is_decoded_each_time_not_copied() -> None:
    cache = DecodedCache()
    entry = json.dumps(message_to_dict(HumanMessage("hi"))).encode()
    cache.put(entry, _Made("hi"))
    assert cache.get(entry) is None  # copies bypass __new__: such a class gets no recipe
    cache.put(entry, HumanMessage("hi"))
    assert cache.get(entry) == HumanMessage("hi")


def test_cached_messages_add_one_object_each_to_what_the_garbage_collector_scans() -> None:
    """A full collection pauses the process for every object it tracks: a cache of thousands of
    decoded messages holds one tracked object per message (plain messages: their recipe's
    fields and metadata are untracked once the collector has seen them)."""
    cache = DecodedCache()
    messages = [
        HumanMessage(f"question {i}") if i % 2 else AIMessage(f"answer {i}") for i in range(200)
    ]
    for message in messages:
        cache.put(json.dumps(message_to_dict(message)).encode(), message)
    gc.collect()
    for recipe in cache._recipes.values():
        assert sum(gc.is_tracked(part) for part in (recipe, *recipe)) == 1, recipe
    assert [cache.get(entry) for entry in list(cache._recipes)[:2]] == messages[:2]


def test_corrupt_entries_are_refused_before_and_after_others_are_cached() -> None:
    good = as_stored([HumanMessage("fine")])
    decode(good)
    for bad in (b"not json", b'{"type": "nonsense", "data": {}}', b'{"data": {}}'):
        try:
            decode([bad, *good])
        except CorruptEntryError:
            continue
        raise AssertionError(f"{bad!r} was accepted")
