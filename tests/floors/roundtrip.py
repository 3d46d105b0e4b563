"""A real round trip through the installed pyhistory, sync and asyncio, on the server at argv[1]
and, when argv[2] names a node of a Redis Cluster with replicas, on that cluster.

Run by ``tests/floors/run.py`` with the Python of each dependency row (the lowest versions
pyproject allows, the newest ones), so it needs nothing but pyhistory and its dependencies:
no pytest. It exits non-zero, with the reason, on the first check that fails.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from importlib.metadata import version

import redis
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

import pyhistory
from pyhistory import InvalidTTLError, RedisChatMessageHistory, WrongTypeError

TTL = 60


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


def history(
    url: str,
    ttl: int | None,
    max_messages: int | None = None,
    window: int | None = None,
    cluster: bool = False,
) -> RedisChatMessageHistory:
    """A new session; on a cluster, its writes wait for a replica and its reads go to one."""
    return RedisChatMessageHistory(
        f"floors-{uuid.uuid4().hex}",
        url=url,
        ttl=ttl,
        max_messages=max_messages,
        window=window,
        cluster=cluster,
        read_from_replicas=cluster,
        wait_for_replicas=1 if cluster else 0,
    )


def sync_round_trip(url: str, admin: redis.Redis) -> None:
    written = conversation()
    h = history(url, ttl=TTL, max_messages=4, window=3)
    h.add_messages(written[:2])
    h.add_messages(written[2:])  # five in all: the oldest is trimmed
    check(len(h) == 4, f"sync length: {len(h)} != 4")
    check(same(h.messages, written[-3:]), f"sync window read: {h.messages}")
    check(0 < admin.ttl(h.key) <= TTL, f"sync ttl: {admin.ttl(h.key)}")
    h.add_user_message("question 3")  # BaseChatMessageHistory's own helpers still work
    check(h.messages[-1].content == "question 3", "sync add_user_message")

    admin.function_flush()  # the server lost the library: the next call loads it again
    check(len(h.messages) == 3, "sync read after FUNCTION FLUSH")

    h.clear()
    check(len(h) == 0 and h.messages == [], "sync clear")
    check(admin.exists(h.key) == 0, "sync clear left the key")


async def async_round_trip(url: str, admin: redis.Redis) -> None:
    written = conversation()
    h = history(url, ttl=TTL, max_messages=4, window=3)
    await h.aadd_messages(written[:2])
    await h.aadd_messages(written[2:])
    check(await h.alength() == 4, "asyncio length")
    read = await h.aget_messages()
    check(same(read, written[-3:]), f"asyncio window read: {read}")
    check(0 < admin.ttl(h.key) <= TTL, f"asyncio ttl: {admin.ttl(h.key)}")
    check(await h.atouch() is True, "asyncio touch")

    admin.function_flush()
    check(len(await h.aget_messages()) == 3, "asyncio read after FUNCTION FLUSH")

    await h.aclear()
    check(await h.alength() == 0 and await h.aget_messages() == [], "asyncio clear")


def cluster_round_trip(url: str) -> None:
    """Writes acknowledged by a replica (WAIT, pipelined on the key's primary), reads from the
    replicas, sync and asyncio, through cluster clients built from a node's URL."""
    written = conversation()
    h = history(url, TTL, max_messages=4, window=3, cluster=True)
    h.add_messages(written)
    check(len(h) == 4, f"cluster length: {len(h)} != 4")
    check(same(h.messages, written[-3:]), f"cluster window read: {h.messages}")
    h.clear()
    check(len(h) == 0, "cluster clear")

    async def on_asyncio() -> None:
        a = history(url, TTL, max_messages=4, window=3, cluster=True)
        await a.aadd_messages(written)
        check(await a.alength() == 4, "cluster asyncio length")
        check(same(await a.aget_messages(), written[-3:]), "cluster asyncio window read")
        await a.aclear()
        check(await a.alength() == 0, "cluster asyncio clear")

    asyncio.run(on_asyncio())


def typed_errors(url: str, admin: redis.Redis) -> None:
    try:
        history(url, ttl=-1)
    except InvalidTTLError:
        pass
    else:
        raise SystemExit("FAILED: ttl=-1 was accepted")

    h = history(url, ttl=TTL)
    admin.set(h.key, "not a list")
    for name, attempt in (
        ("add_messages", lambda: h.add_messages([HumanMessage("x")])),
        ("aadd_messages", lambda: asyncio.run(h.aadd_messages([HumanMessage("x")]))),
    ):
        try:
            attempt()
        except WrongTypeError:
            pass
        else:
            raise SystemExit(f"FAILED: {name} on a string key raised no WrongTypeError")
        check(admin.get(h.key) == b"not a list", f"{name} on a string key changed it")
    admin.delete(h.key)


def main() -> None:
    url = sys.argv[1]
    hiredis = f"yes {version('hiredis')}" if redis.utils.HIREDIS_AVAILABLE else "no"
    print(
        f"  python {sys.version.split()[0]}, redis {version('redis')}, "
        f"langchain-core {version('langchain-core')} (pydantic {version('pydantic')}), "
        f"pyhistory {pyhistory.__version__}, hiredis {hiredis}",
        flush=True,
    )
    admin = redis.Redis.from_url(url)
    sync_round_trip(url, admin)
    asyncio.run(async_round_trip(url, admin))
    asyncio.run(async_round_trip(url, admin))  # a second event loop gets its own client
    typed_errors(url, admin)
    done = "sync and asyncio add, window read, ttl, length, clear, typed errors"
    if len(sys.argv) > 2:
        cluster_round_trip(sys.argv[2])
        done += "; on a cluster with replicas too"
    print(f"  round trip ok: {done}")


if __name__ == "__main__":
    main()
