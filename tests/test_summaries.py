"""Running summaries (pyhistory.summarize, Summarizer) against real servers, with an offline chat
model: sessions stay bounded over many turns, nothing appended during a summary is lost, a lost
compare-and-swap is retried, bad settings are refused before any I/O."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis
from chat import CommandLog, Tally, asked, turn
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatResult

import pyhistory
from pyhistory import InvalidArgumentError, MessageStore, Summarizer, is_summary


def contents(messages: list[BaseMessage]) -> list[Any]:
    return [m.content for m in messages]


def test_two_hundred_turns_stay_bounded_with_a_running_summary(
    url: str, client: redis.Redis
) -> None:
    history = MessageStore("s", url=url, max_messages=30)
    model = Tally()
    summarizer = Summarizer(model, trigger_messages=20, keep_messages=6)
    for i in range(200):
        history.add_messages(turn(i))
        assert client.llen(history.key) <= 21
        summarizer.summarize(history)
        assert client.llen(history.key) < 20
    stored = history.messages
    assert is_summary(stored[0])
    assert all(not is_summary(m) for m in stored[1:])
    # Every question is in the running summary or still stored, in order.
    kept = [int(str(m.content).split()[-1]) for m in stored[1:] if isinstance(m, HumanMessage)]
    assert asked(stored[0]) + kept == list(range(200))
    # The first at 20 messages (10 turns), then from 7 (a summary, 6 kept) to 21: every 7 turns.
    assert model.calls == 1 + (200 - 10) // 7


async def test_a_hundred_turns_stay_bounded_asyncio(url: str, client: redis.Redis) -> None:
    history = MessageStore("s", url=url, max_messages=30)
    model = Tally()
    for i in range(100):
        await history.aadd_messages(turn(i))
        await pyhistory.asummarize(history, model, trigger_messages=20, keep_messages=6)
        assert await history.alength() < 20
    stored = await history.aget_messages()
    assert is_summary(stored[0])
    kept = [int(str(m.content).split()[-1]) for m in stored[1:] if isinstance(m, HumanMessage)]
    assert asked(stored[0]) + kept == list(range(100))


def appender(url: str, session: str, texts: list[str]) -> Callable[[int], None]:
    """Appends through a client of its own while the model writes its summary."""
    other = MessageStore(session, redis_client=redis.Redis.from_url(url))

    def during(call: int) -> None:
        for text in texts:
            other.add_messages(HumanMessage(text))

    return during


def test_messages_appended_during_the_summary_are_kept_in_order(url: str) -> None:
    history = MessageStore("s", url=url)
    for i in range(10):
        history.add_messages(turn(i))
    late = [f"late {i}" for i in range(5)]
    model = Tally(during=appender(url, "s", late))
    assert pyhistory.summarize(history, model, trigger_messages=10, keep_messages=4)
    stored = history.messages
    assert is_summary(stored[0])
    assert asked(stored[0]) == [0, 1, 2, 3, 4, 5, 6, 7]
    assert contents(stored[1:]) == [*contents(turn(8)), *contents(turn(9)), *late]
    assert model.calls == 1  # the appends changed nothing summarised: no second try


async def test_messages_appended_during_the_summary_are_kept_asyncio(url: str) -> None:
    history = MessageStore("s", url=url)
    for i in range(10):
        await history.aadd_messages(turn(i))
    late = [f"late {i}" for i in range(5)]
    model = Tally(during=appender(url, "s", late))
    assert await pyhistory.asummarize(history, model, trigger_messages=10, keep_messages=4)
    stored = await history.aget_messages()
    assert is_summary(stored[0])
    assert contents(stored[1:]) == [*contents(turn(8)), *contents(turn(9)), *late]


def test_a_lost_swap_reads_again_and_summarises_what_is_there(url: str) -> None:
    history = MessageStore("s", url=url)
    history.add_messages([HumanMessage(f"question {i}", id=f"q{i}") for i in range(12)])
    other = MessageStore("s", redis_client=redis.Redis.from_url(url))

    def remove_the_oldest(call: int) -> None:
        if call == 1:  # another process edits the oldest messages meanwhile
            assert other.remove_messages(["q0"]).changed == 1

    model = Tally(during=remove_the_oldest)
    assert pyhistory.summarize(history, model, trigger_messages=10, keep_messages=4)
    assert model.calls == 2
    stored = history.messages
    assert asked(stored[0]) == list(range(1, 8))
    assert contents(stored[1:]) == [f"question {i}" for i in range(8, 12)]


def test_it_gives_up_after_its_attempts(url: str) -> None:
    history = MessageStore("s", url=url)
    history.add_messages([HumanMessage(f"question {i}", id=f"q{i}") for i in range(30)])
    other = MessageStore("s", redis_client=redis.Redis.from_url(url))
    model = Tally(during=lambda call: other.remove_messages([f"q{call - 1}"]) and None)
    assert not pyhistory.summarize(history, model, trigger_messages=10, keep_messages=4, attempts=2)
    assert model.calls == 2
    stored = history.messages
    assert not any(is_summary(m) for m in stored)
    assert contents(stored) == [f"question {i}" for i in range(2, 30)]


def test_below_the_threshold_it_costs_one_llen(url: str) -> None:
    history = MessageStore("s", url=url)
    for i in range(4):
        history.add_messages(turn(i))
    model = Tally()
    log = CommandLog(url)
    summarizer = Summarizer(model, trigger_messages=10, keep_messages=4)
    assert log.commands_of(lambda: summarizer.summarize(history)) == ["LLEN"]
    assert model.calls == 0


def test_a_token_threshold(url: str) -> None:
    history = MessageStore("s", url=url)
    for i in range(6):
        history.add_messages(turn(i))

    counted: list[Any] = []

    def words(messages: Any) -> int:
        counted.extend(m.content for m in messages)
        return sum(len(str(m.content).split()) for m in messages)

    model = Tally()
    assert not pyhistory.summarize(
        history, model, trigger_tokens=25, keep_messages=2, token_counter=words
    )
    history.add_messages(turn(6))
    assert pyhistory.summarize(
        history, model, trigger_tokens=25, keep_messages=2, token_counter=words
    )
    stored = history.messages
    assert asked(stored[0]) == [0, 1, 2, 3, 4, 5]
    assert contents(stored[1:]) == contents(turn(6))
    assert counted == [
        *contents(turn(0)),
        *contents(turn(1)),
        *contents(turn(2)),
        *contents(turn(3)),
        *contents(turn(4)),
        *contents(turn(5)),
        *contents(turn(6)),
    ]  # each message counted once, over both passes


def test_the_cut_never_leaves_a_tool_result_first(url: str) -> None:
    history = MessageStore("s", url=url)
    call = {"name": "weather", "args": {"city": "Paris"}, "id": "c1"}
    history.add_messages(
        [
            *turn(0),
            HumanMessage("question 1"),
            AIMessage("", tool_calls=[call]),
            ToolMessage("sunny", tool_call_id="c1"),
            AIMessage("It is sunny."),
        ]
    )
    # Keeping 2 would cut between the tool call and its result: 3 oldest are summarised.
    assert pyhistory.summarize(history, Tally(), trigger_messages=6, keep_messages=2)
    stored = history.messages
    assert asked(stored[0]) == [0, 1]
    assert [m.type for m in stored[1:]] == ["ai", "tool", "ai"]


def test_a_summary_alone_is_not_summarised_again(url: str) -> None:
    history = MessageStore("s", url=url)
    for i in range(3):
        history.add_messages(turn(i))
    model = Tally()
    assert pyhistory.summarize(history, model, trigger_messages=3, keep_messages=2)
    assert len(history) == 3
    assert not pyhistory.summarize(history, model, trigger_messages=3, keep_messages=2)
    assert model.calls == 1


def test_a_custom_prompt(url: str) -> None:
    history = MessageStore("s", url=url)
    for i in range(3):
        history.add_messages(turn(i))
    seen: list[str] = []

    class Echo(Tally):
        def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
            seen.append(str(messages[-1].content))
            return super()._generate(messages, *args, **kwargs)

    pyhistory.summarize(
        history, Echo(), trigger_messages=6, keep_messages=2, prompt="Be brief.\n{messages}"
    )
    assert seen == ["Be brief.\nHuman: question 0\nAI: answer 0\nHuman: question 1\nAI: answer 1"]


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"trigger_messages": 5, "keep_messages": 5},
        {"trigger_messages": 0},
        {"trigger_messages": 10, "keep_messages": -1},
        {"trigger_tokens": 0},
        {"trigger_tokens": 100, "attempts": 0},
        {"trigger_tokens": 100, "prompt": "no placeholder"},
        {"trigger_tokens": 100, "token_counter": "tiktoken"},
    ],
)
def test_bad_settings_are_refused(settings: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgumentError):
        Summarizer(Tally(), **settings)
    nowhere = MessageStore("s", url="redis://127.0.0.1:1/0")  # nothing listens there
    with pytest.raises(InvalidArgumentError):
        pyhistory.summarize(nowhere, Tally(), **settings)


def test_a_threshold_the_bound_never_lets_a_session_reach_is_refused() -> None:
    nowhere = MessageStore("s", url="redis://127.0.0.1:1/0", max_messages=20)
    with pytest.raises(InvalidArgumentError, match="below max_messages"):
        pyhistory.summarize(nowhere, Tally(), trigger_messages=20, keep_messages=5)


@pytest.mark.cluster
def test_on_a_cluster(cluster: Any, cluster_client: Any) -> None:
    import asyncio

    for session in ("a", "b"):
        history = MessageStore(session, url=cluster.url, cluster=True, max_messages=30)
        for i in range(8):
            history.add_messages(turn(i))
        assert pyhistory.summarize(history, Tally(), trigger_messages=20, keep_messages=4) is False
        assert pyhistory.summarize(history, Tally(), trigger_messages=10, keep_messages=4)
        assert asked(history.messages[0]) == list(range(6))

    async def again() -> bool:
        history = MessageStore("a", url=cluster.url, cluster=True)
        await history.aadd_messages([*turn(8), *turn(9)])
        return await pyhistory.asummarize(history, Tally(), trigger_messages=5, keep_messages=2)

    assert asyncio.run(again())
    assert asked(MessageStore("a", redis_client=cluster_client).messages[0]) == list(range(9))
