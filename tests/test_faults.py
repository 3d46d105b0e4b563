"""Faults under load, on real servers: the library flushed or the server restarted mid-load, a
cluster primary killed mid-load; and the durability option (WAIT in the same round trip)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import redis.cluster
from chat import turn
from langchain_core.messages import HumanMessage

import pyhistory
from pyhistory import RedisChatMessageHistory, _clients, _refusals, testing

pytestmark = pytest.mark.faults

# How long a test waits for work to go on after a fault: a bound on a hang, not a measure of speed.
PROGRESS_TIMEOUT = 60.0


class Load:
    """Chat turns from several threads until stopped, counting what succeeded and what failed."""

    def __init__(self, make: Callable[[int], RedisChatMessageHistory], threads: int = 6) -> None:
        self.make = make
        self.ok = 0
        self.failures: list[BaseException] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(n,)) for n in range(threads)]

    def _run(self, n: int) -> None:
        i = 0
        while not self._stop.is_set():
            i += 1
            try:
                history = self.make(n)
                history.add_messages(turn(i))
                got = history.messages  # empty only when a restart wiped the server in between
                assert not got or got[-1].content == f"answer {i}"
            except Exception as error:
                with self._lock:
                    self.failures.append(error)
            else:
                with self._lock:
                    self.ok += 1

    def wait_for_progress(self, turns: int, timeout: float = PROGRESS_TIMEOUT) -> None:
        """Until ``turns`` more turns succeed: progress, not speed (a loaded machine is slow)."""
        with self._lock:
            target = self.ok + turns
        deadline = time.monotonic() + timeout
        while self.ok < target:
            assert time.monotonic() < deadline, (
                f"no progress in {timeout:.0f} s: {self.failures[-3:]}"
            )
            time.sleep(0.02)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)


def test_function_flush_during_load_fails_nothing(url: str, client: redis.Redis) -> None:
    with Load(lambda n: RedisChatMessageHistory(f"flush-{n}", url=url, ttl=60, window=4)) as load:
        for _ in range(5):
            load.wait_for_progress(12)
            client.function_flush()
        load.wait_for_progress(12)  # two turns per thread: some began after the flush
    assert load.failures == []


def test_function_delete_every_20_ms_under_load_fails_nothing(
    url: str, client: redis.Redis
) -> None:
    """The library deleted every 20 ms while 32 asyncio tasks and 4 threads append and read: each
    call loads it again for as long as it keeps being lost (HEAL_WINDOW), not once."""
    stop = threading.Event()
    deletes = 0

    def deleter() -> None:
        nonlocal deletes
        while not stop.is_set():
            with contextlib.suppress(redis.ResponseError):  # not loaded at that moment
                client.function_delete(pyhistory.LIBRARY)
                deletes += 1
            time.sleep(0.02)

    async def tasks() -> tuple[int, list[BaseException]]:
        done, failures = 0, []

        async def user(n: int) -> None:
            nonlocal done
            i = 0
            while not stop.is_set():
                i += 1
                history = RedisChatMessageHistory(f"del-a{n}", url=url, ttl=60, window=4)
                try:
                    await history.aadd_messages(turn(i))
                    await history.aget_messages()
                    await history.atouch()
                    done += 1
                except Exception as error:
                    failures.append(error)

        await asyncio.gather(*(user(n) for n in range(32)))
        return done, failures

    result: list[tuple[int, list[BaseException]]] = []
    with Load(lambda n: RedisChatMessageHistory(f"del-{n}", url=url, ttl=60, window=4), 4) as load:
        runner = threading.Thread(target=lambda: result.append(asyncio.run(tasks())))
        chaos = threading.Thread(target=deleter)
        runner.start()
        chaos.start()
        time.sleep(4)
        stop.set()
        runner.join(60)
        chaos.join(10)
    done, failures = result[0]
    assert deletes > 50
    assert load.failures == [] and failures == []
    assert load.ok > 20 and done > 50


def test_server_restart_during_load_fails_nothing(local_server: testing.LocalServer) -> None:
    url = local_server.url
    with Load(lambda n: RedisChatMessageHistory(f"restart-{n}", url=url, ttl=60, window=4)) as load:
        load.wait_for_progress(12)
        local_server.restart()  # no persistence: data and functions are gone
        load.wait_for_progress(12)  # two turns per thread: some began after the restart
        local_server.restart()
        load.wait_for_progress(12)
    assert load.failures == []


async def test_asyncio_restart_and_flush_during_load_fail_nothing(
    local_server: testing.LocalServer,
) -> None:
    url = local_server.url
    failures: list[BaseException] = []
    done = 0
    stop = asyncio.Event()

    async def user(n: int) -> None:
        nonlocal done
        i = 0
        while not stop.is_set():
            i += 1
            try:
                history = RedisChatMessageHistory(f"a{n}", url=url, ttl=60, window=4)
                await history.aadd_messages(turn(i))
                got = await history.aget_messages()
                assert not got or got[-1].content == f"answer {i}"
                done += 1
            except Exception as error:
                failures.append(error)

    async def progress(turns: int) -> None:
        """Until ``turns`` more turns succeed (two per user: some began after the fault)."""
        target = done + turns
        deadline = time.monotonic() + PROGRESS_TIMEOUT
        while done < target:
            assert time.monotonic() < deadline, f"no progress: {failures[-3:]}"
            await asyncio.sleep(0.02)

    tasks = [asyncio.create_task(user(n)) for n in range(16)]
    try:
        await progress(32)
        with local_server.client() as c:
            c.function_flush()
        await progress(32)
        await asyncio.to_thread(local_server.restart)
        await progress(32)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    assert failures == []


# --- durability: WAIT pipelined with the write ------------------------------------------------


def test_wait_for_replicas_acknowledged(replicated: tuple[str, testing.LocalServer]) -> None:
    url, replica = replicated
    history = RedisChatMessageHistory("d", url=url, ttl=60, wait_for_replicas=1)
    history.add_messages(turn(1))
    with replica.client() as r:  # acknowledged means the replica has it now
        assert r.llen(history.key) == 2
    history.clear()
    with replica.client() as r:
        assert r.exists(history.key) == 0


def test_too_few_replicas_is_a_typed_error_and_the_write_stays(
    replicated: tuple[str, testing.LocalServer], client: redis.Redis
) -> None:
    url, _ = replicated
    history = RedisChatMessageHistory("d", url=url, wait_for_replicas=2, wait_timeout_ms=1000)
    with pytest.raises(pyhistory.ReplicationError) as caught:
        history.add_messages(turn(1))
    assert (caught.value.acknowledged, caught.value.required) == (1, 2)
    assert client.llen(history.key) == 2


async def test_wait_for_replicas_asyncio(
    replicated: tuple[str, testing.LocalServer], client: redis.Redis
) -> None:
    url, replica = replicated
    history = RedisChatMessageHistory("d", url=url, wait_for_replicas=1)
    client.function_flush()  # the durable path reloads too
    await history.aadd_messages(turn(1))
    with replica.client() as r:
        assert r.llen(history.key) == 2
    strict = RedisChatMessageHistory("d", url=url, wait_for_replicas=3, wait_timeout_ms=100)
    with pytest.raises(pyhistory.ReplicationError):
        await strict.aadd_messages(turn(2))


@pytest.mark.parametrize(
    ("replicas", "timeout_ms"), [(-1, 100), (1.5, 100), (1, 0), (1, -5), (True, 100)]
)
def test_bad_durability_settings(replicas: Any, timeout_ms: Any) -> None:
    with pytest.raises(pyhistory.InvalidArgumentError):
        RedisChatMessageHistory("s", wait_for_replicas=replicas, wait_timeout_ms=timeout_ms)


# --- cluster failover -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def doomed_cluster() -> Iterator[testing.LocalCluster]:
    """A cluster of its own: this module kills one of its primaries (Debian's Redis when
    present, otherwise a wheel's server)."""
    with testing.start_cluster() as started:
        yield started


def settle(cluster: testing.LocalCluster) -> None:
    """Every node up, 3 primaries each with a replica whose link is up: the state each case of
    the failover test starts from, whatever the case before it left (its killed primary comes
    back as a replica and must catch up before writes can be acknowledged by a replica again)."""
    deadline = time.monotonic() + PROGRESS_TIMEOUT
    cluster.wait_healthy(timeout=PROGRESS_TIMEOUT)
    while True:
        primaries = cluster.primaries()
        replicas = [r for p in primaries for r in cluster.replicas_of(p)]
        if (
            len(primaries) == 3
            and len(replicas) == 3
            and all(node.running for node in cluster.nodes)
        ):
            links = []
            for replica in replicas:
                with replica.client() as c:
                    links.append(c.info("replication").get("master_link_status"))
            if links == ["up"] * 3:
                return
        assert time.monotonic() < deadline, f"cluster not settled: {primaries} {replicas}"
        time.sleep(0.1)


@pytest.mark.cluster
@pytest.mark.parametrize("durable", [True, False], ids=["wait_for_replicas=1", "no-wait"])
def test_primary_killed_during_load(doomed_cluster: testing.LocalCluster, durable: bool) -> None:
    """Writers with wait_for_replicas=1 on many sessions; one primary is killed. Its replica
    takes over; the killed node is restarted (as a supervisor would) and rejoins as the new
    primary's replica, so writes can be acknowledged again. Writes resume (how soon is printed:
    it is mostly the cluster's own failure detection), and every acknowledged message is there
    after. Without the durability option, writes resume too, but what the primary acknowledged
    and had not yet replicated may be lost: that is counted."""
    settle(doomed_cluster)
    client = doomed_cluster.client()
    acknowledged: dict[str, list[str]] = {}
    errors: list[tuple[float, BaseException]] = []
    successes: list[tuple[float, str]] = []
    lock = threading.Lock()
    stop = threading.Event()
    sessions = [f"failover-{durable}-{i}" for i in range(24)]  # apart from the other run's

    def writer(mine: list[str]) -> None:
        i = 0
        while not stop.is_set():
            for session in mine:
                i += 1
                text = f"{session}#{i}"
                history = RedisChatMessageHistory(
                    session,
                    redis_client=client,
                    wait_for_replicas=1 if durable else 0,
                    wait_timeout_ms=500,
                )
                try:
                    history.add_messages([HumanMessage(text)])
                except Exception as error:
                    with lock:
                        errors.append((time.monotonic(), error))
                else:
                    with lock:
                        acknowledged.setdefault(session, []).append(text)
                        successes.append((time.monotonic(), session))

    threads = [threading.Thread(target=writer, args=(sessions[n::4],)) for n in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(successes) >= 20, "writes under way")
        victim = doomed_cluster.primaries()[0]
        owned = [
            s
            for s in sessions
            if client.get_node_from_key(f"message_store:{s}").port == victim.port
        ]
        assert owned, "no session lives on the killed primary"
        killed_at = time.monotonic()
        victim.kill()
        deadline = killed_at + PROGRESS_TIMEOUT
        while (
            victim.port in [p.port for p in doomed_cluster.primaries()]
            or len(doomed_cluster.primaries()) < 3
        ):
            assert time.monotonic() < deadline, "no replica took over"
            time.sleep(0.1)
        promoted_at = time.monotonic()
        victim.restart()  # back as a replica of the promoted node
        while time.monotonic() < deadline:
            with lock:
                resumed = [t for t, s in successes if t > killed_at + 0.1 and s in owned]
            if resumed:
                break
            time.sleep(0.05)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert resumed, f"writes to the killed primary's sessions did not resume: {errors[-3:]}"
    outage = resumed[0] - killed_at
    print(
        f"failover ({'durable' if durable else 'no wait'}): replica promoted "
        f"{promoted_at - killed_at:.2f} s after the kill, writes "
        f"resumed after {outage:.2f} s; errors meanwhile: "
        f"{Counter(type(e).__name__ for _, e in errors)}"
    )

    doomed_cluster.wait_healthy(timeout=PROGRESS_TIMEOUT)
    fresh = doomed_cluster.client()
    lost, twice = [], []
    for session, texts in acknowledged.items():
        stored = [m.content for m in RedisChatMessageHistory(session, redis_client=fresh).messages]
        lost += [t for t in texts if t not in stored]
        twice += [t for t, n in Counter(stored).items() if n > 1]
    print(
        f"failover ({'durable' if durable else 'no wait'}): {len(lost)} acknowledged lost, "
        f"{len(twice)} stored twice"
    )
    if durable:
        assert not lost, f"acknowledged but lost: {lost[:5]}"
    assert not twice, f"stored twice (exactly-once appends): {twice[:5]}"
    for _, error in errors:
        assert isinstance(error, (redis.exceptions.RedisError, pyhistory.HistoryError)), error
        assert getattr(error, "may_have_been_applied", False), error


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + PROGRESS_TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {PROGRESS_TIMEOUT:.0f} s"
        time.sleep(0.02)


# --- reads from a standalone replica ----------------------------------------------------------


def test_reads_from_a_replica_url(replicated: tuple[str, testing.LocalServer]) -> None:
    url, replica = replicated
    history = RedisChatMessageHistory(
        "r", url=url, ttl=60, replica_url=replica.url, wait_for_replicas=1
    )
    assert history.read_from_replicas
    history.add_messages(turn(1))  # acknowledged by the replica: the read below sees it
    with replica.client() as r:
        r.config_resetstat()
        assert [m.content for m in history.messages] == ["question 1", "answer 1"]
        assert int(r.info("commandstats")["cmdstat_lrange"]["calls"]) == 1
        assert r.ttl(history.key) > 0


async def test_async_reads_from_a_replica_url(replicated: tuple[str, testing.LocalServer]) -> None:
    url, replica = replicated
    history = RedisChatMessageHistory("r", url=url, replica_url=replica.url, wait_for_replicas=1)
    await history.aadd_messages(turn(2))
    with replica.client() as r:
        r.config_resetstat()
        assert [m.content for m in await history.aget_messages()] == ["question 2", "answer 2"]
        assert int(r.info("commandstats")["cmdstat_lrange"]["calls"]) == 1


# --- reads that stand where the library cannot be loaded ---------------------------------------


def lc_session(client: redis.Redis, key: str) -> None:
    """A session langchain_community wrote (no library loaded anywhere)."""
    from langchain_core.messages import message_to_dict

    entries = [json.dumps(message_to_dict(m)) for m in turn(1)]
    client.lpush(key, *entries)


def test_a_replica_url_with_a_ttl_reads_where_no_node_has_the_library(
    replicated: tuple[str, testing.LocalServer], client: redis.Redis
) -> None:
    _, replica = replicated
    lc_session(client, "message_store:lc")
    client.execute_command("WAIT", 1, 2000)
    history = RedisChatMessageHistory("lc", url=replica.url, ttl=60)  # the replica as the url
    assert [m.content for m in history.messages] == ["question 1", "answer 1"]
    assert [m.content for m in asyncio.run(history.aget_messages())] == [
        "question 1",
        "answer 1",
    ]
    with pytest.raises(pyhistory.ReadOnlyServerError):
        history.touch()  # a write: a replica refuses it


def refusal_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "pyhistory" and r.levelno == logging.WARNING and "TTL refresh" in r.message
    ]


def test_a_refused_ttl_refresh_is_surfaced_and_the_read_stands(
    replicated: tuple[str, testing.LocalServer], caplog: pytest.LogCaptureFixture
) -> None:
    """A plain URL that names a replica (a node a failover outside Sentinel demoted, say): the
    read's TTL refresh is refused (READONLY), the read stands, and the refusal is logged, once
    per client within the log interval, naming the server and what to do."""
    url, replica = replicated
    RedisChatMessageHistory("demoted", url=url, ttl=60, wait_for_replicas=1).add_messages(turn(1))
    history = RedisChatMessageHistory("demoted", url=replica.url, ttl=60)
    expected = ["question 1", "answer 1"]
    with caplog.at_level(logging.WARNING, logger="pyhistory"):
        for _ in range(3):
            assert [m.content for m in history.messages] == expected
        assert [m.content for m in asyncio.run(history.aget_messages())] == expected
    warnings = refusal_warnings(caplog)
    assert len(warnings) == 2, warnings  # the sync client's and the asyncio client's
    assert _refusals.count(_clients.sync_client(replica.url)) == 3  # each read's, counted
    for message in warnings:
        assert f"127.0.0.1:{replica.port}" in message
        assert "READONLY" in message and "replica_url" in message
        assert "'message_store:demoted'" in message


def test_reads_meant_for_a_replica_send_no_refresh_and_do_not_warn(
    replicated: tuple[str, testing.LocalServer], caplog: pytest.LogCaptureFixture
) -> None:
    url, replica = replicated
    history = RedisChatMessageHistory("meant", url=url, ttl=60, replica_url=replica.url)
    history.add_messages(turn(1))
    RedisChatMessageHistory("meant", url=url, ttl=60, wait_for_replicas=1).touch()  # replicated
    with replica.client() as r, caplog.at_level(logging.WARNING, logger="pyhistory"):
        r.config_resetstat()
        assert [m.content for m in history.messages] == ["question 1", "answer 1"]
        assert [m.content for m in asyncio.run(history.aget_messages())] == [
            "question 1",
            "answer 1",
        ]
        stats = r.info("commandstats")
    assert "cmdstat_fcall" not in stats  # no refresh sent to the replica
    assert int(stats["cmdstat_lrange"]["calls"]) == 2
    assert refusal_warnings(caplog) == []


def test_reads_stand_after_function_flush_at_maxmemory(
    local_server: testing.LocalServer, client: redis.Redis
) -> None:
    lc_session(client, "message_store:oom")
    client.function_flush()
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", 1)  # every write refused: OOM
    try:
        history = RedisChatMessageHistory("oom", url=local_server.url, ttl=60)
        assert [m.content for m in history.messages] == ["question 1", "answer 1"]
        got = asyncio.run(history.aget_messages())
        assert [m.content for m in got] == ["question 1", "answer 1"]
        with pytest.raises(pyhistory.OutOfMemoryError):
            history.add_messages(turn(2))
    finally:
        client.config_set("maxmemory", 0)
    assert client.llen("message_store:oom") == 2
