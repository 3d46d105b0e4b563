"""Conversation pieces and checks that several test modules share."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import redis
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from pyhistory import RedisChatMessageHistory

# How long a loaded test machine may take between setting a TTL and reading it back.
TTL_MARGIN = 10.0


def expires_at(client: Any, key: str) -> int:
    """When ``key`` expires, in Unix milliseconds (PEXPIRETIME: -1 without a TTL, -2 without the
    key). Unlike TTL it does not tick, so "nothing changed" compares exactly, at any second."""
    return int(client.execute_command("PEXPIRETIME", key))


def assert_ttl(client: Any, key: str, seconds: float, margin: float = TTL_MARGIN) -> None:
    """The key's TTL was set to ``seconds`` at most ``margin`` seconds ago (PTTL, so no rounding
    to whole seconds). The margin is at most half the TTL, so a TTL left from before (a shorter
    one set by the test, or none) cannot pass for it."""
    pttl = int(client.pttl(key))
    low = (seconds - min(margin, seconds / 2)) * 1000
    assert low < pttl <= seconds * 1000, (
        f"PTTL of {key!r} is {pttl} ms, not ({low:.0f}, {seconds * 1000:.0f}]"
    )


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
    assert_ttl(client, history.key, 60)
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


class Tally(BaseChatModel):
    """Summarises by listing the question numbers it is shown (a summary's own list included),
    so that a running summary can be checked; ``during`` runs while it "thinks"."""

    calls: int = 0
    during: Callable[[int], None] | None = None

    @property
    def _llm_type(self) -> str:
        return "tally"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.calls += 1
        if self.during is not None:
            self.during(self.calls)
        shown = str(messages[-1].content)
        numbers = sorted({int(n) for n in re.findall(r"(?:question |#)(\d+)", shown)})
        reply = AIMessage("questions " + " ".join(f"#{n}" for n in numbers))
        return ChatResult(generations=[ChatGeneration(message=reply)])


def asked(message: BaseMessage) -> list[int]:
    return [int(n) for n in re.findall(r"#(\d+)", str(message.content))]
