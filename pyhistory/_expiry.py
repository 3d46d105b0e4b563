"""Sliding expiry without a TTL refresh on every read: what this process knows of each session's
remaining time to live. No I/O.

Every append sets the session's TTL, and so does every read that refreshes it. The time such a
command was sent, plus the TTL it set, is a lower bound of when the session will expire (the
server applied it no earlier). A read refreshes the TTL only when that bound has come within
``ttl - interval`` of now, so after any read or append by this process the session lives at least
``ttl - interval`` seconds more (with the default interval of a tenth of the TTL: 0.9 x ttl),
unless something else deletes it or sets its TTL lower.

It also knows which sessions took a plain append (pyhistory._core.plain_append): those whose key
this process last found holding a list, or nothing, and whose batch ids are not due for a trim.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Any

# The server keeps time in whole milliseconds (an expiry may be set from a time up to a
# millisecond old): what this process counts on is that much, and some, earlier.
CLOCK_MARGIN = 0.01


class Expiries:
    """For one server (one client): the earliest each session may expire, by key. Bounded: the
    least recently refreshed sessions are forgotten first, and a forgotten session is simply
    refreshed by its next read."""

    def __init__(self, max_keys: int = 65536) -> None:
        self.max_keys = max_keys
        self._earliest: dict[str, tuple[float, int]] = {}  # key -> (earliest expiry, its ttl)
        self._plain: dict[str, None] = {}  # keys that take a plain append, oldest news first
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._earliest)

    def due(self, key: str, ttl: int, interval: float) -> bool:
        """Whether a read of ``key`` must refresh its TTL to keep the promise."""
        known = self._earliest.get(key)
        return known is None or known[0] - time.monotonic() < ttl - interval

    def refreshed(self, key: str, ttl: int, sent_at: float) -> None:
        """A command sent at ``sent_at`` (time.monotonic) set the TTL of ``key`` to ``ttl``."""
        earliest = sent_at + ttl - CLOCK_MARGIN
        with self._lock:
            known = self._earliest.pop(key, None)
            if known is not None and known[1] == ttl and known[0] > earliest:
                # A command sent later already answered; this one, applied before or after it,
                # set the same TTL, so the expiry is no earlier than the later one's.
                earliest = known[0]
            self._earliest[key] = (earliest, ttl)
            while len(self._earliest) > self.max_keys:
                del self._earliest[next(iter(self._earliest))]

    def takes_plain(self, key: str) -> bool:
        """Whether an append to ``key`` may be plain commands: this process last found the key
        holding a list or nothing, and the session's batch ids need no trim."""
        return key in self._plain

    def found_list(self, key: str) -> None:
        """A read or an append just found ``key`` holding a list or nothing."""
        with self._lock:
            self._plain.pop(key, None)
            self._plain[key] = None
            while len(self._plain) > self.max_keys:
                del self._plain[next(iter(self._plain))]

    def doubt(self, key: str) -> None:
        """The next append to ``key`` is the library's: the key held another type, or the
        session's batch ids are due for a trim."""
        with self._lock:
            self._plain.pop(key, None)

    def forget(self, key: str) -> None:
        """The session was deleted (or its TTL changed by a command this process sent)."""
        with self._lock:
            self._earliest.pop(key, None)


_by_client: weakref.WeakKeyDictionary[Any, Expiries] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def expiries(client: Any) -> Expiries:
    """What this process knows of the sessions of the server behind ``client``."""
    found = _by_client.get(client)
    if found is None:
        with _lock:
            found = _by_client.get(client)
            if found is None:
                found = _by_client[client] = Expiries()
    return found


def forget_all() -> None:
    """Forget every session's TTL, on every server: after deleting keys behind this process's
    back (FLUSHALL, FLUSHDB), so that the next read of each session refreshes its TTL again."""
    with _lock:
        for known in list(_by_client.values()):
            with known._lock:
                known._earliest.clear()
                known._plain.clear()
