"""RedisHistoryMiddleware: LangChain 1.x agents on the sessions RedisChatMessageHistory stores,
against real servers. Offline models only: each fake answers from the messages it is sent."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
from conftest import VERSIONED

pytest.importorskip("langchain.agents", reason="needs the agents extra: pyhistory[agents]")

from chat import CommandLog
from langchain.agents import create_agent
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables.history import RunnableWithMessageHistory
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command, interrupt
from pydantic import Field

from pyhistory import (
    InvalidArgumentError,
    InvalidSessionIdError,
    InvalidSizeError,
    InvalidTTLError,
    SerializationError,
)
from pyhistory.agents import RedisHistoryMiddleware
from pyhistory.demo import RecallingFakeChatModel
from pyhistory.store import MessageStore

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


# --- offline models -------------------------------------------------------------------------


class RecordingModel(RecallingFakeChatModel):
    """The demo's recalling model, keeping every prompt it was sent; `fail` raises on these calls
    (1-based), as a provider outage would."""

    prompts: list[list[BaseMessage]] = Field(default_factory=list)
    fail: set[int] = Field(default_factory=set)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.prompts.append(list(messages))
        if len(self.prompts) in self.fail:
            raise RuntimeError("the model provider is down")
        return super()._generate(messages, stop, run_manager, **kwargs)


class WeatherModel(RecordingModel):
    """Asked a question, it calls the `weather` tool; given the tool's result, answers with it."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.prompts.append(list(messages))
        if len(self.prompts) in self.fail:
            raise RuntimeError("the model provider is down")
        last = messages[-1]
        if isinstance(last, ToolMessage):
            reply = AIMessage(f"The weather: {last.content}.")
        else:
            city = str(last.content).rsplit(" ", 1)[-1].strip("?")
            reply = AIMessage(
                "",
                tool_calls=[
                    {"name": "weather", "args": {"city": city}, "id": f"call-{len(messages)}"}
                ],
            )
        return ChatResult(generations=[ChatGeneration(message=reply)])


@tool
def weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


@tool("weather")
def approved_weather(city: str) -> str:
    """The weather in a city, once a person approved the call."""
    answer = interrupt(f"look up the weather in {city}?")
    return f"sunny in {city} ({answer})"


def contents(messages: list[BaseMessage]) -> list[Any]:
    return [m.content for m in messages]


def stored(url: str, session: str) -> list[BaseMessage]:
    return MessageStore(session, url=url).messages


def config(session: str = "s", key: str = "session_id") -> Any:
    return {"configurable": {key: session}}


def hi() -> HumanMessage:
    """A new message each time: LangGraph gives a message without an id one, in place."""
    return HumanMessage("Hi! I'm bob")


def whats_my_name() -> HumanMessage:
    return HumanMessage("Whats my name")


# --- the conversation -------------------------------------------------------------------------


def test_two_turns_remember_the_name(url: str) -> None:
    model = RecordingModel()
    agent = create_agent(
        model,
        system_prompt="You're an assistant.",
        middleware=[RedisHistoryMiddleware(url=url)],
    )
    agent.invoke({"messages": [{"role": "user", "content": "Hi! I'm bob"}]}, config("foo"))
    answer = agent.invoke(
        {"messages": [{"role": "user", "content": "Whats my name"}]}, config("foo")
    )
    assert "Bob" in answer["messages"][-1].content
    # the model saw the system prompt, the stored turn, then the question
    assert contents(model.prompts[1]) == [
        "You're an assistant.",
        "Hi! I'm bob",
        "Hi Bob! How can I help?",
        "Whats my name",
    ]
    assert contents(stored(url, "foo")) == [
        "Hi! I'm bob",
        "Hi Bob! How can I help?",
        "Whats my name",
        "Your name is Bob, as you told me earlier.",
    ]


async def test_two_turns_asyncio(url: str) -> None:
    model = RecordingModel()
    agent = create_agent(model, middleware=[RedisHistoryMiddleware(url=url, ttl=60)])
    for message in (hi(), whats_my_name()):
        answer = await agent.ainvoke({"messages": [message]}, config("foo"))
    assert "Bob" in answer["messages"][-1].content
    assert len(await MessageStore("foo", url=url).aget_messages()) == 4
    with redis.Redis.from_url(url) as client:
        assert 0 < client.ttl("message_store:foo") <= 60


def test_sessions_are_apart(url: str) -> None:
    agent = create_agent(RecordingModel(), middleware=[RedisHistoryMiddleware(url=url)])
    agent.invoke({"messages": [hi()]}, config("a"))
    answer = agent.invoke({"messages": [whats_my_name()]}, config("b"))
    assert "don't know" in answer["messages"][-1].content
    assert len(stored(url, "a")) == len(stored(url, "b")) == 2


def test_bounded_window_and_trim(url: str) -> None:
    model = RecordingModel()
    middleware = RedisHistoryMiddleware(url=url, max_messages=5, window=3, ttl=30)
    agent = create_agent(model, middleware=[middleware])
    for i in range(4):
        agent.invoke({"messages": [HumanMessage(f"question {i}")]}, config())
    # the model was given the newest 3 stored messages, then the new question
    assert contents(model.prompts[-1]) == [
        "How can I help?",
        "question 2",
        "How can I help?",
        "question 3",
    ]
    with redis.Redis.from_url(url) as client:
        assert client.llen("message_store:s") == 5
        assert 0 < client.ttl("message_store:s") <= 30


def test_a_leading_system_message_stays_first_and_is_not_stored(url: str) -> None:
    MessageStore("s", url=url).add_messages([HumanMessage("Hi! I'm bob"), AIMessage("Hi Bob!")])
    model = RecordingModel()
    agent = create_agent(model, middleware=[RedisHistoryMiddleware(url=url)])
    agent.invoke({"messages": [SystemMessage("Be brief."), whats_my_name()]}, config())
    assert contents(model.prompts[0]) == ["Be brief.", "Hi! I'm bob", "Hi Bob!", "Whats my name"]
    assert contents(stored(url, "s")) == [
        "Hi! I'm bob",
        "Hi Bob!",
        "Whats my name",
        "Your name is Bob, as you told me earlier.",
    ]


def test_the_window_never_starts_with_an_orphan_tool_result(url: str) -> None:
    call = {"name": "weather", "args": {"city": "Oslo"}, "id": "c1"}
    MessageStore("s", url=url).add_messages(
        [
            HumanMessage("weather in Oslo"),
            AIMessage("", tool_calls=[call]),
            ToolMessage("sunny in Oslo", tool_call_id="c1"),
            AIMessage("The weather: sunny in Oslo."),
        ]
    )
    model = RecordingModel()
    agent = create_agent(model, middleware=[RedisHistoryMiddleware(url=url, window=2)])
    agent.invoke({"messages": [HumanMessage("thanks")]}, config())
    assert [type(m) for m in model.prompts[0]] == [AIMessage, HumanMessage]


# --- tool calls -------------------------------------------------------------------------------


def tool_agent(url: str, model: BaseChatModel, **kwargs: Any) -> Any:
    return create_agent(
        model,
        tools=[kwargs.pop("tool", weather)],
        middleware=[RedisHistoryMiddleware(url=url, **kwargs.pop("options", {}))],
        **kwargs,
    )


def check_weather_session(url: str, session: str = "s") -> None:
    """The stored conversation: input, tool call, tool result, answer, readable by
    langchain_community's class as the same messages."""
    from langchain_community.chat_message_histories import (
        RedisChatMessageHistory as CommunityHistory,
    )

    ours = stored(url, session)
    assert [type(m) for m in ours] == [HumanMessage, AIMessage, ToolMessage, AIMessage]
    assert ours[1].tool_calls == [
        {"name": "weather", "args": {"city": "Paris"}, "id": "call-1", "type": "tool_call"}
    ]
    assert ours[2].tool_call_id == "call-1"
    assert ours[2].content == "sunny in Paris"
    assert ours[3].content == "The weather: sunny in Paris."
    theirs = CommunityHistory(session, url=url).messages
    assert theirs == ours


def test_tool_calls_are_stored_with_their_results(url: str) -> None:
    agent = tool_agent(url, WeatherModel())
    result = agent.invoke({"messages": [HumanMessage("weather in Paris")]}, config())
    assert result["messages"][-1].content == "The weather: sunny in Paris."
    check_weather_session(url)


async def test_tool_calls_asyncio(url: str) -> None:
    agent = tool_agent(url, WeatherModel())
    await agent.ainvoke({"messages": [HumanMessage("weather in Paris")]}, config())
    await asyncio.to_thread(check_weather_session, url)


def test_a_stored_tool_call_is_given_back_to_the_model(url: str) -> None:
    model = WeatherModel()
    agent = tool_agent(url, model)
    agent.invoke({"messages": [HumanMessage("weather in Paris")]}, config())
    agent.invoke({"messages": [HumanMessage("and in Rome")]}, config())
    second = model.prompts[2]  # the third call: the second invocation's first
    assert [type(m) for m in second] == [
        HumanMessage,
        AIMessage,
        ToolMessage,
        AIMessage,
        HumanMessage,
    ]
    assert second[1].tool_calls[0]["id"] == second[2].tool_call_id
    assert len(stored(url, "s")) == 8


# --- failures, retries, interrupts ------------------------------------------------------------


def test_a_failed_run_stores_nothing_and_its_retry_stores_once(url: str) -> None:
    MessageStore("s", url=url).add_messages([HumanMessage("Hi! I'm bob"), AIMessage("Hi Bob!")])
    model = WeatherModel(fail={2})  # the call after the tool ran
    agent = tool_agent(url, model)
    with pytest.raises(RuntimeError, match="provider is down"):
        agent.invoke({"messages": [HumanMessage("weather in Paris")]}, config())
    assert contents(stored(url, "s")) == ["Hi! I'm bob", "Hi Bob!"]
    agent.invoke({"messages": [HumanMessage("weather in Paris")]}, config())
    assert [type(m) for m in stored(url, "s")] == [
        HumanMessage,
        AIMessage,
        HumanMessage,
        AIMessage,
        ToolMessage,
        AIMessage,
    ]


async def test_a_failed_run_stores_nothing_asyncio(url: str) -> None:
    agent = tool_agent(url, WeatherModel(fail={1}))
    with pytest.raises(RuntimeError):
        await agent.ainvoke({"messages": [HumanMessage("weather in Paris")]}, config())
    assert await MessageStore("s", url=url).aget_messages() == []


def test_a_message_that_cannot_be_stored_is_a_typed_error_and_stores_nothing(url: str) -> None:
    """A tool whose artifact is not JSON: the run ends with SerializationError (what the classic
    history raises for that message), and nothing of it is stored."""

    @tool("weather", response_format="content_and_artifact")
    def weather_with_artifact(city: str) -> tuple[str, object]:
        """The weather in a city, with the raw reading."""
        return f"sunny in {city}", object()

    MessageStore("s", url=url).add_messages([HumanMessage("Hi! I'm bob"), AIMessage("Hi Bob!")])
    agent = tool_agent(url, WeatherModel(), tool=weather_with_artifact)
    with pytest.raises(SerializationError, match="ToolMessage"):
        agent.invoke({"messages": [HumanMessage("weather in Paris")]}, config())
    assert contents(stored(url, "s")) == ["Hi! I'm bob", "Hi Bob!"]


def test_a_resent_message_is_not_stored_twice(url: str) -> None:
    """A request retried after its first attempt completed (the client timed out) carries the
    same message id: the stored copy is used, not a second one."""
    agent = create_agent(RecordingModel(), middleware=[RedisHistoryMiddleware(url=url)])
    question = HumanMessage("Hi! I'm bob", id="request-1")
    agent.invoke({"messages": [question]}, config())
    agent.invoke({"messages": [question]}, config())
    assert contents(stored(url, "s")).count("Hi! I'm bob") == 1


def test_resumed_after_an_error_stores_once(url: str) -> None:
    model = WeatherModel(fail={2})
    agent = tool_agent(url, model, checkpointer=InMemorySaver())
    run = config("s", "thread_id")
    with pytest.raises(RuntimeError):
        agent.invoke({"messages": [HumanMessage("weather in Paris")]}, run)
    assert stored(url, "s") == []
    agent.invoke(None, run)  # resume the thread where it failed
    check_weather_session(url)


def test_an_interrupted_run_stores_on_completion_once(url: str) -> None:
    agent = tool_agent(url, WeatherModel(), tool=approved_weather, checkpointer=InMemorySaver())
    run = config("s", "thread_id")
    paused = agent.invoke({"messages": [HumanMessage("weather in Paris")]}, run)
    assert "__interrupt__" in paused
    assert stored(url, "s") == []
    agent.invoke(Command(resume="approved"), run)
    messages = stored(url, "s")
    assert [type(m) for m in messages] == [HumanMessage, AIMessage, ToolMessage, AIMessage]
    assert messages[2].content == "sunny in Paris (approved)"


def test_the_private_state_stays_out_of_the_output(url: str) -> None:
    agent = create_agent(RecordingModel(), middleware=[RedisHistoryMiddleware(url=url)])
    assert "pyhistory_known" not in agent.invoke({"messages": [hi()]}, config())


def test_the_after_hook_run_again_stores_nothing(url: str) -> None:
    """Once the append succeeded, the state knows every message: the hook run again on that
    state (a retried node, a resumed thread) has nothing to store and sends nothing."""
    middleware = RedisHistoryMiddleware(url=url)
    agent = create_agent(RecordingModel(), middleware=[middleware], checkpointer=InMemorySaver())
    run = config("s", "thread_id")
    agent.invoke({"messages": [hi()]}, run)
    state = agent.get_state(run).values
    assert set(state["pyhistory_known"]) == {m.id for m in state["messages"]}
    log = CommandLog(url)
    assert log.commands_of(lambda: middleware.after_agent(state, _runtime("s"))) == []
    assert len(stored(url, "s")) == 2


def _runtime(session: str) -> Any:
    from langgraph.runtime import Runtime

    return Runtime(context={"session_id": session})


# --- next to other middleware, many runs at once, a cluster -----------------------------------


def test_a_summary_takes_the_place_of_what_it_summarised(url: str) -> None:
    """SummarizationMiddleware puts a summary in place of older messages in the agent's state:
    the model gets it, and the session stores it in their place (they are its oldest), so other
    processes see what the agent sees. The messages were stored by a chain, without ids."""
    from importlib.metadata import version

    from langchain.agents.middleware import SummarizationMiddleware

    if tuple(int(part) for part in version("langchain").split(".")[:3]) < (1, 2, 5):
        pytest.skip("LangChain marks its summary since 1.2.5")
    for i in range(3):
        MessageStore("s", url=url).add_messages(
            [HumanMessage(f"question {i}"), AIMessage(f"answer {i}")]
        )
    model = RecordingModel()
    summarize = SummarizationMiddleware(model=model, trigger=("messages", 6), keep=("messages", 2))
    agent = create_agent(model, middleware=[RedisHistoryMiddleware(url=url), summarize])
    agent.invoke({"messages": [HumanMessage("question 3")]}, config())
    answered = model.prompts[-1]
    assert answered[0].additional_kwargs.get("lc_source") == "summarization"
    assert contents(answered[1:]) == ["answer 2", "question 3"]
    session = stored(url, "s")
    assert session[0] == answered[0]  # the same message, id included
    assert contents(session[1:]) == ["answer 2", "question 3", "How can I help?"]


async def test_many_runs_at_once_keep_their_sessions_apart(url: str) -> None:
    """One middleware (no per-run state of its own) serving many concurrent runs."""
    agent = create_agent(
        WeatherModel(), tools=[weather], middleware=[RedisHistoryMiddleware(url=url)]
    )

    async def conversation(user: int) -> None:
        for turn in range(3):
            question = HumanMessage(f"weather in City{user}x{turn}")
            await agent.ainvoke({"messages": [question]}, config(f"user-{user}"))

    await asyncio.gather(*(conversation(user) for user in range(20)))
    for user in range(20):
        messages = await MessageStore(f"user-{user}", url=url).aget_messages()
        assert len(messages) == 12
        assert [m.content for m in messages if isinstance(m, HumanMessage)] == [
            f"weather in City{user}x{turn}" for turn in range(3)
        ]


async def test_concurrent_runs_on_one_session_never_interleave(url: str) -> None:
    """Each invocation's messages are appended in one atomic call: runs racing on one session
    leave each run's four messages side by side."""
    agent = create_agent(
        WeatherModel(), tools=[weather], middleware=[RedisHistoryMiddleware(url=url)]
    )
    await asyncio.gather(
        *(
            agent.ainvoke({"messages": [HumanMessage(f"weather in City{i}")]}, config())
            for i in range(10)
        )
    )
    messages = await MessageStore("s", url=url).aget_messages()
    assert len(messages) == 40
    for start in range(0, 40, 4):
        run = messages[start : start + 4]
        assert [type(m) for m in run] == [HumanMessage, AIMessage, ToolMessage, AIMessage]
        city = str(run[0].content).rsplit(" ", 1)[-1]
        assert run[3].content == f"The weather: sunny in {city}."


def test_a_streamed_run_stores_once(url: str) -> None:
    agent = tool_agent(url, WeatherModel())
    chunks = list(
        agent.stream(
            {"messages": [HumanMessage("weather in Paris")]}, config(), stream_mode="updates"
        )
    )
    assert chunks
    check_weather_session(url)


@pytest.mark.cluster
def test_on_a_cluster(cluster: Any, cluster_client: Any) -> None:
    agent = create_agent(
        WeatherModel(),
        tools=[weather],
        middleware=[RedisHistoryMiddleware(url=cluster.url, cluster=True, max_messages=10)],
    )
    for session in ("a", "b", "c"):
        agent.invoke({"messages": [HumanMessage("weather in Paris")]}, config(session))
    for session in ("a", "b", "c"):
        assert len(MessageStore(session, redis_client=cluster_client).messages) == 4


# --- with a checkpointer ----------------------------------------------------------------------


@pytest.mark.parametrize("use_asyncio", [False, True], ids=["sync", "asyncio"])
def test_with_a_checkpointer_nothing_is_doubled(url: str, use_asyncio: bool) -> None:
    """The thread's first run continues the stored session; later runs take the context from the
    checkpoint (no read, no second copy) and still append, so the session stays current."""
    MessageStore("t", url=url).add_messages([HumanMessage("Hi! I'm bob"), AIMessage("Hi Bob!")])
    model = RecordingModel()
    agent = create_agent(
        model, middleware=[RedisHistoryMiddleware(url=url)], checkpointer=InMemorySaver()
    )
    run = config("t", "thread_id")

    def invoke(text: str) -> Any:
        if use_asyncio:
            return asyncio.run(agent.ainvoke({"messages": [HumanMessage(text)]}, run))
        return agent.invoke({"messages": [HumanMessage(text)]}, run)

    invoke("Whats my name")
    last = invoke("and again?")
    assert contents(model.prompts[1]) == [
        "Hi! I'm bob",
        "Hi Bob!",
        "Whats my name",
        "Your name is Bob, as you told me earlier.",
        "and again?",
    ]
    assert contents(last["messages"]) == [*contents(model.prompts[1]), "Hi Bob! How can I help?"]
    assert contents(stored(url, "t")) == contents(last["messages"])


@pytest.mark.parametrize("use_asyncio", [False, True], ids=["sync", "asyncio"])
def test_with_pyhistorys_own_checkpointer_across_processes(url: str, use_asyncio: bool) -> None:
    """The checkpoints in Redis too (pyhistory.checkpoint.RedisSaver): a new agent, as in another
    process, continues the thread from its checkpoint and the session, doubling nothing."""
    checkpoint = pytest.importorskip("pyhistory.checkpoint", reason="needs the checkpoint extra")
    MessageStore("t", url=url).add_messages([HumanMessage("Hi! I'm bob"), AIMessage("Hi Bob!")])
    run = config("t", "thread_id")

    def invoke(text: str) -> tuple[Any, RecordingModel]:
        model = RecordingModel()
        agent = create_agent(
            model,
            middleware=[RedisHistoryMiddleware(url=url)],
            checkpointer=checkpoint.RedisSaver(url),
        )
        question = {"messages": [HumanMessage(text)]}
        if use_asyncio:
            return asyncio.run(agent.ainvoke(question, run)), model
        return agent.invoke(question, run), model

    invoke("Whats my name")
    last, model = invoke("and again?")
    assert contents(model.prompts[0]) == [
        "Hi! I'm bob",
        "Hi Bob!",
        "Whats my name",
        "Your name is Bob, as you told me earlier.",
        "and again?",
    ]
    assert contents(stored(url, "t")) == contents(last["messages"])


def test_with_a_checkpointer_later_runs_only_append(url: str) -> None:
    agent = create_agent(
        RecordingModel(), middleware=[RedisHistoryMiddleware(url=url)], checkpointer=InMemorySaver()
    )
    run = config("t", "thread_id")
    agent.invoke({"messages": [hi()]}, run)
    log = CommandLog(url)
    commands = log.commands_of(lambda: agent.invoke({"messages": [whats_my_name()]}, run))
    assert commands == ["FCALL"]


# --- the classic chain and the agent on one session -------------------------------------------


def classic_chain(url: str, model: BaseChatModel, history_class: Any) -> Any:
    prompt = ChatPromptTemplate.from_messages(
        [
            ("system", "You're an assistant."),
            MessagesPlaceholder(variable_name="history"),
            ("human", "{question}"),
        ]
    )
    return RunnableWithMessageHistory(
        prompt | model,
        lambda session_id: history_class(session_id, url=url),
        input_messages_key="question",
        history_messages_key="history",
    )


def community_history() -> Any:
    from langchain_community.chat_message_histories import RedisChatMessageHistory

    return RedisChatMessageHistory


def pyhistory_history() -> Any:
    from pyhistory import RedisChatMessageHistory

    return RedisChatMessageHistory


@pytest.mark.parametrize("history_class", [pyhistory_history, community_history])
def test_a_chain_session_continues_in_the_agent_and_back(
    url: str, history_class: Callable[[], Any]
) -> None:
    chain = classic_chain(url, RecallingFakeChatModel(), history_class())
    chain.invoke({"question": "Hi! I'm bob"}, config("foo"))

    model = RecordingModel()
    agent = create_agent(model, middleware=[RedisHistoryMiddleware(url=url)])
    answer = agent.invoke(
        {"messages": [{"role": "user", "content": "Whats my name"}]}, config("foo")
    )
    assert "Bob" in answer["messages"][-1].content

    again = chain.invoke({"question": "Whats my name, again"}, config("foo"))
    assert "Bob" in again.content
    assert contents(history_class()("foo", url=url).messages) == [
        "Hi! I'm bob",
        "Hi Bob! How can I help?",
        "Whats my name",
        "Your name is Bob, as you told me earlier.",
        "Whats my name, again",
        "Your name is Bob, as you told me earlier.",
    ]


def test_entries_are_the_bytes_langchain_community_writes(url: str) -> None:
    from langchain_core.messages import message_to_dict

    agent = tool_agent(url, WeatherModel())
    result = agent.invoke({"messages": [HumanMessage("weather in Paris")]}, config())
    with redis.Redis.from_url(url) as client:
        entries = client.lrange("message_store:s", 0, -1)
    expected = [json.dumps(message_to_dict(m)).encode() for m in reversed(result["messages"])]
    assert entries == expected


# --- where the session comes from -------------------------------------------------------------


def test_thread_id_comes_before_session_id(url: str) -> None:
    agent = create_agent(RecordingModel(), middleware=[RedisHistoryMiddleware(url=url)])
    agent.invoke({"messages": [hi()]}, {"configurable": {"thread_id": "t", "session_id": "s"}})
    assert len(stored(url, "t")) == 2
    assert stored(url, "s") == []


@dataclasses.dataclass
class UserContext:
    user_id: str


def test_the_session_from_the_runs_context(url: str) -> None:
    agent = create_agent(
        RecordingModel(),
        middleware=[RedisHistoryMiddleware(url=url, session="user_id")],
        context_schema=UserContext,
    )
    agent.invoke({"messages": [hi()]}, context=UserContext("u1"))
    assert len(stored(url, "u1")) == 2


def test_the_session_from_a_function(url: str) -> None:
    def session(runtime: Any, config: Any) -> str:
        return f"{runtime.context['tenant']}/{config['configurable']['user']}"

    agent = create_agent(
        RecordingModel(), middleware=[RedisHistoryMiddleware(url=url, session=session)]
    )
    agent.invoke({"messages": [hi()]}, {"configurable": {"user": "u1"}}, context={"tenant": "acme"})
    assert len(stored(url, "acme/u1")) == 2


@pytest.mark.parametrize(
    "run",
    [{}, {"configurable": {"session_id": ""}}, {"configurable": {"session_id": None}}],
    ids=["missing", "empty", "none"],
)
def test_no_session_is_a_typed_error_and_stores_nothing(url: str, run: Any) -> None:
    model = RecordingModel()
    agent = create_agent(model, middleware=[RedisHistoryMiddleware(url=url)])
    with pytest.raises(InvalidSessionIdError, match="session"):
        agent.invoke({"messages": [hi()]}, run)
    assert model.prompts == []
    with redis.Redis.from_url(url) as client:
        assert client.dbsize() == 0


async def test_no_session_asyncio(url: str) -> None:
    agent = create_agent(RecordingModel(), middleware=[RedisHistoryMiddleware(url=url)])
    with pytest.raises(InvalidSessionIdError):
        await agent.ainvoke({"messages": [hi()]})


def test_bad_settings_fail_at_construction() -> None:
    with pytest.raises(InvalidSizeError):
        RedisHistoryMiddleware(window=0)
    with pytest.raises(InvalidTTLError):
        RedisHistoryMiddleware(ttl=-1)
    with pytest.raises(InvalidArgumentError):
        RedisHistoryMiddleware(session=())
    with pytest.raises(InvalidArgumentError):
        RedisHistoryMiddleware(session=["thread_id", ""])
    with pytest.raises(InvalidArgumentError, match="no_such_option"):
        RedisHistoryMiddleware(no_such_option=1)


def test_a_session_function_that_names_no_session_is_a_typed_error(url: str) -> None:
    agent = create_agent(
        RecordingModel(),
        middleware=[RedisHistoryMiddleware(url=url, session=lambda runtime, config: None)],
    )
    with pytest.raises(InvalidSessionIdError, match="session function"):
        agent.invoke({"messages": [hi()]}, config())


def test_key_prefix_and_store_options_reach_the_store(url: str) -> None:
    """The settings are the store's: here a prefix of its own, and reads that leave the TTL
    alone (refresh_ttl_on_read=False), so the read is a plain LRANGE."""
    middleware = RedisHistoryMiddleware(
        url=url, key_prefix="chat:", ttl=60, refresh_ttl_on_read=False
    )
    agent = create_agent(RecordingModel(), middleware=[middleware])
    agent.invoke({"messages": [hi()]}, config())
    log = CommandLog(url)
    assert log.commands_of(lambda: agent.invoke({"messages": [whats_my_name()]}, config())) == [
        "LRANGE",
        "FCALL",
    ]
    with redis.Redis.from_url(url) as client:
        assert client.keys("chat:*") == [b"chat:s"]  # and its batch ids, under their prefix
        assert client.llen("chat:s") == 4


# --- round trips ------------------------------------------------------------------------------


class CountingConnection(redis.Connection):
    """A connection that counts its flights: each write of one or more commands to the socket."""

    flights = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).flights += 1
        super().send_packed_command(command, check_health)


class AsyncCountingConnection(redis.asyncio.Connection):
    flights = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).flights += 1
        await super().send_packed_command(command, check_health)


@pytest.fixture
def counted(url: str) -> Iterator[redis.Redis]:
    pool = redis.ConnectionPool.from_url(url, connection_class=CountingConnection)
    with redis.Redis(connection_pool=pool) as client:
        client.ping()
        yield client


@pytest.mark.parametrize(
    ("ttl", "expected"),
    [
        (60, ["LRANGE", "FCALL"]),  # the previous append set the TTL: a plain read
        ((60, 0), ["LRANGE", "FCALL", "FCALL"]),  # every read refreshes it, in the read's flight
        (None, ["LRANGE", "FCALL"]),
    ],
    ids=["ttl", "ttl-refresh-every-read", "no-ttl"],
)
def test_two_round_trips_per_invocation_whatever_its_steps(
    url: str, counted: redis.Redis, ttl: int | tuple[int, int] | None, expected: list[str]
) -> None:
    """One read before, one append after, however many model and tool steps run in between:
    counted as flights on the client's socket and as commands on the server. The read is an
    LRANGE and, when the TTL is due for a refresh, the FCALL that refreshes it, written together
    in one flight."""
    model = WeatherModel()
    ttl, interval = ttl if isinstance(ttl, tuple) else (ttl, None)
    middleware = RedisHistoryMiddleware(
        url=url,
        ttl=ttl,
        max_messages=100,
        window=20,
        redis_client=counted,
        ttl_refresh_interval=interval,
    )
    agent = create_agent(model, tools=[weather], middleware=[middleware])
    agent.invoke({"messages": [HumanMessage("weather in Oslo")]}, config("warm-up"))
    # This process has not set the TTL of session "s" yet: its first read refreshes it.
    if ttl and interval is None:
        agent.invoke({"messages": [HumanMessage("weather in Bergen")]}, config())
    log = CommandLog(url)
    for i in range(3):
        before = CountingConnection.flights
        question = {"messages": [HumanMessage(f"weather in City{i}")]}
        commands = log.commands_of(lambda q=question: agent.invoke(q, config()))
        assert CountingConnection.flights - before == 2, (i, commands)
        assert commands == expected
    extra = 1 if ttl and interval is None else 0  # the invocation that set the TTL
    assert len(model.prompts) == 8 + 2 * extra  # two model calls per invocation, a tool between
    assert len(stored(url, "s")) == 12 + 4 * extra


async def test_two_round_trips_per_invocation_asyncio(url: str) -> None:
    pool = redis.asyncio.ConnectionPool.from_url(
        url, connection_class=AsyncCountingConnection, **VERSIONED
    )
    client = redis.asyncio.Redis(connection_pool=pool)
    try:
        await client.ping()
        middleware = RedisHistoryMiddleware(url=url, ttl=60, window=20, async_redis_client=client)
        agent = create_agent(WeatherModel(), tools=[weather], middleware=[middleware])
        await agent.ainvoke({"messages": [HumanMessage("weather in Oslo")]}, config("warm-up"))
        for i in range(3):
            before = AsyncCountingConnection.flights
            await agent.ainvoke({"messages": [HumanMessage(f"weather in City{i}")]}, config())
            assert AsyncCountingConnection.flights - before == 2
    finally:
        await client.aclose()
    assert len(await MessageStore("s", url=url).aget_messages()) == 12


# --- exactly-once appends ---------------------------------------------------------------------


@pytest.mark.parametrize("use_asyncio", [False, True], ids=["sync", "asyncio"])
def test_cut_appends_of_agent_runs_are_stored_once(
    url: str, client: redis.Redis, use_asyncio: bool
) -> None:
    """A fault proxy loses the reply of most of the middleware's appends after the server applied
    them: redis-py sends each again, and each run's messages are stored once."""
    from faultproxy import FaultProxy
    from redis.asyncio.retry import Retry as AsyncRetry
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    port = client.connection_pool.connection_kwargs["port"]
    MessageStore("other", redis_client=client).add_messages([hi()])  # the library is loaded
    with FaultProxy(port, lambda batch, attempt: attempt == 1) as proxy:
        sync_app = redis.Redis(port=proxy.port, retry=Retry(NoBackoff(), 3))
        async_app = redis.asyncio.Redis(
            port=proxy.port, retry=AsyncRetry(NoBackoff(), 3), **VERSIONED
        )
        middleware = RedisHistoryMiddleware(redis_client=sync_app, async_redis_client=async_app)
        agent = create_agent(RecordingModel(), middleware=[middleware])

        async def runs() -> None:
            for i in range(30):
                await agent.ainvoke({"messages": [HumanMessage(f"q{i}")]}, config())
            await async_app.aclose()

        if use_asyncio:
            asyncio.run(runs())
        else:
            for i in range(30):
                agent.invoke({"messages": [HumanMessage(f"q{i}")]}, config())
        sync_app.close()
    assert proxy.cuts == 30
    questions = [c for c in contents(stored(url, "s")) if str(c).startswith("q")]
    assert questions == [f"q{i}" for i in range(30)]
    assert len(stored(url, "s")) == 60  # each question and its answer, once


def test_a_run_retried_after_its_append_raised_stores_once(url: str, client: redis.Redis) -> None:
    """The append applied, its reply lost, and no retry left: the run raises, saying the batch
    may have been applied. Resumed from its checkpoint, the run appends the same messages under
    the same idempotency key: stored once."""
    from faultproxy import FaultProxy
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from pyhistory import HistoryError

    port = client.connection_pool.connection_kwargs["port"]
    MessageStore("other", redis_client=client).add_messages([hi()])  # the library is loaded
    requests = iter(range(1_000_000))
    with FaultProxy(port, lambda batch, attempt: next(requests) < 2) as proxy:  # the first two
        app = redis.Redis(port=proxy.port, retry=Retry(NoBackoff(), 1))
        agent = create_agent(
            RecordingModel(),
            middleware=[RedisHistoryMiddleware(redis_client=app)],
            checkpointer=InMemorySaver(),
        )
        run = config("s", "thread_id")
        with pytest.raises(HistoryError, match="may have been applied") as caught:
            agent.invoke({"messages": [hi()]}, run)
        assert caught.value.may_have_been_applied
        assert proxy.cuts == 2
        assert contents(stored(url, "s")) == ["Hi! I'm bob", "Hi Bob! How can I help?"]
        agent.invoke(None, run)  # resumed: the append is sent again, and answered
        app.close()
    assert contents(stored(url, "s")) == ["Hi! I'm bob", "Hi Bob! How can I help?"]
