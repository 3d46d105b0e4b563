"""Histories on Sentinel URLs (``redis+sentinel://``, langchain_community's grammar), against real
primaries, replicas and sentinels of every installed kind.

Round trips sync and asyncio, the URL forms (service, db, credentials), and a failover under
load: writers append with ``wait_for_replicas=1`` while the primary is SIGKILLed; every write
that was acknowledged must be read back afterwards. The failover's timings are printed in the
run's output, never asserted.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from langchain_core.messages import AIMessage, HumanMessage

import pyhistory
from pyhistory import RedisChatMessageHistory, _clients, testing

pytestmark = pytest.mark.sentinel


def session_id() -> str:
    return f"sentinel-{uuid.uuid4().hex[:12]}"


def contents(history: RedisChatMessageHistory) -> list[str]:
    return [str(m.content) for m in history.messages]


@pytest.fixture
def sentinel_url(sentinel_set: testing.LocalSentinelSet) -> Iterator[str]:
    """The set's URL, its primary emptied of keys and functions (the first call loads them)."""
    sentinel_set.wait_ready()
    with sentinel_set.primary_client() as client:
        client.flushall()
        client.function_flush()
    yield sentinel_set.url


# --- round trips -------------------------------------------------------------------------------


def test_the_cli_reaches_the_primary_through_a_sentinel_url(
    sentinel_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from pyhistory.cli import main

    assert main(["--url", sentinel_url, "load"]) == 0
    assert main(["--url", sentinel_url, "status"]) == 0
    out = capsys.readouterr().out
    primary = f"127.0.0.1:{sentinel_set_primary_port(sentinel_url)}"
    assert primary in out and "current" in out
    history = RedisChatMessageHistory(session_id(), url=sentinel_url)
    history.add_user_message("hi")
    assert main(["--url", sentinel_url, "show", history.session_id]) == 0
    assert "hi" in capsys.readouterr().out
    history.clear()


def sentinel_set_primary_port(url: str) -> int:
    from pyhistory import _clients

    client = _clients._sentinel_master(url)
    try:
        return int(client.connection_pool.get_master_address()[1])  # type: ignore[no-untyped-call]
    finally:
        client.close()


def test_round_trip(sentinel_set: testing.LocalSentinelSet, sentinel_url: str) -> None:
    history = RedisChatMessageHistory(session_id(), url=sentinel_url)
    history.add_messages([HumanMessage("hi"), AIMessage("hello")])
    assert contents(history) == ["hi", "hello"]
    assert len(history) == 2
    with sentinel_set.primary_client() as client:  # stored on the primary the sentinels name
        assert client.llen(history.key) == 2
        assert client.wait(2, 2000) == 2
    for replica in sentinel_set.replicas():
        with replica.client() as client:
            assert client.llen(history.key) == 2
    history.clear()
    assert history.messages == []


async def test_round_trip_asyncio(
    sentinel_set: testing.LocalSentinelSet, sentinel_url: str
) -> None:
    history = RedisChatMessageHistory(session_id(), url=sentinel_url)
    await history.aadd_messages([HumanMessage("hi"), AIMessage("hello")])
    assert [m.content for m in await history.aget_messages()] == ["hi", "hello"]
    with sentinel_set.primary_client() as client:
        assert client.llen(history.key) == 2
    await history.aclear()
    assert await history.aget_messages() == []


def test_one_client_per_url_across_histories(sentinel_url: str) -> None:
    first = RedisChatMessageHistory(session_id(), url=sentinel_url)
    second = RedisChatMessageHistory(session_id(), url=sentinel_url)
    first.add_messages([HumanMessage("a")])
    second.add_messages([HumanMessage("b")])
    assert (contents(first), contents(second)) == (["a"], ["b"])


async def test_more_concurrent_calls_than_connections_wait_for_one(
    sentinel_set: testing.LocalSentinelSet, sentinel_url: str
) -> None:
    """The primary's pool holds at most MAX_CONNECTIONS connections, as other URL forms' pools
    do; calls beyond wait for a free one."""
    tasks = 3 * _clients.MAX_CONNECTIONS
    with sentinel_set.primary_client() as client:
        before = int(client.info("stats")["total_connections_received"])

    async def turn_of(i: int) -> int:
        history = RedisChatMessageHistory(f"busy-{i % 7}", url=sentinel_url, ttl=60)
        await history.aadd_messages([HumanMessage(str(i))])
        return len(await history.aget_messages())

    lengths = await asyncio.gather(*(turn_of(i) for i in range(tasks)))
    assert len(lengths) == tasks and min(lengths) >= 1
    with sentinel_set.primary_client() as client:
        opened = int(client.info("stats")["total_connections_received"]) - before - 2  # the INFOs
    assert 1 <= opened <= _clients.MAX_CONNECTIONS
    for pool in (
        (await _clients.async_client(sentinel_url)).connection_pool,
        _clients.sync_client(sentinel_url).connection_pool,
    ):
        assert pool.max_connections == _clients.MAX_CONNECTIONS


# --- the URL grammar ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["", "/mymaster", "/mymaster/0"])
def test_service_and_db_default(
    sentinel_set: testing.LocalSentinelSet, sentinel_url: str, path: str
) -> None:
    """``redis+sentinel://host:port[/service[/db]]``: service "mymaster" and db 0 by default."""
    host, port = sentinel_set.sentinel_addresses[0]
    history = RedisChatMessageHistory(session_id(), url=f"redis+sentinel://{host}:{port}{path}")
    history.add_messages([HumanMessage("x")])
    with sentinel_set.primary_client(db=0) as client:
        assert client.llen(history.key) == 1


def test_db_in_the_path(sentinel_set: testing.LocalSentinelSet, sentinel_url: str) -> None:
    history = RedisChatMessageHistory(session_id(), url=sentinel_set.url_for(3))
    history.add_messages([HumanMessage("in db 3")])
    assert contents(history) == ["in db 3"]
    with sentinel_set.primary_client(db=3) as client:
        assert client.llen(history.key) == 1
    with sentinel_set.primary_client(db=0) as client:
        assert client.exists(history.key) == 0


def test_any_sentinel_of_the_set(sentinel_set: testing.LocalSentinelSet, sentinel_url: str) -> None:
    key = None
    for i in range(len(sentinel_set.sentinels)):
        history = RedisChatMessageHistory("same-session", url=sentinel_set.url_for(sentinel=i))
        history.add_messages([HumanMessage(f"through sentinel {i}")])
        key = history.key
    with sentinel_set.primary_client() as client:
        assert client.llen(key) == len(sentinel_set.sentinels)


def test_unknown_service_is_an_error(
    sentinel_set: testing.LocalSentinelSet, sentinel_url: str
) -> None:
    host, port = sentinel_set.sentinel_addresses[0]
    history = RedisChatMessageHistory(session_id(), url=f"redis+sentinel://{host}:{port}/nosuch/0")
    with pytest.raises(pyhistory.ServerConnectionError, match="No master found for 'nosuch'"):
        history.add_messages([HumanMessage("x")])  # redis-py's MasterNotFoundError, typed


PASSWORD = "s3cret:/@?"  # characters that must be percent-encoded in a URL


@pytest.fixture(scope="module", params=["sentinels without a password", "sentinels too"])
def protected(
    request: pytest.FixtureRequest, sentinel_kind: str
) -> Iterator[testing.LocalSentinelSet]:
    """Servers that require a password; sentinels without one, or with the same one."""
    sentinel_password = PASSWORD if request.param == "sentinels too" else None
    with testing.start_sentinel_set(
        sentinel_kind,
        replicas=0,
        sentinels=1,
        password=PASSWORD,
        sentinel_password=sentinel_password,
    ) as started:
        yield started


@pytest.mark.parametrize("username", [None, "default"])
def test_credentials_and_db(protected: testing.LocalSentinelSet, username: str | None) -> None:
    url = protected.url_for(2, username=username)
    assert "s3cret%3A%2F%40%3F@" in url
    history = RedisChatMessageHistory(session_id(), url=url)
    history.add_messages([HumanMessage("secret")])
    assert contents(history) == ["secret"]
    with protected.primary_client(db=2) as client:
        assert client.llen(history.key) == 1


def first_sentinel_down(protected: testing.LocalSentinelSet) -> str:
    """The set's URL with credentials and db 2, listing a sentinel that is down first."""
    host, port = protected.sentinel_addresses[0]
    closed = testing.free_port()
    url = protected.url_for(2).replace(f"@{host}:{port}/", f"@{host}:{closed},{host}:{port}/")
    assert f":{closed},{host}:{port}/mymaster/2" in url
    return url


def test_credentials_with_the_first_sentinel_down(protected: testing.LocalSentinelSet) -> None:
    """Credentials in the URL make the client ask a sentinel whether it takes them: one that is
    down (listed first here) is passed over for the next."""
    history = RedisChatMessageHistory(session_id(), url=first_sentinel_down(protected))
    history.add_messages([HumanMessage("sync")])
    assert contents(history) == ["sync"]
    with protected.primary_client(db=2) as client:
        assert client.llen(history.key) == 1


async def test_credentials_with_the_first_sentinel_down_asyncio(
    protected: testing.LocalSentinelSet,
) -> None:
    history = RedisChatMessageHistory(session_id(), url=first_sentinel_down(protected))
    await history.aadd_messages([HumanMessage("asyncio")])
    assert [m.content for m in await history.aget_messages()] == ["asyncio"]
    with protected.primary_client(db=2) as client:
        assert client.llen(history.key) == 1


def test_wrong_password(protected: testing.LocalSentinelSet) -> None:
    wrong = RedisChatMessageHistory(session_id(), url=protected.url_for(password="wrong"))
    # refused by the sentinels when they take the password, else by the primary: never retried
    with pytest.raises(pyhistory.AuthenticationFailedError):
        wrong.add_messages([HumanMessage("x")])
    with protected.primary_client() as client:
        assert client.exists(wrong.key) == 0


def test_several_sentinels_in_the_url(
    sentinel_set: testing.LocalSentinelSet, sentinel_url: str
) -> None:
    """``host:port,host:port``: a sentinel that refuses connections is passed over."""
    (host, first), (_, second) = sentinel_set.sentinel_addresses[:2]
    closed = testing.free_port()
    url = f"redis+sentinel://{host}:{closed},{host}:{first},{host}:{second}/mymaster/0"
    history = RedisChatMessageHistory(session_id(), url=url)
    history.add_messages([HumanMessage("through the second sentinel")])
    with sentinel_set.primary_client() as client:
        assert client.llen(history.key) == 1


@pytest.fixture(scope="module")
def tls_set(
    sentinel_kind: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[testing.LocalSentinelSet]:
    binary = testing.server_binary(sentinel_kind)
    assert binary is not None
    if not testing.binary_supports_tls(binary):
        pytest.skip(f"{sentinel_kind} ({binary}) was built without TLS support")
    files = testing.make_tls_files(str(tmp_path_factory.mktemp("tls")))
    with testing.start_sentinel_set(sentinel_kind, replicas=1, sentinels=1, tls=files) as started:
        yield started


def test_tls_url_with_options_in_the_query(tls_set: testing.LocalSentinelSet) -> None:
    assert tls_set.tls is not None
    files = tls_set.tls
    url = tls_set.url_for(1)
    assert url.startswith("rediss+sentinel://")
    query = f"?ssl_ca_certs={files.ca_cert}&ssl_certfile={files.cert}&ssl_keyfile={files.key}"
    history = RedisChatMessageHistory(session_id(), url=url + query)
    history.add_messages([HumanMessage("over TLS")])
    assert contents(history) == ["over TLS"]
    with tls_set.primary_client(db=1) as client:
        assert client.llen(history.key) == 1


# --- failover under load -----------------------------------------------------------------------


@dataclass
class Writer:
    """One session appended to, one message per call; what was acknowledged and what raised."""

    name: str
    history: RedisChatMessageHistory
    acked: list[tuple[str, float, float]] = field(default_factory=list)  # content, start, end
    failed: list[tuple[str, float, str]] = field(default_factory=list)  # content, start, error

    def attempt(self, i: int) -> tuple[str, float]:
        return f"{self.name}:{i}", time.monotonic()

    def done(self, content: str, started: float, error: BaseException | None) -> None:
        if error is None:
            self.acked.append((content, started, time.monotonic()))
        else:
            self.failed.append((content, started, f"{type(error).__name__}: {error}"))


def run_sync(writer: Writer, stop: threading.Event) -> None:
    i = 0
    while not stop.is_set():
        content, started = writer.attempt(i)
        i += 1
        try:
            writer.history.add_messages([HumanMessage(content)])
        except Exception as error:
            writer.done(content, started, error)
            time.sleep(0.01)
        else:
            writer.done(content, started, None)


def run_asyncio(writers: list[Writer], stop: threading.Event) -> None:
    async def write(writer: Writer) -> None:
        i = 0
        while not stop.is_set():
            content, started = writer.attempt(i)
            i += 1
            try:
                await writer.history.aadd_messages([HumanMessage(content)])
            except Exception as error:
                writer.done(content, started, error)
                await asyncio.sleep(0.01)
            else:
                writer.done(content, started, None)

    async def main() -> None:
        await asyncio.gather(*(write(w) for w in writers))

    asyncio.run(main())


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout:.0f} s"
        time.sleep(0.02)


@pytest.mark.faults
def test_failover_under_load_loses_nothing_acknowledged(
    sentinel_kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with testing.start_sentinel_set(sentinel_kind, replicas=2) as sentinel_set:
        url = sentinel_set.url

        def writer(name: str) -> Writer:
            history = RedisChatMessageHistory(
                f"failover-{name}-{uuid.uuid4().hex[:8]}", url=url, wait_for_replicas=1
            )
            return Writer(name, history)

        sync_writers = [writer(f"sync{n}") for n in range(3)]
        async_writers = [writer(f"async{n}") for n in range(3)]
        writers = sync_writers + async_writers
        stop = threading.Event()
        threads = [threading.Thread(target=run_sync, args=(w, stop)) for w in sync_writers]
        threads.append(threading.Thread(target=run_asyncio, args=(async_writers, stop)))
        for thread in threads:
            thread.start()
        try:
            wait_until(lambda: all(len(w.acked) >= 20 for w in writers), 20, "writes under way")
            old = sentinel_set.kill_primary()  # returns once the process is gone
            killed = time.monotonic()
            new = sentinel_set.wait_for_promotion(old, timeout=30)
            promoted = time.monotonic()
            wait_until(lambda: all(w.acked[-1][1] > killed for w in writers), 40, "writes resumed")
            time.sleep(0.5)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
        assert new is not old and not old.running

        # read everything back through the sentinels, from the new primary
        lost: dict[str, list[str]] = {}
        applied_unacked = 0
        twice: dict[str, list[str]] = {}
        for w in writers:
            stored = contents(RedisChatMessageHistory(w.history.session_id, url=url))
            acked = [content for content, _, _ in w.acked]
            present, acknowledged = set(stored), set(acked)
            lost[w.name] = [c for c in acked if c not in present]
            # Exactly once (docs/exactly-once.md): a write whose connection broke after the old
            # primary applied it is sent again with its batch id, and not applied again.
            twice[w.name] = [c for c, n in Counter(stored).items() if n > 1]
            kept = [c for c in stored if c in acknowledged]
            assert kept == [c for c in acked if c in present]
            applied_unacked += sum(1 for content, _, _ in w.failed if content in present)

        resumed = {w.name: next(e for _, s, e in w.acked if s > killed) - killed for w in writers}
        stalls = [
            max(b[2] - a[2] for a, b in zip(w.acked, w.acked[1:], strict=False)) for w in writers
        ]
        errors = sorted({error.split(":")[0] for w in writers for _, _, error in w.failed})
        report = (
            f"\n[{sentinel_kind}] primary SIGKILLed; promotion after {promoted - killed:.2f} s; "
            f"writes resumed after {min(resumed.values()):.2f}-{max(resumed.values()):.2f} s "
            f"({', '.join(f'{name} {t:.2f}' for name, t in resumed.items())}) "
            f"(longest stall of one writer {max(stalls):.2f} s); "
            f"{sum(len(w.acked) for w in writers)} writes acknowledged, "
            f"{sum(len(v) for v in lost.values())} of them lost; "
            f"{sum(len(w.failed) for w in writers)} calls raised {errors}, "
            f"{applied_unacked} of those applied anyway (once); "
            f"{sum(len(v) for v in twice.values())} writes stored twice"
        )
        with capsys.disabled():  # in the run's output, not only with -s
            print(report)
        assert lost == {w.name: [] for w in writers}
        assert twice == {w.name: [] for w in writers}
        for w in writers:  # what raised may have been applied, and said so
            assert all("may have been applied" in error for _, _, error in w.failed), w.failed
