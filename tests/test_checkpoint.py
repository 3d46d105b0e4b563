"""The LangGraph saver on real servers: its layout, expiry, retention, DeltaChannel support, bad
input, self-healing, least privilege and durability. LangGraph's own conformance suite is in
test_checkpoint_conformance.py; whole agents in test_checkpoint_agent.py."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
import redis
import redis.asyncio.cluster
import redis.cluster
from chat import assert_ttl
from conftest import VERSIONED
from langgraph.channels.delta import DeltaChannel
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.conformance.test_utils import generate_checkpoint
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, StateGraph
from langgraph.types import Command, interrupt
from redis.crc import key_slot

from pyhistory import errors, testing
from pyhistory._library import CLUSTER_CLIENT_COMMANDS, Call
from pyhistory.checkpoint import LIBRARY, RedisSaver, _calls, acl_rule, load_checkpoint_functions
from pyhistory.functions import run

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "lua" / "pyhistory_checkpoint.lua"


def config(thread_id: str, ns: str | None = "", checkpoint_id: str | None = None) -> Any:
    configurable: dict[str, Any] = {"thread_id": thread_id}
    if ns is not None:
        configurable["checkpoint_ns"] = ns
    if checkpoint_id is not None:
        configurable["checkpoint_id"] = checkpoint_id
    return {"configurable": configurable}


def put(
    saver: RedisSaver,
    thread_id: str,
    n: int,
    *,
    ns: str = "",
    parent: str | None = None,
    values: dict[str, Any] | None = None,
    versions: dict[str, int] | None = None,
    **metadata: Any,
) -> str:
    """Store the n-th checkpoint of a thread, child of ``parent``, with ``values`` written at
    version n (and older ``versions`` kept); returns its id."""
    values = values or {}
    versions = {**(versions or {}), **{k: n for k in values}}
    checkpoint = generate_checkpoint(channel_values=values, channel_versions=versions)
    stored = saver.put(
        config(thread_id, ns, parent),
        checkpoint,
        {"source": "loop", "step": n, **metadata},  # type: ignore[typeddict-item]
        {k: n for k in values},
    )
    return str(stored["configurable"]["checkpoint_id"])


# --- a small graph: a DeltaChannel list, a node that adds to it and may ask a human -------------


def concat(state: list[str], writes: list[Any]) -> list[str]:
    out = list(state)
    for write in writes:
        out += write if isinstance(write, list) else [write]
    return out


class DeltaState(TypedDict):
    items: Annotated[list[str], DeltaChannel(concat, snapshot_frequency=3)]
    asked: str


def build_graph(saver: BaseCheckpointSaver[Any], ask: bool = False) -> Any:
    def work(state: DeltaState) -> dict[str, Any]:
        return {"items": [f"work {len(state['items'])}"]}

    def check(state: DeltaState) -> dict[str, Any]:
        answer = interrupt("ok?") if ask else "auto"
        return {"asked": str(answer), "items": [f"checked {answer}"]}

    builder = StateGraph(DeltaState)
    builder.add_node("work", work)
    builder.add_node("check", check)
    builder.add_edge(START, "work")
    builder.add_edge("work", "check")
    return builder.compile(checkpointer=saver)


def run_turns(graph: Any, thread_id: str, turns: int) -> dict[str, Any]:
    cfg = config(thread_id, ns=None)
    state: dict[str, Any] = {}
    for i in range(turns):
        state = graph.invoke({"items": [f"user {i}"]}, cfg)
    return state


# --- layout ----------------------------------------------------------------------------------


@pytest.mark.parametrize("thread_id", ["", "a", "{", "}", "x{y}z", "%7B", "{}", "naïve 🌍", "t:1"])
def test_both_keys_of_a_thread_share_its_own_hash_tag(thread_id: str) -> None:
    data, index = _calls.keys("checkpoint:", thread_id)
    assert key_slot(data.encode()) == key_slot(index.encode())
    tag = data[data.index("{") + 1 : data.index("}")]
    assert tag and tag == index[index.index("{") + 1 : index.index("}")]
    assert data.startswith("checkpoint:{t:") and data.endswith("}:data")


def test_distinct_threads_get_distinct_keys() -> None:
    ids = ["", "a", "{", "}", "%7B", "%7D", "%", "%25", "{}", "%7B%7D", "a}b", "a%7Db"]
    assert len({_calls.keys("p:", t) for t in ids}) == len(ids)


def test_key_prefix_may_not_hold_a_brace() -> None:
    with pytest.raises(errors.InvalidArgumentError):
        RedisSaver(key_prefix="app:{tenant}:")


@pytest.mark.parametrize("thread_id", ["", "{", "x{y}z", "naïve 🌍"])
def test_any_thread_id_round_trips(url: str, client: redis.Redis, thread_id: str) -> None:
    saver = RedisSaver(url)
    put(saver, thread_id, 1, values={"a": "x"})
    got = saver.get_tuple(config(thread_id))
    assert got is not None and got.checkpoint["channel_values"] == {"a": "x"}
    assert got.config["configurable"]["thread_id"] == thread_id
    assert sorted(client.keys()) == sorted(k.encode() for k in saver.keys(thread_id))


def test_the_functions_the_server_lists_are_the_ones_python_calls(
    url: str, client: redis.Redis
) -> None:
    assert load_checkpoint_functions(client) == "pyhistory_checkpoint_v5"
    (library,) = [lib for lib in client.function_list() if lib[1] == b"pyhistory_checkpoint_v5"]
    listed = {f[1].decode() for f in library[library.index(b"functions") + 1]}
    called = {
        getattr(_calls, name)
        for name in (
            "PUT",
            "PUT_WRITES",
            "GET",
            "GET_RO",
            "LIST",
            "PRUNE",
            "COPY",
            "EXPORT",
            "IMPORT",
            "DELTA",
            "CLAIM",
            "DELETE_RUN",
            "RETAIN",
            "TRIM",
        )
    }
    assert listed == called == set(LIBRARY.functions)


# Every released version of the checkpoint library and the sha256 of its code. A change to
# lua/pyhistory_checkpoint.lua ships under a new name (pyhistory_checkpoint_v6, ...): two releases
# share a server during a rollout, and FUNCTION LOAD REPLACE of one name with other code flaps.
RELEASED = {
    "pyhistory_checkpoint_v1": "fd1e5be6d52daa93",
    "pyhistory_checkpoint_v2": "d1395b9972f762e8",
    "pyhistory_checkpoint_v3": "bf62e5f9ebcc5ec2",
    "pyhistory_checkpoint_v4": "3cdbe7d1c35cc957",
    "pyhistory_checkpoint_v5": "d704b498564c2c67",
}


def test_library_version_is_pinned_to_its_code() -> None:
    digest = hashlib.sha256(LUA.read_bytes()).hexdigest()[:16]
    assert LIBRARY.name in RELEASED, f"add {LIBRARY.name} to RELEASED"
    assert RELEASED[LIBRARY.name] == digest, (
        f"lua/pyhistory_checkpoint.lua changed (now {digest}) but its library name is still "
        f"{LIBRARY.name}: ship the change as a new version"
    )
    assert all(name.startswith(f"{LIBRARY.name}_") for name in LIBRARY.functions)


def test_every_error_code_the_library_sends_is_mapped() -> None:
    source = LUA.read_text()
    sent = set(re.findall(r"(?:bad|not_whole)\('([A-Z]+)'", source))
    documented = set(re.findall(r"^  ([A-Z]+)  +", source.split("]]", 1)[0], re.MULTILINE))
    assert sent == documented
    assert sent <= set(errors.SERVER_ERRORS)


def test_the_wheel_ships_the_library_byte_for_byte(tmp_path: Path) -> None:
    import subprocess
    import sys
    import zipfile

    subprocess.run(
        # offline: the installed hatchling (test extra) builds it, no index is asked for one
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"),
            *("--no-index", "-q", "-w", str(tmp_path), str(ROOT)),
        ],
        check=True,
    )
    (wheel,) = tmp_path.glob("pyhistory-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("pyhistory/lua/pyhistory_checkpoint.lua") == LUA.read_bytes()
        assert "pyhistory/checkpoint/saver.py" in archive.namelist()


def test_import_pyhistory_does_not_import_the_saver() -> None:
    import subprocess
    import sys

    code = "import sys, pyhistory; print(any(m.startswith('langgraph') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- one round trip per operation --------------------------------------------------------------


def commands(client: redis.Redis) -> dict[str, int]:
    return {
        name.removeprefix("cmdstat_"): int(stats["calls"])
        for name, stats in client.info("commandstats").items()
    }


def test_each_operation_is_one_call(url: str, client: redis.Redis) -> None:
    saver = RedisSaver(url, ttl=60)
    saver.setup()
    first = put(saver, "t", 1, values={"a": 1})
    client.config_resetstat()
    second = put(saver, "t", 2, parent=first, values={"a": 2, "b": 3})
    saver.put_writes(config("t", "", second), [("a", 1), ("b", 2)], "task")
    saver.get_tuple(config("t"))
    list(saver.list(config("t")))
    saver.get_delta_channel_history(config=config("t"), channels=["a"])
    saver.copy_thread("t", "u")
    saver.prune(["u"])
    saver.delete_thread("u")
    sent = commands(client)
    # an unfenced put_writes, and a put without retention, fencing or an unknown parent, are
    # plain commands in one MULTI/EXEC, no function call
    assert sent.pop("fcall") == 5
    assert sent.pop("del") == 1
    # the put's values go in a plain HSET in the same MULTI/EXEC as its call: one flight
    assert sent.pop("multi") == sent.pop("exec") == 2
    assert sent.pop("config|resetstat", 1) == 1
    assert not {
        c
        for c in sent
        if not c.startswith(
            ("hget", "hset", "hmget", "hincrby", "hscan", "hstrlen", "z", "type", "expire", "hdel")
        )
    }


def same(a: Any, b: Any) -> None:
    """Two checkpoint tuples hold the same checkpoint, values, metadata, parent and writes."""
    assert a is not None and b is not None
    assert a.config == b.config and a.parent_config == b.parent_config
    assert a.checkpoint == b.checkpoint and a.metadata == b.metadata
    assert a.pending_writes == b.pending_writes


def test_a_get_of_the_newest_this_saver_wrote_is_plain_commands(
    url: str, client: redis.Redis
) -> None:
    """The newest checkpoint a saver wrote comes back through plain commands in one MULTI/EXEC
    (no value crosses into Lua), with the TTL refreshed, the same as the library's get has it;
    only the values the saver does not hold travel."""
    saver, fresh = RedisSaver(url, ttl=60), RedisSaver(url, value_cache_bytes=0)
    first = put(saver, "t", 1, values={"a": "x" * 5000})
    put(saver, "t", 2, parent=first, values={"b": 3}, versions={"a": 1})
    data, index = saver.keys("t")
    client.expire(data, 5)
    client.config_resetstat()
    got = saver.get_tuple(config("t"))
    sent = commands(client)
    assert "fcall" not in sent and sent["multi"] == sent["exec"] == 1, sent
    assert client.ttl(data) > 50 and client.ttl(index) > 50
    same(got, fresh.get_tuple(config("t")))
    assert got is not None and got.checkpoint["channel_values"] == {"a": "x" * 5000, "b": 3}
    assert sent["hmget"] == 1


def test_a_plain_get_whose_guess_no_longer_holds_asks_the_library(
    url: str, client: redis.Redis
) -> None:
    """Another writer's newer checkpoint, pending writes on the newest, a deleted thread: the
    saver's plain get sees it in the same round trip and the library's get answers; what the
    library found is the next plain get's guess."""
    saver, other = RedisSaver(url), RedisSaver(url)
    first = put(saver, "t", 1, values={"a": 1})
    second = put(other, "t", 2, parent=first, values={"a": 2})
    same(saver.get_tuple(config("t")), other.get_tuple(config("t", checkpoint_id=second)))
    client.config_resetstat()
    saver.get_tuple(config("t"))  # the library's answer became the guess
    assert "fcall" not in commands(client)
    other.put_writes(config("t", "", second), [("a", 5)], "task")
    got = saver.get_tuple(config("t"))
    assert got is not None and [w[1:] for w in got.pending_writes] == [("a", 5)]
    saver.put_writes(config("t", "", second), [("a", 6)], "task2")
    client.config_resetstat()
    got = saver.get_tuple(config("t"))  # a head with pending writes: the library's get at once
    assert commands(client).get("multi", 0) == 0
    assert got is not None and len(got.pending_writes) == 2
    third = put(saver, "t", 3, parent=second, values={"a": 3})
    saver.delete_thread("t")
    assert saver.get_tuple(config("t")) is None
    assert saver.get_tuple(config("t", checkpoint_id=third)) is None


async def test_a_get_of_the_newest_this_saver_wrote_is_plain_commands_asyncio(
    url: str, client: redis.Redis
) -> None:
    saver, other = RedisSaver(url), RedisSaver(url)
    checkpoint = generate_checkpoint(channel_values={"a": 1}, channel_versions={"a": 1})
    stored = await saver.aput(config("t"), checkpoint, {"step": 1}, {"a": 1})  # type: ignore[typeddict-item]
    await asyncio.to_thread(client.config_resetstat)
    got = await saver.aget_tuple(config("t"))
    assert "fcall" not in await asyncio.to_thread(commands, client)
    same(got, await other.aget_tuple(stored))
    parent = stored["configurable"]["checkpoint_id"]
    second = await asyncio.to_thread(put, other, "t", 2, parent=parent, values={"a": 2})
    got = await saver.aget_tuple(config("t"))
    assert got is not None and got.config["configurable"]["checkpoint_id"] == second


# --- expiry ----------------------------------------------------------------------------------


def test_every_write_sets_the_ttl_on_both_keys(url: str, client: redis.Redis) -> None:
    saver = RedisSaver(url, ttl=100)
    data, index = saver.keys("t")
    first = put(saver, "t", 1, values={"a": 1})
    assert_ttl(client, data, 100)
    assert_ttl(client, index, 100)
    client.expire(data, 10)
    client.expire(index, 10)
    saver.put_writes(config("t", "", first), [("a", 5)], "task")
    assert client.ttl(data) > 90 and client.ttl(index) > 90


def test_reads_slide_the_expiry_unless_told_not_to(url: str, client: redis.Redis) -> None:
    saver = RedisSaver(url, ttl=100)
    data, index = saver.keys("t")
    put(saver, "t", 1)
    client.expire(data, 10)
    client.expire(index, 10)
    RedisSaver(url, ttl=100, refresh_ttl_on_read=False).get_tuple(config("t"))
    assert client.ttl(data) <= 10
    saver.get_tuple(config("t"))
    assert client.ttl(data) > 90 and client.ttl(index) > 90


def test_a_thread_expires_whole(url: str, client: redis.Redis) -> None:
    saver = RedisSaver(url, ttl=1)
    first = put(saver, "t", 1, values={"a": 1})
    saver.put_writes(config("t", "", first), [("a", 5)], "task")
    time.sleep(2.1)
    assert client.exists(*saver.keys("t")) == 0
    assert saver.get_tuple(config("t")) is None


# --- list ------------------------------------------------------------------------------------


def test_list_pages_through_long_threads(url: str) -> None:
    saver = RedisSaver(url)
    ids, parent = [], None
    for n in range(1, 101):
        parent = put(saver, "t", n, parent=parent, kind="even" if n % 2 == 0 else "odd")
        ids.append(parent)
    assert [t.checkpoint["id"] for t in saver.list(config("t"))] == ids[::-1]
    assert len(list(saver.list(config("t"), limit=70))) == 70
    evens = [t.metadata["step"] for t in saver.list(config("t"), filter={"kind": "even"})]
    assert evens == list(range(100, 0, -2))
    before = [t.metadata["step"] for t in saver.list(config("t"), before=config("t", "", ids[9]))]
    assert before == list(range(9, 0, -1))


def test_a_rare_match_is_found_past_one_calls_budget(url: str) -> None:
    saver = RedisSaver(url)
    parent = None
    for n in range(1, 1302):
        parent = put(saver, "t", n, parent=parent, rare=n in (3, 1300))
    found = [t.metadata["step"] for t in saver.list(config("t"), filter={"rare": True})]
    assert found == [1300, 3]


def test_list_without_a_namespace_lists_them_all(url: str) -> None:
    saver = RedisSaver(url)
    for ns in ("", "child:1", "child:2"):
        put(saver, "t", 1, ns=ns)
    assert len(list(saver.list(config("t", ns=None)))) == 3
    assert len(list(saver.list(config("t", ns="child:1")))) == 1


def test_a_filter_on_null_matches_a_missing_key_as_in_memory(url: str) -> None:
    saver = RedisSaver(url)
    put(saver, "t", 1)
    assert len(list(saver.list(config("t"), filter={"absent": None}))) == 1


def test_list_needs_a_thread(url: str) -> None:
    with pytest.raises(errors.InvalidArgumentError, match="thread_id"):
        list(RedisSaver(url).list(None))


# --- retention -------------------------------------------------------------------------------


def test_keep_last_trims_inside_put(url: str, client: redis.Redis) -> None:
    saver = RedisSaver(url, keep_last=3)
    parent = None
    for n in range(1, 11):
        values = {"a": f"v{n}", "b": "same"} if n == 1 else {"a": f"v{n}"}
        parent = put(saver, "t", n, parent=parent, values=values, versions={"b": 1})
        saver.put_writes(config("t", "", parent), [("a", n)], f"task{n}")
    steps = [t.metadata["step"] for t in saver.list(config("t"))]
    assert steps == [10, 9, 8]
    data, _ = saver.keys("t")
    fields = client.hkeys(data)
    assert sum(f.startswith(b"c\0") for f in fields) == 3
    assert sum(f.startswith((b"k\0", b"m\0")) for f in fields) == 6
    assert sum(f.startswith(b"w\0") for f in fields) == 3
    # "a" at versions 8..10, and "b" from checkpoint 1, which every kept checkpoint still uses
    assert {f for f in fields if f.startswith(b"b\0")} == {
        b"b\0\0a\0008",
        b"b\0\0a\0009",
        b"b\0\0a\00010",
        b"b\0\0b\0001",
    }
    latest = saver.get_tuple(config("t"))
    assert latest is not None
    assert latest.checkpoint["channel_values"] == {"a": "v10", "b": "same"}


def test_trim_every_bounds_a_namespace_and_frees_what_it_removes(
    url: str, client: redis.Redis
) -> None:
    """keep_last=3, trimmed on the first put and then every 4th: never more than 3 + 4 - 1
    checkpoints, exactly 3 right after a trim, and the values and writes of the removed ones go
    (the reference counts stay exact across puts that only index)."""
    saver = RedisSaver(url, keep_last=3, trim_every=4)
    saver.setup()
    data, index = saver.keys("t")
    parent = None
    counts = []
    client.config_resetstat()
    for n in range(1, 20):
        parent = put(saver, "t", n, parent=parent, values={"a": f"v{n}"})
        saver.put_writes(config("t", "", parent), [("a", n)], f"task{n}")
        counts.append(client.zlexcount(index, "[c\0", "(c\0\xff"))
    # only the puts that trim call the library; the others index themselves with plain commands
    assert client.info("commandstats")["cmdstat_fcall"]["calls"] == 5
    assert max(counts) == 6
    assert [n for n, count in enumerate(counts, 1) if count == 3] == [3, 5, 9, 13, 17]
    fields = client.hkeys(data)
    kept = sum(f.startswith(b"c\0") for f in fields)
    assert kept == counts[-1]
    assert sum(f.startswith(b"b\0") for f in fields) == kept
    assert sum(f.startswith(b"w\0") for f in fields) == kept
    assert {int(client.hget(data, f) or 0) for f in fields if f.startswith(b"n\0")} == {1}
    assert saver.get_tuple(config("t")).checkpoint["channel_values"] == {"a": "v19"}  # type: ignore[union-attr]
    # a saver that does not remember the thread trims on its first put
    put(RedisSaver(url, keep_last=3, trim_every=4), "t", 20, parent=parent, values={"a": "v20"})
    assert client.zlexcount(index, "[c\0", "(c\0\xff") == 3


def test_trim_every_defaults_to_half_of_keep_last(url: str) -> None:
    assert RedisSaver(url, keep_last=10)._trim_every == 5
    assert RedisSaver(url, keep_last=3)._trim_every == 1
    assert RedisSaver(url, keep_last=2)._trim_every == 1
    assert RedisSaver(url, max_age=60)._trim_every == 1
    for bad in (0, -1, True, 1.5):
        with pytest.raises(errors.InvalidSizeError):
            RedisSaver(url, keep_last=3, trim_every=bad)  # type: ignore[arg-type]


def test_retention_is_per_namespace(url: str) -> None:
    saver = RedisSaver(url, keep_last=2)
    for ns in ("", "sub"):
        parent = None
        for n in range(1, 6):
            parent = put(saver, "t", n, ns=ns, parent=parent)
    assert len(list(saver.list(config("t", ns=None)))) == 4


def test_retention_never_breaks_a_delta_channel_chain(url: str) -> None:
    """keep_last=2 with a DeltaChannel snapshotting every 3rd update: every state read back equals
    the in-memory saver's, and what stays stored is bounded by the snapshot distance."""
    memory = build_graph(InMemorySaver())
    kept = build_graph(RedisSaver(url, keep_last=2))
    for turns in range(1, 9):
        assert run_turns(kept, f"t{turns}", turns) == run_turns(memory, f"t{turns}", turns)
    saver = RedisSaver(url)
    for i in range(30):
        state = kept.invoke({"items": [f"user {i}"]}, config("long", ns=None))
        reference = memory.invoke({"items": [f"user {i}"]}, config("long", ns=None))
        assert state == reference
        assert kept.get_state(config("long", ns=None)).values == state
        stored = len(list(saver.list(config("long"))))
        assert stored <= 2 + 3 * 3, stored  # the kept ones, and back to their last snapshots


def test_delta_channel_history_matches_in_memory(url: str) -> None:
    memory_saver, redis_saver = InMemorySaver(), RedisSaver(url)
    run_turns(build_graph(memory_saver), "t", 5)
    run_turns(build_graph(redis_saver), "t", 5)
    mine = [t.config for t in redis_saver.list(config("t"))]
    theirs = [t.config for t in memory_saver.list(config("t"))]
    assert len(mine) == len(theirs)
    for a, b in zip(mine, theirs, strict=True):
        got = redis_saver.get_delta_channel_history(config=a, channels=["items", "asked"])
        want = memory_saver.get_delta_channel_history(config=b, channels=["items", "asked"])
        for channel in ("items", "asked"):
            assert [w[1:] for w in got[channel]["writes"]] == [
                w[1:] for w in want[channel]["writes"]
            ]
            assert got[channel].get("seed") == want[channel].get("seed")


def test_prune_keeps_what_the_latest_delta_state_needs(url: str) -> None:
    saver = RedisSaver(url)
    graph = build_graph(saver)
    state = run_turns(graph, "t", 7)
    before = [t.config["configurable"]["checkpoint_id"] for t in saver.list(config("t"))]
    per_turn = len(before) // 7
    saver.prune(["t"])
    assert graph.get_state(config("t", ns=None)).values == state
    kept = [t.config["configurable"]["checkpoint_id"] for t in saver.list(config("t"))]
    # the newest, and at most the rest of its turn (what its DeltaChannels may be rebuilt from)
    assert kept == before[: len(kept)]
    assert 1 <= len(kept) <= per_turn, (len(kept), per_turn)
    assert graph.invoke({"items": ["more"]}, config("t", ns=None))["items"][-3:] == [
        "more",
        f"work {len(state['items']) + 1}",
        "checked auto",
    ]


# --- copy ------------------------------------------------------------------------------------


def test_a_copied_thread_goes_on_by_itself(url: str) -> None:
    saver = RedisSaver(url)
    graph = build_graph(saver)
    state = run_turns(graph, "source", 3)
    saver.copy_thread("source", "copy")
    assert graph.get_state(config("copy", ns=None)).values == state
    graph.invoke({"items": ["only in the copy"]}, config("copy", ns=None))
    assert graph.get_state(config("source", ns=None)).values == state


class LongDeltaState(TypedDict):
    items: Annotated[list[str], DeltaChannel(concat, snapshot_frequency=1000)]
    asked: str


def build_long_graph(saver: BaseCheckpointSaver[Any]) -> Any:
    """A DeltaChannel that never snapshots within a test: its rebuild walks to the root."""

    def work(state: LongDeltaState) -> dict[str, Any]:
        return {"items": [f"work {len(state['items'])}"], "asked": "no"}

    builder = StateGraph(LongDeltaState)
    builder.add_node("work", work)
    builder.add_edge(START, "work")
    return builder.compile(checkpointer=saver)


def counting(saver: RedisSaver) -> list[Call]:
    """The calls the saver reads and writes with, recorded as they go."""
    sent: list[Call] = []
    read, write, aread, awrite = saver._read, saver._write, saver._aread, saver._awrite

    def _read(call: Call) -> Any:
        sent.append(call)
        return read(call)

    def _write(call: Call) -> Any:
        sent.append(call)
        return write(call)

    async def _aread(call: Call) -> Any:
        sent.append(call)
        return await aread(call)

    async def _awrite(call: Call) -> Any:
        sent.append(call)
        return await awrite(call)

    saver._read, saver._write, saver._aread, saver._awrite = (  # type: ignore[method-assign]
        _read,
        _write,
        _aread,
        _awrite,
    )
    return sent


def history(got: Any) -> dict[str, Any]:
    return {
        channel: ([w[1:] for w in item["writes"]], item.get("seed", "no seed"))
        for channel, item in got.items()
    }


def paged_delta_case(url: str) -> tuple[RedisSaver, list[Call], list[tuple[Any, Any]]]:
    """A thread whose DeltaChannel rebuilds walk up to about 12 ancestors, a saver that walks 3
    per call (recording its calls), and what each checkpoint's rebuild must return: what the
    in-memory saver returns, and what one call returns."""
    memory, whole, paged = InMemorySaver(), RedisSaver(url), RedisSaver(url, value_cache_bytes=0)
    paged._delta_budget = 3
    for i in range(6):
        build_long_graph(memory).invoke({"items": [f"user {i}"]}, config("t", ns=None))
        build_long_graph(whole).invoke({"items": [f"user {i}"]}, config("t", ns=None))
    mine = [t.config for t in whole.list(config("t"))]
    theirs = [t.config for t in memory.list(config("t"))]
    assert len(mine) == len(theirs) > 3 * 3
    cases = []
    for a, b in zip(mine, theirs, strict=True):
        want = history(memory.get_delta_channel_history(config=b, channels=DELTA_CHANNELS))
        assert history(whole.get_delta_channel_history(config=a, channels=DELTA_CHANNELS)) == want
        cases.append((a, want))
    assert len(cases[0][1]["items"][0]) > 3 * 3  # the newest's rebuild: more writes than a call
    return paged, counting(paged), cases


DELTA_CHANNELS = ["items", "asked"]


def test_a_delta_walk_longer_than_the_budget_returns_the_same_history(url: str) -> None:
    paged, sent, cases = paged_delta_case(url)
    for cfg, want in cases:
        assert history(paged.get_delta_channel_history(config=cfg, channels=DELTA_CHANNELS)) == want
    assert len(sent) > len(cases) + 4  # several calls for the longer walks


async def test_a_delta_walk_longer_than_the_budget_returns_the_same_history_asyncio(
    url: str,
) -> None:
    paged, sent, cases = await asyncio.to_thread(paged_delta_case, url)
    for cfg, want in cases:
        got = await paged.aget_delta_channel_history(config=cfg, channels=DELTA_CHANNELS)
        assert history(got) == want
    assert len(sent) > len(cases) + 4


def walk_cases(saver: RedisSaver) -> list[tuple[Any, Any]]:
    """Each checkpoint of thread "t" (newest first) and its rebuild, as ``saver`` returns it."""
    return [
        (t.config, history(saver.get_delta_channel_history(config=t.config, channels=["items"])))
        for t in saver.list(config("t"))
    ]


def test_a_step_walks_only_the_ancestors_added_since_the_last(url: str) -> None:
    """An agent's next step rebuilds its DeltaChannel through the ancestors the last step walked,
    plus the new ones: the server checks the held ones (that each is there with as many pending
    writes) instead of reading them again, and the rebuild is the same as a fresh saver's."""
    saver, fresh = RedisSaver(url), RedisSaver(url, value_cache_bytes=0)
    graph = build_long_graph(saver)
    walked: list[tuple[int, int, int]] = []  # (ancestors offered, held used, ancestors walked)
    read = saver._read

    def _read(call: Call) -> Any:
        reply = read(call)
        if call.args[0] == LIBRARY.function("delta"):
            walked.append((int(call.args[8]), int(reply[1]), len(reply[2]) // 2))
        return reply

    saver._read = _read  # type: ignore[method-assign]
    for i in range(8):
        graph.invoke({"items": [f"user {i}"]}, config("t", ns=None))
    assert walked[0][0] == 0
    assert max(offered for offered, _, _ in walked) > 10, walked
    assert all(used and new <= 3 for offered, used, new in walked[1:]), walked  # one turn's
    for (cfg, got), (_, want) in zip(walk_cases(saver), walk_cases(fresh), strict=True):
        assert got == want, cfg


def test_a_held_walk_that_changed_is_walked_again(url: str) -> None:
    """A write added to an ancestor the saver walked before (a fork resumed from it), or an
    ancestor removed since, is never hidden by what the saver holds."""
    saver, fresh = RedisSaver(url), RedisSaver(url, value_cache_bytes=0)
    graph = build_long_graph(saver)
    for i in range(5):
        graph.invoke({"items": [f"user {i}"]}, config("t", ns=None))
    newest = saver.get_tuple(config("t", ns=None))
    assert newest is not None
    ancestors = list(saver.list(config("t")))
    older = ancestors[3].config
    assert history(
        saver.get_delta_channel_history(config=newest.config, channels=["items"])
    ) == history(fresh.get_delta_channel_history(config=newest.config, channels=["items"]))
    # a new write on an ancestor the held walk names
    saver.put_writes(older, [("items", ["a late write"])], "late-task")
    got = history(saver.get_delta_channel_history(config=newest.config, channels=["items"]))
    want = history(fresh.get_delta_channel_history(config=newest.config, channels=["items"]))
    assert got == want and ["a late write"] in [w[1] for w in got["items"][0]]
    # an ancestor removed: the walk ends where the chain is broken, as a fresh one does
    data, _ = saver.keys("t")
    with redis.Redis.from_url(url) as admin:
        admin.hdel(data, "c\0\0" + ancestors[2].config["configurable"]["checkpoint_id"])
    got = history(saver.get_delta_channel_history(config=newest.config, channels=["items"]))
    want = history(fresh.get_delta_channel_history(config=newest.config, channels=["items"]))
    assert got == want


def test_a_walk_cache_is_bounded() -> None:
    walks = _calls.WalkCache(4000)
    held = _calls.HeldWalk((("a", 1),), {"items": b"x" * 100}, {"items": (b"w" * 100,)})
    for i in range(100):
        walks.hold((f"t{i}", "", ("items",)), held)
    assert walks.held_bytes <= 4000
    assert walks.get(("t99", "", ("items",))) is held
    assert walks.get(("t0", "", ("items",))) is None
    walks.hold(("t99", "", ("items",)), None)
    assert walks.get(("t99", "", ("items",))) is None
    huge = _calls.HeldWalk((("a", 1),), {"items": b"x" * 1000}, {"items": ()})
    walks.hold(("big", "", ("items",)), huge)  # more than an eighth of the bound: not held
    assert walks.get(("big", "", ("items",))) is None


def test_delta_refuses_a_held_walk_it_cannot_read(url: str) -> None:
    for held in ((1,), (1, "a"), (1, "a", "-1"), (1, "a\0", 1), (_calls.DELTA_BUDGET + 1,)):
        with pytest.raises(errors.InvalidArgumentError):
            raw(url, "delta", "", "", "", 5, *held, 1, "items")


def test_delta_refuses_a_budget_beyond_its_most(url: str) -> None:
    for budget in (0, _calls.DELTA_BUDGET + 1):
        with pytest.raises(errors.InvalidSizeError):
            raw(url, "delta", "", "", "", budget, 0, 1, "items")
    with pytest.raises(errors.InvalidSizeError):
        raw(url, "export", "", _calls.COPY_BUDGET + 1)


def thread_contents(client: Any, saver: RedisSaver, thread_id: str) -> tuple[Any, Any]:
    data, index = saver.keys(thread_id)
    fields = client.hgetall(data)
    fields.pop(b"o", None)
    return fields, client.zrange(index, 0, -1)


def copy_case(saver: RedisSaver, client: Any) -> tuple[Any, dict[str, Any], Any, list[Call]]:
    """A thread of about 60 fields and 60 index members (with a pending write), copied at most 7
    of them per call by ``saver``: the graph, its state, the thread's contents, the calls."""
    graph = build_graph(saver)
    state = run_turns(graph, "source", 6)
    saver.put_writes(
        saver.get_tuple(config("source")).config,  # type: ignore[union-attr]
        [("asked", "pending")],
        "task",
    )
    contents = thread_contents(client, saver, "source")
    assert len(contents[0]) > 5 * 7 and len(contents[1]) > 5 * 7
    saver._copy_budget = 7
    return graph, state, contents, counting(saver)


def check_copy(
    saver: RedisSaver, client: Any, case: tuple[Any, dict[str, Any], Any, list[Call]], target: str
) -> None:
    graph, state, contents, sent = case
    assert thread_contents(client, saver, target) == contents
    assert len(sent) > (len(contents[0]) + len(contents[1])) // 7 // 2
    assert graph.get_state(config(target, ns=None)).values == state
    graph.invoke({"items": ["only in the copy"]}, config(target, ns=None))
    assert graph.get_state(config("source", ns=None)).values == state


def test_a_thread_larger_than_the_copy_budget_is_copied_whole(
    url: str, client: redis.Redis
) -> None:
    saver = RedisSaver(url, ttl=600)
    case = copy_case(saver, client)
    saver.copy_thread("source", "copy")
    check_copy(saver, client, case, "copy")
    assert 0 < client.ttl(saver.keys("copy")[0]) <= 600


async def test_a_thread_larger_than_the_copy_budget_is_copied_whole_asyncio(
    url: str, client: redis.Redis
) -> None:
    saver = RedisSaver(url, ttl=600)
    case = await asyncio.to_thread(copy_case, saver, client)
    await saver.acopy_thread("source", "copy")
    await asyncio.to_thread(check_copy, saver, client, case, "copy")


def other_slot(client: Any, saver: RedisSaver, thread_id: str) -> str:
    slot = client.keyslot(saver.keys(thread_id)[0])
    return next(
        f"copy-{i}" for i in range(100) if client.keyslot(saver.keys(f"copy-{i}")[0]) != slot
    )


@pytest.mark.cluster
def test_a_thread_larger_than_the_copy_budget_is_copied_across_slots(
    cluster_client: redis.cluster.RedisCluster,
) -> None:
    saver = RedisSaver(redis_client=cluster_client)
    case = copy_case(saver, cluster_client)
    target = other_slot(cluster_client, saver, "source")
    saver.copy_thread("source", target)
    check_copy(saver, cluster_client, case, target)


@pytest.mark.cluster
async def test_a_thread_larger_than_the_copy_budget_is_copied_across_slots_asyncio(
    cluster_client: redis.cluster.RedisCluster,
) -> None:
    node = cluster_client.get_default_node()
    aclient = redis.asyncio.cluster.RedisCluster(host=node.host, port=node.port)
    try:
        saver = RedisSaver(redis_client=cluster_client, async_redis_client=aclient)
        case = await asyncio.to_thread(copy_case, saver, cluster_client)
        target = other_slot(cluster_client, saver, "source")
        await saver.acopy_thread("source", target)
        await asyncio.to_thread(check_copy, saver, cluster_client, case, target)
    finally:
        await aclient.aclose()


# --- interrupts ------------------------------------------------------------------------------


def test_interrupt_and_resume(url: str) -> None:
    graph = build_graph(RedisSaver(url), ask=True)
    cfg = config("t", ns=None)
    graph.invoke({"items": ["hello"]}, cfg)
    assert graph.get_state(cfg).interrupts[0].value == "ok?"
    state = graph.invoke(Command(resume="yes"), cfg)
    assert state == {"items": ["hello", "work 1", "checked yes"], "asked": "yes"}


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"checkpoint_ns": "a\0b"},
        {"checkpoint_id": "x\0"},
        {"thread_id": None},
        {"thread_id": "\ud800"},
    ],
)
def test_bad_ids_are_refused_before_any_io(bad: dict[str, Any]) -> None:
    saver = RedisSaver("redis://127.0.0.1:1/0")  # nothing listens there
    cfg = {"configurable": {"thread_id": "t", "checkpoint_ns": "", **bad}}
    with pytest.raises(errors.InvalidCheckpointIdError):
        saver.get_tuple(cfg)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(errors.InvalidTTLError):
        RedisSaver(ttl=-1)
    with pytest.raises(errors.InvalidSizeError):
        RedisSaver(keep_last=0)
    with pytest.raises(errors.InvalidArgumentError):
        RedisSaver(wait_for_replicas=-1)
    with pytest.raises(errors.InvalidArgumentError):
        RedisSaver().prune(["t"], strategy="everything")


def raw(url: str, function: str, *args: Any) -> Any:
    keys = _calls.keys("checkpoint:", "t")
    with redis.Redis.from_url(url) as client:
        return run(
            client, Call("FCALL", (LIBRARY.function(function), 2, *keys, *args), keys[0], LIBRARY)
        )


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("x", 0, "", "", "", "id", "", "", "m\0", "m\0", 0, 0, 0, 0), errors.InvalidTTLError),
        ((0, -1, "", "", "", "id", "", "", "m\0", "m\0", 0, 0, 0, 0), errors.InvalidSizeError),
        ((0, 0, "", "", "", "", "", "", "m\0", "m\0", 0, 0, 0, 0), errors.InvalidCheckpointIdError),
        ((0, 0, "", "", "", "id", "", "", "no type", "m\0", 0, 0, 0, 0), errors.InvalidValueError),
        ((0, 0, "", "", "", "id", "", "", "m\0", "no type", 0, 0, 0, 0), errors.InvalidValueError),
        (
            (0, 0, "", "", "", "id", "", "", "m\0", "m\0", 2, "a", "1", 0, 0, 0),
            errors.InvalidArgumentError,
        ),
        (
            (0, 0, "", "", "", "id", "", "", "m\0", "m\0", 0, 0, 0, 0, "extra"),
            errors.InvalidArgumentError,
        ),
        (
            (0, 0, "", "", "", "id", "", "", "m\0", "m\0", 1, b"a\xff", "1", 0, 0, 0),
            errors.InvalidCheckpointIdError,
        ),
        (
            (0, 0, "", "", "", "id", "", "r\0n", "m\0", "m\0", 0, 0, 0, 0),
            errors.InvalidCheckpointIdError,
        ),
    ],
)
def test_the_library_refuses_bad_puts_and_stores_nothing(
    url: str, client: redis.Redis, args: tuple[Any, ...], error: type[Exception]
) -> None:
    with pytest.raises(error):
        raw(url, "put", *args[:3], 0, *args[3:])  # max_bytes 0 after the age cut
    if error is not errors.InvalidTTLError:
        with pytest.raises(errors.InvalidSizeError):
            raw(url, "put", *args[:3], "-1", *args[3:])
    assert client.dbsize() == 0


@pytest.mark.parametrize(
    ("function", "args", "error"),
    [
        ("trim", ("x", "", ""), errors.InvalidSizeError),
        ("trim", (-1, "", ""), errors.InvalidSizeError),
        ("trim", (1, b"a\xff", ""), errors.InvalidCheckpointIdError),
        ("trim", (1, "", "n\0s"), errors.InvalidCheckpointIdError),
        ("trim", (1, ""), errors.InvalidArgumentError),
        ("retain", (1, "", 0, "", "id", "a"), errors.InvalidArgumentError),
        ("retain", (1, "", 0, "", ""), errors.InvalidCheckpointIdError),
        ("retain", (1, "", "x", "", "id"), errors.InvalidSizeError),
    ],
)
def test_the_library_refuses_bad_retention_calls_and_changes_nothing(
    url: str, client: redis.Redis, function: str, args: tuple[Any, ...], error: type[Exception]
) -> None:
    saver = RedisSaver(url)
    first = put(saver, "t", 1, values={"a": 1})
    put(saver, "t", 2, parent=first, values={"a": 2})
    before = {key: client.dump(key) for key in saver.keys("t")}
    with pytest.raises(error):
        raw(url, function, *args)
    assert {key: client.dump(key) for key in saver.keys("t")} == before


@pytest.mark.parametrize("idx", ["01", "-0", "1.5", "", "x", "99999999999"])
def test_the_library_refuses_bad_write_indexes(url: str, client: redis.Redis, idx: str) -> None:
    with pytest.raises(errors.InvalidCheckpointIdError):
        raw(url, "put_writes", 0, "", "", "id", "task", "", 0, "a", "j\0", idx, "b", "j\0")
    assert client.dbsize() == 0


@pytest.mark.parametrize("keep_last", [None, 1], ids=["all", "keep_last"])
@pytest.mark.parametrize("which", [0, 1], ids=["data", "index"])
def test_a_wrong_type_key_is_refused_before_any_write(
    url: str, client: redis.Redis, which: int, keep_last: int | None
) -> None:
    saver = RedisSaver(url, keep_last=keep_last, trim_every=1 if keep_last else None)
    thread_keys = saver.keys("t")
    client.set(thread_keys[which], "not ours")
    first = None
    if which == 1:
        client.delete(thread_keys[1])
        first = put(saver, "t", 1, values={"a": 1})
        client.delete(thread_keys[1])
        client.set(thread_keys[1], "not ours")
    before = {key: client.dump(key) for key in thread_keys}
    fields_before = client.hgetall(thread_keys[0]) if which == 1 else {}
    with pytest.raises(errors.WrongTypeError):
        put(saver, "t", 2, parent=first, values={"a": 2})
    with pytest.raises(errors.WrongTypeError):
        saver.put_writes(config("t", "", first or "x"), [("a", 1), ("__error__", 2)], "task")
    if which == 1:
        with pytest.raises(errors.WrongTypeError):
            saver.prune(["t"])
    # The key of the wrong type is untouched, and every read of the thread fails while it
    # stays so. The other key may hold what the refused calls wrote with plain commands beside
    # them (in one MULTI/EXEC, which applies every command that can be applied): no read sees
    # them, and delete_thread removes them with the rest.
    assert client.dump(thread_keys[which]) == before[thread_keys[which]]
    with pytest.raises(errors.WrongTypeError):
        saver.get_tuple(config("t"))
    if which == 1:
        after = client.hgetall(thread_keys[0])
        assert {f: after[f] for f in fields_before if f[:1] != b"n"} == {
            f: v for f, v in fields_before.items() if f[:1] != b"n"
        }


# --- self-healing, least privilege, durability ------------------------------------------------


def test_a_flushed_library_is_loaded_again(url: str, client: redis.Redis) -> None:
    saver = RedisSaver(url)
    first = put(saver, "t", 1, values={"a": 1})
    client.function_flush()
    put(saver, "t", 2, parent=first, values={"a": 2})
    client.function_flush()
    got = saver.get_tuple(config("t"))
    assert got is not None and got.checkpoint["channel_values"] == {"a": 2}


async def test_a_flushed_library_is_loaded_again_asyncio(url: str, client: redis.Redis) -> None:
    saver = RedisSaver(url)
    client.function_flush()
    graph = build_graph(saver)
    await graph.ainvoke({"items": ["a"]}, config("t", ns=None))
    client.function_flush()
    state = await graph.ainvoke({"items": ["b"]}, config("t", ns=None))
    assert state["items"] == ["a", "work 1", "checked auto", "b", "work 4", "checked auto"]


def test_the_acl_rule_follows_what_the_lua_calls() -> None:
    called = {c.lower() for c in re.findall(r"redis\.call\(\s*'(\w+)'", LUA.read_text())}
    allowed = set(re.findall(r"\+(\S+)", acl_rule()))
    assert allowed == called | set(_calls.CLIENT_COMMANDS) | set(CLUSTER_CLIENT_COMMANDS)
    assert "~checkpoint:*" in acl_rule().split()
    assert "~a\\*b:*" in acl_rule("a*b:").split()


@pytest.fixture
def app_url(url: str, client: redis.Redis) -> str:
    """A URL that logs in as 'saver', a user with exactly acl_rule()."""
    client.execute_command("ACL", "SETUSER", "saver", "reset", "on", ">pw", *acl_rule().split())
    parts = urllib.parse.urlsplit(url)
    return parts._replace(netloc=f"saver:pw@{parts.hostname}:{parts.port}").geturl()


def test_an_acl_user_with_the_rule_runs_every_operation(app_url: str, client: redis.Redis) -> None:
    load_checkpoint_functions(client)  # the admin's deploy-time step
    saver = RedisSaver(app_url, ttl=60, keep_last=5)
    graph = build_graph(saver, ask=True)
    cfg = config("t", ns=None)
    graph.invoke({"items": ["hello"]}, cfg)
    graph.invoke(Command(resume="yes"), cfg)
    assert len(list(saver.list(config("t")))) == 4
    saver.copy_thread("t", "u")
    saver.prune(["t"])
    saver.get_delta_channel_history(config=config("u"), channels=["items"])
    saver.delete_thread("u")
    assert saver.get_tuple(config("u")) is None
    with redis.Redis.from_url(app_url) as app:
        with pytest.raises(redis.exceptions.NoPermissionError):
            app.get("message_store:x")
        with pytest.raises(redis.exceptions.NoPermissionError):
            app.execute_command("FUNCTION", "FLUSH")


def test_an_acl_user_cannot_load_the_library(app_url: str) -> None:
    with pytest.raises(errors.FunctionsNotLoadedError):
        RedisSaver(app_url).get_tuple(config("t"))
    with pytest.raises(errors.FunctionsNotLoadedError):
        put(RedisSaver(app_url, keep_last=3), "t", 1)  # retention is a function call


@pytest.fixture
def replica(server: Any, url: str) -> Iterator[testing.LocalServer]:
    if server.local is None:
        pytest.skip("needs a server process started by the tests")
    started = testing.start_server(
        server.kind, args=["--replicaof", "127.0.0.1", str(server.local.port)]
    )
    try:
        deadline = time.monotonic() + 10
        with started.client() as r:
            while r.info("replication").get("master_link_status") != "up":
                assert time.monotonic() < deadline, "the replica never connected"
                time.sleep(0.05)
        with server.client() as primary:
            while primary.execute_command("WAIT", 1, 100) < 1:
                assert time.monotonic() < deadline, "the replica never acknowledged"
        yield started
    finally:
        started.stop()


async def test_wait_for_replicas_asyncio(url: str, replica: testing.LocalServer) -> None:
    graph = build_graph(RedisSaver(url, wait_for_replicas=1, wait_timeout_ms=2000))
    state = await graph.ainvoke({"items": ["a"]}, config("t", ns=None))
    # acknowledged means the replica has it now
    on_replica = RedisSaver(replica.url, refresh_ttl_on_read=False)
    assert (await build_graph(on_replica).aget_state(config("t", ns=None))).values == state


def test_wait_for_replicas(url: str, replica: testing.LocalServer) -> None:
    state = run_turns(build_graph(RedisSaver(url, wait_for_replicas=1)), "s", 2)
    with replica.client() as r:
        on_replica = RedisSaver(redis_client=r, refresh_ttl_on_read=False)
        assert build_graph(on_replica).get_state(config("s", ns=None)).values == state
    with pytest.raises(errors.ReplicationError):
        put(RedisSaver(url, wait_for_replicas=2, wait_timeout_ms=100), "u", 1)


def test_the_readme_example_runs_as_written(url: str, client: redis.Redis) -> None:
    import subprocess
    import sys

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## LangGraph: a checkpointer", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    code = code.replace("redis://localhost:6379/0", url)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "['hi', 'hello!', 'are you there?', 'still here']" in done.stdout
    assert client.dbsize() == 0  # the example deletes its thread


# --- clients ---------------------------------------------------------------------------------


async def test_a_sync_client_serves_the_asyncio_methods_in_a_thread(url: str) -> None:
    graph = build_graph(RedisSaver(redis_client=redis.Redis.from_url(url)))
    state = await graph.ainvoke({"items": ["a"]}, config("t", ns=None))
    assert state["items"] == ["a", "work 1", "checked auto"]


def test_an_asyncio_client_alone_does_not_serve_the_sync_methods(url: str) -> None:
    saver = RedisSaver(async_redis_client=redis.asyncio.Redis.from_url(url, **VERSIONED))
    with pytest.raises(errors.HistoryError, match="async_redis_client"):
        saver.get_tuple(config("t"))
