"""How long a call may take: the timeouts and the retry window of the clients built from a URL
(pyhistory._clients), and the bound they promise, which durable writes on a cluster keep too
(pyhistory.functions). A module of its own so both can import it: _clients imports functions."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar, Token

from redis.exceptions import ConnectionError, TimeoutError

# How long a client waits to connect, and for a reply, before the attempt counts as failed.
CONNECT_TIMEOUT = 2.0
COMMAND_TIMEOUT = 4.0
# New attempts start only within this many seconds of the first one: a restart (the server
# refuses connections for a moment) or a Sentinel failover is retried through, a server that
# stays down is reported.
RETRY_WINDOW = 6.0
# The longest a call on a URL-built client can take before it raises: the last attempt starts
# within the window and then waits at most one read timeout. Waits for a free pooled connection
# and redis-py's reconnects (retried under the same policy) count toward the window and end
# with it (see :func:`pool_wait`, :func:`opening_window`).
FAILURE_BOUND = RETRY_WINDOW + COMMAND_TIMEOUT

# What a write sent once (outside the client's retry policy) fails with when its outcome is
# unknown: the connection broke or timed out, before or after the server applied it. The caller
# then goes on with a form that recognises an applied write (pyhistory.functions, _coalesce).
SEND_FAILURES = (ConnectionError, TimeoutError, OSError)

# When the first attempt of the call now running started, when a call already tried once
# outside the client's retry policy (a plain append: pyhistory.functions.run_plain_first), or
# when the retry policy of a URL-built client is running. That policy counts its window from
# there, and a wait for a free pooled connection made inside it ends with the window (see
# :func:`pool_wait`), so the bound still holds.
_FIRST_ATTEMPT: ContextVar[float | None] = ContextVar("pyhistory_first_attempt", default=None)

# redis-py's own execute paths (a command, a pipeline) take a pooled connection and only then
# run the retry policy. The pools of URL-built clients note here when such a checkout began to
# wait and when it ended, and the retry policy that follows counts its window from that wait.
_CHECKOUT: ContextVar[tuple[float, float] | None] = ContextVar("pyhistory_checkout", default=None)
# A checkout that ended longer ago than this (seconds) did not precede the retry policy now
# starting (its caller failed in between): its wait is not counted.
_CHECKOUT_FRESH = 0.5
# Only a checkout that waited longer than this (seconds) is noted: a shorter wait changes no
# window, and a checkout that finds a free connection costs no more than it did.
_CHECKOUT_NOTED = 0.01


def opening_window() -> tuple[float, Token[float | None]]:
    """For a retry policy starting: when its window opened (the call's first attempt, or the
    wait of the pool checkout just before it, or now), and the token that closes it
    (:func:`close_window`). Within, pool waits end with the window."""
    started = _FIRST_ATTEMPT.get()
    if started is None:
        started = time.monotonic()
        checkout = _CHECKOUT.get()
        if checkout is not None:
            _CHECKOUT.set(None)
            waited_from, taken = checkout
            if started - taken < _CHECKOUT_FRESH:
                started = waited_from
    return started, _FIRST_ATTEMPT.set(started)


def close_window(token: Token[float | None]) -> None:
    _FIRST_ATTEMPT.reset(token)


def pool_wait(configured: float | None) -> float | None:
    """How long a checkout may wait for a free pooled connection: the pool's own timeout, and
    within a retry window no later than its end (an attempt starts within the window, and then
    waits at most one read timeout)."""
    started = _FIRST_ATTEMPT.get()
    if started is None or configured is None:
        return configured
    return max(0.0, min(configured, started + RETRY_WINDOW - time.monotonic()))


def checked_out(waited_from: float) -> None:
    """A pool's checkout that began to wait at ``waited_from`` got its connection; outside a
    retry window (redis-py's own execute paths), the retry policy that follows counts from it
    when it waited long enough to matter."""
    now = time.monotonic()
    if now - waited_from > _CHECKOUT_NOTED and _FIRST_ATTEMPT.get() is None:
        _CHECKOUT.set((waited_from, now))


def checkout_used() -> None:
    """A connection checked out outside a retry policy was used without one (a transaction sent
    once): its wait is not counted by the next call's window."""
    if _CHECKOUT.get() is not None:
        _CHECKOUT.set(None)


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
