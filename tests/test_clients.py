"""The shared clients' life cycle, on real servers: one URL that does not answer holds up no
other, a forked child builds clients of its own (and is never stuck on a lock its parent held),
the shared clients close on demand (an application's shutdown), and the clients of an event loop
closed without closing them let go of their connections."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Iterator

import pytest
import redis
from chat import turn

import pyhistory
from pyhistory import RedisChatMessageHistory, _clients


@contextlib.contextmanager
def silent_server() -> Iterator[tuple[str, socket.socket]]:
    """A URL whose server accepts connections (the kernel does) and never answers, and its
    listening socket: ``accept()`` on it returns once a client has connected."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(30)
    try:
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0", listener
    finally:
        listener.close()


def build_in_background(url: str) -> threading.Thread:
    """A thread building the shared client of ``url`` (an error is its outcome, not the test's)."""

    def build() -> None:
        with contextlib.suppress(pyhistory.HistoryError):
            _clients.sync_client(url)

    thread = threading.Thread(target=build, daemon=True)
    thread.start()
    return thread


def test_a_url_that_does_not_answer_holds_up_no_other(url: str) -> None:
    """Building a client talks to its server (INFO, to detect a cluster): while one thread waits
    for a server that never answers, another thread's first use of another URL goes ahead."""
    with silent_server() as (silent, listener):
        blocked = build_in_background(silent)
        connection, _ = listener.accept()  # the build is under way, waiting for a reply
        try:
            history = RedisChatMessageHistory("other-url", url=url)
            history.add_messages(turn(1))
            assert len(history.messages) == 2
            assert blocked.is_alive()  # done while the other build is still waiting
        finally:
            connection.close()
        blocked.join(_clients.FAILURE_BOUND + 30)
        assert not blocked.is_alive()


def wait_for_exit(pid: int, timeout: float) -> int:
    """The child's exit code; SIGKILL and -1 when it has not exited within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return -1


# The exit codes of a forked child, for the message when one fails.
CHILD_EXIT = {
    -1: "stuck (a lock the parent held at the fork?)",
    1: "raised",
    2: "used the parent's client",
    3: "read back the wrong messages",
}


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_child_forked_under_load_builds_clients_of_its_own(url: str, client: redis.Redis) -> None:
    """gunicorn, celery and multiprocessing fork processes that already used pyhistory: the
    children must neither share the parent's connections nor wait forever on a lock that a
    thread of the parent held at the fork (here: one building a client for a server that never
    answers, and four threads busy on the server)."""
    parent = _clients.sync_client(url)
    stop = threading.Event()
    failures: list[BaseException] = []

    def busy(n: int) -> None:
        history = RedisChatMessageHistory(f"parent-{n}", url=url, max_messages=10)
        while not stop.is_set():
            try:
                history.add_messages(turn(n))
                history.messages  # noqa: B018
            except BaseException as error:
                failures.append(error)
                return

    workers = [threading.Thread(target=busy, args=(n,)) for n in range(4)]
    for worker in workers:
        worker.start()
    children: dict[int, int] = {}
    with silent_server() as (silent, listener):
        blocked = build_in_background(silent)
        connection, _ = listener.accept()
        try:
            for n in range(4):
                pid = os.fork()
                if pid == 0:  # the child: never returns into pytest
                    code = 1
                    try:
                        other = f"{url}?client_name=child{n}"  # a client built in the child
                        RedisChatMessageHistory(f"child-{n}", url=other).add_messages(turn(n))
                        own = _clients.sync_client(url)
                        history = RedisChatMessageHistory(f"child-{n}", url=url)
                        stored = [str(m.content) for m in history.messages]
                        code = 2 if own is parent else 0 if len(stored) == 2 else 3
                    finally:
                        os._exit(code)
                children[n] = pid
            codes = {n: wait_for_exit(pid, 60) for n, pid in children.items()}
        finally:
            connection.close()
            stop.set()
            for worker in workers:
                worker.join(60)
    assert codes == dict.fromkeys(children, 0), {n: CHILD_EXIT.get(c, c) for n, c in codes.items()}
    assert not failures, failures
    for n in children:
        assert client.llen(f"message_store:child-{n}") == 2
    assert _clients.sync_client(url) is parent  # the parent keeps its own
    blocked.join(_clients.FAILURE_BOUND + 30)


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_child_forked_while_the_caches_locks_are_held_gets_free_ones(url: str) -> None:
    """Every lock guarding a process-wide or per-client cache (decoded messages, what is known of
    sessions' TTLs, refusals, typed error classes, token counts, a saver's heads) held by the
    parent at the fork, as a busy thread may hold one: the child finds each free, and reads and
    appends. (Before pyhistory._forks, a child forked under load could hang for good on the
    decoded-message cache's lock.)"""
    from pyhistory import _core, _expiry, _forks, _refusals, errors, functions
    from pyhistory.checkpoint import RedisSaver

    history = RedisChatMessageHistory("forked-locks", url=url, ttl=60)
    history.add_messages(turn(1))
    assert len(history.messages) == 2
    saver = RedisSaver(url=url)
    held = [
        _core.DECODED._lock,
        _expiry._lock,
        _expiry.expiries(history.redis_client)._lock,
        _refusals._lock,
        errors._MADE_LOCK,
        functions._topologies_lock,
        saver._heads_lock,
    ]
    for lock in held:
        lock.acquire()
    try:
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 1
            try:
                owned = [getattr(o, a) for o, names in _forks._owners.items() for a in names]
                if any(lock.locked() for lock in owned):
                    code = 4
                else:
                    child = RedisChatMessageHistory("forked-locks", url=f"{url}?client_name=c")
                    child.add_messages(turn(2))
                    code = 0 if len(child.messages) == 4 else 3
            finally:
                os._exit(code)
        code = wait_for_exit(pid, 30)
    finally:
        for lock in held:
            lock.release()
    assert code == 0, {4: "a lock was still held", **CHILD_EXIT}.get(code, code)


# --- closing the shared clients ----------------------------------------------------------------


def named_url(url: str) -> tuple[str, str]:
    """The URL with a client name of its own, so that the server lists its connections by it."""
    name = f"pyhistory-{uuid.uuid4().hex[:10]}"
    return f"{url}?client_name={name}", name


def connections_named(client: redis.Redis, name: str) -> int:
    return sum(1 for info in client.client_list() if info.get("name") == name)


def wait_for_connections(client: redis.Redis, name: str, at_most: int) -> None:
    deadline = time.monotonic() + 10
    while (left := connections_named(client, name)) > at_most:
        assert time.monotonic() < deadline, f"{left} connection(s) named {name} still open"
        time.sleep(0.02)


def test_close_clients_lets_go_of_every_connection(url: str, client: redis.Redis) -> None:
    named, name = named_url(url)
    history = RedisChatMessageHistory("closing", url=named)
    history.add_messages(turn(1))
    old = _clients.sync_client(named)
    assert connections_named(client, name) >= 1
    pyhistory.close_clients()
    wait_for_connections(client, name, at_most=0)
    assert len(history.messages) == 2  # a later call builds a new client
    assert _clients.sync_client(named) is not old


async def test_aclose_clients_closes_the_loops_clients_and_the_sync_ones(
    url: str, client: redis.Redis
) -> None:
    """At an application's shutdown (a FastAPI lifespan's end): the running loop's clients and
    the sync ones (used from worker threads) are closed."""
    named, name = named_url(url)
    history = RedisChatMessageHistory("closing", url=named)
    await history.aadd_messages(turn(1))
    await asyncio.to_thread(history.add_messages, turn(2))
    assert connections_named(client, name) >= 2
    await pyhistory.aclose_clients()
    wait_for_connections(client, name, at_most=0)
    assert len(await history.aget_messages()) == 4


def test_clients_of_a_loop_closed_without_shutdown_let_go_when_evicted(
    url: str, client: redis.Redis
) -> None:
    """A loop closed with loop.close() alone (no shutdown_asyncgens, as asyncio.run does) never
    runs the code that closes its clients: when another loop next asks for a client, the closed
    loops' clients are dropped, and their connections are shut down then, not whenever the
    garbage collector comes by (it is off here)."""
    named, name = named_url(url)
    gc.disable()
    try:
        for i in range(3):
            loop = asyncio.new_event_loop()
            loop.run_until_complete(RedisChatMessageHistory("s", url=named).aadd_messages(turn(i)))
            loop.close()
            # each new loop's first call let go of the connections of the loops closed before
            wait_for_connections(client, name, at_most=1)
        asyncio.run(RedisChatMessageHistory("s", url=url).aget_messages())
        wait_for_connections(client, name, at_most=0)
    finally:
        gc.enable()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)  # the sockets' descriptors
            gc.collect()


def test_a_child_forked_while_an_error_class_is_made_can_make_one() -> None:
    """The lock that guards the error classes made at run time, held by another thread at the
    fork (held here by the test itself), is not held in the child."""
    from pyhistory import errors

    class NeverSeenBefore(redis.exceptions.ConnectionError):
        """A redis-py-like class no test translated yet: translating it makes a class."""

    with errors._MADE_LOCK:
        pid = os.fork()
        if pid == 0:  # the child
            code = 1
            try:
                made = errors.translate(NeverSeenBefore("refused"))
                code = 0 if isinstance(made, pyhistory.ServerConnectionError) else 2
            finally:
                os._exit(code)
    assert wait_for_exit(pid, 60) == 0


# --- a checkout right after a clean exchange ---------------------------------------------------


def test_a_connection_read_clean_comes_back_without_a_socket_poll(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py's pools poll a connection's socket on every checkout; the URL-built sync pool
    skips the poll once, for a connection pyhistory's own code read every reply of less than
    FRESH_CHECKOUT ago. Fails when redis-py's checkout stops asking can_read, or when the skip
    outlives its one checkout."""
    polls: list[object] = []
    can_read = redis.connection.AbstractConnection.can_read

    def counted(self: redis.connection.AbstractConnection, timeout: float = 0) -> bool:
        polls.append(self)
        return can_read(self, timeout)

    monkeypatch.setattr(redis.connection.AbstractConnection, "can_read", counted)
    monkeypatch.setattr(pyhistory.functions, "FRESH_CHECKOUT", 0.2)
    named, _ = named_url(url)
    history = RedisChatMessageHistory("fresh", url=named)
    history.add_messages(turn(1))  # builds the client, loads the library: redis-py's calls
    assert len(history.messages) == 2  # after redis-py's own call: polled
    polled = len(polls)
    assert polled >= 1
    history.add_messages(turn(2))  # after a read pyhistory made, just now: not polled
    assert len(history.messages) == 4
    assert len(history.messages) == 4
    assert len(polls) == polled
    time.sleep(0.25)
    assert len(history.messages) == 4  # idle longer than FRESH_CHECKOUT: polled
    assert len(polls) == polled + 1
    client = _clients.sync_client(named)
    assert client.ping()  # redis-py's own call: takes the skip, leaves none behind
    assert client.ping()
    assert len(polls) == polled + 2


def test_a_connection_the_server_closed_after_a_clean_exchange_is_replaced(
    url: str, client: redis.Redis
) -> None:
    """A connection checked out without a poll may be one the server closed meanwhile: the read
    and the append on it still succeed, on a new connection, and the append is stored once."""
    named, _ = named_url(url)
    history = RedisChatMessageHistory("killed", url=named)
    history.add_messages(turn(1))
    first = [m.content for m in turn(1)]
    assert [m.content for m in history.messages] == first  # the connection read clean
    assert client.client_kill_filter(_type="normal", skipme=True) >= 1
    assert [m.content for m in history.messages] == first  # on it, unpolled; then a new one
    assert [m.content for m in history.messages] == first
    assert client.client_kill_filter(_type="normal", skipme=True) >= 1
    history.add_messages(turn(2))  # on the killed connection, unpolled; then once, on a new one
    assert [m.content for m in history.messages] == [m.content for m in turn(1) + turn(2)]
