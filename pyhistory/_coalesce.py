"""asyncio commands issued at the same moment share one flight to the server.

Many tasks of one event loop (the requests a chat service serves at once) each send a command.
Sent one by one, each pays for a pool checkout, a write, a read timeout and a release, and the
server wakes up for each. Here the commands that tasks issue before the event loop next runs its
callbacks are written together on one pooled connection, as a non-transactional pipeline of
redis-py's would send them, and each task gets its own reply (or its own error reply) back, parsed
by the client's response callbacks. A lone command is a flight of one. Nothing changes for the
caller: the same commands, the same replies, the same retry policy (the flight runs under the
client's own ``Retry``) and read timeouts (pyhistory._wire: one timer per flight), one round
trip.

Waiting for company costs loop passes: a queued command is written on the loop's next pass and
its caller resumes one pass after the flight's task has its reply, and on a busy loop (a service
streaming answers) every pass runs everyone else's ready work. So a command issued when the
client has nothing queued and nothing in the air (:meth:`Coalescer.call`) is sent at once by its
caller, as redis-py sends it, passing through the loop no more often (a transaction too); the
commands issued while it is in the air form the next flight.

A transaction (MULTI ... EXEC: a plain append, pyhistory._core.plain_append, or a checkpoint's
plain put) joins a flight as one item whose reply is its commands'. Such a flight is sent once:
were its connection to fail, the client's retry policy would send the transaction again as it is,
and the transaction may not tell that it was applied. So the flight is sent again with each
transaction replaced by what does the same work once however often it is sent (the library's
append with the same batch id, which the library recognises; the checkpoint's retain form),
under the client's retry policy, its window counted from the first attempt. Only on clients
whose retry policy honours that (URL-built).

Only for a plain ``redis.asyncio.Redis`` with a connection pool; commands that must stay together
on one connection with what follows them (``WAIT`` after a write) are not sent through here.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import weakref
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import redis.asyncio
from redis.exceptions import ResponseError

from pyhistory._limits import SEND_FAILURES, attempts_since, sending_once
from pyhistory._wire import awrite_once


@dataclass(frozen=True)
class Transaction:
    """A transaction in a flight: its commands (MULTI ... EXEC), and the commands that do the
    same work once however often they are sent (one command, or a transaction), sent instead
    when the flight is sent again."""

    commands: list[tuple[Any, ...]]
    fallback: list[tuple[Any, ...]]


_Item = tuple[Any, ...] | Transaction
_Pending = list[tuple[_Item, "asyncio.Future[Any]"]]


class Coalescer:
    """The commands waiting to be written for one client, and the flights in the air."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._client = client
        self._pending: _Pending = []
        self._flights: set[asyncio.Task[None]] = set()
        self._boarding: asyncio.Task[None] | None = None  # the flight that takes _pending
        self._alone = 0  # commands sent by their callers (call()), in the air

    def call(self, item: _Item) -> Awaitable[Any]:
        """One command's or transaction's reply (as :meth:`send` has it): sent now by the caller
        when the client is idle (nothing queued, nothing in the air), else in the next flight."""
        if self._pending or self._flights or self._alone:
            return self.send(item)
        return self._send_alone(item)

    async def _send_alone(self, item: _Item) -> Any:
        self._alone += 1
        try:
            if not isinstance(item, Transaction):
                # A flight of one, flown by its caller (pyhistory._wire: one timer for its write
                # and its reply, where redis-py's execute_command arms two and, before Python
                # 3.12, runs the write as a task of its own).
                reply = (await self._flight([item], plain=False))[0]
                if isinstance(reply, Exception):
                    raise reply
                return reply
            # Sent once, then again as its fallback.
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            await self._fly([(item, future)])
            return future.result()
        finally:
            self._alone -= 1

    def send(self, args: _Item) -> asyncio.Future[Any]:
        """Queue one command for the next flight; the future resolves to its reply, or fails
        with its error. Commands sent one after the other (a read and its TTL refresh) fly
        together. A :class:`Transaction` resolves to ``(its commands' replies, None)``, or to
        ``(None, its fallback's replies)`` when the flight had to be sent again (unparsed by
        the client's response callbacks, an error reply in place)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            # The flight's task first runs on the loop's next pass and takes what is queued then.
            flight = self._boarding = loop.create_task(self._take_off())
            self._flights.add(flight)
            flight.add_done_callback(self._landed)
        self._pending.append((args, future))
        return future

    async def _take_off(self) -> None:
        batch, self._pending, self._boarding = self._pending, [], None
        await self._fly(batch)

    def _landed(self, flight: asyncio.Task[None]) -> None:
        self._flights.discard(flight)
        if flight is self._boarding:  # cancelled before it took its batch (the loop is closing)
            batch, self._pending, self._boarding = self._pending, [], None
            for _, future in batch:
                future.cancel()

    async def _fly(self, batch: _Pending) -> None:
        started = time.monotonic()
        try:
            if any(isinstance(item, Transaction) for item, _ in batch):
                try:
                    with sending_once():
                        replies = await self._flight([item for item, _ in batch], plain=True)
                except SEND_FAILURES:
                    with attempts_since(started):
                        replies = await self._flight([item for item, _ in batch], plain=False)
            else:
                replies = await self._flight([item for item, _ in batch], plain=False)
        except asyncio.CancelledError:  # the loop is shutting down
            for _, future in batch:
                future.cancel()
            raise
        except Exception as error:
            # The connection failed for good, after the client's retries: every command of the
            # flight gets the error.
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():  # its caller was cancelled
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _flight(self, items: list[_Item], plain: bool) -> list[Any]:
        """The batch's commands in one flight, as a non-transactional pipeline of redis-py's
        sends them (under the client's retry policy, each reply parsed by the client's response
        callbacks, an error reply in place) but with replies read under one timer
        (pyhistory._wire): each item's reply (a transaction's: its commands' replies, unparsed,
        and None when ``plain``, else None and its fallback's)."""
        commands: list[tuple[Any, ...]] = []
        for item in items:
            if not isinstance(item, Transaction):
                commands.append(item)
            elif plain:
                commands.extend(item.commands)
            else:
                commands.extend(item.fallback)
        client = self._client
        retry = client.get_retry()
        if retry is None:
            flat = await awrite_once(client, commands)
        else:
            flat = await retry.call_with_retry(lambda: awrite_once(client, commands), _closed)
        callbacks = client.response_callbacks
        replies: list[Any] = []
        at = 0
        for item in items:
            if not isinstance(item, Transaction):
                reply = flat[at]
                callback = callbacks.get(item[0])
                if callback is not None and not isinstance(reply, ResponseError):
                    reply = callback(reply)
                    if inspect.isawaitable(reply):
                        reply = await reply
                replies.append(reply)
                at += 1
            else:
                sent = item.commands if plain else item.fallback
                size = len(sent)
                replied = flat[at : at + size]
                replies.append((replied, None) if plain else (None, replied))
                at += size
        return replies


async def _closed(error: Exception) -> None:
    """What a failed attempt leaves to do: nothing (pyhistory._wire closed its connection)."""


_coalescers: weakref.WeakKeyDictionary[redis.asyncio.Redis, Coalescer] = weakref.WeakKeyDictionary()


def coalescer(client: redis.asyncio.Redis) -> Coalescer:
    """The client's coalescer (a client, like its pool, belongs to one event loop)."""
    found = _coalescers.get(client)
    if found is None:
        found = _coalescers[client] = Coalescer(client)
    return found


def lean(client: object) -> bool:
    """Whether ``client`` can take coalesced commands: a plain asyncio client with a pool."""
    return isinstance(client, redis.asyncio.Redis) and client.connection is None
