"""RedisHistoryMiddleware and bounded memory, against real servers, offline models only: a
RemoveMessage applied to the session, LangChain's SummarizationMiddleware's summary stored in
place of what it summarised, the middleware's own summarizer."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

pytest.importorskip("langchain.agents", reason="needs the agents extra: pyhistory[agents]")

from chat import Tally, asked, turn
from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware, AgentState, SummarizationMiddleware
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, RemoveMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.runtime import Runtime

from pyhistory import InvalidArgumentError, MessageStore, Summarizer, is_summary
from pyhistory.agents import RedisHistoryMiddleware
from pyhistory.demo import RecallingFakeChatModel

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class Forget(AgentMiddleware[AgentState[Any], Any]):
    """Removes from the agent's state, before the model runs, the messages whose content it is
    told to forget (as an application's own middleware might)."""

    def __init__(self, *forget: str) -> None:
        super().__init__()
        self.forget = set(forget)

    def before_model(self, state: AgentState[Any], runtime: Runtime[Any]) -> dict[str, Any] | None:
        gone = [m for m in state["messages"] if m.content in self.forget]
        if not gone:
            return None
        return {"messages": [RemoveMessage(id=m.id) for m in gone if m.id]}


def contents(messages: list[BaseMessage]) -> list[Any]:
    return [m.content for m in messages]


def stored(url: str, session: str = "s") -> list[BaseMessage]:
    return MessageStore(session, url=url).messages


def config(session: str = "s", key: str = "session_id") -> Any:
    return {"configurable": {key: session}}


def numbered(i: int) -> list[BaseMessage]:
    """A turn whose messages have ids, as the middleware stores them."""
    return [HumanMessage(f"question {i}", id=f"q{i}"), AIMessage(f"answer {i}", id=f"a{i}")]


# --- RemoveMessage ---------------------------------------------------------------------------


def test_a_message_the_run_removed_is_removed_from_the_session(url: str) -> None:
    for i in range(3):
        MessageStore("s", url=url).add_messages(numbered(i))
    agent = create_agent(
        RecallingFakeChatModel(),
        middleware=[RedisHistoryMiddleware(url=url), Forget("question 1", "answer 1")],
    )
    agent.invoke({"messages": [HumanMessage("question 3")]}, config())
    assert contents(stored(url)) == [
        "question 0",
        "answer 0",
        "question 2",
        "answer 2",
        "question 3",
        "How can I help?",
    ]


async def test_a_message_the_run_removed_is_removed_asyncio(url: str) -> None:
    for i in range(3):
        await MessageStore("s", url=url).aadd_messages(numbered(i))
    agent = create_agent(
        RecallingFakeChatModel(),
        middleware=[RedisHistoryMiddleware(url=url), Forget("question 0")],
    )
    await agent.ainvoke({"messages": [HumanMessage("question 3")]}, config())
    messages = await MessageStore("s", url=url).aget_messages()
    assert contents(messages)[:2] == ["answer 0", "question 1"]
    assert len(messages) == 7


def test_with_a_checkpointer_a_removal_in_a_later_run_reaches_the_session(url: str) -> None:
    middleware = RedisHistoryMiddleware(url=url)
    remember = create_agent(
        RecallingFakeChatModel(), middleware=[middleware], checkpointer=InMemorySaver()
    )
    thread = config("s", "thread_id")
    remember.invoke({"messages": [HumanMessage("I'm Bob")]}, thread)
    remember.invoke({"messages": [HumanMessage("hello")]}, thread)
    forget = create_agent(
        RecallingFakeChatModel(),
        middleware=[middleware, Forget("I'm Bob")],
        checkpointer=remember.checkpointer,
    )
    forget.invoke({"messages": [HumanMessage("what is my name?")]}, thread)
    assert contents(stored(url)) == [
        "Hi Bob! How can I help?",
        "hello",
        "Hi Bob! How can I help?",
        "what is my name?",
        "I don't know your name yet.",
    ]


def test_a_removed_message_stored_without_an_id_stays(url: str) -> None:
    """A message stored without an id (by a chain, say) cannot be named: it stays stored."""
    MessageStore("s", url=url).add_messages(turn(0))
    agent = create_agent(
        RecallingFakeChatModel(),
        middleware=[RedisHistoryMiddleware(url=url), Forget("question 0")],
    )
    agent.invoke({"messages": [HumanMessage("question 1")]}, config())
    assert contents(stored(url)) == ["question 0", "answer 0", "question 1", "How can I help?"]


# --- LangChain's SummarizationMiddleware -----------------------------------------------------


def summarizing_agent(url: str, model: Any, **kwargs: Any) -> Any:
    summarize = SummarizationMiddleware(model=model, trigger=("messages", 8), keep=("messages", 3))
    return create_agent(
        RecallingFakeChatModel(),
        middleware=[RedisHistoryMiddleware(url=url, **kwargs), summarize],
    )


def test_summaries_keep_the_session_bounded_run_after_run(url: str, client: redis.Redis) -> None:
    """Without a checkpointer every run reads the session, which starts with the last summary:
    LangChain's middleware summarises it again with what followed (a running summary)."""
    model = Tally()
    agent = summarizing_agent(url, model)
    for i in range(30):
        agent.invoke({"messages": [HumanMessage(f"question {i}")]}, config())
        assert client.llen("message_store:s") <= 8
    session = stored(url)
    assert is_summary(session[0])
    assert not any(is_summary(m) for m in session[1:])
    kept = [int(str(m.content).split()[-1]) for m in session[1:] if m.type == "human"]
    assert asked(session[0]) + kept == list(range(30))


async def test_summaries_keep_the_session_bounded_asyncio(url: str, client: redis.Redis) -> None:
    model = Tally()
    agent = summarizing_agent(url, model)
    for i in range(12):
        await agent.ainvoke({"messages": [HumanMessage(f"question {i}")]}, config())
        assert client.llen("message_store:s") <= 8
    session = await MessageStore("s", url=url).aget_messages()
    assert is_summary(session[0])
    kept = [int(str(m.content).split()[-1]) for m in session[1:] if m.type == "human"]
    assert asked(session[0]) + kept == list(range(12))


def test_with_a_checkpointer_the_summary_reaches_the_session(url: str) -> None:
    summarize = SummarizationMiddleware(
        model=Tally(), trigger=("messages", 8), keep=("messages", 3)
    )
    agent = create_agent(
        RecallingFakeChatModel(),
        middleware=[RedisHistoryMiddleware(url=url), summarize],
        checkpointer=InMemorySaver(),
    )
    thread = config("s", "thread_id")
    for i in range(10):
        agent.invoke({"messages": [HumanMessage(f"question {i}")]}, thread)
    state = agent.get_state(thread).values["messages"]
    assert is_summary(state[0])
    assert stored(url) == state  # the session holds what the thread holds, ids included


def test_appends_during_the_summary_are_kept(url: str) -> None:
    """Another process appends while LangChain's middleware has the model summarise: what it
    appended stays, in order, before this run's messages."""
    for i in range(4):
        MessageStore("s", url=url).add_messages(numbered(i))
    other = MessageStore("s", redis_client=redis.Redis.from_url(url))
    late = [HumanMessage("late 0"), HumanMessage("late 1")]
    model = Tally(during=lambda call: other.add_messages(late))
    agent = summarizing_agent(url, model)
    agent.invoke({"messages": [HumanMessage("question 4")]}, config())
    session = stored(url)
    assert is_summary(session[0])
    assert asked(session[0]) == [0, 1, 2]
    assert contents(session[1:]) == [
        "question 3",
        "answer 3",
        "late 0",
        "late 1",
        "question 4",
        "How can I help?",
    ]


def test_a_summary_of_messages_that_are_not_the_sessions_oldest_is_not_stored(url: str) -> None:
    """With a window, the messages summarised are not the session's oldest: the session keeps
    them (its transcript) and this run's messages are appended."""
    for i in range(6):
        MessageStore("s", url=url).add_messages(numbered(i))
    agent = summarizing_agent(url, Tally(), window=8)
    agent.invoke({"messages": [HumanMessage("question 6")]}, config())
    session = stored(url)
    assert not any(is_summary(m) for m in session)
    assert len(session) == 14


# --- the middleware's own summarizer ----------------------------------------------------------


def test_the_summarizer_keeps_the_session_bounded(url: str, client: redis.Redis) -> None:
    model = Tally()
    summarizer = Summarizer(model, trigger_messages=20, keep_messages=6)
    agent = create_agent(
        RecallingFakeChatModel(),
        middleware=[RedisHistoryMiddleware(url=url, max_messages=30, summarizer=summarizer)],
    )
    for i in range(200):
        agent.invoke({"messages": [HumanMessage(f"question {i}")]}, config())
        assert client.llen("message_store:s") < 20
    session = stored(url)
    assert is_summary(session[0])
    kept = [int(str(m.content).split()[-1]) for m in session[1:] if m.type == "human"]
    assert asked(session[0]) + kept == list(range(200))


async def test_the_summarizer_asyncio_keeps_appends_made_meanwhile(url: str) -> None:
    """Another process appends a question while each summary is written: every question is in
    the running summary or stored, once, and the stored ones are in the order they came."""
    other = MessageStore("s", redis_client=redis.Redis.from_url(url))
    model = Tally(during=lambda call: other.add_messages(HumanMessage(f"question {100 + call}")))
    summarizer = Summarizer(model, trigger_messages=10, keep_messages=2)
    agent = create_agent(
        RecallingFakeChatModel(),
        middleware=[RedisHistoryMiddleware(url=url, summarizer=summarizer)],
    )
    order = []
    for i in range(20):
        calls = model.calls
        await agent.ainvoke({"messages": [HumanMessage(f"question {i}")]}, config())
        order.append(i)
        if model.calls > calls:
            order.append(100 + model.calls)
    session = await MessageStore("s", url=url).aget_messages()
    assert is_summary(session[0])
    assert model.calls >= 2
    kept = [int(str(m.content).split()[-1]) for m in session[1:] if m.type == "human"]
    assert sorted(asked(session[0]) + kept) == sorted(order)
    assert kept == [n for n in order if n in kept]


def test_a_summarizer_threshold_at_or_over_max_messages_is_refused() -> None:
    summarizer = Summarizer(Tally(), trigger_messages=30, keep_messages=6)
    with pytest.raises(InvalidArgumentError, match="below max_messages"):
        RedisHistoryMiddleware(max_messages=30, summarizer=summarizer)
    with pytest.raises(InvalidArgumentError, match="Summarizer"):
        RedisHistoryMiddleware(summarizer=Tally())  # type: ignore[arg-type]
    RedisHistoryMiddleware(max_messages=31, summarizer=summarizer)


def test_two_runs_summarising_at_once_lose_nothing(url: str) -> None:
    """Two agents' summarizers racing on one session: one swap applies, the other reads again."""
    for i in range(12):
        MessageStore("s", url=url).add_messages(numbered(i))
    summarizer = Summarizer(Tally(), trigger_messages=10, keep_messages=4)

    async def both() -> None:
        store = MessageStore("s", url=url)
        await asyncio.gather(summarizer.asummarize(store), summarizer.asummarize(store))

    asyncio.run(both())
    session = stored(url)
    assert is_summary(session[0])
    kept = [int(str(m.content).split()[-1]) for m in session[1:] if m.type == "human"]
    assert asked(session[0]) + kept == list(range(12))


def test_the_summarizers_model_is_not_streamed_as_the_agents(url: str) -> None:
    """Its call is tagged as LangChain tags its summaries' calls: an application streaming the
    agent's messages sees the agent's answer, not the summary being written."""
    for i in range(5):
        MessageStore("s", url=url).add_messages(numbered(i))
    model = Tally()
    agent = create_agent(
        RecallingFakeChatModel(),
        middleware=[
            RedisHistoryMiddleware(
                url=url, summarizer=Summarizer(model, trigger_messages=10, keep_messages=4)
            )
        ],
    )
    streamed = [
        chunk.content
        for chunk, _ in agent.stream(
            {"messages": [HumanMessage("question 5")]}, config(), stream_mode="messages"
        )
    ]
    assert model.calls == 1
    assert is_summary(stored(url)[0])
    assert not any("#" in str(text) for text in streamed)
    assert "How can I help?" in "".join(str(text) for text in streamed)
