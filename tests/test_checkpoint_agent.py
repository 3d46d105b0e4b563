"""Proof in use: a LangChain agent (create_agent, an offline scripted model, tools, an interrupt)
holds multi-turn conversations on the saver, alone and 64 at a time, while the server loses its
functions; on a single server and on a cluster. The in-memory saver is the reference."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio.cluster
import redis.cluster
from conftest import VERSIONED
from langchain_core.messages import BaseMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from pyhistory import errors, testing
from pyhistory.checkpoint import RedisSaver

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "loadtest" / "checkpoint"))
from app import build_agent

# One conversation: plain turns, a tool call, a question to the human (an interrupt) and its
# answer, and turns after it.
SCRIPT: list[str | Command[Any]] = [
    "hello",
    "weather Paris",
    "ask what is your name?",
    Command(resume="Ada"),
    "weather Oslo",
    "thanks",
]


def transcript(messages: list[BaseMessage]) -> list[tuple[str, Any, Any]]:
    """What a conversation said, without the random ids LangGraph gives user messages."""
    return [
        (m.type, m.content, [c["name"] for c in getattr(m, "tool_calls", [])]) for m in messages
    ]


def config(thread_id: str) -> Any:
    return {"configurable": {"thread_id": thread_id}}


def converse(agent: Any, thread_id: str) -> list[tuple[str, Any, Any]]:
    state: dict[str, Any] = {}
    for step in SCRIPT:
        payload = step if isinstance(step, Command) else {"messages": [HumanMessage(step)]}
        state = agent.invoke(payload, config(thread_id))
        if isinstance(step, str) and step.startswith("ask "):
            assert state["__interrupt__"][0].value == step[4:]
    return transcript(state["messages"])


async def aconverse(agent: Any, thread_id: str) -> list[tuple[str, Any, Any]]:
    state: dict[str, Any] = {}
    for step in SCRIPT:
        payload = step if isinstance(step, Command) else {"messages": [HumanMessage(step)]}
        state = await agent.ainvoke(payload, config(thread_id))
    return transcript(state["messages"])


REFERENCE = converse(build_agent(InMemorySaver()), "reference")


def test_the_reference_conversation_is_what_the_script_says() -> None:
    said = [text for kind, text, _ in REFERENCE if kind == "ai" and text]
    assert said == [
        "reply 1: hello",
        "tool said: sunny in Paris",
        "tool said: the human said Ada",
        "tool said: sunny in Oslo",
        "reply 5: thanks",
    ]


@pytest.mark.parametrize(
    ("delta", "keep_last"),
    [(False, None), (True, None), (False, 3), (True, 3)],
    ids=["plain", "DeltaChannel", "keep_last=3", "DeltaChannel+keep_last=3"],
)
def test_an_agent_converses_on_the_saver(url: str, delta: bool, keep_last: int | None) -> None:
    saver = RedisSaver(url, ttl=3600, keep_last=keep_last)
    agent = build_agent(saver, delta=delta)
    assert converse(agent, "t") == REFERENCE
    # A new process (a new saver) picks the conversation up where it was.
    again = build_agent(RedisSaver(url, ttl=3600, keep_last=keep_last), delta=delta)
    state = again.invoke({"messages": [HumanMessage("still there?")]}, config("t"))
    assert transcript(state["messages"])[:-2] == REFERENCE
    assert state["messages"][-1].content == "reply 6: still there?"


def test_history_and_time_travel(url: str) -> None:
    agent = build_agent(RedisSaver(url))
    converse(agent, "t")
    history = list(agent.get_state_history(config("t")))
    assert len(history) > 10
    assert [h.config["configurable"]["checkpoint_id"] for h in history] == sorted(
        (h.config["configurable"]["checkpoint_id"] for h in history), reverse=True
    )
    # Fork from the state right after the first answer, and go another way.
    after_hello = next(
        h
        for h in reversed(history)
        if [m.content for m in h.values.get("messages", [])][-1:] == ["reply 1: hello"]
    )
    forked = agent.invoke({"messages": [HumanMessage("weather Rome")]}, after_hello.config)
    assert [m.content for m in forked["messages"]][-1] == "tool said: sunny in Rome"
    assert len(forked["messages"]) == 6
    latest = agent.get_state(config("t")).values["messages"]
    assert transcript(latest) == transcript(forked["messages"])  # the fork is the thread's head


async def test_64_conversations_at_once_while_the_library_is_flushed(
    url: str, client: redis.Redis
) -> None:
    """64 tasks converse without pause while FUNCTION FLUSH runs three times: every call that
    meets a server without the library loads it and goes on, and every conversation comes out
    whole. A flush waits until every task finished a conversation since the previous one (a
    call reloads and resends once: a second flush between the two is another event)."""
    # LangGraph keeps several saver calls of one conversation in flight, so 64 conversations
    # want more than redis-py's default 100 connections (an asyncio pool refuses past its size).
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url, max_connections=256, timeout=10, **VERSIONED
    )
    saver = RedisSaver(async_redis_client=redis.asyncio.Redis(connection_pool=pool), ttl=600)
    agent = build_agent(saver, delta=True)
    finished = [0] * 64
    flushes = 0
    done = asyncio.Event()

    async def progressed(since: list[int]) -> None:
        while any(now <= then for now, then in zip(finished, since, strict=True)):
            await asyncio.sleep(0.02)

    async def flusher() -> None:
        nonlocal flushes
        for _ in range(3):
            await progressed(list(finished))
            client.function_flush()
            flushes += 1
        await progressed(list(finished))
        done.set()

    async def user(n: int) -> list[list[tuple[str, Any, Any]]]:
        results = []
        while not done.is_set():
            results.append(await aconverse(agent, f"user{n}-{len(results)}"))
            finished[n] += 1
        return results

    task = asyncio.create_task(flusher())
    try:
        per_user = await asyncio.gather(*(user(n) for n in range(64)))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await pool.aclose()
    assert flushes == 3
    assert all(len(results) >= 4 for results in per_user)
    assert all(result == REFERENCE for results in per_user for result in results)


@pytest.mark.cluster
async def test_conversations_on_a_cluster(cluster: testing.LocalCluster) -> None:
    cluster.wait_healthy()
    host, port = cluster.startup_nodes[0]
    client = redis.asyncio.cluster.RedisCluster(host=host, port=port, **VERSIONED)
    try:
        saver = RedisSaver(async_redis_client=client, ttl=600)
        agent = build_agent(saver, delta=True)
        threads = [f"cluster-{i}" for i in range(24)]
        results = await asyncio.gather(*(aconverse(agent, t) for t in threads))
        assert all(result == REFERENCE for result in results)
        await client.execute_command("FUNCTION", "FLUSH", target_nodes=client.get_primaries())
        await saver.acopy_thread(threads[0], "copied")
        state = await agent.aget_state(config("copied"))
        assert transcript(state.values["messages"]) == REFERENCE
        assert len({client.keyslot(saver.keys(t)[0]) for t in threads}) > 1
    finally:
        await client.aclose()


@pytest.mark.cluster
def test_a_sync_agent_on_a_cluster(cluster_client: redis.cluster.RedisCluster) -> None:
    saver = RedisSaver(redis_client=cluster_client, keep_last=4)
    assert converse(build_agent(saver), "sync-cluster") == REFERENCE
    saver.prune(["sync-cluster"])
    assert converse(build_agent(saver), "sync-cluster")[: len(REFERENCE)] == REFERENCE


@pytest.fixture
def doomed_cluster() -> Any:
    """A cluster of its own: the failover test kills one of its primaries (Debian's Redis when
    present, otherwise a wheel's server)."""
    with testing.start_cluster() as started:
        started.wait_healthy()
        yield started


@pytest.mark.cluster
@pytest.mark.faults
def test_nothing_acknowledged_is_lost_in_a_failover(doomed_cluster: testing.LocalCluster) -> None:
    """Agents converse on 16 threads with wait_for_replicas=1 while one primary is killed. Its
    replica takes over (the killed node comes back as a replica); conversations on its threads
    fail for a while, then go on. Every turn whose invoke returned is in its thread after."""
    client = doomed_cluster.client()
    saver = RedisSaver(redis_client=client, wait_for_replicas=1, wait_timeout_ms=500)
    agent = build_agent(saver)
    threads = [f"failover-{i}" for i in range(16)]
    acknowledged: dict[str, list[str]] = {t: [] for t in threads}
    failures: list[BaseException] = []
    stop = threading.Event()
    lock = threading.Lock()

    def user(mine: list[str]) -> None:
        i = 0
        while not stop.is_set():
            for thread_id in mine:
                i += 1
                text = f"{thread_id} turn {i}"
                try:
                    agent.invoke({"messages": [HumanMessage(text)]}, config(thread_id))
                except Exception as error:
                    with lock:
                        failures.append(error)
                else:
                    with lock:
                        acknowledged[thread_id].append(text)

    workers = [threading.Thread(target=user, args=(threads[n::4],)) for n in range(4)]
    for worker in workers:
        worker.start()
    try:
        time.sleep(1.0)
        victim = doomed_cluster.primaries()[0]
        owned = [
            t for t in threads if client.get_node_from_key(saver.keys(t)[0]).port == victim.port
        ]
        assert owned, "no thread lives on the killed primary"
        before = {t: len(acknowledged[t]) for t in owned}
        victim.kill()
        deadline = time.monotonic() + 15
        while (
            victim.port in [p.port for p in doomed_cluster.primaries()]
            or len(doomed_cluster.primaries()) < 3
        ):  # until its replica is promoted: restarted before, the empty node would stay primary
            assert time.monotonic() < deadline, "no replica took over"
            time.sleep(0.1)
        victim.restart()  # back as the new primary's replica, so WAIT can be answered again
        while time.monotonic() < deadline:
            with lock:
                if all(len(acknowledged[t]) > before[t] for t in owned):
                    break
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=60)
    assert all(len(acknowledged[t]) > before[t] for t in owned), f"no progress: {failures[-3:]}"
    doomed_cluster.wait_healthy()
    reader = RedisSaver(redis_client=doomed_cluster.client())
    for thread_id, texts in acknowledged.items():
        state = build_agent(reader).get_state(config(thread_id)).values
        stored = {m.content for m in state.get("messages", [])}
        lost = [t for t in texts if t not in stored]
        assert not lost, (
            f"{thread_id} (owned: {thread_id in owned}): acknowledged but lost {lost}; stored "
            f"{sorted(stored)[:8]}; checkpoints {len(list(reader.list(config(thread_id))))}; "
            f"failures {[repr(f)[:120] for f in failures[:5]]}"
        )
    for error in failures:
        assert isinstance(error, (redis.exceptions.RedisError, errors.HistoryError)), error
