"""asyncio commands written once on a pooled connection of redis-py's, their replies read back
under one timer. No retries here: callers decide what a failure means.

redis.asyncio arms a timer for every reply it reads (``socket_timeout``): about 9 µs of the
client's time per reply, most of what reading a reply already in the buffer costs. The replies of
one flight come together, so here one timer serves a flight: each reply still comes within the
read timeout of the one before it (less at most ``WAITED``), and a reply that does not is a
``TimeoutError`` that closes the connection, as redis-py has it. tests/test_wire.py fails when
redis-py changes what this relies on."""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
from typing import Any

import redis.asyncio
from redis.exceptions import ResponseError, TimeoutError

from pyhistory._limits import checkout_used

if sys.version_info >= (3, 11):
    from asyncio import timeout as _timer

    def _move(timer: Any, deadline: float) -> None:
        timer.reschedule(deadline)

else:  # redis-py's dependency there; async-timeout 4 has update() but no reschedule()
    from async_timeout import timeout as _timer  # type: ignore[import-not-found, unused-ignore]

    def _move(timer: Any, deadline: float) -> None:
        timer.update(deadline)


# A reply that came this much later than the timer was last moved (seconds) had to be waited for:
# the timer moves, so the next reply gets the whole read timeout. Buffered replies come
# microseconds apart and leave it alone.
WAITED = 0.001


async def read_replies(connection: Any, count: int) -> list[Any]:
    """``count`` replies, an error reply in place (a ``ResponseError``), unparsed by the client's
    response callbacks. ``read_response(timeout=math.inf)`` is redis-py's documented read
    without a timer of its own (an infinite one on redis-py before 8)."""
    timeout = connection.socket_timeout
    replies: list[Any] = []
    if timeout is None:
        for _ in range(count):
            try:
                replies.append(await connection.read_response())
            except ResponseError as error:
                replies.append(error)
        return replies
    loop = asyncio.get_running_loop()
    try:
        async with _timer(timeout) as timer:
            moved = loop.time()
            for _ in range(count):
                try:
                    replies.append(await connection.read_response(timeout=math.inf))
                except ResponseError as error:
                    replies.append(error)
                now = loop.time()
                if now - moved > WAITED:
                    _move(timer, now + timeout)
                    moved = now
    except asyncio.TimeoutError:
        await connection.disconnect(nowait=True)
        where = getattr(connection, "path", None) or f"{connection.host}:{connection.port}"
        raise TimeoutError(f"Timeout reading from {where}") from None
    return replies


async def awrite_once(client: redis.asyncio.Redis, commands: list[tuple[Any, ...]]) -> list[Any]:
    """``commands`` written once on one pooled connection: their replies (see
    :func:`read_replies`). Whatever interrupts them (a failure, a cancelled caller) closes the
    connection, its replies unread, and is raised."""
    pool = client.connection_pool
    connection = None
    try:
        connection = await pool.get_connection()
        checkout_used()
        await connection.send_packed_command(connection.pack_commands(commands))
        replies = await read_replies(connection, len(commands))
    except BaseException:
        if connection is not None:
            with contextlib.suppress(Exception):
                await _closed(pool, connection)
        raise
    await pool.release(connection)
    return replies


async def _closed(pool: Any, connection: Any) -> None:
    """Close and return a connection whose replies are unread (its caller was cancelled): the
    closing itself must not be cancelled half-way."""
    await asyncio.shield(_close_and_release(pool, connection))


async def _close_and_release(pool: Any, connection: Any) -> None:
    await connection.disconnect()
    await pool.release(connection)
