"""A user's (or a tenant's) sessions: the listing of a sessions index, the most recently active
first. Histories keep the index up to date when constructed with ``sessions_index``."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from pyhistory import _bounded, _clients
from pyhistory._bounded import SessionEntry
from pyhistory.functions import AsyncClient, SyncClient, arun, run


def list_sessions(
    index: str,
    *,
    url: str = "redis://localhost:6379/0",
    redis_client: SyncClient | None = None,
    key_prefix: str = "message_store:",
    ttl: int | timedelta | None = None,
    cluster: bool = False,
    offset: int = 0,
    count: int = 20,
) -> list[SessionEntry]:
    """One page of the sessions listed in ``index``, the most recently appended first, in one
    round trip.

    Args:
        index: the sessions index's key (the histories' ``sessions_index``).
        url: the server, when no client is given (the histories' shared client for it).
        redis_client: a redis-py client to use instead of ``url``.
        key_prefix: the histories' key prefix: each entry's ``session_id`` is its key without it.
        ttl: the histories' TTL: sessions whose last append is older are left out (and dropped
            from the index, at most 100 a call). None: every session the index holds (appends
            with a TTL drop expired ones too).
        cluster: ``url`` names a node of a Redis Cluster.
        offset: how many of the most recent sessions to skip.
        count: the page's size, at most 1000.
    """
    call = _bounded.sessions(index, ttl, offset, count)
    client = redis_client if redis_client is not None else _clients.sync_client(url, cluster)
    return _bounded.sessions_reply(run(client, call), key_prefix)


async def alist_sessions(
    index: str,
    *,
    url: str = "redis://localhost:6379/0",
    redis_client: SyncClient | None = None,
    async_redis_client: AsyncClient | None = None,
    key_prefix: str = "message_store:",
    ttl: int | timedelta | None = None,
    cluster: bool = False,
    offset: int = 0,
    count: int = 20,
) -> list[SessionEntry]:
    """The asyncio twin of :func:`list_sessions` (with ``redis_client`` alone, run in a
    thread)."""
    call = _bounded.sessions(index, ttl, offset, count)
    if async_redis_client is None and redis_client is not None:
        client = redis_client
        reply = await asyncio.to_thread(run, client, call)
    else:
        aclient = async_redis_client or await _clients.async_client(url, cluster)
        reply = await arun(aclient, call)
    return _bounded.sessions_reply(reply, key_prefix)
