"""`make demo` / `python -m pyhistory.demo`: LangChain's two Redis chat-history examples on
pyhistory, the chain example again in its LangChain 1.x form (``create_agent`` with
``RedisHistoryMiddleware``), then what pyhistory adds (a bounded window, sliding expiry), against
``REDIS_URL`` or, when that is not set, a throwaway local server started for the demo and stopped
after it.

The demo never touches a user's data: the examples' sessions ``foo`` and ``bar`` become sessions
of its own, named ``pyhistory-demo:<random>:foo`` and so on, which it deletes when it ends, also
when it fails. On a ``REDIS_URL`` server, it removes the Functions library it loaded there again
when the library was not loaded before (and says which it did). A ``REDIS_URL`` it cannot reach
is one line on stderr, within a few seconds.

Without ``OPENAI_API_KEY`` (or without ``langchain-openai``) the chain uses an offline model that
answers from the conversation it is given, so the demo shows what the history carries.
"""

from __future__ import annotations

import importlib
import os
import re
import secrets
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables.history import RunnableWithMessageHistory

from pyhistory import LIBRARY, MessageStore, RedisChatMessageHistory, _core, load_functions, testing
from pyhistory.errors import translate
from pyhistory.functions import SyncClient

REACH_TIMEOUT = 2.0  # seconds to connect to REDIS_URL, and for its answer, before giving up


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


class Unreachable(Exception):
    """REDIS_URL names a server the demo cannot reach (or may not use)."""


def _redact(url: str) -> str:
    from pyhistory.cli import redact

    return redact(url)


def check_reachable(url: str) -> None:
    """A PING with short timeouts and no retries, so a wrong REDIS_URL is one line, at once."""
    if url.startswith(("redis+sentinel://", "rediss+sentinel://")):
        client: SyncClient = MessageStore("pyhistory-demo", url=url).redis_client
    else:
        options = {"socket_connect_timeout": REACH_TIMEOUT, "socket_timeout": REACH_TIMEOUT}
        client = redis.Redis.from_url(url, retry=None, **options)
    try:
        client.ping()
    except (redis.RedisError, OSError) as error:
        reason = " ".join(str(translate(error)).split()) or type(error).__name__
        raise Unreachable(f"cannot reach REDIS_URL={_redact(url)}: {reason}") from None
    except ValueError as error:
        raise Unreachable(f"REDIS_URL={_redact(url)} is not a usable URL: {error}") from None
    finally:
        if not url.startswith(("redis+sentinel://", "rediss+sentinel://")):
            client.close()


def _library_loaded(client: SyncClient) -> bool | None:
    """Whether this package's Functions library is on the server (None: may not ask)."""
    try:
        return bool(client.function_list(library=LIBRARY))
    except redis.RedisError:
        return None


@contextmanager
def demo_library(url: str) -> Iterator[None]:
    """The library loaded for the block; on REDIS_URL's server, deleted after it when it was not
    loaded before (a throwaway server goes with everything on it)."""
    client = MessageStore("pyhistory-demo", url=url).redis_client
    on_users_server = bool(os.environ.get("REDIS_URL"))
    before = _library_loaded(client) if on_users_server else None
    load_functions(client)
    try:
        yield
    finally:
        if on_users_server:
            _restore_library(client, before)


def _restore_library(client: SyncClient, before: bool | None) -> None:
    if before is None:
        print(f"Left the {LIBRARY} Functions library loaded (FUNCTION LIST is not allowed).")
    elif before:
        print(f"Left the {LIBRARY} Functions library loaded: it was there before the demo.")
    else:
        try:
            client.function_delete(LIBRARY)
        except redis.RedisError as error:
            print(f"Could not remove {LIBRARY}: {error!r}", file=sys.stderr)
        else:
            print(f"Removed the {LIBRARY} Functions library the demo loaded.")


@contextmanager
def redis_url() -> Iterator[str]:
    """REDIS_URL when set, else a throwaway local server for the duration of the block."""
    configured = os.environ.get("REDIS_URL")
    if configured:
        check_reachable(configured)
        print(f"Using REDIS_URL={_redact(configured)}")
        yield configured
        return
    server = testing.start_server("auto")
    try:
        print(f"Started a throwaway {server.kind} server {server.version} at {server.url}")
        yield server.url
    finally:
        server.stop()
        print("Stopped the throwaway server.")


@dataclass(frozen=True)
class Sessions:
    """The demo's own session ids, in place of the examples' ``foo`` and ``bar``."""

    foo: str
    bar: str
    agent: str

    def all(self) -> tuple[str, ...]:
        return (self.foo, self.bar, self.agent)


@contextmanager
def demo_sessions(url: str) -> Iterator[Sessions]:
    """Session ids no one else uses, deleted when the block ends, however it ends."""
    prefix = f"pyhistory-demo:{secrets.token_hex(6)}:"
    sessions = Sessions(foo=prefix + "foo", bar=prefix + "bar", agent=prefix + "agent")
    try:
        yield sessions
    finally:
        stores = [MessageStore(session, url=url) for session in sessions.all()]
        try:
            keys = [k for store in stores for k in (store.key, _core.batches_key(store.key))]
            stores[0].redis_client.delete(*keys)  # one DEL: the sessions and their batch ids
        except Exception as error:  # the block's own error, if any, is the one to see
            print(f"Could not remove the demo's sessions {prefix}*: {error!r}", file=sys.stderr)
        else:
            print(f"\nRemoved the demo's sessions {prefix}*.")


def store_and_retrieve(url: str, session: str) -> list[BaseMessage]:
    """LangChain's "Store and Retrieve Messages" example, only the import (and the session id)
    changed."""
    history = RedisChatMessageHistory(session, url=url)
    history.add_user_message("hi!")
    history.add_ai_message("whats up?")
    return history.messages


def using_in_chains(url: str, model: BaseChatModel, session: str) -> list[BaseMessage]:
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
    config: Any = {"configurable": {"session_id": session}}
    first = chain_with_history.invoke({"question": "Hi! I'm bob"}, config=config)
    second = chain_with_history.invoke({"question": "Whats my name"}, config=config)
    return [first, second]


def using_in_agents(url: str, model: BaseChatModel, session: str) -> list[BaseMessage]:
    """The same conversation in its LangChain 1.x form: ``create_agent`` with the middleware in
    place of RunnableWithMessageHistory, the same session layout in Redis."""
    from langchain.agents import create_agent

    from pyhistory.agents import RedisHistoryMiddleware

    agent = create_agent(
        model,
        system_prompt="You're an assistant。",
        middleware=[RedisHistoryMiddleware(url=url)],
    )
    config: Any = {"configurable": {"session_id": session}}
    first = agent.invoke({"messages": [{"role": "user", "content": "Hi! I'm bob"}]}, config)
    second = agent.invoke({"messages": [{"role": "user", "content": "Whats my name"}]}, config)
    return [first["messages"][-1], second["messages"][-1]]


def chain_session_in_agent(url: str, model: BaseChatModel, session: str) -> BaseMessage:
    """The chain's session, continued by an agent: it answers from what the chain stored."""
    from langchain.agents import create_agent

    from pyhistory.agents import RedisHistoryMiddleware

    agent = create_agent(model, middleware=[RedisHistoryMiddleware(url=url, window=20)])
    config: Any = {"configurable": {"session_id": session}}
    answer = agent.invoke({"messages": [{"role": "user", "content": "Whats my name"}]}, config)
    message: BaseMessage = answer["messages"][-1]
    return message


def bounded_and_expiring(url: str, session: str) -> tuple[list[BaseMessage], list[Any], int]:
    """What pyhistory adds: the newest 4 messages kept, a 1-hour TTL that every turn renews."""
    history = RedisChatMessageHistory(session, url=url, ttl=3600, max_messages=4)
    for i in range(1, 4):
        history.add_messages([HumanMessage(f"question {i}"), AIMessage(f"answer {i}")])
    client = history.redis_client  # the pool shared by every history of this URL
    return history.messages, client.lrange(history.key, 0, -1), int(client.ttl(history.key))


def _show(title: str, lines: Sequence[object]) -> None:
    print(f"\n== {title}")
    for line in lines:
        print(f"   {line}")


def _stored(url: str, session: str) -> None:
    history = RedisChatMessageHistory(session, url=url)
    entries = history.redis_client.lrange(history.key, 0, -1)
    _show(f"Stored under {history.key}, newest first ({len(entries)} entries)", entries)


def main() -> int:
    # RunnableWithMessageHistory, which LangChain's example uses, warns that it is deprecated.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        with redis_url() as url, demo_library(url), demo_sessions(url) as sessions:
            run_examples(url, sessions)
    except Unreachable as error:
        print(f"pyhistory demo: {error}", file=sys.stderr)
        return 1
    return 0


def run_examples(url: str, sessions: Sessions) -> None:
    """Every example, in order, printing what each shows."""
    print(f"The examples' sessions foo and bar are {sessions.foo} and {sessions.bar} here.")

    _show("Store and Retrieve Messages: history.messages", [store_and_retrieve(url, sessions.foo)])

    model = chat_model()
    answers = using_in_chains(url, model, sessions.foo)
    _show(
        f"Using in the Chains ({type(model).__name__}): the two answers",
        [a.content for a in answers],
    )
    _stored(url, sessions.foo)

    try:
        importlib.import_module("pyhistory.agents")
    except ImportError as error:  # the agents extra is not installed
        _show("LangChain 1.x agents: skipped", [error])
    else:
        answers = using_in_agents(url, model, sessions.agent)
        _show(
            f"The same with create_agent and RedisHistoryMiddleware ({type(model).__name__})",
            [a.content for a in answers],
        )
        _stored(url, sessions.agent)
        continued = chain_session_in_agent(url, model, sessions.foo)
        _show(f"An agent on the chain's session {sessions.foo}", [continued.content])

    kept, raw, ttl = bounded_and_expiring(url, sessions.bar)
    _show("max_messages=4, ttl=3600 after 3 turns: history.messages", [kept])
    _show(f"Stored under message_store:{sessions.bar} (TTL {ttl} s)", raw)


if __name__ == "__main__":
    sys.exit(main())
