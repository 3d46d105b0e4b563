"""`make demo` / `python -m pyhistory.demo`: LangChain's two Redis chat-history examples on
pyhistory, then what it adds (a bounded window, sliding expiry), against ``REDIS_URL`` or, when that
is not set, a throwaway local server started for the demo and stopped after it.

Without ``OPENAI_API_KEY`` (or without ``langchain-openai``) the chain uses an offline model that
answers from the conversation it is given, so the demo shows what the history carries.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables.history import RunnableWithMessageHistory

from pyhistory import RedisChatMessageHistory, load_functions, testing


class RecallingFakeChatModel(BaseChatModel):
    """An offline chat model that answers from the messages it is sent: it greets a person who
    introduces themself ("I'm Bob") and, asked for their name, gives it if an earlier message in the
    prompt said it. So its answers show whether the history reached the model."""

    @property
    def _llm_type(self) -> str:
        return "recalling-fake"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        said = [m.text for m in messages if isinstance(m, HumanMessage)]
        question = said[-1] if said else ""
        names = [n for text in said for n in re.findall(r"\bI'?m (\w+)", text, re.IGNORECASE)]
        if "name" in question.lower():
            answer = (
                f"Your name is {names[-1].capitalize()}, as you told me earlier."
                if names
                else "I don't know your name yet."
            )
        elif names:
            answer = f"Hi {names[-1].capitalize()}! How can I help?"
        else:
            answer = "How can I help?"
        return ChatResult(generations=[ChatGeneration(message=AIMessage(answer))])


def chat_model() -> BaseChatModel:
    """ChatOpenAI as in LangChain's example when a key and the package exist, else the fake."""
    if os.environ.get("OPENAI_API_KEY"):
        try:
            openai = importlib.import_module("langchain_openai")
        except ImportError:
            pass
        else:
            return openai.ChatOpenAI()  # type: ignore[no-any-return]
    return RecallingFakeChatModel()


@contextmanager
def redis_url() -> Iterator[str]:
    """REDIS_URL when set, else a throwaway local server for the duration of the block."""
    configured = os.environ.get("REDIS_URL")
    if configured:
        print(f"Using REDIS_URL={configured}")
        yield configured
        return
    server = testing.start_server("auto")
    try:
        print(f"Started a throwaway {server.kind} server {server.version} at {server.url}")
        yield server.url
    finally:
        server.stop()
        print("Stopped the throwaway server.")


def store_and_retrieve(url: str) -> list[BaseMessage]:
    """LangChain's "Store and Retrieve Messages" example, only the import changed."""
    history = RedisChatMessageHistory("foo", url=url)
    history.add_user_message("hi!")
    history.add_ai_message("whats up?")
    return history.messages


def using_in_chains(url: str, model: BaseChatModel) -> list[BaseMessage]:
    """LangChain's "Using in the Chains" example, only the import (and, offline, the model)
    changed: a new history per request from the factory, as RunnableWithMessageHistory does."""
    prompt = ChatPromptTemplate.from_messages(
        [
            ("system", "You're an assistant。"),
            MessagesPlaceholder(variable_name="history"),
            ("human", "{question}"),
        ]
    )
    chain = prompt | model
    chain_with_history = RunnableWithMessageHistory(
        chain,
        lambda session_id: RedisChatMessageHistory(session_id, url=url),
        input_messages_key="question",
        history_messages_key="history",
    )
    config: Any = {"configurable": {"session_id": "foo"}}
    first = chain_with_history.invoke({"question": "Hi! I'm bob"}, config=config)
    second = chain_with_history.invoke({"question": "Whats my name"}, config=config)
    return [first, second]


def bounded_and_expiring(url: str) -> tuple[list[BaseMessage], list[Any], int]:
    """What pyhistory adds: the newest 4 messages kept, a 1-hour TTL that every turn renews."""
    history = RedisChatMessageHistory("bar", url=url, ttl=3600, max_messages=4)
    history.clear()
    for i in range(1, 4):
        history.add_messages([HumanMessage(f"question {i}"), AIMessage(f"answer {i}")])
    client = history.redis_client  # the pool shared by every history of this URL
    return history.messages, client.lrange(history.key, 0, -1), int(client.ttl(history.key))


def _show(title: str, lines: Sequence[object]) -> None:
    print(f"\n== {title}")
    for line in lines:
        print(f"   {line}")


def main() -> int:
    # RunnableWithMessageHistory, which LangChain's example uses, warns that it is deprecated.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    with redis_url() as url:
        session = RedisChatMessageHistory("foo", url=url)
        load_functions(session.redis_client)  # at start-up; the history would do it lazily
        session.clear()  # the demo's own session, fresh each run

        _show("Store and Retrieve Messages: history.messages", [store_and_retrieve(url)])

        model = chat_model()
        answers = using_in_chains(url, model)
        _show(
            f"Using in the Chains ({type(model).__name__}): the two answers",
            [a.content for a in answers],
        )
        entries = session.redis_client.lrange(session.key, 0, -1)
        _show(f"Stored under {session.key}, newest first ({len(entries)} entries)", entries)

        kept, raw, ttl = bounded_and_expiring(url)
        _show("max_messages=4, ttl=3600 after 3 turns: history.messages", [kept])
        _show(f"Stored under message_store:bar (TTL {ttl} s)", raw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
