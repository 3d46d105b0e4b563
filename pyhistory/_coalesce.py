"""asyncio commands issued at the same moment share one flight to the server.

Many tasks of one event loop (the requests a chat service serves at once) each send a command.
Sent one by one, each pays for a pool checkout, a write, a read timeout and a release, and the
server wakes up for each. Here the commands that tasks issue before the event loop next runs its
callbacks are written together, as one non-transactional pipeline of redis-py's on one pooled
connection, and each task gets its own reply (or its own error reply) back. A lone command is
sent as it is. Nothing changes for the caller: the same commands, the same replies, the same
retry policy and timeouts (the pipeline runs under the client's own ``Retry``), one round trip.

Only for a plain ``redis.asyncio.Redis`` with a connection pool; commands that must stay together
on one connection with what follows them (``WAIT`` after a write) are not sent through here.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

import redis.asyncio

_Pending = list[tuple[tuple[Any, ...], "asyncio.Future[Any]"]]


class Coalescer:
    """The commands waiting to be written for one client, and the flights in the air."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._client = client
        self._pending: _Pending = []
        self._flights: set[asyncio.Task[None]] = set()

    def send(self, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        """Queue one command; the future resolves to its reply, or fails with its error."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._take_off)
        self._pending.append((args, future))
        return future

    def _take_off(self) -> None:
        batch, self._pending = self._pending, []
        flight = asyncio.ensure_future(self._fly(batch))
        self._flights.add(flight)
        flight.add_done_callback(self._flights.discard)

    async def _fly(self, batch: _Pending) -> None:
        try:
            if len(batch) == 1:
                args, future = batch[0]
                replies: list[Any] = [await self._client.execute_command(*args)]
            else:
                pipe = self._client.pipeline(transaction=False)
                for args, _ in batch:
                    pipe.execute_command(*args)
                replies = await pipe.execute(raise_on_error=False)
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
