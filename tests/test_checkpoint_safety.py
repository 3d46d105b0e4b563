"""The saver's safety features on real servers: write fencing (two workers resuming one thread),
retention that keeps what a pending interrupt, unapplied writes and DeltaChannel rebuilds need,
retention by age, exactly-once put_writes under a retried call, delete_for_runs, and values that
survive the round trip byte for byte."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import redis
import redis.asyncio
from faultproxy import FaultProxy
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.types import Command, Interrupt, Send
from test_checkpoint import build_graph, config, generate_checkpoint, put, run_turns

from pyhistory import errors
from pyhistory.checkpoint import RedisSaver, _calls

# --- write fencing -----------------------------------------------------------------------------


def test_a_worker_that_lost_ownership_writes_nothing(url: str, client: redis.Redis) -> None:
    """Two workers resume one thread: the one that claimed it last writes; the other gets
    StaleOwnerError from put and put_writes, and the thread is exactly as the owner left it."""
    first, second = RedisSaver(url), RedisSaver(url)
    graph_a, graph_b = build_graph(first), build_graph(second)
    assert first.claim_write_ownership("t") == 1
    run_turns(graph_a, "t", 2)
    assert second.claim_write_ownership("t") == 2  # the second worker takes the thread over
    head = first.get_tuple(config("t"))
    assert head is not None
    before = {k: client.dump(k) for k in first.keys("t")}
    with pytest.raises(errors.StaleOwnerError):
        graph_a.invoke({"items": ["stale"]}, config("t", ns=None))
    with pytest.raises(errors.StaleOwnerError):
        first.put_writes(head.config, [("items", "late")], "task")
    data = first.keys("t")[0]
    after = {k: client.dump(k) for k in first.keys("t")}
    assert after[first.keys("t")[1]] == before[first.keys("t")[1]]
    # only orphaned values of the refused put (fields no record names) may differ
    assert first.get_tuple(config("t")) == head
    assert len(list(first.list(config("t", ns=None)))) == len(list(second.list(config("t"))))
    assert client.hget(data, "o") == b"2"
    state = graph_b.invoke({"items": ["owner"]}, config("t", ns=None))
    assert "stale" not in state["items"] and state["items"][-3] == "owner"


def test_a_delete_ends_every_epoch_and_unfenced_writers_are_not_checked(url: str) -> None:
    owner, other = RedisSaver(url), RedisSaver(url)
    put(owner, "t", 1, values={"a": 1})
    owner.claim_write_ownership("t")
    put(owner, "t", 2, values={"a": 2})
    put(other, "t", 3, values={"a": 3})  # opt-in: a saver that never claims is not fenced
    owner.delete_thread("t")  # a delete (or an expiry) ends every epoch
    with pytest.raises(errors.StaleOwnerError):
        put(owner, "t", 4, values={"a": 4})
    with pytest.raises(errors.StaleOwnerError):
        owner.put_writes(config("t", "", "x"), [("a", 1)], "task")
    assert list(owner.list(config("t"))) == []
    assert owner.claim_write_ownership("t") == 1
    put(owner, "t", 5, values={"a": 5})


async def test_fencing_asyncio(url: str) -> None:
    first, second = RedisSaver(url), RedisSaver(url)
    await first.aclaim_write_ownership("t")
    graph = build_graph(first)
    await graph.ainvoke({"items": ["a"]}, config("t", ns=None))
    await second.aclaim_write_ownership("t")
    with pytest.raises(errors.StaleOwnerError):
        await graph.ainvoke({"items": ["b"]}, config("t", ns=None))
    assert second.write_epoch("t") == 2 and first.write_epoch("t") == 1


# --- retention ---------------------------------------------------------------------------------


def test_retention_keeps_a_pending_interrupt_and_the_resume_works(url: str) -> None:
    """keep_last=2 while an interrupt waits: the interrupted checkpoint stays (with its pending
    writes and the values and DeltaChannel history it needs) however many checkpoints a forked
    branch adds, and resuming it afterwards gives what an unbounded saver gives."""
    saver = RedisSaver(url, keep_last=2)
    graph = build_graph(saver, ask=True)
    cfg = config("t", ns=None)
    graph.invoke({"items": ["first"]}, cfg)
    waiting = graph.get_state(cfg)
    assert waiting.interrupts and waiting.interrupts[0].value == "ok?"
    # A branch forked from an older checkpoint piles up newer checkpoints in the namespace.
    history = list(graph.get_state_history(cfg))
    fork = history[-2].config
    for i in range(4):
        fork = graph.update_state(fork, {"items": [f"fork {i}"]}, as_node="work")
    kept = graph.get_state(waiting.config)
    assert kept.interrupts and kept.values == waiting.values
    resumed = graph.invoke(Command(resume="yes"), waiting.config)
    assert resumed["items"][-1] == "checked yes" and resumed["items"][0] == "first"


def test_retention_by_age_never_removes_the_newest(url: str) -> None:
    saver = RedisSaver(url)
    first = put(saver, "t", 1, values={"a": "old"})
    second = put(saver, "t", 2, parent=first, values={"a": "older"})
    time.sleep(1.2)
    aged = RedisSaver(url, max_age=1)
    third = put(aged, "t", 3, parent=second, values={"b": "new"}, versions={"a": 2})
    ids = [t.config["configurable"]["checkpoint_id"] for t in saver.list(config("t"))]
    assert ids == [third]
    got = saver.get_tuple(config("t"))
    assert got is not None and got.checkpoint["channel_values"] == {"a": "older", "b": "new"}
    time.sleep(1.2)
    put(aged, "t", 4, parent=third, ns="other", values={"c": 1})
    assert [t.config["configurable"]["checkpoint_id"] for t in saver.list(config("t"))] == [third]


def test_keep_last_frees_the_values_only_removed_checkpoints_named(
    url: str, client: redis.Redis
) -> None:
    saver = RedisSaver(url, keep_last=2)
    parent = None
    for n in range(1, 8):
        parent = put(saver, "t", n, parent=parent, values={"a": n}, versions={"b": 1})
    blobs = sorted(f for f in client.hkeys(saver.keys("t")[0]) if f.startswith(b"b\0"))
    assert blobs == [b"b\0\0a\0" + b"6", b"b\0\0a\0" + b"7"]
    assert len(list(saver.list(config("t")))) == 2


@pytest.mark.parametrize("backlog", [30, 100])
def test_keep_last_set_on_a_long_thread_trims_it_in_one_put(
    url: str, client: redis.Redis, backlog: int
) -> None:
    """A trim takes its victims from the range that finds its cut when they are few (up to the
    library's TRIM_WINDOW, 64) and from a range of their own when there are more."""
    parent = None
    saver = RedisSaver(url)
    for n in range(1, backlog + 1):
        parent = put(saver, "t", n, parent=parent, values={"a": n}, versions={"b": 1})
    trimmed = RedisSaver(url, keep_last=3, trim_every=1)
    put(trimmed, "t", backlog + 1, parent=parent, values={"a": backlog + 1}, versions={"b": 1})
    assert [t.metadata["step"] for t in trimmed.list(config("t"))] == [
        backlog + 1,
        backlog,
        backlog - 1,
    ]
    counts = _counts(client, saver.keys("t")[0])
    assert counts == {
        b"n\0\0b\0" + b"1": b"3",
        **{b"n\0\0a\0" + str(n).encode(): b"1" for n in range(backlog - 1, backlog + 2)},
    }


def test_retention_with_delta_channels_keeps_every_rebuild(url: str) -> None:
    unbounded, bounded = RedisSaver(url), RedisSaver(url, keep_last=2)
    expected = run_turns(build_graph(unbounded), "a", 7)
    got = run_turns(build_graph(bounded), "b", 7)
    assert got == expected
    for tup in bounded.list(config("b", ns=None)):
        state = build_graph(bounded).get_state(tup.config)
        assert state.values["items"][0] == "user 0"


def counted_bytes(client: redis.Redis, saver: RedisSaver, thread_id: str) -> int:
    """The thread's bytes as retention by bytes counts them, from scratch: the record, checkpoint
    and metadata fields of every indexed checkpoint, and every value with a reference count."""
    data, index = saver.keys(thread_id)
    fields = client.hgetall(data)
    total = 0
    for member in client.zrange(index, 0, -1):
        if member.startswith(b"c\0"):
            rest = member[1:]
            total += sum(len(fields.get(kind + rest, b"")) for kind in (b"c", b"k", b"m"))
    for name in fields:
        if name.startswith(b"n\0"):
            total += len(fields.get(b"b" + name[1:], b""))
    return total


def stored_bytes(client: redis.Redis, saver: RedisSaver, thread_id: str) -> int:
    return int(client.hget(saver.keys(thread_id)[0], "s") or 0)


def test_retention_by_bytes_trims_the_oldest_to_the_budget(url: str, client: redis.Redis) -> None:
    unbounded, bounded = RedisSaver(url), RedisSaver(url, max_bytes=6000)
    parent = None
    ids = []
    for n in range(1, 21):  # each checkpoint brings a new 1,000-byte value and keeps a shared one
        parent = put(bounded, "t", n, parent=parent, values={"a": "x" * 1000}, versions={"b": 1})
        ids.append(parent)
        assert stored_bytes(client, bounded, "t") == counted_bytes(client, bounded, "t")
        assert stored_bytes(client, bounded, "t") <= 6000 or n == 1
    kept = [t.config["configurable"]["checkpoint_id"] for t in unbounded.list(config("t"))]
    assert kept == ids[::-1][: len(kept)]  # the newest, oldest removed first
    assert 3 <= len(kept) <= 5, len(kept)  # about 6,000 bytes of 1,000-byte values and records
    got = unbounded.get_tuple(config("t"))
    assert got is not None and got.checkpoint["channel_values"]["a"] == "x" * 1000


def test_retention_by_bytes_keeps_a_pending_interrupt_and_the_resume_works(
    url: str, client: redis.Redis
) -> None:
    """A budget far below one turn: every put trims what it may, yet the interrupted checkpoint
    (and what its DeltaChannel rebuild needs) stays, and the resume gives what an unbounded
    saver gives."""
    saver, unbounded = RedisSaver(url, max_bytes=1), RedisSaver(url)
    expected = build_graph(unbounded, ask=True)
    graph = build_graph(saver, ask=True)
    for g, thread in ((graph, "t"), (expected, "u")):
        g.invoke({"items": ["first"]}, config(thread, ns=None))
    waiting = graph.get_state(config("t", ns=None))
    assert waiting.interrupts
    fork = list(graph.get_state_history(config("t", ns=None)))[-2].config
    for i in range(4):
        fork = graph.update_state(fork, {"items": [f"fork {i}"]}, as_node="work")
    assert stored_bytes(client, saver, "t") == counted_bytes(client, saver, "t")
    kept = graph.get_state(waiting.config)
    assert kept.interrupts and kept.values == waiting.values
    resumed = graph.invoke(Command(resume="yes"), waiting.config)
    want = expected.invoke(Command(resume="yes"), config("u", ns=None))
    assert resumed == want
    # once the interrupt is applied, the next put trims down to the newest checkpoint
    graph.invoke({"items": ["next"]}, config("t", ns=None))
    assert stored_bytes(client, saver, "t") == counted_bytes(client, saver, "t")


# --- exactly once ------------------------------------------------------------------------------


def test_a_retried_put_writes_stores_nothing_twice(url: str, client: redis.Redis) -> None:
    """The same put_writes call sent twice (a retry whose first attempt was applied and whose
    reply was lost) leaves exactly what one call leaves."""
    saver = RedisSaver(url)
    head = put(saver, "t", 1, values={"a": 1})
    call = saver._writes_call(
        config("t", "", head), [("a", 1), ("b", [2]), ("__error__", "x")], "task", ""
    )
    assert call is not None
    saver._write(call)
    once = client.hgetall(saver.keys("t")[0]), client.zrange(saver.keys("t")[1], 0, -1)
    saver._write(call)  # a special write is written again: the same bytes
    assert (client.hgetall(saver.keys("t")[0]), client.zrange(saver.keys("t")[1], 0, -1)) == once
    got = saver.get_tuple(config("t"))
    assert got is not None and len(got.pending_writes) == 3


def test_a_retried_put_is_applied_once(url: str, client: redis.Redis) -> None:
    """A put sent again after its first attempt was applied and its reply lost: the saver
    sends its retain form (``again``) in its place, which applies nothing twice."""
    saver = RedisSaver(url, keep_last=3)
    call, *_ = saver._put_call(config("t"), empty_checkpoint(), {"step": 1}, {})
    head = put(saver, "t", 1, values={"a": "x" * 100})
    call, *_ = saver._put_call(
        config("t", "", head),
        {**empty_checkpoint(), "channel_values": {"a": "y"}, "channel_versions": {"a": 2}},
        {"step": 2},
        {"a": 2},
    )
    saver._write(call)
    once = client.hgetall(saver.keys("t")[0])
    saver._write(call.again or call)
    assert client.hgetall(saver.keys("t")[0]) == once


@pytest.mark.parametrize("fenced", [False, True])
def test_a_retried_put_counts_its_bytes_once(url: str, client: redis.Redis, fenced: bool) -> None:
    """The same put transaction sent twice (its reply lost): the thread's byte total is what one
    send leaves, with the plain writes and retain, and with the put function (an owner epoch)."""
    saver = RedisSaver(url, max_bytes=10**6)
    if fenced:
        saver.claim_write_ownership("t")
    head = put(saver, "t", 1, values={"a": "x" * 100})
    call, *_ = saver._put_call(
        config("t", "", head),
        {**empty_checkpoint(), "channel_values": {"a": "y" * 50}, "channel_versions": {"a": 2}},
        {"step": 2},
        {"a": 2},
    )
    saver._write(call)
    once = stored_bytes(client, saver, "t")
    assert once == counted_bytes(client, saver, "t") > 150
    saver._write(call)
    assert stored_bytes(client, saver, "t") == once == counted_bytes(client, saver, "t")


def _counts(client: redis.Redis, data_key: str) -> dict[bytes, bytes]:
    """A thread's reference counts (its n fields), by channel version."""
    return {k: v for k, v in client.hgetall(data_key).items() if k.startswith(b"n\0")}


def _plain_put_counted(request: list[bytes]) -> bytes | None:
    """A plain put without retention, by the last reference count it queues in its MULTI/EXEC."""
    return request[2] if request[0].upper() == b"HINCRBY" else None


STEPS = [({"a": "x"}, {}), ({"b": [1]}, {"a": 1})]  # (values written, versions kept)


def _step(thread: str, parent: str | None, n: int) -> tuple[Any, ...]:
    values, older = STEPS[n - 1]
    checkpoint = generate_checkpoint(
        channel_values=values, channel_versions={**older, **{k: n for k in values}}
    )
    return config(thread, "", parent), checkpoint, {"step": n}, {k: n for k in values}


def _counted_once(client: redis.Redis, saver: RedisSaver, proxy: FaultProxy) -> None:
    assert proxy.cuts == len(STEPS)
    lost, kept = _counts(client, saver.keys("lost")[0]), _counts(client, saver.keys("kept")[0])
    assert lost == kept and sorted(kept.values()) == [b"1", b"2"], lost


def test_a_put_whose_reply_was_lost_counts_its_values_once(url: str, client: redis.Redis) -> None:
    """A plain put (no retention: its counts are plain HINCRBYs) applied, its reply lost: what
    the saver sends instead recognises it, and every value is counted once, as without the
    loss."""
    port = client.connection_pool.connection_kwargs["port"]
    with FaultProxy(port, lambda _, attempt: attempt == 1, mark=_plain_put_counted) as proxy:
        for thread, saver in (("lost", RedisSaver(proxy.url)), ("kept", RedisSaver(url))):
            parent = None
            for n in range(1, len(STEPS) + 1):
                parent = saver.put(*_step(thread, parent, n))["configurable"]["checkpoint_id"]
    _counted_once(client, saver, proxy)


def test_a_trimming_put_whose_reply_was_lost_counts_and_trims_once(
    url: str, client: redis.Redis
) -> None:
    """With keep_last a put also indexes and counts with plain commands, then calls trim; a
    put applied and its reply lost is sent again as retain's indexing form, which counts
    nothing twice: the counts are those of a thread that lost nothing, and the trim is done."""
    port = client.connection_pool.connection_kwargs["port"]
    with FaultProxy(port, lambda _, attempt: attempt == 1, mark=_plain_put_counted) as proxy:
        for thread, target in (("lost", proxy.url), ("kept", url)):
            saver = RedisSaver(target, keep_last=1, trim_every=1)
            parent = None
            for n in range(1, len(STEPS) + 1):
                parent = saver.put(*_step(thread, parent, n))["configurable"]["checkpoint_id"]
    assert proxy.cuts == len(STEPS)
    lost, kept = _counts(client, saver.keys("lost")[0]), _counts(client, saver.keys("kept")[0])
    assert lost == kept and sorted(kept.values()) == [b"1", b"1"], lost
    assert client.zcard(saver.keys("lost")[1]) == client.zcard(saver.keys("kept")[1])
    assert len(list(saver.list(config("lost")))) == 1


async def test_an_aput_whose_reply_was_lost_counts_its_values_once(
    url: str, aclient: redis.asyncio.Redis
) -> None:
    port = aclient.connection_pool.connection_kwargs["port"]
    with FaultProxy(port, lambda _, attempt: attempt == 1, mark=_plain_put_counted) as proxy:
        for thread, saver in (("lost", RedisSaver(proxy.url)), ("kept", RedisSaver(url))):
            parent = None
            for n in range(1, len(STEPS) + 1):
                stored = await saver.aput(*_step(thread, parent, n))
                parent = stored["configurable"]["checkpoint_id"]
    sync = redis.Redis(port=port)
    try:
        await asyncio.to_thread(_counted_once, sync, saver, proxy)
    finally:
        await asyncio.to_thread(sync.close)


def _plain_put_of_thread(request: list[bytes]) -> bytes | None:
    """A plain put without retention, by its thread's key and the last count it queues."""
    return request[1] + b"|" + request[2] if request[0].upper() == b"HINCRBY" else None


async def test_concurrent_aputs_whose_flights_were_lost_count_their_values_once(
    url: str, aclient: redis.asyncio.Redis
) -> None:
    """Many threads' puts at once share flights (pyhistory._coalesce), each put's first flight
    applied and its reply lost: the flights sent again carry each put's retain form instead,
    and every thread's values are counted once, as by one put each."""
    port = aclient.connection_pool.connection_kwargs["port"]
    threads = [f"t{i}" for i in range(12)]
    with FaultProxy(port, lambda _, attempt: attempt == 1, mark=_plain_put_of_thread) as proxy:
        saver = RedisSaver(proxy.url)

        async def steps(thread: str) -> None:
            parent = None
            for n in range(1, len(STEPS) + 1):
                stored = await saver.aput(*_step(thread, parent, n))
                parent = stored["configurable"]["checkpoint_id"]

        await asyncio.gather(*(steps(thread) for thread in threads))
    puts = len(threads) * len(STEPS)
    assert len(proxy.seen) == proxy.cuts == puts  # each applied once as sent, its reply lost
    for thread in threads:
        counts = await aclient.hgetall(saver.keys(thread)[0])
        assert sorted(v for k, v in counts.items() if k.startswith(b"n\0")) == [b"1", b"2"]


# --- delete_for_runs ---------------------------------------------------------------------------


def test_delete_for_runs_across_threads_and_namespaces(url: str, client: redis.Redis) -> None:
    saver = RedisSaver(url, ttl=600)
    first = put(saver, "t1", 1, values={"a": 1}, run_id="r1")
    put(saver, "t1", 2, parent=first, values={"a": 2}, run_id="r2")
    put(saver, "t1", 1, ns="sub", values={"a": 3}, run_id="r1")
    put(saver, "t2", 1, values={"a": 4}, run_id="r1")
    assert 0 < client.ttl(_calls.run_key("checkpoint:", "r1")) <= 600
    saver.delete_for_runs(["r1"])
    left = [t.metadata.get("run_id") for t in saver.list(config("t1", ns=None))]
    assert left == ["r2"]
    assert list(saver.list(config("t2"))) == []
    assert not client.exists(_calls.run_key("checkpoint:", "r1"))
    got = saver.get_tuple(config("t1"))
    assert got is not None and got.checkpoint["channel_values"] == {"a": 2}
    blobs = [f for f in client.hkeys(saver.keys("t1")[0]) if f.startswith(b"b\0")]
    assert blobs == [b"b\0\0a\0" + b"2"]


async def test_adelete_for_runs(url: str) -> None:
    saver = RedisSaver(url)
    first, second = str(uuid4()), str(uuid4())
    cfg = config("t")
    cfg = await saver.aput(cfg, empty_checkpoint(), {"run_id": first}, {})  # type: ignore[typeddict-unknown-key]
    await saver.aput(cfg, empty_checkpoint(), {"run_id": second}, {})  # type: ignore[typeddict-unknown-key]
    await saver.adelete_for_runs([first])
    left = [t.metadata.get("run_id") async for t in saver.alist(config("t"))]
    assert left == [second]


# --- serialization -----------------------------------------------------------------------------

VALUES: dict[str, Any] = {
    "send": Send("node", {"arg": [1, 2]}),
    "interrupt": Interrupt(value={"question": "ok?"}, id="i-1"),
    "command": Command(goto="next", update={"k": "v"}, resume="yes"),
    "set": {1, 2, 3},
    "frozen": frozenset({"a"}),
    "bytes": b"\x00\xff\x00binary",
    "large": "x" * 2_000_000,
    "non_ascii": "naïve 🌍 日本語 \u2028",
    "nested": {"list": [1, 2.5, None, True], "tuple": (1, "a")},
}


@pytest.mark.parametrize("name", sorted(VALUES))
def test_values_survive_the_round_trip(url: str, client: redis.Redis, name: str) -> None:
    saver = RedisSaver(url)
    value = VALUES[name]
    head = put(saver, "t", 1, values={"ch": value})
    saver.put_writes(config("t", "", head), [("ch", value)], "task")
    got = saver.get_tuple(config("t"))
    assert got is not None
    # what the serializer itself gives back (JSON has no tuples: it gives lists)
    kind, data = JsonPlusSerializer().dumps_typed(value)
    expected = JsonPlusSerializer().loads_typed((kind, data))
    assert got.checkpoint["channel_values"]["ch"] == expected
    assert got.pending_writes == [("task", "ch", expected)]
    # stored verbatim: the serializer's own bytes after its type name
    stored = client.hget(saver.keys("t")[0], _calls.blob_name("", "ch", "1"))
    assert stored == kind.encode() + b"\0" + data


def test_delta_channel_snapshots_survive(url: str) -> None:
    """snapshot_frequency=3: five turns cross several snapshots, read back through the saver."""
    saver = RedisSaver(url)
    graph = build_graph(saver)
    expected = run_turns(build_graph(RedisSaver(url, key_prefix="other:")), "t", 5)
    assert run_turns(graph, "t", 5) == expected
    fresh = build_graph(RedisSaver(url))
    assert fresh.get_state(config("t", ns=None)).values == expected


# --- the values a saver holds ------------------------------------------------------------------


def test_held_values_are_never_stale_and_belong_to_the_caller(url: str) -> None:
    """A saver keeps the newest value of each channel it wrote (so a get need not bring it
    back); another saver's newer write is still read, and mutating a read value changes no
    later read."""
    first, second = RedisSaver(url), RedisSaver(url)
    head = put(first, "t", 1, values={"a": ["x"], "b": {"k": 1}})
    got = first.get_tuple(config("t"))
    assert got is not None
    got.checkpoint["channel_values"]["a"].append("mutated")
    got.checkpoint["channel_values"]["b"]["k"] = 2
    again = first.get_tuple(config("t"))
    assert again is not None and again.checkpoint["channel_values"] == {"a": ["x"], "b": {"k": 1}}
    put(second, "t", 2, parent=head, values={"a": ["y"]}, versions={"b": 1})
    latest = first.get_tuple(config("t"))
    assert latest is not None
    assert latest.checkpoint["channel_values"] == {"a": ["y"], "b": {"k": 1}}


def test_the_value_cache_is_bounded(url: str) -> None:
    saver = RedisSaver(url, value_cache_bytes=64 * 1024)
    for n in range(20):
        put(saver, f"t{n}", 1, values={"a": "x" * 4000})
    assert saver._values.held_bytes <= 64 * 1024
    got = saver.get_tuple(config("t0"))  # dropped from the cache: read whole from the server
    assert got is not None and got.checkpoint["channel_values"] == {"a": "x" * 4000}
    off = RedisSaver(url, value_cache_bytes=0)
    put(off, "u", 1, values={"a": 1})
    assert off._values.held_bytes == 0 and off._values.known("u", "") == {}


def test_writes_that_arrive_after_the_child_do_not_pin(url: str) -> None:
    """LangGraph may send a checkpoint's writes after its child's put: that checkpoint's writes
    are applied already, and retention still removes it."""
    saver = RedisSaver(url, keep_last=2)
    first = put(saver, "t", 1, values={"a": 1})
    second = put(saver, "t", 2, parent=first, values={"a": 2})
    saver.put_writes(config("t", "", first), [("a", "late")], "task")
    third = put(saver, "t", 3, parent=second, values={"a": 3})
    put(saver, "t", 4, parent=third, values={"a": 4})
    assert [t.metadata["step"] for t in saver.list(config("t"))] == [4, 3]


def test_the_agent_stays_within_keep_last(url: str) -> None:
    from langchain_core.messages import HumanMessage

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "loadtest" / "checkpoint"))
    from app import build_agent

    saver = RedisSaver(url, keep_last=3)
    agent = build_agent(saver)
    cfg = config("t", ns=None)
    for i in range(6):
        agent.invoke({"messages": [HumanMessage(f"weather city{i}" if i % 2 else f"hi {i}")]}, cfg)
    assert len(list(saver.list(config("t")))) == 3
    assert len(agent.get_state(cfg).values["messages"]) == 3 * 2 + 3 * 4  # nothing lost


def test_writes_for_a_removed_checkpoint_do_not_stop_retention(url: str) -> None:
    saver = RedisSaver(url, keep_last=2)
    parent = None
    ids = []
    for n in range(1, 4):
        parent = put(saver, "t", n, parent=parent, values={"a": n})
        ids.append(parent)
    saver.put_writes(config("t", "", ids[0]), [("a", "late")], "task")  # ids[0] is gone
    for n in range(4, 7):
        parent = put(saver, "t", n, parent=parent, values={"a": n})
    assert [t.metadata["step"] for t in saver.list(config("t"))] == [6, 5]


# --- bounded work per call ---------------------------------------------------------------------


def test_prune_goes_on_with_a_cursor_past_its_namespace_budget(
    url: str, client: redis.Redis
) -> None:
    """One prune call examines at most PRUNE_NAMESPACES namespaces; the saver calls again with
    the cursor it got until the thread is done."""
    budget = _calls.LIBRARY.constant("PRUNE_NAMESPACES")
    saver = RedisSaver(url)
    for n in range(budget + 20):
        first = put(saver, "t", 1, ns=f"ns{n:03}", values={"a": 1})
        put(saver, "t", 2, ns=f"ns{n:03}", parent=first, values={"a": 2})
    saver.setup()  # plain puts never loaded it
    client.config_resetstat()
    saver.prune(["t"])
    calls = int(client.info("commandstats")["cmdstat_fcall"]["calls"])
    assert calls == 2
    left = list(saver.list(config("t", ns=None)))
    assert len(left) == budget + 20 and {t.metadata["step"] for t in left} == {2}


# --- a transaction written on a pooled connection ---------------------------------------------


def test_a_put_on_a_broken_pooled_connection_goes_again_once(url: str, client: redis.Redis) -> None:
    """The transaction of a put is written once on a pooled connection; when the server closed
    that connection (here: CLIENT KILL), it goes again through a redis-py pipeline, and is
    applied once."""
    import redis as redis_module

    own = redis_module.Redis.from_url(url)
    saver = RedisSaver(redis_client=own)
    first = put(saver, "t", 1, values={"a": "x"})
    assert own.connection_pool._created_connections == 1  # type: ignore[attr-defined]
    client.client_kill_filter(_type="normal", skipme=True)
    second = put(saver, "t", 2, parent=first, values={"a": "y"})
    assert [t.config["configurable"]["checkpoint_id"] for t in saver.list(config("t"))] == [
        second,
        first,
    ]
    assert set(_counts(client, saver.keys("t")[0]).values()) == {b"1"}


async def test_a_put_on_a_broken_pooled_connection_goes_again_once_asyncio(
    url: str, client: redis.Redis
) -> None:
    saver = RedisSaver(url)
    values = {"a": "x"}
    checkpoint = {**empty_checkpoint(), "channel_values": values, "channel_versions": {"a": 1}}
    stored = await saver.aput(config("t"), checkpoint, {"step": 1}, {"a": 1})  # type: ignore[arg-type]
    first = stored["configurable"]["checkpoint_id"]
    client.client_kill_filter(_type="normal", skipme=True)
    await saver.aput_writes(stored, [("a", 1)], "task")
    got = await saver.aget_tuple(config("t"))
    assert got is not None and got.config["configurable"]["checkpoint_id"] == first
    assert [w[1:] for w in got.pending_writes] == [("a", 1)]
    assert set(_counts(client, saver.keys("t")[0]).values()) == {b"1"}
