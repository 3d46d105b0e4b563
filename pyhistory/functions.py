"""Load a Functions library onto a server (or every primary of a cluster) and run calls on it,
loading it again once when the server says it lost it (restart without persistence, FUNCTION FLUSH,
a new or failed-over node). Generic: a library is its name and its source (pyhistory._library);
nothing here knows what any library's functions do.

Every exception leaves through errors.translate: a HistoryError that is still the redis-py class
it came as."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ConnectionError,
    MasterDownError,
    MovedError,
    NoPermissionError,
    ReadOnlyError,
    RedisClusterException,
    ResponseError,
    TimeoutError,
    TryAgainError,
)
from redis.exceptions import OutOfMemoryError as RedisOutOfMemoryError

from pyhistory import _forks, telemetry
from pyhistory._coalesce import Transaction, coalescer, lean
from pyhistory._library import Call, Library
from pyhistory._limits import RETRY_WINDOW, SEND_FAILURES, attempts_since, checkout_used
from pyhistory._wire import awrite_once
from pyhistory.errors import FunctionsNotLoadedError, ReplicationError, translate

SyncClient: TypeAlias = redis.Redis | redis.cluster.RedisCluster
AsyncClient: TypeAlias = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster

_MISSING = "Function not found"

_LOAD_HINT = (
    "the server does not have the {library} functions and this client may not load them "
    "({error}). Load them once with a user that may run FUNCTION LOAD, at deploy time: "
    "`pyhistory --url redis://admin@host:port load`, or load_functions(admin_client)."
)


def _is_missing(error: BaseException) -> bool:
    return isinstance(error, ResponseError) and str(error).startswith(_MISSING)


def _load_failed(library: Library, error: Exception) -> FunctionsNotLoadedError:
    return FunctionsNotLoadedError(f"NOPERM {_LOAD_HINT.format(library=library.name, error=error)}")


def _raise_typed(error: BaseException) -> None:
    translated = translate(error)
    if translated is not error:
        raise translated from error


# --- cluster routing --------------------------------------------------------------------------


def _fcall_keys(args: tuple[Any, ...]) -> list[Any] | None:
    """The keys of an FCALL/FCALL_RO, read from its numkeys argument; None for other commands."""
    if len(args) >= 3 and str(args[0]).upper() in ("FCALL", "FCALL_RO"):
        return list(args[3 : 3 + int(args[2])])
    return None


def prepare(client: Any) -> None:
    """Make a redis-py cluster client find an FCALL's keys itself.

    redis-py asks the server (COMMAND GETKEYS) for the keys of every FCALL it routes, because the
    command's key positions are "movable": two extra round trips per call. They are plainly
    ``numkeys`` followed by the keys, as redis-py already assumes for EVAL, so this answers for
    FCALL and FCALL_RO locally and leaves every other command to redis-py. Idempotent; a no-op for
    clients that are not cluster clients.

    Applied only to the cluster clients pyhistory builds from a URL, never to a client the user
    passes in (those route FCALL as redis-py does). Measured on a local cluster: an FCALL takes a
    third of the client time and of the wall time it takes without it (one round trip instead of
    two). It replaces a method of redis-py's commands parser, which is not public API:
    tests/test_coalesce.py fails when redis-py's cluster client stops calling it.
    """
    parser = getattr(client, "commands_parser", None)
    if parser is None or getattr(parser, "_pyhistory_fcall_keys", False):
        return
    original: Callable[..., Any] = parser.get_keys
    if inspect.iscoroutinefunction(original):

        async def get_keys_async(*args: Any) -> Any:
            keys = _fcall_keys(args)
            return keys if keys is not None else await original(*args)

        parser.get_keys = get_keys_async
    else:

        def get_keys(redis_conn: Any, *args: Any) -> Any:
            keys = _fcall_keys(args)
            return keys if keys is not None else original(redis_conn, *args)

        parser.get_keys = get_keys
    parser._pyhistory_fcall_keys = True


# --- loading ----------------------------------------------------------------------------------


def load_library(client: SyncClient, library: Library) -> str:
    """Load (or replace with identical code) ``library``; on a cluster, on every primary.
    Returns the library's name."""
    try:
        client.execute_command("FUNCTION LOAD", "REPLACE", library.source)
    except NoPermissionError as error:
        raise _load_failed(library, error) from error
    except Exception as error:
        _raise_typed(error)
        raise
    return library.name


async def aload_library(client: AsyncClient, library: Library) -> str:
    """The asyncio twin of :func:`load_library`."""
    try:
        await client.execute_command("FUNCTION LOAD", "REPLACE", library.source)
    except NoPermissionError as error:
        raise _load_failed(library, error) from error
    except Exception as error:
        _raise_typed(error)
        raise
    return library.name


# --- running ----------------------------------------------------------------------------------


def _heal(call: Call, error: BaseException) -> Library:
    """The library to load again when ``error`` says the server lost it, else raise it typed."""
    if call.library is not None and _is_missing(error):
        return call.library
    _raise_typed(error)
    raise error


# How long a call keeps loading its library again when the server keeps losing it (FUNCTION
# DELETE or FLUSH over and over, a node restarted again and again): as long as a call retries a
# broken connection (pyhistory._clients.RETRY_WINDOW). Then FunctionsNotLoadedError.
HEAL_WINDOW = 6.0


class _Healing:
    """The reloads of one call: the first at once, later ones after a short pause, none once
    HEAL_WINDOW has passed since the first."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self.loads = 0
        self.started = 0.0

    def next(self, error: BaseException) -> tuple[Library, float]:
        """The library to load and the pause before; raises when there is to be no reload."""
        library = _heal(self.call, error)
        now = time.monotonic()
        if not self.loads:
            self.started = now
        elif now - self.started > HEAL_WINDOW:
            raise FunctionsNotLoadedError(
                f"the server lost the {library.name} functions again after each of "
                f"{self.loads} loads in {now - self.started:.1f} s (is something running "
                f"FUNCTION DELETE or FUNCTION FLUSH?): {error}"
            ) from error
        self.loads += 1
        telemetry.reloaded(library.name)
        return library, min(0.005 * (self.loads - 1), 0.1)


def run(client: SyncClient, call: Call) -> Any:
    """Send one call; when the server lacks its library, load it and send the call again (the
    same call: an append's retry carries its batch id), for at most HEAL_WINDOW seconds."""
    healing = _Healing(call)
    while True:
        try:
            return _send(client, call)
        except Exception as error:
            call = healing.call = call.again or call  # the first may have been applied
            library, pause = healing.next(error)
        if pause:
            time.sleep(pause)
        load_library(client, library)


async def arun(client: AsyncClient, call: Call, coalesce: bool = True) -> Any:
    """The asyncio twin of :func:`run`. On a plain client with a pool, the command shares its
    flight with the commands other tasks issue at the same moment (pyhistory._coalesce), unless
    ``coalesce`` is False (its retries then run in the caller's task, in its context)."""
    healing = _Healing(call)
    while True:
        try:
            return await _asend(client, call, coalesce)
        except Exception as error:
            call = healing.call = call.again or call  # the first may have been applied
            library, pause = healing.next(error)
        if pause:
            await asyncio.sleep(pause)
        await aload_library(client, library)


def _refresh(client: SyncClient, call: Call) -> Any:
    """Send again a read's side effect (its TTL refresh) whose library the server lost; its reply,
    or the error when the server cannot take the library now, which leaves the read standing,
    unrefreshed, as a replica's READONLY in the pair does: a replica (READONLY), a server at
    maxmemory under noeviction (OOM). The caller says so (pyhistory.store)."""
    try:
        return run(client, call)
    except (ReadOnlyError, RedisOutOfMemoryError) as refused:
        return refused


async def _arefresh(client: AsyncClient, call: Call) -> Any:
    """The asyncio twin of :func:`_refresh`."""
    try:
        return await arun(client, call)
    except (ReadOnlyError, RedisOutOfMemoryError) as refused:
        return refused


def _transaction_reply(replies: list[Any]) -> Any:
    """The reply of a transaction's last command (the call), raising the first error in it."""
    for reply in replies:
        if isinstance(reply, BaseException):
            raise reply
    return replies[-1]


def _transaction(client: SyncClient, call: Call) -> Any:
    """A MULTI/EXEC pipeline for ``call``'s key. A cluster client of a redis-py without cluster
    transactions (6.0) refuses one: the key's node's own client then runs it."""
    try:
        return client.pipeline(transaction=True)
    except RedisClusterException:
        assert isinstance(client, redis.cluster.RedisCluster)
        node = client.get_node_from_key(call.key)
        return client.get_redis_connection(node).pipeline(transaction=True)


def _written(call: Call) -> list[tuple[Any, ...]]:
    """A call with plain commands ahead of it as the commands of its MULTI/EXEC."""
    return [("MULTI",), *call.before, (call.command, *call.args), ("EXEC",)]


def _send(client: SyncClient, call: Call) -> Any:
    """One call, or, with ``call.before``, the plain commands and the call in one MULTI/EXEC:
    on a standalone client with a pool written once on a pooled connection (a redis-py
    pipeline costs the client about twice as much); when that connection fails, ``call.again``
    (or the same transaction when it is safe to send twice) through a pipeline, under the
    client's retry policy. Elsewhere (a cluster) a pipeline that client may send again, so
    ``call.again`` from the start."""
    if not call.before:
        return client.execute_command(call.command, *call.args)
    if plain_client(client):
        assert isinstance(client, redis.Redis)
        try:
            replies = _write_once(client, _written(call))
        except SEND_FAILURES as error:
            telemetry.retried(error)
            return _pipelined(client, call.again or call)
        return _transaction_reply(_exec_replies(replies))
    return _pipelined(client, call.again or call)


def _pipelined(client: SyncClient, call: Call) -> Any:
    pipe = _transaction(client, call)
    for command in call.before:
        pipe.execute_command(*command)
    pipe.execute_command(call.command, *call.args)
    return _transaction_reply(pipe.execute(raise_on_error=False))


async def _asend(client: AsyncClient, call: Call, coalesce: bool = True) -> Any:
    """The asyncio twin of :func:`_send`. A lone call on a plain client with a pool shares its
    flight with the commands other tasks issue at the same moment (pyhistory._coalesce), and so
    does a transaction on a URL-built one (whose retry policy can send a flight once). On an
    asyncio cluster client the commands go in one non-transactional pipeline to the slot's node
    instead of MULTI/EXEC (redis.asyncio's cluster transactions run each command in a thread of
    its own, blocking the event loop): they still run in order on that node in one flight, so a
    reader that only reaches the values through what the call indexes sees the same as with
    MULTI/EXEC."""
    if not call.before:
        if coalesce and lean(client):
            assert isinstance(client, redis.asyncio.Redis)
            return await coalescer(client).call((call.command, *call.args))
        return await client.execute_command(call.command, *call.args)
    if plain_client(client):
        assert isinstance(client, redis.asyncio.Redis)
        if coalesce and lean(client) and _honours_once(client):
            return await _acoalesced(client, call)
        try:
            replies = await awrite_once(client, _written(call))
        except SEND_FAILURES as error:
            telemetry.retried(error)
            return await _apipelined(client, call.again or call)
        return _transaction_reply(_exec_replies(replies))
    return await _apipelined(client, call.again or call)


async def _acoalesced(client: redis.asyncio.Redis, call: Call) -> Any:
    """``call`` and its plain commands as one MULTI/EXEC, sent at once on an idle client, else in
    the next coalesced flight (pyhistory._coalesce). When its connection fails it is sent again
    with ``call.again`` (or the same transaction, safe to send twice) in its place."""
    replies, again = await coalescer(client).call(
        Transaction(_written(call), _written(call.again or call))
    )
    return _transaction_reply(_exec_replies(replies if replies is not None else again))


async def _apipelined(client: AsyncClient, call: Call) -> Any:
    on_cluster = isinstance(client, redis.asyncio.cluster.RedisCluster)
    pipe: Any = client.pipeline(transaction=not on_cluster)
    for command in call.before:
        pipe.execute_command(*command)
    pipe.execute_command(call.command, *call.args)
    return _transaction_reply(await pipe.execute(raise_on_error=False))


# --- plain commands first, the call on a retry -------------------------------------------------

# Why not a redis-py pipeline: MULTI/EXEC through Pipeline.execute costs the client about 90 µs more
# per write than one command (measured: docs/bench), and redis-py's retry policy would send the
# transaction again after a lost reply. Written here on a pooled connection instead, once, with
# redis-py's own packing and reply parsing; tests/test_plain_first.py fails when redis-py changes
# the connection methods this relies on (get_connection, pack_commands, send_packed_command,
# read_response, release).


def plain_client(client: object) -> bool:
    """Whether ``client`` can send a plain transaction here: a standalone client with a pool."""
    return isinstance(client, (redis.Redis, redis.asyncio.Redis)) and client.connection is None


def _exec_replies(replies: list[Any]) -> list[Any]:
    """EXEC's replies (the last); a command refused as it was queued (EXECABORT) raises."""
    for reply in replies[:-1]:
        if isinstance(reply, BaseException):
            raise reply
    return list(replies[-1])


def _read_replies(count: int, read: Callable[[], Any]) -> list[Any]:
    replies: list[Any] = []
    for _ in range(count):
        try:
            replies.append(read())
        except ResponseError as error:
            replies.append(error)
    return replies


# How long after this module's code read every reply a pooled connection was owed the pools of
# URL-built sync clients hand it out again without polling its socket (see FreshCheckout).
FRESH_CHECKOUT = 1.0


class FreshCheckout:
    """A mixin for the connections of the sync pools pyhistory builds from a URL. redis-py's
    pools poll a connection's socket on every checkout (``can_read``) for a reply left unread or
    a socket the server closed: a system call that, with several threads, also hands the GIL
    to another thread and waits to take it back (sync turns with 8 threads: about 7 % more per
    second without it, docs/performance.md). A connection this module's code used last,
    reading every reply it was owed before handing it back (:func:`_write_once`), holds nothing
    unread; when it is checked out again within FRESH_CHECKOUT, the poll is skipped. A socket
    the server closed meanwhile fails the first command written on it, which goes again on a
    new connection as it does after any connection failure (reads under the client's retry
    policy, a plain append as its form that is applied once). Every other checkout polls: a
    connection redis-py's own code used last, or one idle for longer. tests/test_clients.py
    fails when redis-py's checkout stops asking ``can_read``."""

    _clean_at = -math.inf

    def can_read(self, timeout: float = 0) -> bool:
        clean_at = self._clean_at
        if clean_at != -math.inf:
            self._clean_at = -math.inf  # once: the checkout's question, no later one
            if not timeout and time.monotonic() - clean_at < FRESH_CHECKOUT:
                return False
        return super().can_read(timeout)  # type: ignore[misc, no-any-return]


_mixed: dict[tuple[type[Any], type[Any]], type[Any]] = {}


def mixed_in(mixin: type[Any], connection_class: type[Any]) -> type[Any]:
    """``connection_class`` with ``mixin`` before it (one class per pair, made once)."""
    if issubclass(connection_class, mixin):
        return connection_class
    found = _mixed.get((mixin, connection_class))
    if found is None:
        found = type(connection_class.__name__, (mixin, connection_class), {})
        found.__module__ = mixin.__module__
        _mixed[(mixin, connection_class)] = found
    return found


def _write_once(client: redis.Redis, commands: list[tuple[Any, ...]]) -> list[Any]:
    """``commands`` written once on one pooled connection: their replies (an error reply in
    place). Whatever interrupts them closes the connection (its replies unread) and is raised."""
    pool = client.connection_pool
    connection = None
    try:
        connection = pool.get_connection()
        checkout_used()
        connection.send_packed_command(connection.pack_commands(commands))
        replies = _read_replies(len(commands), connection.read_response)
    except BaseException:
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.disconnect()
            with contextlib.suppress(Exception):
                pool.release(connection)  # even when disconnect failed: the slot comes back
        raise
    if isinstance(connection, FreshCheckout):
        connection._clean_at = time.monotonic()
    pool.release(connection)
    return replies


def run_read(client: SyncClient, call: Call) -> Any:
    """A plain read (no library, no side effect): on a standalone client with a pool, written
    once on a pooled connection (which then comes back from the pool without a socket poll,
    see :class:`FreshCheckout`); when that connection fails, :func:`run` sends it again under
    the client's retry policy (its window counted from the first attempt). Errors are typed as
    :func:`run` types them; an error reply is raised without sending the read again."""
    if not plain_client(client):
        return run(client, call)
    replies, reply = _write_or_run(client, [(call.command, *call.args)], call)
    if replies is None:
        return reply
    (reply,) = replies
    if isinstance(reply, ResponseError):
        _raise_typed(reply)
        raise reply
    return reply


def _write_or_run(
    client: SyncClient, commands: list[tuple[Any, ...]], call: Call
) -> tuple[list[Any] | None, Any]:
    """``commands`` written once on one pooled connection: their replies (errors in place) and
    None; or, when the connection fails, None and ``call``'s reply, run with the client's retry
    policy (its window counted from the first attempt). Other errors are raised typed."""
    assert isinstance(client, redis.Redis)
    started = time.monotonic()
    try:
        return _write_once(client, commands), None
    except SEND_FAILURES as error:
        telemetry.retried(error)
        with attempts_since(started):
            return None, run(client, call)
    except BaseException as error:
        _raise_typed(error)
        raise


def _typed_exec_replies(replies: list[Any]) -> list[Any]:
    try:
        return _exec_replies(replies)
    except Exception as error:
        _raise_typed(error)
        raise


def run_plain_first(
    client: SyncClient, commands: list[tuple[Any, ...]], call: Call
) -> tuple[list[Any] | None, Any]:
    """``commands`` (MULTI ... EXEC) sent once, unretried, on one pooled connection: EXEC's replies
    (errors in place) and None. When the connection fails, ``call``, which must do the same
    work and recognise a transaction that was applied, is run instead with the client's retry
    policy (its window counted from the first attempt): (None, its reply)."""
    replies, reply = _write_or_run(client, commands, call)
    if replies is None:
        return None, reply
    return _typed_exec_replies(replies), None


async def arun_plain_first(
    client: AsyncClient, commands: list[tuple[Any, ...]], call: Call
) -> tuple[list[Any] | None, Any]:
    """The asyncio twin of :func:`run_plain_first` (for clients whose retry policy cannot be
    told to send a flight once: their plain appends are not coalesced)."""
    assert isinstance(client, redis.asyncio.Redis)
    started = time.monotonic()
    try:
        replies = await awrite_once(client, commands)
    except SEND_FAILURES as error:
        telemetry.retried(error)
        with attempts_since(started):
            return None, await arun(client, call, coalesce=False)
    except BaseException as error:
        _raise_typed(error)
        raise
    return _typed_exec_replies(replies), None


async def arun_plain(
    client: AsyncClient, commands: list[tuple[Any, ...]], call: Call
) -> tuple[list[Any] | None, Any]:
    """:func:`arun_plain_first`, or, on a URL-built client with a pool, the same through the
    coalescer (pyhistory._coalesce: at once on an idle client, else in the next flight; sent
    once, and again with ``call`` in place of the transaction when it fails)."""
    if not (lean(client) and _honours_once(client)):
        return await arun_plain_first(client, commands, call)
    assert isinstance(client, redis.asyncio.Redis)
    started = time.monotonic()
    try:
        replies, again = await coalescer(client).call(
            Transaction(commands, [(call.command, *call.args)])
        )
    except Exception as error:
        _raise_typed(error)
        raise
    if replies is not None:
        return _typed_exec_replies(replies), None
    reply = again[0]
    if isinstance(reply, BaseException):
        _heal(call, reply)  # raises it typed, unless the library is to be loaded again
        with attempts_since(started):
            return None, await arun(client, call, coalesce=False)
    return None, reply


def _honours_once(client: AsyncClient) -> bool:
    """Whether the client's retry policy sends a call once when asked (pyhistory._limits.once):
    the policy of pyhistory's URL-built clients."""
    if not isinstance(client, redis.asyncio.Redis):
        return False
    retry = client.connection_pool.connection_kwargs.get("retry")
    return bool(getattr(retry, "honours_once", False))


# --- two calls in one flight ------------------------------------------------------------------


def _pair_replies(replies: list[Any], then: Call) -> tuple[Any, Any, bool]:
    """The first call's reply, the second's (its error when the server refused it, READONLY),
    and whether ``then`` must be sent again (its library was lost). A READONLY refusal of
    ``then`` does not fail the pair: the server is a replica, which cannot write (a refreshed
    TTL, say); the first call's reply still stands, and the caller decides what the refusal
    means."""
    first, second = replies
    if isinstance(first, BaseException):
        _raise_typed(first)
        raise first
    if isinstance(second, ReadOnlyError):
        return first, translate(second), False
    if isinstance(second, BaseException):
        _heal(then, second)
        return first, None, True
    return first, second, False


def run_pair(client: SyncClient, call: Call, then: Call) -> tuple[Any, Any]:
    """Send ``call`` and ``then`` in one flight on one connection (one round trip, two commands,
    not a transaction: a non-transactional pipeline) and return both replies. The second is the
    error (typed) when the server refused it, a replica's READONLY, or OOM when its library had
    to be loaded again at maxmemory: the first still stands. For a read with a side effect the
    read itself must not pay for: a plain LRANGE, and a function refreshing the TTL."""
    try:
        pipe = client.pipeline(transaction=False)
        for c in (call, then):
            pipe.execute_command(c.command, *c.args)
        replies = pipe.execute(raise_on_error=False)
    except Exception as error:
        _raise_typed(error)
        raise
    first, second, again = _pair_replies(replies, then)
    if again:
        second = _refresh(client, then)
    return first, second


async def arun_pair(client: AsyncClient, call: Call, then: Call) -> tuple[Any, Any]:
    """The asyncio twin of :func:`run_pair`. On a plain client with a pool, both calls join the
    next coalesced flight together (one connection, one write)."""
    try:
        if lean(client):
            assert isinstance(client, redis.asyncio.Redis)
            flight = coalescer(client)
            sent = [flight.send((c.command, *c.args)) for c in (call, then)]
            replies = list(await asyncio.gather(*sent, return_exceptions=True))
            for reply in replies:
                if isinstance(reply, BaseException) and not isinstance(reply, ResponseError):
                    raise reply
        else:
            pipe = client.pipeline(transaction=False)
            for c in (call, then):
                pipe.execute_command(c.command, *c.args)
            replies = await pipe.execute(raise_on_error=False)
    except Exception as error:
        _raise_typed(error)
        raise
    first, second, again = _pair_replies(replies, then)
    if again:
        second = await _arefresh(client, then)
    return first, second


def run_reads(
    client: SyncClient, reads: Sequence[Call], then: Call | None
) -> tuple[list[Any], Any]:
    """Plain reads and, when given, ``then`` (a side effect such as a TTL refresh, as in
    :func:`run_pair`) in one flight: the reads' replies, and ``then``'s (None without it)."""
    calls = [*reads, then] if then is not None else list(reads)
    if len(calls) == 1:
        return [run(client, calls[0])], None
    try:
        pipe = client.pipeline(transaction=False)
        for c in calls:
            pipe.execute_command(c.command, *c.args)
        replies = pipe.execute(raise_on_error=False)
    except Exception as error:
        _raise_typed(error)
        raise
    read, second = _flight_replies(replies, len(reads), then)
    if second is _AGAIN:
        assert then is not None
        second = _refresh(client, then)
    return read, second


async def arun_reads(
    client: AsyncClient, reads: Sequence[Call], then: Call | None
) -> tuple[list[Any], Any]:
    """The asyncio twin of :func:`run_reads`."""
    calls = [*reads, then] if then is not None else list(reads)
    if len(calls) == 1:
        return [await arun(client, calls[0])], None
    try:
        if lean(client):
            assert isinstance(client, redis.asyncio.Redis)
            flight = coalescer(client)
            sent = [flight.send((c.command, *c.args)) for c in calls]
            replies = list(await asyncio.gather(*sent, return_exceptions=True))
            for reply in replies:
                if isinstance(reply, BaseException) and not isinstance(reply, ResponseError):
                    raise reply
        else:
            pipe = client.pipeline(transaction=False)
            for c in calls:
                pipe.execute_command(c.command, *c.args)
            replies = await pipe.execute(raise_on_error=False)
    except Exception as error:
        _raise_typed(error)
        raise
    read, second = _flight_replies(replies, len(reads), then)
    if second is _AGAIN:
        assert then is not None
        second = await _arefresh(client, then)
    return read, second


_AGAIN = object()


def _flight_replies(replies: list[Any], count: int, then: Call | None) -> tuple[list[Any], Any]:
    """The reads' replies (raising the first error among them) and ``then``'s: ``_AGAIN`` when
    it must be sent again (its library was lost)."""
    for reply in replies[:count]:
        if isinstance(reply, BaseException):
            _raise_typed(reply)
            raise reply
    if then is None:
        return list(replies[:count]), None
    _, second, resend = _pair_replies([None, replies[count]], then)
    if resend:
        second = _AGAIN
    return list(replies[:count]), second


# --- running with WAIT ------------------------------------------------------------------------

# A durable write on a cluster whose key's owner fails or changes (failover, resharding) sends
# the pair again after a topology refresh, for as long as a URL-built client retries a call
# (pyhistory._limits.RETRY_WINDOW): no attempt and no refresh starts later than that after the
# first, and an attempt waits at most one reply timeout, so the write raises within
# FAILURE_BOUND on a URL-built client. A client's refreshes are this far apart at least, while
# the cluster settles (within the window).
_TOPOLOGY_PAUSE = 0.5
# Replies that say the key's owner is changing: MOVED, CLUSTERDOWN while a failover runs,
# TRYAGAIN and MASTERDOWN. (ASK, during a slot migration, is followed rather than waited out.)
_TOPOLOGY_ERRORS = (MovedError, ClusterDownError, TryAgainError, MasterDownError)


def _durable_reply(replies: list[Any], replicas: int, timeout_ms: int) -> Any:
    for reply in replies:
        if isinstance(reply, BaseException):
            _raise_typed(reply)
            raise reply
    acknowledged = int(replies[1])
    if acknowledged < replicas:
        raise ReplicationError(
            f"the write was applied, but only {acknowledged} of {replicas} replicas acknowledged "
            f"it within {timeout_ms} ms",
            acknowledged=acknowledged,
            required=replicas,
        )
    return replies[0]


def _queue_with_wait(
    pipe: Any, call: Call, replicas: int, timeout_ms: int, asking: bool = False
) -> None:
    """Queue the call and its WAIT on a (sync or asyncio) non-transactional pipeline."""
    if asking:  # the slot is migrating to this node: it serves the key only after ASKING
        pipe.execute_command("ASKING")
    if call.before:  # written out: WAIT must follow the EXEC, outside the transaction
        pipe.execute_command("MULTI")
        for command in call.before:
            pipe.execute_command(*command)
    pipe.execute_command(call.command, *call.args)
    if call.before:
        pipe.execute_command("EXEC")
    pipe.execute_command("WAIT", replicas, timeout_ms)


def _call_and_wait(call: Call, replies: list[Any]) -> list[Any]:
    """[the call's reply, WAIT's reply] from what _queue_with_wait queued (without ASKING)."""
    if not call.before:
        return replies
    executed = replies[-2]
    if isinstance(executed, list):
        errors = [r for r in executed if isinstance(r, BaseException)]
        executed = errors[0] if errors else executed[-1]
    return [executed, replies[-1]]


def _send_with_wait(
    node: redis.Redis, call: Call, replicas: int, timeout_ms: int, asking: bool = False
) -> list[Any]:
    pipe = node.pipeline(transaction=False)
    _queue_with_wait(pipe, call, replicas, timeout_ms, asking)
    replies: list[Any] = pipe.execute(raise_on_error=False)
    return _call_and_wait(call, replies[1:] if asking else replies)


async def _asend_with_wait(
    client: redis.asyncio.Redis, call: Call, replicas: int, timeout_ms: int
) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    _queue_with_wait(pipe, call, replicas, timeout_ms)
    replies: list[Any] = await pipe.execute(raise_on_error=False)
    return _call_and_wait(call, replies)


def run_durable(client: SyncClient, call: Call, replicas: int, timeout_ms: int) -> Any:
    """Send a write and ``WAIT replicas timeout_ms`` pipelined on one connection: one round trip.

    Raises ReplicationError when fewer replicas acknowledged in time (the write itself applied).
    On a cluster the pair goes to the primary that owns the key, follows an ASK redirection
    during a slot migration, and when the owner changes (failover, resharding) or fails refreshes
    the topology and sends the pair again: only within RETRY_WINDOW of the first attempt, so on a
    URL-built client the write raises within FAILURE_BOUND (pyhistory._limits), the last error
    typed. Threads failing on the same client share one topology refresh.
    """
    try:
        # The pair goes in a pipeline that the client's retry policy, or a topology change
        # here, may send again: the form of the call that is safe to send twice.
        return _run_durable(client, call.again or call, replicas, timeout_ms)
    except Exception as error:
        _raise_typed(error)
        raise


def _run_durable(client: SyncClient, call: Call, replicas: int, timeout_ms: int) -> Any:
    healing = _Healing(call)
    if not isinstance(client, redis.cluster.RedisCluster):
        replies = _send_with_wait(client, call, replicas, timeout_ms)
        while call.library is not None and _is_missing(replies[0]):
            library, pause = healing.next(replies[0])
            time.sleep(pause)
            load_library(client, library)
            replies = _send_with_wait(client, call, replicas, timeout_ms)
        return _durable_reply(replies, replicas, timeout_ms)

    topology = _topology(client)
    until = time.monotonic() + RETRY_WINDOW  # nothing new starts after this
    ask: AskError | None = None
    while True:
        seen = topology.generation
        owner: Any = None
        try:
            owner = (
                client.get_node(host=ask.host, port=ask.port)
                if ask is not None
                else client.get_node_from_key(call.key)
            )
            if owner is None:  # a node the client does not know yet
                raise ConnectionError(f"no such node {ask.host}:{ask.port}" if ask else "")
            replies = _send_with_wait(
                client.get_redis_connection(owner), call, replicas, timeout_ms, ask is not None
            )
        except (ConnectionError, TimeoutError) as error:
            _settle(client, topology, seen, until, error, owner)
            ask = None
            continue
        reply, ask = replies[0], None
        if call.library is not None and _is_missing(reply):
            library, pause = healing.next(reply)
            time.sleep(pause)
            load_library(client, library)
        elif isinstance(reply, AskError) and not isinstance(reply, MovedError):
            if time.monotonic() >= until:
                raise reply
            ask = reply
        elif isinstance(reply, _TOPOLOGY_ERRORS):
            _settle(client, topology, seen, until, reply, owner)
        else:
            return _durable_reply(replies, replicas, timeout_ms)


class _Topology:
    """The topology refreshes of one cluster client: one at a time, at most one per
    _TOPOLOGY_PAUSE while the cluster settles, and a write whose attempt failed on a topology
    older than the last refresh takes that refresh's result instead of starting another (many
    threads failing on one node at once cost one refresh, not one each)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.generation = 0  # refreshes done
        self.refreshed_at = -math.inf  # when the last one ended (time.monotonic)

    def refresh(
        self, client: redis.cluster.RedisCluster, seen: int, until: float, failed: Any
    ) -> None:
        """Refresh unless one was done since generation ``seen``; wait for a refresh under way,
        but not past ``until``."""
        if not self.lock.acquire(timeout=max(until - time.monotonic(), 0.0)):
            return  # another write's refresh still runs: this write's window is over
        try:
            if self.generation != seen:
                return  # refreshed since this write's attempt began: take that
            now = time.monotonic()
            pause = min(self.refreshed_at + _TOPOLOGY_PAUSE, until) - now
            if pause > 0:
                time.sleep(pause)
            _initialize(client, getattr(failed, "name", None))
            self.generation += 1
            self.refreshed_at = time.monotonic()
        finally:
            self.lock.release()


_topologies_lock = _forks.lock(sys.modules[__name__], "_topologies_lock")


def _topology(client: redis.cluster.RedisCluster) -> _Topology:
    topology: _Topology | None = getattr(client, "_pyhistory_topology", None)
    if topology is None:
        with _topologies_lock:
            topology = getattr(client, "_pyhistory_topology", None)
            if topology is None:
                topology = _Topology()
                client._pyhistory_topology = topology  # type: ignore[attr-defined]
    return topology


def _settle(
    client: redis.cluster.RedisCluster,
    topology: _Topology,
    seen: int,
    until: float,
    error: BaseException,
    failed: Any,
) -> None:
    """After a failed attempt: refresh the topology (shared, see _Topology) and return to try
    again, or raise ``error`` when the write's window is over."""
    if time.monotonic() >= until:
        raise error
    topology.refresh(client, seen, until, failed)
    if time.monotonic() >= until:
        raise error


# redis-py's NodesManager.initialize (not public API) can be told which node just failed, to ask
# it last (redis-py 8.1 and later).
_DEFERS_FAILED = (
    "last_failed_node_name" in inspect.signature(redis.cluster.NodesManager.initialize).parameters
)


def _initialize(client: redis.cluster.RedisCluster, failed_node: str | None) -> None:
    """Learn the cluster's topology again (asking the node that failed last, when redis-py can).
    Still failing over when this fails: the next attempt tries again."""
    with contextlib.suppress(ConnectionError, TimeoutError, RedisClusterException):
        if _DEFERS_FAILED and failed_node is not None:
            client.nodes_manager.initialize(last_failed_node_name=failed_node)
        else:
            client.nodes_manager.initialize()


async def arun_durable(
    client: redis.asyncio.Redis, call: Call, replicas: int, timeout_ms: int
) -> Any:
    """The asyncio twin of :func:`run_durable`, for a standalone server."""
    call = call.again or call  # as in run_durable: the pipeline may be sent again
    try:
        healing = _Healing(call)
        replies = await _asend_with_wait(client, call, replicas, timeout_ms)
        while call.library is not None and _is_missing(replies[0]):
            library, pause = healing.next(replies[0])
            await asyncio.sleep(pause)
            await aload_library(client, library)
            replies = await _asend_with_wait(client, call, replicas, timeout_ms)
        return _durable_reply(replies, replicas, timeout_ms)
    except Exception as error:
        _raise_typed(error)
        raise


# --- a write, durable when asked --------------------------------------------------------------


def run_write(client: SyncClient, call: Call, replicas: int, timeout_ms: int) -> Any:
    """A write: with ``replicas`` > 0, followed by ``WAIT`` in the same round trip."""
    if replicas:
        return run_durable(client, call, replicas, timeout_ms)
    return run(client, call)


async def arun_write(
    client: AsyncClient | None,
    call: Call,
    replicas: int,
    timeout_ms: int,
    in_thread: Callable[[Call], Any],
) -> Any:
    """The asyncio twin of :func:`run_write`. Without an asyncio client, or on an asyncio cluster
    with ``WAIT`` (redis.asyncio cannot pipeline on the key's node), ``in_thread`` runs the sync
    write in a worker thread."""
    if replicas and isinstance(client, redis.asyncio.Redis):
        return await arun_durable(client, call, replicas, timeout_ms)
    if client is None or replicas:
        return await asyncio.to_thread(in_thread, call)
    return await arun(client, call)
