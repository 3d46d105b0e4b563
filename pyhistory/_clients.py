"""One client (and so one connection pool) per URL in the process, and per event loop for
asyncio, so that constructing a history per request opens no new connections."""

from __future__ import annotations

import asyncio
import threading

import redis
import redis.asyncio

_lock = threading.Lock()
_sync: dict[str, redis.Redis] = {}
# Keyed by the loop itself: a client holds its loop, so weak keys would never be released.
# Entries of closed loops are dropped whenever a new loop asks (asyncio.run() per call, tests).
_async: dict[asyncio.AbstractEventLoop, dict[str, redis.asyncio.Redis]] = {}


def sync_client(url: str) -> redis.Redis:
    client = _sync.get(url)
    if client is None:
        with _lock:
            client = _sync.get(url)
            if client is None:
                client = _sync[url] = redis.Redis.from_url(url)
    return client


def async_client(url: str) -> redis.asyncio.Redis:
    """The client for `url` on the running event loop (a pool is bound to its loop)."""
    loop = asyncio.get_running_loop()
    clients = _async.get(loop)
    if clients is None:
        with _lock:
            for closed in [other for other in _async if other.is_closed()]:
                del _async[closed]
            clients = _async[loop] = {}
    client = clients.get(url)
    if client is None:
        client = clients[url] = redis.asyncio.Redis.from_url(url)
    return client
