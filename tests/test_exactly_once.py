"""Exactly-once appends: a retried append whose first attempt the server applied (its reply lost)
is not applied again. The library's batch ids, their key in the session's slot, and a fault
proxy that cuts connections after the server applied an append and before its reply arrives."""

from __future__ import annotations

import asyncio
import json
import random
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import redis
import redis.asyncio
import redis.cluster
from conftest import VERSIONED
from faultproxy import FaultProxy
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

import pyhistory
from pyhistory import MessageStore, _core, testing
from pyhistory.store import load_functions


def append(
    client: redis.Redis, key: str, batch: bytes, *entries: str, max_messages: int = 0, ttl: int = 0
) -> object:
    ids = _core.batches_key(key)
    return client.execute_command(
        "FCALL", _core.APPEND, 2, key, ids, max_messages, ttl, batch, *entries
    )


def batch(n: int) -> bytes:
    return n.to_bytes(_core.BATCH_ID_LEN, "big")


@pytest.fixture
def loaded(client: redis.Redis) -> redis.Redis:
    load_functions(client)
    return client


# --- the library ------------------------------------------------------------------------------


def test_a_batch_id_seen_again_is_not_applied_again(loaded: redis.Redis) -> None:
    assert append(loaded, "s", batch(1), "a", "b", ttl=60) == 2
    loaded.expire("s", 5)
    assert append(loaded, "s", batch(1), "a", "b", ttl=60) == 2  # the session's length now
    assert loaded.lrange("s", 0, -1) == [b"b", b"a"]
    assert loaded.ttl("s") <= 5  # nothing of the batch applied again, not even its TTL
    assert append(loaded, "s", batch(2), "c") == 3
    assert loaded.get(_core.batches_key("s")) == batch(1) + batch(2)  # oldest first
    assert _core.WINDOW_SECONDS - 1 <= loaded.ttl(_core.batches_key("s")) <= _core.WINDOW_SECONDS


def test_the_newest_ids_are_remembered(loaded: redis.Redis) -> None:
    """At least the newest REMEMBERED, at most twice as many: the ids grow by an APPEND per
    batch (12 bytes, what replicas receive) and are cut to the newest REMEMBERED when full."""
    remembered, size = _core.REMEMBERED, _core.BATCH_ID_LEN
    for n in range(2 * remembered):
        append(loaded, "s", batch(n), str(n))
    assert len(loaded.get(_core.batches_key("s"))) == 2 * remembered * size
    for n in range(2 * remembered):  # every one of them: not applied again
        assert append(loaded, "s", batch(n), "again") == 2 * remembered
    append(loaded, "s", batch(2 * remembered), "cut")  # full: cut to the newest REMEMBERED
    assert len(loaded.get(_core.batches_key("s"))) == remembered * size
    for n in range(remembered + 1, 2 * remembered + 1):
        assert append(loaded, "s", batch(n), "again") == 2 * remembered + 1
    assert b"again" not in loaded.lrange("s", 0, -1)
    assert append(loaded, "s", batch(remembered), "forgotten") == 2 * remembered + 2


def test_an_id_found_across_two_ids_is_not_a_match(loaded: redis.Redis) -> None:
    append(loaded, "s", b"a" * 12, "x")
    append(loaded, "s", b"b" * 12, "y")  # stored "bbb...aaa...": "bbbbbbaaaaaa" spans two ids
    assert append(loaded, "s", b"bbbbbbaaaaaa", "z") == 3


def test_an_applied_id_still_writes_so_a_wait_covers_the_first_attempt(
    loaded: redis.Redis,
) -> None:
    """The retry of an applied batch comes on a new connection, whose WAIT would count replicas
    from that connection's own last write: the retry rewrites the ids, a write, so WAIT also
    waits for the first attempt's write."""
    append(loaded, "s", batch(1), "a")

    def writes() -> int:  # the server's count of changes: what it propagates to replicas
        return int(loaded.info("persistence")["rdb_changes_since_last_save"])

    before = writes()
    append(loaded, "s", batch(1), "a")
    assert writes() == before + 1
    assert loaded.llen("s") == 1


def test_wrong_type_of_the_ids_key_changes_nothing(loaded: redis.Redis) -> None:
    loaded.rpush(_core.batches_key("s"), "a list")
    with pytest.raises(redis.ResponseError, match=r"^WRONGTYPE"):
        append(loaded, "s", batch(1), "a")
    assert loaded.exists("s") == 0


def test_entries_are_the_bytes_given(loaded: redis.Redis) -> None:
    """Nothing of the batch id reaches the LIST: langchain_community reads it as before."""
    history = MessageStore("s", redis_client=loaded)
    history.add_messages([HumanMessage("hi!")])
    assert loaded.lrange(history.key, 0, -1) == [
        b'{"type": "human", "data": {"content": "hi!", "additional_kwargs": {}, '
        b'"response_metadata": {}, "type": "human", "name": null, "id": null}}'
    ]


# --- the batch ids' key -----------------------------------------------------------------------

AWKWARD_KEYS = [
    "message_store:abc",
    "message_store:{abc}",
    "message_store:{abc}:x}",
    "message_store:a}b",
    "message_store:{}x",
    "message_store:{}x}",
    "message_store:x}a{b",
    "message_store:x}a{b}",
    "message_store:{",
    "message_store:}",
    "message_store:{{}}",
    "}{",
    "{",
    "é}ü{",
    "message_store:日本{語}",
]


@pytest.mark.parametrize("key", AWKWARD_KEYS)
def test_the_ids_key_is_in_the_sessions_slot_and_never_a_session_key(key: str) -> None:
    ids = _core.batches_key(key)
    assert key_slot(ids.encode()) == key_slot(key.encode())
    assert ids.startswith(_core.BATCHES_PREFIX)
    assert not ids.startswith("message_store:")
    assert key in ids  # an operator can tell whose it is


def test_every_slot_has_a_tag() -> None:
    tags = _core._slot_tags()
    assert [key_slot(t.encode()) for t in tags] == list(range(16384))


def test_distinct_keys_get_distinct_ids_keys() -> None:
    assert len({_core.batches_key(k) for k in AWKWARD_KEYS}) == len(AWKWARD_KEYS)


def test_clear_removes_the_ids_too(loaded: redis.Redis) -> None:
    history = MessageStore("s}{", redis_client=loaded)
    history.add_messages([HumanMessage("x")])
    assert loaded.exists(history.key, _core.batches_key(history.key)) == 2
    history.clear()
    assert loaded.dbsize() == 0


@pytest.mark.cluster
@pytest.mark.parametrize("session", [k.removeprefix("message_store:") for k in AWKWARD_KEYS])
def test_awkward_keys_on_a_cluster(
    cluster_client: redis.cluster.RedisCluster, session: str
) -> None:
    """No CROSSSLOT: the server itself checks that both keys of an append share a slot."""
    history = MessageStore(session or "x", redis_client=cluster_client)
    call = _core.append(history.key, ["a"], 0, 0, batch(7))
    assert pyhistory.functions.run(cluster_client, call) == 1
    assert pyhistory.functions.run(cluster_client, call) == 1  # a retry: not applied again
    history.clear()
    assert cluster_client.exists(history.key, _core.batches_key(history.key)) == 0


# --- idempotency keys and errors --------------------------------------------------------------


def test_an_idempotency_key_names_the_batch_across_calls(url: str) -> None:
    history = MessageStore("s", url=url)
    history.add_messages([HumanMessage("q")], idempotency_key="request-1")
    history.add_messages([HumanMessage("q")], idempotency_key="request-1")
    history.add_messages([HumanMessage("q")])
    history.add_messages([HumanMessage("q")])
    assert len(history) == 3
    with pytest.raises(pyhistory.InvalidArgumentError):
        history.add_messages([HumanMessage("q")], idempotency_key="")


def test_a_refused_argument_does_not_say_it_may_be_applied(url: str, client: redis.Redis) -> None:
    client.set("message_store:s", "not a list")
    history = MessageStore("s", url=url)
    with pytest.raises(pyhistory.WrongTypeError) as wrong:
        history.add_messages([HumanMessage("q")])
    assert wrong.value.may_have_been_applied  # another attempt may have come before
    with pytest.raises(pyhistory.SerializationError) as refused:
        history.add_messages([HumanMessage("q", additional_kwargs={"x": object()})])
    assert not refused.value.may_have_been_applied
    assert "may have been applied" not in str(refused.value)


# --- cut connections: the fault proxy ---------------------------------------------------------


@dataclass
class Outcomes:
    """Every append a test made: its contents, and the error it raised (None: it returned)."""

    done: list[tuple[list[str], BaseException | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, contents: list[str], error: BaseException | None) -> None:
        with self.lock:
            self.done.append((contents, error))

    def check(self, client: redis.Redis, keys: list[str]) -> tuple[int, int]:
        """0 duplicates, 0 lost: each append that returned is stored once; each that raised at
        most once, and its error says so. Returns (returned, raised)."""
        stored: Counter[str] = Counter()
        for key in keys:
            for entry in client.lrange(key, 0, -1):
                stored[json.loads(entry)["data"]["content"]] += 1
        mine = [c for contents, _ in self.done for c in contents]
        assert set(stored) <= set(mine), "stored what no one appended"
        raised = 0
        for contents, error in self.done:
            counts = {stored[c] for c in contents}
            assert len(counts) == 1, f"a batch stored in part: {contents}"  # atomic
            (count,) = counts
            if error is None:
                assert count == 1, f"returned, but stored {count} times: {contents}"
            else:
                raised += 1
                assert count <= 1, f"raised, and stored {count} times: {contents}"
                assert error.may_have_been_applied, error
                assert "may have been applied" in str(error), error
                assert isinstance(error, pyhistory.HistoryError)
        return len(self.done) - raised, raised


def messages(name: str, i: int) -> list[BaseMessage]:
    if i % 3:
        return [HumanMessage(f"{name}:{i}")]
    return [HumanMessage(f"{name}:{i}:q"), AIMessage(f"{name}:{i}:a")]


def cut_policy(
    seed: int, first: float = 0.7, again: float = 0.3, always: int = 0
) -> Callable[[bytes, int], bool]:
    """Cut a batch's first attempt with probability ``first`` and each retry with ``again``;
    batches whose id starts with a byte below ``always`` are cut at every attempt (their appends
    run out of retries and raise)."""
    rng = random.Random(seed)
    lock = threading.Lock()

    def decide(batch_id: bytes, attempt: int) -> bool:
        if batch_id[0] < always:
            return True
        with lock:
            return rng.random() < (first if attempt == 1 else again)

    return decide


def test_cut_appends_sync(server: object, url: str, client: redis.Redis) -> None:
    port = client.connection_pool.connection_kwargs["port"]
    load_functions(client)  # every cut reply is then an applied append's
    outcomes = Outcomes()
    sessions = [f"sync-{n}" for n in range(4)]
    with FaultProxy(port, cut_policy(1)) as proxy:
        app = redis.Redis(port=proxy.port, retry=Retry(NoBackoff(), 3), socket_timeout=5)

        def writer(n: int) -> None:
            history = MessageStore(sessions[n % len(sessions)], redis_client=app)
            for i in range(150):
                batch_ = messages(f"w{n}", i)
                try:
                    history.add_messages(batch_)
                except Exception as error:
                    outcomes.add([str(m.content) for m in batch_], error)
                else:
                    outcomes.add([str(m.content) for m in batch_], None)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        app.close()
    returned, raised = outcomes.check(client, [f"message_store:{s}" for s in sessions])
    print(f"sync: {proxy.cuts} replies cut, {returned} appends returned, {raised} raised")
    assert proxy.cuts >= 1000
    assert raised > 0  # some appends ran out of retries: they said so


async def test_cut_appends_asyncio(url: str, client: redis.Redis) -> None:
    port = client.connection_pool.connection_kwargs["port"]
    await asyncio.to_thread(load_functions, client)  # every cut reply: an applied append's
    outcomes = Outcomes()
    sessions = [f"async-{n}" for n in range(2)]
    # A session's first append (the library's) shares its flight with what other tasks issue at
    # that moment, and a cut loses every reply of it; the plain appends after it are sent alone.
    # One batch in 64 is cut at every attempt, so that some appends raise.
    with FaultProxy(port, cut_policy(2, first=0.7, again=0.3, always=4)) as proxy:
        app = redis.asyncio.Redis(
            port=proxy.port, retry=AsyncRetry(NoBackoff(), 3), socket_timeout=5, **VERSIONED
        )

        async def writer(n: int) -> None:
            history = MessageStore(sessions[n % len(sessions)], async_redis_client=app)
            for i in range(75):
                batch_ = messages(f"t{n}", i)
                try:
                    await history.aadd_messages(batch_)
                except Exception as error:
                    outcomes.add([str(m.content) for m in batch_], error)
                else:
                    outcomes.add([str(m.content) for m in batch_], None)

        await asyncio.gather(*(writer(n) for n in range(16)))  # 8 writers per session
        await app.aclose()
    returned, raised = outcomes.check(client, [f"message_store:{s}" for s in sessions])
    print(f"asyncio: {proxy.cuts} replies cut, {returned} appends returned, {raised} raised")
    assert proxy.cuts >= 1000
    assert raised > 0


def test_cut_appends_url_built_client(url: str, client: redis.Redis) -> None:
    """pyhistory's own client for a URL: its bounded retries, sync and asyncio."""
    port = client.connection_pool.connection_kwargs["port"]
    load_functions(client)  # every cut reply is then an applied append's
    outcomes = Outcomes()
    with FaultProxy(port, cut_policy(3, first=0.5, again=0.2)) as proxy:
        history = MessageStore("url", url=proxy.url, ttl=60)
        for i in range(60):
            batch_ = messages("u", i)
            try:
                history.add_messages(batch_)
            except Exception as error:
                outcomes.add([str(m.content) for m in batch_], error)
            else:
                outcomes.add([str(m.content) for m in batch_], None)

        async def main() -> None:
            for i in range(60, 120):
                batch_ = messages("u", i)
                try:
                    await history.aadd_messages(batch_)
                except Exception as error:
                    outcomes.add([str(m.content) for m in batch_], error)
                else:
                    outcomes.add([str(m.content) for m in batch_], None)

        asyncio.run(main())
    outcomes.check(client, ["message_store:url"])
    assert proxy.cuts >= 40


def test_cut_flights_of_plain_appends_and_reads(url: str, client: redis.Redis) -> None:
    """A URL-built asyncio client's flights carry plain appends (transactions) beside other
    tasks' reads: a cut flight is sent again with each transaction replaced by the library's
    append, and the reads in it are answered as if nothing happened."""
    port = client.connection_pool.connection_kwargs["port"]
    load_functions(client)
    outcomes = Outcomes()
    sessions = [f"flights-{n}" for n in range(2)]
    read_errors: list[BaseException] = []
    # Retries are not cut: a flight carries many batches, and cutting each of its attempts for
    # any of them would exhaust the retries of the reads that share it.
    with FaultProxy(port, cut_policy(5, first=0.3, again=0.0)) as proxy:

        async def writer(n: int) -> None:
            history = MessageStore(sessions[n % 2], url=proxy.url, ttl=60)
            await history.aget_messages()  # the key holds a list: plain appends from here
            for i in range(40):
                batch_ = messages(f"f{n}", i)
                try:
                    await history.aadd_messages(batch_)
                except Exception as error:
                    outcomes.add([str(m.content) for m in batch_], error)
                else:
                    outcomes.add([str(m.content) for m in batch_], None)
                try:
                    await history.aget_messages()
                except Exception as error:  # not expected: a read is sent again
                    read_errors.append(error)

        async def main() -> None:
            await asyncio.gather(*(writer(n) for n in range(16)))
            await pyhistory.aclose_clients()

        asyncio.run(main())
    outcomes.check(client, [f"message_store:{s}" for s in sessions])
    assert proxy.cuts >= 100
    assert not read_errors


@pytest.mark.faults
def test_cut_appends_with_wait_for_replicas(
    replicated: tuple[str, testing.LocalServer], client: redis.Redis
) -> None:
    """The durable path (the append and WAIT in one flight), sync and asyncio: the retry of an
    applied append is acknowledged once the replica has the first attempt's write."""
    _, replica = replicated
    port = client.connection_pool.connection_kwargs["port"]
    load_functions(client)  # every cut reply is then an applied append's
    outcomes = Outcomes()
    with FaultProxy(port, cut_policy(4, first=0.5, again=0.0)) as proxy:
        history = MessageStore("durable", url=proxy.url, wait_for_replicas=1)
        for i in range(60):
            batch_ = messages("d", i)
            history.add_messages(batch_)
            outcomes.add([str(m.content) for m in batch_], None)
            # acknowledged by the replica: it has the batch, once
            with replica.client() as r:
                assert r.llen(history.key) == client.llen(history.key)

        async def main() -> None:
            for i in range(60, 120):
                batch_ = messages("d", i)
                await history.aadd_messages(batch_)
                outcomes.add([str(m.content) for m in batch_], None)

        asyncio.run(main())
    outcomes.check(client, [history.key])
    with replica.client() as r:
        assert r.lrange(history.key, 0, -1) == client.lrange(history.key, 0, -1)
    assert proxy.cuts >= 30
