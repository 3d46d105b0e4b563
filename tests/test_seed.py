"""LangChain's Redis chat-history page, run on pyhistory with only the import changed.

The code below is the page's, verbatim. It is run with the import swapped for pyhistory's, the
URL pointed at the test server and, offline, ``ChatOpenAI()`` swapped for a fake model that answers
from the conversation it is sent."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import pytest
import redis
from langchain_core.messages import AIMessage, HumanMessage

from pyhistory.demo import RecallingFakeChatModel

SEED = Path(__file__).resolve().parents[2] / "shared" / "seeds" / "000_8642149dbb709608.txt"

IMPORT = "from langchain_community.chat_message_histories import RedisChatMessageHistory"

STORE_AND_RETRIEVE = """\
history = RedisChatMessageHistory("foo", url="redis://localhost:6379")

history.add_user_message("hi!")

history.add_ai_message("whats up?")
"""

CHAIN_IMPORTS = """\
from typing import Optional

from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables.history import RunnableWithMessageHistory
from langchain_openai import ChatOpenAI
"""

CHAIN = """\
prompt = ChatPromptTemplate.from_messages(
    [
        ("system", "You're an assistant。"),
        MessagesPlaceholder(variable_name="history"),
        ("human", "{question}"),
    ]
)

chain = prompt | ChatOpenAI()

chain_with_history = RunnableWithMessageHistory(
    chain,
    lambda session_id: RedisChatMessageHistory(
        session_id, url="redis://localhost:6379"
    ),
    input_messages_key="question",
    history_messages_key="history",
)

config = {"configurable": {"session_id": "foo"}}

chain_with_history.invoke({"question": "Hi! I'm bob"}, config=config)

chain_with_history.invoke({"question": "Whats my name"}, config=config)
"""


def run(code: str, url: str, namespace: dict[str, Any]) -> dict[str, Any]:
    code = code.replace("redis://localhost:6379", url)
    code = code.replace("from langchain_openai import ChatOpenAI\n", "")
    exec(compile(code, "<seed>", "exec"), namespace)
    return namespace


def pyhistory_namespace() -> dict[str, Any]:
    namespace: dict[str, Any] = {"ChatOpenAI": RecallingFakeChatModel}
    exec(IMPORT.replace("langchain_community.chat_message_histories", "pyhistory"), namespace)
    return namespace


def test_store_and_retrieve_messages(url: str) -> None:
    namespace = run(STORE_AND_RETRIEVE, url, pyhistory_namespace())
    messages = namespace["history"].messages
    assert messages == [HumanMessage(content="hi!"), AIMessage(content="whats up?")]
    assert repr(messages).startswith("[HumanMessage(content='hi!'")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_using_in_the_chains(url: str, client: redis.Redis) -> None:
    namespace = run(CHAIN_IMPORTS + CHAIN, url, pyhistory_namespace())
    config = namespace["config"]
    answer = namespace["chain_with_history"].invoke({"question": "Whats my name"}, config=config)
    assert "Bob" in answer.content  # it saw the first turn, through the stored history
    # the two turns of the example and this third one, newest first, as langchain_community stores
    assert client.llen("message_store:foo") == 6
    assert b"Hi! I'm bob" in client.lindex("message_store:foo", -1)


def test_the_fake_model_answers_only_from_what_it_is_sent() -> None:
    model = RecallingFakeChatModel()
    assert "Bob" not in model.invoke([HumanMessage("Whats my name")]).text
    asked = model.invoke([HumanMessage("Hi! I'm bob"), AIMessage("hi"), HumanMessage("my name?")])
    assert "Bob" in asked.text


# The page's examples as this file holds them, hashed when they were checked against the page:
# the copies above cannot drift in a clone without the page (../shared/seeds) beside it.
EXAMPLES = (IMPORT, STORE_AND_RETRIEVE, CHAIN_IMPORTS, CHAIN)
EXAMPLES_SHA256 = "fabfcbd6df33eacbf6c801cf97f5f341fd0c9516a0eecc88cbcf80d073f04127"


def test_the_examples_here_are_the_pages_verbatim() -> None:
    """The copies above are the page's code blocks: checked against the page where it is beside
    this checkout, and against the hash recorded from it everywhere (never skipped)."""
    held = "\n".join(block.strip() for block in EXAMPLES)
    assert hashlib.sha256(held.encode()).hexdigest() == EXAMPLES_SHA256
    if SEED.is_file():
        page = SEED.read_text(encoding="utf-8")
        code = "\n".join(re.findall(r"```python\n(.*?)```", page, re.DOTALL))
        for block in EXAMPLES:
            assert block.strip() in code


# --- the chain example in its LangChain 1.x form, and the demo ------------------------------

AGENT = """\
from langchain.agents import create_agent
from langchain_openai import ChatOpenAI

from pyhistory.agents import RedisHistoryMiddleware

agent = create_agent(
    ChatOpenAI(),
    system_prompt="You're an assistant。",
    middleware=[RedisHistoryMiddleware(url="redis://localhost:6379")],
)

config = {"configurable": {"session_id": "foo"}}

agent.invoke({"messages": [{"role": "user", "content": "Hi! I'm bob"}]}, config=config)

agent.invoke({"messages": [{"role": "user", "content": "Whats my name"}]}, config=config)
"""


def test_using_in_agents_the_chain_example_in_langchain_1x(url: str, client: redis.Redis) -> None:
    namespace = run(AGENT, url, {"ChatOpenAI": RecallingFakeChatModel})
    answer = namespace["agent"].invoke(
        {"messages": [{"role": "user", "content": "Whats my name"}]}, config=namespace["config"]
    )
    assert "Bob" in answer["messages"][-1].content
    assert client.llen("message_store:foo") == 6
    assert b"Hi! I'm bob" in client.lindex("message_store:foo", -1)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_chain_and_the_agent_share_the_session(url: str, client: redis.Redis) -> None:
    """The page's chain, then its 1.x form on the same session, then the chain again: each
    answers from what the other stored."""
    chain = run(CHAIN_IMPORTS + CHAIN, url, pyhistory_namespace())
    agent = run(AGENT, url, {"ChatOpenAI": RecallingFakeChatModel})
    assert client.llen("message_store:foo") == 4 + 4  # two turns each
    asked = agent["agent"].invoke({"messages": [("user", "Whats my name")]}, config=agent["config"])
    assert "Bob" in asked["messages"][-1].content
    again = chain["chain_with_history"].invoke({"question": "my name?"}, config=chain["config"])
    assert "Bob" in again.content
    assert client.llen("message_store:foo") == 12


def _user_data(client: redis.Redis) -> dict[bytes, list[bytes]]:
    return {key: client.lrange(key, 0, -1) for key in sorted(client.keys("*"))}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_demo_keeps_to_its_own_sessions(
    url: str,
    client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pyhistory import demo

    client.rpush("message_store:foo", b"a user's own entry")
    client.rpush("message_store:bar", b"another")
    before = _user_data(client)
    monkeypatch.setenv("REDIS_URL", url)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert demo.main() == 0
    out = capsys.readouterr().out
    # the answers and the stored entries: the chain's and the agent's (the test extra brings
    # LangChain 1.x: the demo's agent part must run here, not be skipped)
    assert "The same with create_agent" in out
    assert "agents: skipped" not in out
    assert out.count("Your name is Bob") >= 5
    assert "pyhistory-demo:" in out
    assert _user_data(client) == before


def test_the_demo_removes_its_sessions_when_it_fails(
    url: str, client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pyhistory import demo

    def broken(url: str, session: str) -> Any:
        raise RuntimeError("the demo broke half-way")

    monkeypatch.setenv("REDIS_URL", url)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setattr(demo, "bounded_and_expiring", broken)  # after the other examples stored
    with pytest.raises(RuntimeError, match="half-way"):
        demo.main()
    assert client.keys("*") == []


def test_the_demo_leaves_the_library_as_it_found_it(
    url: str,
    client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pyhistory import LIBRARY, demo, load_functions

    monkeypatch.setenv("REDIS_URL", url)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert demo.main() == 0
    assert client.function_list(library=LIBRARY) == []
    assert f"Removed the {LIBRARY} Functions library the demo loaded" in capsys.readouterr().out
    load_functions(client)
    assert demo.main() == 0
    assert client.function_list(library=LIBRARY) != []
    assert "it was there before the demo" in capsys.readouterr().out


def test_the_demo_on_an_unreachable_url_is_one_line_at_once() -> None:
    import subprocess
    import sys
    import time

    from pyhistory import testing

    env = {**os.environ, "REDIS_URL": f"redis://:secret@127.0.0.1:{testing.free_port()}/0"}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pyhistory.demo"], env=env, capture_output=True, text=True
    )
    assert time.monotonic() - started < 8  # the interpreter's start-up, then one refused connect
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith("pyhistory demo: cannot reach REDIS_URL=redis://:***@127.0.0.1:")
    assert done.stderr.count("\n") == 1 and "secret" not in done.stderr
