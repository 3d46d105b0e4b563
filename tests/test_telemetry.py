"""OpenTelemetry spans and metrics (pyhistory.telemetry), read back with the SDK's in-memory span
exporter and metric reader against a real server; pyhistory without the API; and the name its
connections give themselves (CLIENT SETINFO, seen in CLIENT LIST)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import redis.utils
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.conformance.test_utils import generate_checkpoint
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import pyhistory
from pyhistory import MessageStore, _clients, errors, telemetry
from pyhistory.checkpoint import RedisSaver

# The SDK, once for the process (a global provider can be set only once).
EXPORTER = InMemorySpanExporter()
READER = InMemoryMetricReader(  # each read: what was recorded since the last one
    preferred_temporality={
        Counter: AggregationTemporality.DELTA,
        Histogram: AggregationTemporality.DELTA,
    }
)
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
trace.set_tracer_provider(_provider)
metrics.set_meter_provider(MeterProvider(metric_readers=[READER]))

SECRET = "the-secret-session"
CONTENT = "a message nobody may read in a trace"


@pytest.fixture(autouse=True)
def fresh_spans() -> Iterator[None]:
    EXPORTER.clear()
    READER.get_metrics_data()  # what earlier tests recorded is collected away
    yield
    telemetry.configure(record_session_ids=False)


def spans(prefix: str = "pyhistory.") -> list[ReadableSpan]:
    return [s for s in EXPORTER.get_finished_spans() if s.name.startswith(prefix)]


def names(prefix: str = "pyhistory.") -> list[str]:
    return [s.name for s in spans(prefix)]


def everything_said(span: ReadableSpan) -> str:
    """Every attribute value of a span and of its events, and its status, as text."""
    said = [str(v) for v in (span.attributes or {}).values()]
    for event in span.events:
        said += [str(v) for v in (event.attributes or {}).values()]
    said.append(str(span.status.description))
    return " ".join(said)


def collected() -> dict[str, list[Any]]:
    """The data points of each metric recorded since the last collection, by metric name."""
    data = READER.get_metrics_data()
    found: dict[str, list[Any]] = {}
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


def conversation() -> list[Any]:
    return [HumanMessage(CONTENT), AIMessage("an answer")]


# --- the history -------------------------------------------------------------------------------


def check_history_spans(url: str) -> None:
    expected = [
        "pyhistory.append",
        "pyhistory.read",
        "pyhistory.length",
        "pyhistory.touch",
        "pyhistory.clear",
    ]
    assert names() == expected
    parts = urlsplit(url)
    for span in spans():
        assert span.kind is SpanKind.CLIENT
        attributes = dict(span.attributes or {})
        assert attributes["db.system.name"] == "redis"
        assert attributes["db.operation.name"] == span.name
        assert attributes["db.namespace"] == (parts.path.strip("/") or "0")
        assert attributes["server.address"] == parts.hostname
        assert attributes["server.port"] == parts.port
        assert span.status.status_code is StatusCode.UNSET
        said = everything_said(span)
        assert SECRET not in said and CONTENT not in said
        assert not any(k.startswith("pyhistory.session") for k in attributes)
    append = spans()[0]
    assert (append.attributes or {})["db.operation.batch.size"] == 2


def test_each_history_operation_is_a_client_span(url: str) -> None:
    store = MessageStore(SECRET, url=url, ttl=60)
    store.add_messages(conversation())
    assert [m.content for m in store.messages] == [CONTENT, "an answer"]
    assert len(store) == 2
    assert store.touch()
    store.clear()
    check_history_spans(url)


async def test_each_history_operation_is_a_client_span_asyncio(url: str) -> None:
    store = MessageStore(SECRET, url=url, ttl=60)
    await store.aadd_messages(conversation())
    assert len(await store.aget_messages()) == 2
    assert await store.alength() == 2
    assert await store.atouch()
    await store.aclear()
    check_history_spans(url)


async def test_an_asyncio_call_run_in_a_thread_is_one_span(url: str) -> None:
    """Without an asyncio client the a* methods run the sync ones in a thread: one span each."""
    with redis.Redis.from_url(url) as client:
        store = MessageStore(SECRET, redis_client=client)
        await store.aadd_messages(conversation())
        assert len(await store.aget_messages()) == 2
        assert await store.alength() == 2
    assert names() == ["pyhistory.append", "pyhistory.read", "pyhistory.length"]
    assert (spans()[0].attributes or {})["server.port"] == urlsplit(url).port


def test_a_single_message_is_not_a_batch(url: str) -> None:
    MessageStore(SECRET, url=url).add_messages(HumanMessage("one"))
    (span,) = spans()
    assert "db.operation.batch.size" not in (span.attributes or {})
    MessageStore(SECRET, url=url).clear()


def test_a_failure_is_recorded_with_its_type_and_not_its_message(
    url: str, client: redis.Redis
) -> None:
    client.set(f"message_store:{SECRET}", "not a list")
    with pytest.raises(errors.WrongTypeError):
        _ = MessageStore(SECRET, url=url).messages
    (span,) = spans()
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})["error.type"] == "pyhistory.errors.WrongTypeError"
    assert SECRET not in everything_said(span)
    failed = [
        p
        for p in collected()["db.client.operation.duration"]
        if p.attributes.get("error.type") == "pyhistory.errors.WrongTypeError"
    ]
    assert failed and failed[0].attributes["db.operation.name"] == "pyhistory.read"
    client.delete(f"message_store:{SECRET}")


def test_session_ids_are_recorded_only_when_asked(url: str) -> None:
    store = MessageStore(SECRET, url=url)
    telemetry.configure(record_session_ids=True)
    assert store.messages == []
    telemetry.configure(record_session_ids="hash")
    assert store.messages == []
    telemetry.configure(record_session_ids=False)
    assert store.messages == []
    raw, hashed, nothing = (dict(s.attributes or {}) for s in spans())
    assert raw["pyhistory.session.id"] == SECRET
    assert SECRET not in hashed.values() and len(hashed["pyhistory.session.hash"]) == 16
    assert not any(k.startswith("pyhistory.session") for k in nothing)
    with pytest.raises(ValueError):
        telemetry.configure(record_session_ids="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize(("value", "mode"), [("1", True), ("hash", "hash"), ("", False)])
def test_the_environment_may_ask_for_session_ids(
    monkeypatch: pytest.MonkeyPatch, value: str, mode: object
) -> None:
    monkeypatch.setenv("PYHISTORY_OTEL_RECORD_SESSION_IDS", value)
    assert telemetry._mode_from_env() == mode


def test_the_metrics(url: str, client: redis.Redis) -> None:
    store = MessageStore(SECRET, url=url)
    store.add_messages(conversation())
    store.add_messages([HumanMessage("more")] * 5)
    client.function_flush()  # the next call loads the library again
    store.add_messages(HumanMessage("after the flush"))
    recorded = collected()
    durations = {
        (p.attributes["db.operation.name"], p.count)
        for p in recorded["db.client.operation.duration"]
        if "error.type" not in p.attributes
    }
    assert ("pyhistory.append", 3) in durations
    (batches,) = recorded["pyhistory.append.batch.size"]
    assert (batches.count, batches.sum) == (3, 8)
    (reloads,) = recorded["pyhistory.library.reloads"]
    assert reloads.value >= 1 and reloads.attributes["pyhistory.library"] == pyhistory.LIBRARY
    store.clear()


# --- the saver -----------------------------------------------------------------------------


def thread_config(thread_id: str) -> Any:
    return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}


SAVER_OPERATIONS = [
    "pyhistory.checkpoint.put",
    "pyhistory.checkpoint.put_writes",
    "pyhistory.checkpoint.get_tuple",
    "pyhistory.checkpoint.list",
    "pyhistory.checkpoint.delete_thread",
]


def check_saver_spans() -> None:
    assert names() == SAVER_OPERATIONS
    for span in spans():
        assert span.kind is SpanKind.CLIENT
        attributes = dict(span.attributes or {})
        assert attributes["db.system.name"] == "redis"
        assert attributes["db.operation.name"] == span.name
        assert "server.address" in attributes and "db.namespace" in attributes
        assert SECRET not in everything_said(span) and CONTENT not in everything_said(span)


def test_each_saver_operation_is_a_client_span(url: str) -> None:
    saver = RedisSaver(url)
    checkpoint = generate_checkpoint(channel_values={"text": CONTENT})
    stored = saver.put(thread_config(SECRET), checkpoint, {"step": 1}, {"text": 1})  # type: ignore[typeddict-item]
    saver.put_writes(stored, [("text", CONTENT)], "task")
    assert saver.get_tuple(thread_config(SECRET)) is not None
    assert len(list(saver.list(thread_config(SECRET)))) == 1
    saver.delete_thread(SECRET)
    check_saver_spans()


async def test_each_saver_operation_is_a_client_span_asyncio(url: str) -> None:
    saver = RedisSaver(url)
    checkpoint = generate_checkpoint(channel_values={"text": CONTENT})
    stored = await saver.aput(thread_config(SECRET), checkpoint, {"step": 1}, {"text": 1})  # type: ignore[typeddict-item]
    await saver.aput_writes(stored, [("text", CONTENT)], "task")
    assert await saver.aget_tuple(thread_config(SECRET)) is not None
    assert len([t async for t in saver.alist(thread_config(SECRET))]) == 1
    await saver.adelete_thread(SECRET)
    check_saver_spans()


def test_thread_ids_are_recorded_only_when_asked(url: str) -> None:
    saver = RedisSaver(url)
    assert saver.get_tuple(thread_config(SECRET)) is None
    telemetry.configure(record_session_ids=True)
    assert saver.get_tuple(thread_config(SECRET)) is None
    saver.delete_thread(SECRET)
    unasked, asked, deleted = (dict(s.attributes or {}) for s in spans())
    assert not any(k.startswith("pyhistory.thread") for k in unasked)
    assert asked["pyhistory.thread.id"] == SECRET == deleted["pyhistory.thread.id"]


# --- the agent middleware --------------------------------------------------------------------


def test_the_middleware_hooks_are_spans_around_the_history(url: str) -> None:
    from langchain.agents import create_agent
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel

    from pyhistory.agents import RedisHistoryMiddleware

    model = GenericFakeChatModel(messages=iter([AIMessage("first"), AIMessage("second")]))
    agent = create_agent(model, middleware=[RedisHistoryMiddleware(url)])
    config: Any = {"configurable": {"thread_id": SECRET}}
    agent.invoke({"messages": [HumanMessage(CONTENT)]}, config)
    asyncio.run(agent.ainvoke({"messages": [HumanMessage("again")]}, config))
    hooks = ["pyhistory.agent.before_agent", "pyhistory.agent.after_agent"]
    assert [n for n in names("pyhistory.agent.")] == hooks * 2
    by_id = {s.context.span_id: s for s in spans()}
    for span in spans("pyhistory.agent."):
        assert span.kind is SpanKind.INTERNAL
        assert SECRET not in everything_said(span)
    for span in spans():
        if span.name in ("pyhistory.read", "pyhistory.append"):
            assert span.parent is not None
            parent = by_id[span.parent.span_id]
            assert (
                parent.name
                == f"pyhistory.agent.{'before' if span.name.endswith('read') else 'after'}_agent"
            )
    MessageStore(SECRET, url=url).clear()


# --- without the API ------------------------------------------------------------------------

ABSENT = """
import asyncio, os, sys
sys.modules["opentelemetry"] = None  # the import fails, as where the API is not installed
from langchain_core.messages import HumanMessage
from pyhistory import MessageStore, telemetry
from pyhistory.checkpoint import RedisSaver
assert not telemetry.AVAILABLE
assert not hasattr(MessageStore.add_messages, "__wrapped__")  # not wrapped: nothing to pay
assert not hasattr(RedisSaver.put, "__wrapped__")
store = MessageStore("absent", url=os.environ["REDIS_URL"], ttl=60)
store.add_messages([HumanMessage("hi")])
assert [m.content for m in store.messages] == ["hi"]
async def main():
    await store.aadd_messages([HumanMessage("there")])
    assert len(await store.aget_messages()) == 2
asyncio.run(main())
telemetry.configure(record_session_ids=True)
store.clear()
print("ok")
"""


def test_everything_works_without_the_api(url: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", ABSENT],
        env={**os.environ, "REDIS_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


# --- the connections' name ---------------------------------------------------------------------

LIB_NAME = f"redis-py(pyhistory_v{pyhistory.__version__})"


def connections_named(client: redis.Redis) -> list[dict[str, Any]]:
    return [c for c in client.client_list() if c.get("lib-name") == LIB_NAME]


def names_connections(client: redis.Redis) -> None:
    if tuple(int(x) for x in str(client.info("server")["redis_version"]).split(".")[:2]) < (7, 2):
        pytest.skip("CLIENT SETINFO (lib-name in CLIENT LIST) is Redis 7.2's")


def test_the_history_connections_are_named(url: str, client: redis.Redis) -> None:
    names_connections(client)
    name = uuid.uuid4().hex
    assert MessageStore(name, url=url).messages == []
    (named,) = connections_named(client)
    assert named["lib-ver"] == redis.__version__


async def test_the_asyncio_connections_are_named(url: str, client: redis.Redis) -> None:
    names_connections(client)
    await MessageStore("s", url=url).aget_messages()
    assert len(connections_named(client)) == 1
    await pyhistory.aclose_clients()


def test_a_client_given_is_left_as_it_is(url: str, client: redis.Redis) -> None:
    names_connections(client)
    assert MessageStore("s", redis_client=client).messages == []
    assert connections_named(client) == []


def test_the_versions_are_given_explicitly() -> None:
    """No lookup of redis-py's version per connection (importlib.metadata: a file system call
    on the event loop); and redis-py's own version lookup is left as it is."""
    options = _clients.DRIVER_OPTIONS
    if "driver_info" in options:
        info = options["driver_info"]
        assert (info.formatted_name, info.lib_version) == (LIB_NAME, redis.__version__)
    else:
        assert options == {"lib_name": LIB_NAME, "lib_version": redis.__version__}
    assert redis.utils.get_lib_version.__module__ == "redis.utils"
