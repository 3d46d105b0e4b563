"""The data contract, proven with the real langchain_community package: each reads what the other
writes, and the stored bytes are exactly json.dumps(message_to_dict(m))."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from langchain_community.chat_message_histories import (
    RedisChatMessageHistory as CommunityHistory,
)
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    message_to_dict,
)

from pyhistory import RedisChatMessageHistory


def conversation() -> list[BaseMessage]:
    return [
        SystemMessage("You're an assistant。"),
        HumanMessage("hi! I'm Zoë — ¿qué tal? 你好 👋", id="h1", name="zoe"),
        HumanMessage(
            content=[
                {"type": "text", "text": "what is in this picture?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            ]
        ),
        AIMessage(
            "",
            tool_calls=[
                {
                    "name": "lookup",
                    "args": {"q": "ünïcode", "n": 3},
                    "id": "call_9",
                    "type": "tool_call",
                }
            ],
            usage_metadata={"input_tokens": 12, "output_tokens": 7, "total_tokens": 19},
            response_metadata={"model_name": "m-1", "finish_reason": "tool_calls"},
            id="run-1",
        ),
        ToolMessage('{"result": [1, 2, 3]}', tool_call_id="call_9", artifact={"rows": 3}),
        AIMessage('Here you go: "quoted"\nnew line\ttab \\ backslash'),
        ChatMessage("custom role", role="critic"),
        FunctionMessage("42", name="answer"),
    ]


def test_stored_bytes_are_langchain_community_bytes(url: str, client: redis.Redis) -> None:
    messages = conversation()
    RedisChatMessageHistory("ours", url=url).add_messages(messages)
    theirs = CommunityHistory("theirs", url=url)
    for m in messages:
        theirs.add_message(m)
    ours_raw = client.lrange("message_store:ours", 0, -1)
    assert ours_raw == client.lrange("message_store:theirs", 0, -1)
    assert ours_raw == [json.dumps(message_to_dict(m)).encode() for m in reversed(messages)]


def test_they_write_we_read(url: str) -> None:
    messages = conversation()
    theirs = CommunityHistory("s", url=url, ttl=60)
    for m in messages:
        theirs.add_message(m)
    assert RedisChatMessageHistory("s", url=url).messages == messages


def test_we_write_they_read(url: str) -> None:
    messages = conversation()
    RedisChatMessageHistory("s", url=url, ttl=60).add_messages(messages)
    assert CommunityHistory("s", url=url).messages == messages


def test_interleaved_writers_during_a_rollout(url: str, client: redis.Redis) -> None:
    ours = RedisChatMessageHistory("s", url=url, ttl=60)
    theirs = CommunityHistory("s", url=url, ttl=60)
    for i in range(5):
        theirs.add_user_message(f"q{i}")
        ours.add_ai_message(f"a{i}")
    expected = [m for i in range(5) for m in (HumanMessage(f"q{i}"), AIMessage(f"a{i}"))]
    assert ours.messages == expected == theirs.messages
    theirs.clear()
    assert ours.messages == []


@pytest.mark.parametrize(("key_prefix", "session_id"), [("message_store:", "user:42"), ("", "x")])
def test_same_key_for_the_same_arguments(url: str, key_prefix: str, session_id: str) -> None:
    ours = RedisChatMessageHistory(session_id, url=url, key_prefix=key_prefix)
    theirs: Any = CommunityHistory(session_id, url=url, key_prefix=key_prefix)
    assert ours.key == theirs.key == key_prefix + session_id


def test_what_only_the_standard_json_reads_is_read_the_same(url: str) -> None:
    """json.dumps writes NaN, Infinity, lone surrogates and integers past 64 bits; the fast
    decoder (orjson) refuses them, so those entries are read by the standard library."""
    message = AIMessage(
        "lone \ud800 surrogate",
        response_metadata={"nan": float("nan"), "inf": float("-inf"), "big": 2**70},
    )
    theirs = CommunityHistory("odd", url=url)
    theirs.add_message(message)
    (got,) = RedisChatMessageHistory("odd", url=url).messages
    assert got.content == "lone \ud800 surrogate"
    meta = got.response_metadata
    assert meta["nan"] != meta["nan"] and meta["inf"] == float("-inf") and meta["big"] == 2**70


def test_older_layouts_are_read_as_langchain_reads_them_every_time(
    url: str, client: redis.Redis
) -> None:
    """An AIMessage stored by an older langchain, with OpenAI-style tool calls only in
    additional_kwargs: validation converts them, and every read does it again (the fast path
    that skips validation is only taken for entries whose data validation left unchanged)."""
    old = {
        "type": "ai",
        "data": {
            "content": "",
            "additional_kwargs": {
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": '{"q": "x"}'},
                    }
                ]
            },
            "type": "ai",
            "example": False,
        },
    }
    client.lpush("message_store:old", json.dumps(old))
    history = RedisChatMessageHistory("old", url=url)
    reads = [history.messages for _ in range(3)]
    assert reads[0] == reads[1] == reads[2]
    (message,) = reads[2]
    assert isinstance(message, AIMessage)
    assert message.tool_calls[0]["name"] == "lookup"
    assert message.tool_calls[0]["args"] == {"q": "x"}


def test_repeated_reads_give_equal_fresh_objects(url: str) -> None:
    RedisChatMessageHistory("r", url=url).add_messages(conversation())
    history = RedisChatMessageHistory("r", url=url)
    first, second = history.messages, history.messages
    assert first == second == conversation()
    assert all(a is not b for a, b in zip(first, second, strict=True))
    first[3].tool_calls[0]["args"]["n"] = 99  # a caller's change to what it got ...
    assert history.messages[3].tool_calls[0]["args"]["n"] == 3  # ... is not seen by the next read


def test_entries_not_in_our_own_encoding_are_validated_on_every_read(
    url: str, client: redis.Redis
) -> None:
    """1.0 where an int goes (written by some other client) equals 1 in Python, but is not what
    json.dumps writes for the validated message: such entries never take the fast path."""
    data = AIMessage(
        "hi", usage_metadata={"input_tokens": 1, "output_tokens": 2, "total_tokens": 3}
    )
    stored = json.dumps(message_to_dict(data)).replace('"input_tokens": 1', '"input_tokens": 1.0')
    client.lpush("message_store:f", stored)
    history = RedisChatMessageHistory("f", url=url)
    for _ in range(3):
        (message,) = history.messages
        assert message.usage_metadata is not None
        tokens = message.usage_metadata["input_tokens"]
        assert tokens == 1 and type(tokens) is int
