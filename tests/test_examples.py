"""The programs in examples/ run offline (their fake models) against a throwaway server, as a
user runs them: each in its own interpreter, with ``REDIS_URL`` set and no API key. Each must
leave nothing behind on the server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from conftest import EXTERNAL_URL, any_kind

from pyhistory import testing

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def example_url() -> Iterator[str]:
    if EXTERNAL_URL:
        yield EXTERNAL_URL
        return
    server = testing.start_server(any_kind())
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def client(example_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(example_url) as c:
        c.flushall()
        c.function_flush()
        yield c
        assert c.keys("*") == [], "the example left keys behind"


def offline_env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.pop("EXAMPLE_MODEL", None)
    env["REDIS_URL"] = url
    return env


def run(url: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, *args],
        cwd=EXAMPLES.parent,
        env=offline_env(url),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_agent_with_tools(example_url: str, client: redis.Redis) -> None:
    out = run(example_url, "examples/agent_tools.py", "--session", "example-test")
    assert "agent: Nice to meet you, Bob!" in out
    assert "agent: Here is the forecast: Sunny and 24 °C in Paris." in out
    assert "agent: You are Bob; you asked me 2 things." in out  # the session carried the rest
    assert "8 messages stored under message_store:example-test:" in out
    assert "ai: get_weather({'city': 'Paris'})" in out and "tool: Sunny" in out


def test_agent_session_kept_and_continued(example_url: str, client: redis.Redis) -> None:
    run(example_url, "examples/agent_tools.py", "--session", "kept", "--keep")
    assert client.llen("message_store:kept") == 8
    out = run(example_url, "examples/agent_tools.py", "--session", "kept")
    assert "agent: You are Bob; you asked me 5 things." in out  # it remembered the first run
    assert "16 messages stored" in out


def test_langgraph_interrupt_resumed_by_another_process(
    example_url: str, client: redis.Redis
) -> None:
    script = "examples/langgraph_interrupt.py"
    out = run(example_url, script, "start", "ticket-1", "Where is my parcel?")
    assert "thread ticket-1 waits for a review of the draft" in out
    assert client.keys("checkpoint:*")  # the paused run is in Redis, not in the process
    out = run(example_url, script, "resume", "ticket-1", "edit: It ships tomorrow.")
    assert "the reply sent:\n  It ships tomorrow." in out
    out = run(example_url, script, "demo")
    assert "Your order #1234 ships tomorrow." in out


def _post(url: str, body: dict[str, str]) -> bytes:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return bytes(response.read())


def _get(url: str, method: str = "GET") -> object:
    request = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_fastapi_chat_with_streaming(example_url: str, client: redis.Redis) -> None:
    port = testing.free_port()
    service = subprocess.Popen(
        [sys.executable, "examples/fastapi_chat.py", "--port", str(port)],
        cwd=EXAMPLES.parent,
        env=offline_env(example_url),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                assert _get(f"{base}/health") == {"status": "ok"}
                break
            except OSError:
                assert service.poll() is None, "the service exited"
                assert time.monotonic() < deadline, "the service did not start"
                time.sleep(0.2)
        first = json.loads(_post(f"{base}/chat/alice", {"message": "hi, I'm Alice"}))
        assert first == {
            "answer": 'You said "hi, I\'m Alice"; 0 earlier messages reached me.',
            "earlier": 0,
        }
        stream = _post(f"{base}/chat/alice/stream", {"message": "and now?"}).decode()
        tokens = [
            json.loads(line.removeprefix("data: "))
            for line in stream.splitlines()
            if line.startswith("data: ") and line != "data: {}"
        ]
        assert len(tokens) > 5  # streamed, token by token
        assert "".join(tokens) == "You said 'and now?'; 2 earlier messages reached me."
        assert stream.rstrip().endswith("event: done\ndata: {}")
        transcript = _get(f"{base}/chat/alice")
        assert [m["role"] for m in transcript] == ["human", "ai", "human", "ai"]  # type: ignore[index,union-attr]
        assert client.ttl("message_store:alice") > 3500
        assert _get(f"{base}/chat/alice", method="DELETE") == {"deleted": True}
    finally:
        service.terminate()
        service.wait(timeout=30)
