"""How long a call may take: the timeouts and the retry window of the clients built from a URL
(pyhistory._clients), and the bound they promise, which durable writes on a cluster keep too
(pyhistory.functions). A module of its own so both can import it: _clients imports functions."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar

from redis.exceptions import ConnectionError, TimeoutError

# How long a client waits to connect, and for a reply, before the attempt counts as failed.
CONNECT_TIMEOUT = 2.0
COMMAND_TIMEOUT = 4.0
# New attempts start only within this many seconds of the first one: a restart (the server
# refuses connections for a moment) or a Sentinel failover is retried through, a server that
# stays down is reported.
RETRY_WINDOW = 6.0
# The longest a call on a URL-built client can take before it raises: the last attempt starts
# within the window and then waits at most one read timeout.
FAILURE_BOUND = RETRY_WINDOW + COMMAND_TIMEOUT

# What a write sent once (outside the client's retry policy) fails with when its outcome is
# unknown: the connection broke or timed out, before or after the server applied it. The caller
# then goes on with a form that recognises an applied write (pyhistory.functions, _coalesce).
SEND_FAILURES = (ConnectionError, TimeoutError, OSError)

# When the first attempt of the call now running started, when a call already tried once
# outside the client's retry policy (a plain append: pyhistory.functions.run_plain_first). The
# retry policy of URL-built clients counts its window from there, so the bound still holds.
_FIRST_ATTEMPT: ContextVar[float | None] = ContextVar("pyhistory_first_attempt", default=None)


def first_attempt() -> float:
    """When the current call's first attempt started: now, unless :func:`attempts_since` says."""
    started = _FIRST_ATTEMPT.get()
    return time.monotonic() if started is None else started


@contextlib.contextmanager
def attempts_since(started: float) -> Iterator[None]:
    """Count the retry window of the calls made inside from ``started`` (time.monotonic)."""
    token = _FIRST_ATTEMPT.set(started)
    try:
        yield
    finally:
        _FIRST_ATTEMPT.reset(token)


# Whether the call now running must be sent once only, its failure raised at once rather than
# retried: a flight that carries a plain append (pyhistory._coalesce), which the retry policy of
# URL-built clients would otherwise send again as it is.
_ONCE: ContextVar[bool] = ContextVar("pyhistory_once", default=False)


def once() -> bool:
    """Whether the current call is to be sent once (see :func:`sending_once`)."""
    return _ONCE.get()


@contextlib.contextmanager
def sending_once() -> Iterator[None]:
    """Within, URL-built clients do not retry: the first failure is raised."""
    token = _ONCE.set(True)
    try:
        yield
    finally:
        _ONCE.reset(token)
