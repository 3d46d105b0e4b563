"""The application the checkpoint tests and benchmarks run: a LangChain agent (``create_agent``)
with tools, an offline scripted model, and a LangGraph checkpointer. Deterministic, no network.

The model answers from the conversation it is given, so a lost or reordered checkpoint shows in
its replies:
- "weather <city>": calls the ``weather`` tool, then reports what it said;
- "ask <question>": calls ``ask_human``, whose ``interrupt()`` pauses the run until it is resumed
  with ``Command(resume=...)``;
- anything else: a reply that counts the user's messages it has seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from langchain.agents import AgentState, create_agent
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AnyMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from langgraph.channels.delta import DeltaChannel
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph.message import add_messages
from langgraph.types import interrupt


class ScriptedModel(BaseChatModel):
    """A chat model that plays the script above; ``padding`` characters are added to each reply
    (to model the size of real answers)."""

    padding: int = 0

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedModel:  # type: ignore[override]
        return self

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        n = len(messages)
        last = messages[-1]
        pad = "." * self.padding
        if isinstance(last, HumanMessage) and isinstance(last.content, str):
            text = last.content
            for prefix, name, arg in (
                ("weather ", "weather", "city"),
                ("ask ", "ask_human", "question"),
            ):
                if text.startswith(prefix):
                    call = {"name": name, "args": {arg: text[len(prefix) :]}, "id": f"call-{n}"}
                    reply = AIMessage("", tool_calls=[call], id=f"ai-{n}")
                    break
            else:
                seen = sum(isinstance(m, HumanMessage) for m in messages)
                reply = AIMessage(f"reply {seen}: {text}{pad}", id=f"ai-{n}")
        elif isinstance(last, ToolMessage):
            reply = AIMessage(f"tool said: {last.content}{pad}", id=f"ai-{n}")
        else:
            reply = AIMessage(f"nothing to say{pad}", id=f"ai-{n}")
        return ChatResult(generations=[ChatGeneration(message=reply)])


@tool
def weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


@tool
def ask_human(question: str) -> str:
    """Ask the user a question and wait for the answer."""
    return f"the human said {interrupt(question)}"


def _add_batches(state: list[AnyMessage], writes: Sequence[Any]) -> list[AnyMessage]:
    """add_messages over a batch of writes, for a DeltaChannel."""
    for write in writes:
        state = add_messages(state, write)  # type: ignore[assignment]
    return state


class DeltaAgentState(AgentState):  # type: ignore[type-arg]
    """The agent's state with its messages in a DeltaChannel: each checkpoint stores the new
    messages only, and a snapshot every 20 updates."""

    messages: Annotated[list[AnyMessage], DeltaChannel(_add_batches, snapshot_frequency=20)]  # type: ignore[misc]


def build_agent(
    checkpointer: BaseCheckpointSaver[Any], *, delta: bool = False, padding: int = 0
) -> Any:
    """The agent, compiled with ``checkpointer``; ``delta`` keeps its messages in a DeltaChannel."""
    return create_agent(
        ScriptedModel(padding=padding),
        tools=[weather, ask_human],
        checkpointer=checkpointer,
        state_schema=DeltaAgentState if delta else None,
    )
