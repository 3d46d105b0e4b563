"""A real round trip through the installed pyhistory, sync and asyncio.

    roundtrip.py [--server URL] [--unix URL] [--sentinel URL] [--cluster NODE_URL] [--refused]
                 [--checkpoint]

On the server: add, read with a TTL and a window, length, touch, clear, a reload after
``FUNCTION FLUSH``, a dropped connection ridden out by the retry policy, and typed errors,
through both ``MessageStore`` and LangChain's ``RedisChatMessageHistory``. Through the same
server's Unix socket and a Sentinel watching it: a short sync and asyncio round trip. On the
cluster (a node's URL, replicas present): writes acknowledged by a replica, reads from
replicas, and a plain URL detected as a cluster. ``--refused``: a server that refuses
connections gives a typed error in bounded time (about 6 s each for sync and asyncio, so run it
once per environment). ``--checkpoint``: the LangGraph saver of the ``checkpoint`` extra, sync
and asyncio (put, pending writes, get, list, delete), on the server and on the cluster.

Run by ``tests/floors/run.py`` with the Python of each dependency row (the lowest versions
pyproject allows, the newest ones), so it needs nothing but pyhistory and its dependencies:
no pytest. It exits non-zero, with the reason, on the first check that fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from importlib.metadata import version
from typing import Any

import redis
import redis.exceptions
import redis.utils
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

import pyhistory
from pyhistory import (
    HistoryError,
    InvalidTTLError,
    MessageStore,
    RedisChatMessageHistory,
    WrongTypeError,
)

TTL = 60
# What the README promises for a server that is down: a typed error within 10 s (plus slack for
# a loaded machine).
REFUSED_BOUND = 10.0 + 1.5

Store = MessageStore | RedisChatMessageHistory
KINDS: tuple[type[MessageStore] | type[RedisChatMessageHistory], ...] = (
    MessageStore,
    RedisChatMessageHistory,
)


def conversation() -> list[BaseMessage]:
    return [
        SystemMessage("be brief"),
        HumanMessage("question 1", additional_kwargs={"lang": "en"}),
        AIMessage("answer 1", id="a1"),
        HumanMessage("question 2"),
        AIMessage("answer 2"),
    ]


def same(read: list[BaseMessage], written: list[BaseMessage]) -> bool:
    def fields(m: BaseMessage) -> tuple[object, ...]:
        return (type(m).__name__, m.content, m.additional_kwargs, m.id)

    return [fields(m) for m in read] == [fields(m) for m in written]


def check(condition: bool, what: str) -> None:
    if not condition:
        raise SystemExit(f"FAILED: {what}")


def store(
    kind: type[MessageStore] | type[RedisChatMessageHistory],
    url: str,
    ttl: int | None = TTL,
    max_messages: int | None = None,
    window: int | None = None,
    cluster: bool = False,
) -> Store:
    """A new session; with ``cluster``, its writes wait for a replica and its reads go to one."""
    return kind(
        f"floors-{uuid.uuid4().hex}",
        url=url,
        ttl=ttl,
        max_messages=max_messages,
        window=window,
        cluster=cluster,
        read_from_replicas=cluster,
        wait_for_replicas=1 if cluster else 0,
    )


@contextlib.contextmanager
def counting_version_lookups() -> Iterator[list[str]]:
    """The names that importlib.metadata.version() is asked for inside the block."""
    lookups: list[str] = []
    original = importlib.metadata.version

    def counted(name: str) -> str:
        lookups.append(name)
        return original(name)

    importlib.metadata.version = counted
    try:
        yield lookups
    finally:
        importlib.metadata.version = original


def kill_connections(admin: redis.Redis) -> None:
    """Close every connection of the shared clients, as a server restart would."""
    admin.client_kill_filter(_type="normal", skipme=True)


# --- one server -------------------------------------------------------------------------------


def sync_round_trip(url: str, admin: redis.Redis) -> None:
    for kind in KINDS:
        name = kind.__name__
        written = conversation()
        h = store(kind, url, max_messages=4, window=3)
        h.add_messages(written[:2])
        h.add_messages(written[2:])  # five in all: the oldest is trimmed
        check(len(h) == 4, f"{name} length: {len(h)} != 4")
        check(same(h.messages, written[-3:]), f"{name} window read: {h.messages}")
        check(0 < admin.ttl(h.key) <= TTL, f"{name} ttl: {admin.ttl(h.key)}")
        admin.expire(h.key, 5)
        check(h.touch() is True and admin.ttl(h.key) > 5, f"{name} touch")

        admin.function_flush()  # the server lost the library: the next call loads it again
        check(len(h.messages) == 3, f"{name} read after FUNCTION FLUSH")
        kill_connections(admin)  # the retry policy rides it out
        check(len(h.messages) == 3, f"{name} read after the connection was dropped")

        h.clear()
        check(len(h) == 0 and h.messages == [], f"{name} clear")
        check(admin.exists(h.key) == 0, f"{name} clear left the key")

    lc = store(RedisChatMessageHistory, url)
    assert isinstance(lc, RedisChatMessageHistory)
    lc.add_user_message("question 3")  # BaseChatMessageHistory's own helpers still work
    check([m.content for m in lc.messages] == ["question 3"], "add_user_message")
    lc.clear()


async def async_round_trip(url: str, admin: redis.Redis) -> None:
    for kind in KINDS:
        name = f"asyncio {kind.__name__}"
        written = conversation()
        h = store(kind, url, max_messages=4, window=3)
        await h.aadd_messages(written[:2])
        await h.aadd_messages(written[2:])
        check(await h.alength() == 4, f"{name} length")
        read = await h.aget_messages()
        check(same(read, written[-3:]), f"{name} window read: {read}")
        check(0 < admin.ttl(h.key) <= TTL, f"{name} ttl: {admin.ttl(h.key)}")
        check(await h.atouch() is True, f"{name} touch")

        admin.function_flush()
        check(len(await h.aget_messages()) == 3, f"{name} read after FUNCTION FLUSH")
        kill_connections(admin)
        check(len(await h.aget_messages()) == 3, f"{name} read after the connection was dropped")

        await h.aclear()
        check(await h.alength() == 0 and await h.aget_messages() == [], f"{name} clear")


def typed_errors(url: str, admin: redis.Redis) -> None:
    try:
        store(MessageStore, url, ttl=-1)
    except InvalidTTLError:
        pass
    else:
        raise SystemExit("FAILED: ttl=-1 was accepted")

    h = store(MessageStore, url)
    admin.set(h.key, "not a list")
    for name, attempt in (
        ("add_messages", lambda: h.add_messages([HumanMessage("x")])),
        ("aadd_messages", lambda: asyncio.run(h.aadd_messages([HumanMessage("x")]))),
    ):
        try:
            attempt()
        except WrongTypeError as error:
            check(isinstance(error, redis.exceptions.ResponseError), f"{name}: not a ResponseError")
        else:
            raise SystemExit(f"FAILED: {name} on a string key raised no WrongTypeError")
        check(admin.get(h.key) == b"not a list", f"{name} on a string key changed it")
    admin.delete(h.key)


def refused() -> str:
    """No server on the port: a typed error, also redis-py's ConnectionError, in bounded time.
    Says how long each took."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"redis://127.0.0.1:{port}/0"

    async def aread() -> None:
        await store(MessageStore, url).aget_messages()

    took: dict[str, float] = {}
    for name, attempt in (
        ("sync", lambda: store(MessageStore, url).messages),
        ("asyncio", lambda: asyncio.run(aread())),
    ):
        started = time.monotonic()
        try:
            attempt()
        except redis.exceptions.ConnectionError as error:
            took[name] = time.monotonic() - started
            check(isinstance(error, HistoryError), f"refused {name}: not a HistoryError")
            check(took[name] <= REFUSED_BOUND, f"refused {name}: took {took[name]:.1f} s")
        else:
            raise SystemExit(f"FAILED: refused {name}: no error")
    return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in took.items())


def url_form(name: str, url: str) -> None:
    """A short sync and asyncio round trip through a client that another URL form built."""
    written = conversation()
    for kind in KINDS:
        h = store(kind, url, window=3)
        h.add_messages(written)
        check(same(h.messages, written[-3:]), f"{name} {kind.__name__} read")
        h.clear()
        check(len(h) == 0, f"{name} {kind.__name__} clear")

    async def on_asyncio() -> None:
        for kind in KINDS:
            h = store(kind, url, window=3)
            await h.aadd_messages(written)
            check(same(await h.aget_messages(), written[-3:]), f"{name} asyncio read")
            await h.aclear()
            check(await h.alength() == 0, f"{name} asyncio clear")

    asyncio.run(on_asyncio())


# --- a cluster --------------------------------------------------------------------------------


def cluster_round_trip(url: str) -> None:
    """Writes acknowledged by a replica (WAIT, pipelined on the key's primary), reads from the
    replicas, sync and asyncio, through cluster clients built from a node's URL; then a plain
    URL of a node, detected as a cluster."""
    written = conversation()
    for kind in KINDS:
        name = f"cluster {kind.__name__}"
        h = store(kind, url, max_messages=4, window=3, cluster=True)
        h.add_messages(written)
        check(len(h) == 4, f"{name} length: {len(h)} != 4")
        check(same(h.messages, written[-3:]), f"{name} window read: {h.messages}")
        h.clear()
        check(len(h) == 0, f"{name} clear")

    async def on_asyncio() -> None:
        for kind in KINDS:
            name = f"cluster asyncio {kind.__name__}"
            a = store(kind, url, max_messages=4, window=3, cluster=True)
            await a.aadd_messages(written)
            check(await a.alength() == 4, f"{name} length")
            check(same(await a.aget_messages(), written[-3:]), f"{name} window read")
            await a.aclear()
            check(await a.alength() == 0, f"{name} clear")

    asyncio.run(on_asyncio())

    # Many sessions: on a plain client most keys would be MOVED to another node.
    plain = [store(MessageStore, url) for _ in range(8)]
    for h in plain:
        h.add_messages(written[:1])
    check(all(len(h) == 1 for h in plain), "plain cluster URL: length")
    for h in plain:
        h.clear()

    async def plain_asyncio() -> None:
        for h in plain:
            await h.aadd_messages(written[:1])
            check(await h.alength() == 1, "plain cluster URL, asyncio: length")
            await h.aclear()

    asyncio.run(plain_asyncio())


def checkpoint_round_trip(url: str, cluster: bool = False) -> None:
    """The saver's put, put_writes, get_tuple, list and delete_thread, sync and asyncio."""
    from langgraph.checkpoint.base import empty_checkpoint

    from pyhistory.checkpoint import RedisSaver

    saver = RedisSaver(url, ttl=TTL, cluster=cluster)

    def config(thread_id: str) -> Any:
        return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}

    def checkpoint() -> Any:
        value = saver.get_next_version(None, None)
        return {
            **empty_checkpoint(),
            "channel_values": {"messages": ["hello"]},
            "channel_versions": {"messages": value},
        }

    def check_stored(got: Any, written: Any, name: str) -> None:
        check(got is not None, f"{name}: nothing stored")
        check(got.checkpoint["id"] == written["id"], f"{name}: checkpoint id")
        check(got.checkpoint["channel_values"] == {"messages": ["hello"]}, f"{name}: values")
        check(got.metadata.get("step") == 1, f"{name}: metadata {got.metadata}")
        check(
            [(w[1], w[2]) for w in got.pending_writes or []] == [("messages", "pending")],
            f"{name}: pending writes {got.pending_writes}",
        )

    thread = f"floors-{uuid.uuid4().hex}"
    written = checkpoint()
    metadata: Any = {"source": "input", "step": 1}
    stored = saver.put(config(thread), written, metadata, written["channel_versions"])
    saver.put_writes(stored, [("messages", "pending")], task_id="task-1")
    check_stored(saver.get_tuple(config(thread)), written, "checkpoint")
    check(len(list(saver.list(config(thread)))) == 1, "checkpoint list")
    saver.delete_thread(thread)
    check(saver.get_tuple(config(thread)) is None, "checkpoint delete_thread")

    async def on_asyncio() -> None:
        thread = f"floors-{uuid.uuid4().hex}"
        written = checkpoint()
        stored = await saver.aput(config(thread), written, metadata, written["channel_versions"])
        await saver.aput_writes(stored, [("messages", "pending")], task_id="task-1")
        check_stored(await saver.aget_tuple(config(thread)), written, "asyncio checkpoint")
        check(len([c async for c in saver.alist(config(thread))]) == 1, "asyncio list")
        await saver.adelete_thread(thread)
        check(await saver.aget_tuple(config(thread)) is None, "asyncio delete_thread")

    asyncio.run(on_asyncio())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server")
    parser.add_argument("--unix")
    parser.add_argument("--sentinel")
    parser.add_argument("--cluster")
    parser.add_argument("--refused", action="store_true")
    parser.add_argument("--checkpoint", action="store_true")
    options = parser.parse_args()

    hiredis = f"yes {version('hiredis')}" if redis.utils.HIREDIS_AVAILABLE else "no"
    print(
        f"  python {sys.version.split()[0]}, redis {version('redis')}, "
        f"langchain-core {version('langchain-core')} (pydantic {version('pydantic')}), "
        f"pyhistory {pyhistory.__version__}, hiredis {hiredis}",
        flush=True,
    )
    done = []
    if options.server:
        url = options.server
        admin = redis.Redis.from_url(url)
        sync_round_trip(url, admin)
        with counting_version_lookups() as lookups:
            asyncio.run(async_round_trip(url, admin))
            asyncio.run(async_round_trip(url, admin))  # a second loop gets its own client
        # redis-py looks its version up for every new connection unless pyhistory stopped it:
        # file system calls, on the event loop for asyncio connections.
        check(lookups == [], f"package metadata read on the event loop: {lookups}")
        typed_errors(url, admin)
        admin.close()
        done.append(
            "sync and asyncio add, window read, ttl, touch, length, clear, reload, dropped "
            "connection, typed errors, no metadata lookups on the loop"
        )
    forms = [(name, getattr(options, name)) for name in ("unix", "sentinel")]
    for name, form_url in forms:
        if form_url:
            url_form(name, form_url)
            done.append(f"{name} URL")
    if options.cluster:
        cluster_round_trip(options.cluster)
        done.append("a cluster with replicas, by cluster=True and by a plain URL")
    if options.refused:
        done.append(f"refused connections in bounded time ({refused()})")
    if options.checkpoint:
        if options.server:
            checkpoint_round_trip(options.server)
        if options.cluster:
            checkpoint_round_trip(options.cluster, cluster=True)
        done.append(f"the LangGraph saver (langgraph-checkpoint {version('langgraph-checkpoint')})")
    print(f"  round trip ok: {'; '.join(done)}")


if __name__ == "__main__":
    main()
