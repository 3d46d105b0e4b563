"""asyncio commands written once on a pooled connection of redis-py's, their replies read back
under one timer. No retries here: callers decide what a failure means.

redis.asyncio arms a timer for every reply it reads (``socket_timeout``): about 9 µs of the
client's time per reply, most of what reading a reply already in the buffer costs, and bounds
every write with ``asyncio.wait_for`` (see :func:`_send`). The replies of one flight come
together, so here one timer serves a flight, its write included: the write and the first reply
come within the read timeout, each later reply within it of the one before (less at most
``WAITED``), and what does not is a ``TimeoutError`` that closes the connection, as redis-py has
it. tests/test_wire.py fails when redis-py changes what this relies on."""

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


def deadline_timer(delay: float | None) -> Any:
    """``async with deadline_timer(delay)``: asyncio's timeout, async-timeout's before 3.11."""
    return _timer(delay)


# A reply that came this much later than the timer was last moved (seconds) had to be waited for:
# the timer moves, so the next reply gets the whole read timeout. Buffered replies come
# microseconds apart and leave it alone.
WAITED = 0.001


async def _replies(connection: Any, count: int, timer: Any) -> list[Any]:
    """``count`` replies. With a ``timer``, each is read without a timer of its own
    (``read_response(timeout=math.inf)``: redis-py's documented read without one; an infinite
    one before redis-py 8), and the timer moves on after each reply that was waited for."""
    replies: list[Any] = []
    if timer is None:
        for _ in range(count):
            try:
                replies.append(await connection.read_response())
            except ResponseError as error:
                replies.append(error)
        return replies
    timeout = connection.socket_timeout
    loop = asyncio.get_running_loop()
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
    return replies


async def _timed_out(connection: Any, doing: str) -> TimeoutError:
    """Close a connection whose write or reply did not come in time, as redis-py does."""
    await connection.disconnect(nowait=True)
    where = getattr(connection, "path", None) or f"{connection.host}:{connection.port}"
    return TimeoutError(f"Timeout {doing} {where}")


async def _send(connection: Any, packed: list[bytes]) -> None:
    """Write ``packed`` under the caller's timer. redis-py bounds a write with
    ``asyncio.wait_for`` when the connection has a ``socket_timeout``, which before Python 3.12
    runs the write as a task of its own: about 13 µs of the client's time and two passes of the
    event loop (on a loop busy serving requests, each pass runs everyone else's ready work). So
    the connection has no ``socket_timeout`` for the write itself (redis-py then writes at once,
    as it does for a client without one), and the flight's timer bounds it instead.
    tests/test_wire.py fails when redis-py writes otherwise."""
    timeout = connection.socket_timeout
    connection.socket_timeout = None
    try:
        await connection.send_packed_command(packed)
    finally:
        connection.socket_timeout = timeout


async def awrite_once(client: redis.asyncio.Redis, commands: list[tuple[Any, ...]]) -> list[Any]:
    """``commands`` written once on one pooled connection: their replies, an error reply in place
    (a ``ResponseError``), unparsed by the client's response callbacks. The write and the first
    reply come within the read timeout, each later reply within it of the one before. Whatever
    interrupts them (a failure, a cancelled caller) closes the connection, its replies unread,
    and is raised."""
    pool = client.connection_pool
    connection = None
    try:
        connection = await pool.get_connection()
        checkout_used()
        packed = connection.pack_commands(commands)
        timeout = connection.socket_timeout
        if timeout is None:
            await connection.send_packed_command(packed)
            replies = await _replies(connection, len(commands), None)
        else:
            sent = False
            try:
                async with _timer(timeout) as timer:
                    await _send(connection, packed)
                    sent = True
                    replies = await _replies(connection, len(commands), timer)
            except asyncio.TimeoutError:
                doing = "reading from" if sent else "writing to"
                raise await _timed_out(connection, doing) from None
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
