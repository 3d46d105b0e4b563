"""What works without LangChain's deprecated classes, and without the agents extra.

langchain-core 2.0 removes ``langchain_core.chat_history``. Each test runs a fresh interpreter in
which a module is hidden (importing it fails as a missing module does), then uses pyhistory against
a real server."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

HIDE = """\
import importlib.abc
import sys


class Hidden(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == HIDDEN or name.startswith(HIDDEN + "."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, Hidden())
"""


def run_hidden(hidden: str, code: str, url: str = "") -> str:
    """Runs `code` in a new interpreter where `hidden` cannot be imported; returns its stdout."""
    program = f"HIDDEN = {hidden!r}\nURL = {url!r}\n{HIDE}\n{textwrap.dedent(code)}"
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_import_pyhistory_does_not_import_the_deprecated_classes() -> None:
    out = run_hidden(
        "no-such-module",
        """
        def deprecated():
            names = ("chat_history", "runnables.history")
            return sorted(m for m in sys.modules if m.endswith(names))

        import pyhistory, pyhistory.store
        print(deprecated())
        try:
            import pyhistory.agents
        except ImportError:  # without the agents extra
            pass
        print(deprecated())
        """,
    )
    assert out.split() == ["[]", "[]"]


def test_without_langchain_core_chat_history_the_core_works(url: str) -> None:
    out = run_hidden(
        "langchain_core.chat_history",
        """
        import pyhistory
        from langchain_core.messages import AIMessage, HumanMessage
        from pyhistory.store import MessageStore

        store = MessageStore("s", url=URL, ttl=60, max_messages=3)
        store.add_messages([HumanMessage("hi!"), AIMessage("whats up?")])
        print([m.content for m in store.messages])
        print(pyhistory.MessageStore is MessageStore, pyhistory.load_functions.__name__)
        try:
            pyhistory.RedisChatMessageHistory
        except ImportError as error:
            print(type(error).__name__, error.name, error)
        """,
        url,
    )
    lines = out.splitlines()
    assert lines[0] == "['hi!', 'whats up?']"
    assert lines[1] == "True load_functions"
    # the classic adapter alone needs the removed module, and says which one
    assert lines[2].startswith("ModuleNotFoundError langchain_core.chat_history ")
    assert "pyhistory.MessageStore" in lines[2]


def test_without_langchain_core_chat_history_agents_work(url: str) -> None:
    pytest.importorskip("langchain.agents", reason="needs the agents extra: pyhistory[agents]")
    out = run_hidden(
        "langchain_core.chat_history",
        """
        from langchain.agents import create_agent
        from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
        from langchain_core.messages import AIMessage
        from pyhistory.agents import RedisHistoryMiddleware
        from pyhistory.store import MessageStore

        model = GenericFakeChatModel(messages=iter([AIMessage("Hi Bob!"), AIMessage("Bob.")]))
        agent = create_agent(model, middleware=[RedisHistoryMiddleware(url=URL)])
        config = {"configurable": {"session_id": "foo"}}
        agent.invoke({"messages": [{"role": "user", "content": "Hi! I'm bob"}]}, config)
        result = agent.invoke({"messages": [{"role": "user", "content": "Whats my name"}]}, config)
        print(len(result["messages"]), [m.content for m in MessageStore("foo", url=URL).messages])
        """,
        url,
    )
    assert out.strip() == "4 [\"Hi! I'm bob\", 'Hi Bob!', 'Whats my name', 'Bob.']"


def test_without_langchain_the_agents_module_names_the_extra() -> None:
    out = run_hidden(
        "langchain",
        """
        import pyhistory
        from pyhistory.store import MessageStore
        try:
            import pyhistory.agents
        except ImportError as error:
            print(error)
        """,
    )
    assert "pip install 'pyhistory[agents]'" in out
    assert "langchain>=1.0" in out


def test_without_langchain_the_demo_runs_the_classic_examples(url: str) -> None:
    out = run_hidden(
        "langchain",
        """
        import os, warnings
        os.environ["REDIS_URL"] = URL
        os.environ.pop("OPENAI_API_KEY", None)
        from pyhistory import demo
        demo.main()
        """,
        url,
    )
    assert "Your name is Bob" in out
    assert "LangChain 1.x agents: skipped" in out
    assert "pip install 'pyhistory[agents]'" in out
    assert "Removed the demo's sessions" in out
