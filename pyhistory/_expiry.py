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

import math
import sys
import time
import weakref
from typing import Any

from pyhistory import _forks

# The server keeps time in whole milliseconds (an expiry may be set from a time up to a
# millisecond old): what this process counts on is that much, and some, earlier.
CLOCK_MARGIN = 0.01


class _Session:
    """What this process knows of one session: the earliest it may expire (time.monotonic, -inf
    when unknown), the TTL that bound came from, and whether its next append may be plain."""

    __slots__ = ("earliest", "plain", "ttl")

    def __init__(self) -> None:
        self.earliest = -math.inf
        self.ttl = 0
        self.plain = False


class Expiries:
    """For one server (one client): what this process knows of each session, by key. Bounded: the
    sessions least recently refreshed or found anew are forgotten first, and a forgotten session
    is simply refreshed by its next read and appended to by the library once.

    Lookups are lock-free (a dict lookup and an attribute read are atomic; a record missed while
    another thread moves it only costs a refresh or a library append); changes take the lock.
    The hot path, a read of a session already known to take plain appends, takes none."""

    def __init__(self, max_keys: int = 65536) -> None:
        self.max_keys = max_keys
        self._sessions: dict[str, _Session] = {}  # least recently refreshed or found first
        self._lock = _forks.lock(self, "_lock")

    def __len__(self) -> int:
        return len(self._sessions)

    def _touched(self, key: str) -> _Session:
        """The key's record, now the most recent; called under the lock."""
        session = self._sessions.pop(key, None) or _Session()
        self._sessions[key] = session
        while len(self._sessions) > self.max_keys:
            del self._sessions[next(iter(self._sessions))]
        return session

    def due(self, key: str, ttl: int, interval: float) -> bool:
        """Whether a read of ``key`` must refresh its TTL to keep the promise."""
        session = self._sessions.get(key)
        return session is None or session.earliest - time.monotonic() < ttl - interval

    def refreshed(self, key: str, ttl: int, sent_at: float) -> None:
        """A command sent at ``sent_at`` (time.monotonic) set the TTL of ``key`` to ``ttl``."""
        earliest = sent_at + ttl - CLOCK_MARGIN
        with self._lock:
            session = self._touched(key)
            if session.ttl != ttl or session.earliest < earliest:
                # Else a command sent later already answered; this one, applied before or after
                # it, set the same TTL, so the expiry is no earlier than the later one's.
                session.earliest, session.ttl = earliest, ttl

    def takes_plain(self, key: str) -> bool:
        """Whether an append to ``key`` may be plain commands: this process last found the key
        holding a list or nothing, and the session's batch ids need no trim."""
        session = self._sessions.get(key)
        return session is not None and session.plain

    def found_list(self, key: str) -> None:
        """A read or an append just found ``key`` holding a list or nothing."""
        session = self._sessions.get(key)
        if session is not None and session.plain:
            return
        with self._lock:
            self._touched(key).plain = True

    def doubt(self, key: str) -> None:
        """The next append to ``key`` is the library's: the key held another type, or the
        session's batch ids are due for a trim."""
        with self._lock:  # not lock-free: a record being moved is briefly out of the dict
            session = self._sessions.get(key)
            if session is not None:
                session.plain = False

    def forget(self, key: str) -> None:
        """The session was deleted (or its TTL changed by a command this process sent)."""
        with self._lock:
            session = self._sessions.get(key)
            if session is not None:
                session.earliest, session.ttl = -math.inf, 0

    def clear(self) -> None:
        with self._lock:
            self._sessions.clear()


_by_client: weakref.WeakKeyDictionary[Any, Expiries] = weakref.WeakKeyDictionary()
_lock = _forks.lock(sys.modules[__name__], "_lock")


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
            known.clear()
