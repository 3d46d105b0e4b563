"""Refused TTL refreshes, said out loud: a read's refresh that the server refused (READONLY from a
replica, OOM when the library had to be loaded again at maxmemory) leaves the read standing, but
the session's TTL is not extended, and an active session then expires while in use. Reads meant
for a replica (``read_from_replicas``, ``replica_url``, ``replica_client``) send no refresh, so a
refusal means the client reaches a server it takes for the primary and that is not one (a plain
URL naming a node a failover outside Sentinel demoted, say). Each client warns on the
``pyhistory`` logger at most once per ``LOG_INTERVAL`` seconds, counting the refusals in between.
No I/O besides the log."""

from __future__ import annotations

import logging
import sys
import time
import weakref
from typing import Any

from redis.exceptions import ReadOnlyError

from pyhistory import _forks

logger = logging.getLogger("pyhistory")

LOG_INTERVAL = 60.0


class _Refusals:
    def __init__(self) -> None:
        self.total = 0  # refusals ever seen through this client
        self.unlogged = 0  # since the last warning
        self.logged_at: float | None = None


_by_client: weakref.WeakKeyDictionary[Any, _Refusals] = weakref.WeakKeyDictionary()
_lock = _forks.lock(sys.modules[__name__], "_lock")


def refused(client: Any, key: str, error: BaseException) -> None:
    """A read of ``key`` through ``client`` stood, but the server refused its TTL refresh."""
    now = time.monotonic()
    with _lock:
        seen = _by_client.get(client)
        if seen is None:
            seen = _by_client[client] = _Refusals()
        seen.total += 1
        seen.unlogged += 1
        if seen.logged_at is not None and now - seen.logged_at < LOG_INTERVAL:
            return
        seen.logged_at, count = now, seen.unlogged
        seen.unlogged = 0
    logger.warning(
        "%s refused the TTL refresh sent with a read of %r (%s); the read stands, but %s. %s",
        server_name(client),
        key,
        f"{'READONLY' if isinstance(error, ReadOnlyError) else 'OOM'}: {error}",
        _consequence(count),
        _what_to_do(error),
    )


def count(client: Any) -> int:
    """How many TTL refreshes sent with reads through ``client`` the server refused."""
    with _lock:
        seen = _by_client.get(client)
        return seen.total if seen is not None else 0


def _consequence(count: int) -> str:
    what = (
        "sessions read through this client do not have their TTL extended and expire while in use"
    )
    if count > 1:
        what += f" ({count} refreshes refused since the last warning)"
    return what


def _what_to_do(error: BaseException) -> str:
    if isinstance(error, ReadOnlyError):
        return (
            "The server is a replica. If the node was demoted by a failover, point the URL at the "
            "new primary (or use a Sentinel URL, which follows failovers); to read from a replica "
            "on purpose, give the primary as url and the replica as replica_url (replica_client), "
            "or read_from_replicas=True on a cluster: such reads send no refresh."
        )
    return (
        "The server refuses writes (maxmemory with noeviction) and could not load the library "
        "again: free memory or raise maxmemory."
    )


def server_name(client: Any) -> str:
    """``host:port`` (or the socket path) of the server behind a plain client."""
    pool = getattr(client, "connection_pool", None)
    options = getattr(pool, "connection_kwargs", None) or {}
    if options.get("path"):
        return f"the server at {options['path']}"
    if options.get("host"):
        return f"the server at {options['host']}:{options.get('port', 6379)}"
    return "the server"
