"""A tool-calling LangChain 1.x agent whose conversation lives in Redis (RedisHistoryMiddleware).

    REDIS_URL=redis://localhost:6379/0 python examples/agent_tools.py [--session ID] [--keep]

Runs a short conversation in one session: the user introduces themself, asks for the weather
(the agent calls a tool), then asks what it knows. Each invocation of the agent costs the history
two round trips, whatever the number of model and tool calls inside it: one read of the session's
window before the agent runs, one atomic append of what the invocation added after it (the
question, the AI message with its tool call, the tool's result, the answer). It prints the stored
session at the end, then deletes it (``--keep`` keeps it: run the example again with the same
``--session`` and the agent remembers).

The model: ``EXAMPLE_MODEL`` (a ``provider:model`` name for LangChain's ``init_chat_model``) when
set, else ``openai:gpt-4o-mini`` when ``OPENAI_API_KEY`` is set, else an offline model that calls
the tool when asked about the weather and otherwise answers from what it is given.

Needs ``pip install "pyhistory[agents]"``.
"""

from __future__ import annotations

import argparse
import os
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from langchain.agents import create_agent
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import BaseTool, tool

from pyhistory.agents import RedisHistoryMiddleware

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
QUESTIONS = ["Hi! I'm Bob.", "What's the weather in Paris?", "What do you know about me?"]


@tool
def get_weather(city: str) -> str:
    """Today's weather in a city."""
    return f"Sunny and 24 °C in {city}."


class OfflineToolModel(GenericFakeChatModel):
    """Calls ``get_weather`` when the question is about the weather; answers from the tool's
    result when it has one; otherwise says what it was told earlier in the conversation."""

    messages: Iterator[Any] = iter(())

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> OfflineToolModel:
        return self

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        last = messages[-1]
        said = [m.text for m in messages if isinstance(m, HumanMessage)]
        if isinstance(last, ToolMessage):
            answer = AIMessage(f"Here is the forecast: {last.text}")
        elif "weather" in last.text.lower():
            city = re.findall(r"in (\w+)", last.text) or ["Paris"]
            call = {"name": "get_weather", "args": {"city": city[0]}, "id": uuid.uuid4().hex}
            answer = AIMessage("", tool_calls=[call])
        else:
            names = [n for text in said for n in re.findall(r"I'm (\w+)", text)]
            if names and names[-1] in last.text:
                answer = AIMessage(f"Nice to meet you, {names[-1]}!")
            elif names:
                answer = AIMessage(f"You are {names[-1]}; you asked me {len(said) - 1} things.")
            else:
                answer = AIMessage("I know nothing about you yet.")
        return ChatResult(generations=[ChatGeneration(message=answer)])


def chat_model() -> BaseChatModel:
    name = os.environ.get("EXAMPLE_MODEL") or (
        "openai:gpt-4o-mini" if os.environ.get("OPENAI_API_KEY") else None
    )
    if name is None:
        return OfflineToolModel()
    from langchain.chat_models import init_chat_model

    return init_chat_model(name)


def build_agent(
    memory: RedisHistoryMiddleware, tools: Sequence[BaseTool | Callable[..., Any]]
) -> Any:
    return create_agent(
        chat_model(),
        tools=list(tools),
        system_prompt="You are a helpful assistant. Use the tools when they help.",
        middleware=[memory],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--session", default=f"example-agent:{uuid.uuid4().hex[:8]}")
    parser.add_argument("--keep", action="store_true", help="keep the session in Redis")
    args = parser.parse_args()

    memory = RedisHistoryMiddleware(url=REDIS_URL, ttl=3600, max_messages=200, window=20)
    agent = build_agent(memory, [get_weather])
    config = {"configurable": {"session_id": args.session}}
    for question in QUESTIONS:
        result = agent.invoke({"messages": [HumanMessage(question)]}, config)
        print(f"user: {question}\nagent: {result['messages'][-1].text}")

    stored = memory.store(args.session)
    print(f"\n{len(stored)} messages stored under {stored.key}:")
    for message in stored.messages:
        calls = [f"{c['name']}({c['args']})" for c in getattr(message, "tool_calls", [])]
        print(f"  {message.type:>5}: {message.text or ', '.join(calls)}")
    if args.keep:
        print(f"kept: run again with --session {args.session}")
    else:
        stored.clear()


if __name__ == "__main__":
    main()
