"""Conversation pieces and checks that several test modules share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from pyhistory import RedisChatMessageHistory


def turn(i: int) -> list[BaseMessage]:
    """One exchange: a question and its answer, numbered."""
    return [HumanMessage(f"question {i}"), AIMessage(f"answer {i}")]


async def check_asyncio_methods(history: RedisChatMessageHistory, client: Any) -> None:
    """The a* methods of a history made with ttl=60 and max_messages=3: a bounded append, the
    read, the length, touch (its TTL checked through the sync `client`) and clear."""
    await history.aadd_messages([*turn(1), *turn(2)])
    assert [m.content for m in await history.aget_messages()] == [
        "answer 1",
        "question 2",
        "answer 2",
    ]
    assert await history.alength() == 3
    client.expire(history.key, 5)
    assert await history.atouch() is True
    assert client.ttl(history.key) >= 59
    await history.aclear()
    assert await history.aget_messages() == []


class CommandLog:
    """Commands the server received from clients (not from inside functions), via MONITOR."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.marker = redis.Redis.from_url(url)
        self.marker.ping()  # connected before anything is watched

    def commands_of(self, operation: Callable[[], Any]) -> list[str]:
        marker = "pyhistory-count-end"
        with redis.Redis.from_url(self.url) as other, other.monitor() as monitor:
            operation()
            self.marker.echo(marker)
            seen = []
            while True:
                entry = monitor.next_command()
                if marker in entry["command"]:
                    return seen
                if entry.get("client_type") != "lua":
                    seen.append(entry["command"].split(" ", 1)[0].upper())
