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
import time
from collections.abc import Callable
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

from pyhistory import telemetry
from pyhistory._coalesce import coalescer, lean
from pyhistory._library import Call, Library
from pyhistory.errors import FunctionsNotLoadedError, HistoryError, ReplicationError, translate

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
            library, pause = healing.next(error)
        if pause:
            time.sleep(pause)
        load_library(client, library)


async def arun(client: AsyncClient, call: Call) -> Any:
    """The asyncio twin of :func:`run`. On a plain client with a pool, the command shares its
    flight with the commands other tasks issue at the same moment (pyhistory._coalesce)."""
    healing = _Healing(call)
    while True:
        try:
            return await _asend(client, call)
        except Exception as error:
            library, pause = healing.next(error)
        if pause:
            await asyncio.sleep(pause)
        await aload_library(client, library)


def _refresh(client: SyncClient, call: Call) -> Any:
    """Send again a read's side effect (its TTL refresh) whose library the server lost; its reply,
    or None. A server that cannot take the library now leaves the read standing, unrefreshed, as
    a replica's READONLY in the pair does: a replica (READONLY), a server at maxmemory under
    noeviction (OOM)."""
    with contextlib.suppress(ReadOnlyError, RedisOutOfMemoryError):
        return run(client, call)
    return None


async def _arefresh(client: AsyncClient, call: Call) -> Any:
    """The asyncio twin of :func:`_refresh`."""
    with contextlib.suppress(ReadOnlyError, RedisOutOfMemoryError):
        return await arun(client, call)
    return None


def _transaction_reply(replies: list[Any]) -> Any:
    """The reply of a transaction's last command (the call), raising the first error in it."""
    for reply in replies:
        if isinstance(reply, BaseException):
            raise reply
    return replies[-1]


def _send(client: SyncClient, call: Call) -> Any:
    """One call, or, with ``call.before``, the plain commands and the call in one MULTI/EXEC."""
    if not call.before:
        return client.execute_command(call.command, *call.args)
    pipe = client.pipeline(transaction=True)
    for command in call.before:
        pipe.execute_command(*command)
    pipe.execute_command(call.command, *call.args)
    return _transaction_reply(pipe.execute(raise_on_error=False))


async def _asend(client: AsyncClient, call: Call) -> Any:
    """The asyncio twin of :func:`_send`. A lone call on a plain client with a pool shares its
    flight with the commands other tasks issue at the same moment (pyhistory._coalesce). On an
    asyncio cluster client the commands go in one non-transactional pipeline to the slot's node
    instead of MULTI/EXEC (redis.asyncio's cluster transactions run each command in a thread of
    its own, blocking the event loop): they still run in order on that node in one flight, so a
    reader that only reaches the values through what the call indexes sees the same as with
    MULTI/EXEC."""
    if not call.before:
        if lean(client):
            assert isinstance(client, redis.asyncio.Redis)
            return await coalescer(client).send((call.command, *call.args))
        return await client.execute_command(call.command, *call.args)
    on_cluster = isinstance(client, redis.asyncio.cluster.RedisCluster)
    pipe: Any = client.pipeline(transaction=not on_cluster)
    for command in call.before:
        pipe.execute_command(*command)
    pipe.execute_command(call.command, *call.args)
    return _transaction_reply(await pipe.execute(raise_on_error=False))


# --- two calls in one flight ------------------------------------------------------------------


def _pair_replies(replies: list[Any], then: Call) -> tuple[Any, Any, bool]:
    """The first call's reply, the second's (None when a replica refused it), and whether
    ``then`` must be sent again (its library was lost). A READONLY refusal of ``then`` is
    dropped: the pair was read from a replica, which cannot write (a refreshed TTL, say); the
    first call's reply still stands."""
    first, second = replies
    if isinstance(first, BaseException):
        _raise_typed(first)
        raise first
    if isinstance(second, ReadOnlyError):
        return first, None, False
    if isinstance(second, BaseException):
        _heal(then, second)
        return first, None, True
    return first, second, False


def run_pair(client: SyncClient, call: Call, then: Call) -> tuple[Any, Any]:
    """Send ``call`` and ``then`` in one flight on one connection (one round trip, two commands,
    not a transaction: a non-transactional pipeline) and return both replies (the second is None
    when a replica refused it). For a read with a side effect the read itself must not pay for:
    a plain LRANGE, and a function refreshing the TTL."""
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


# --- running with WAIT ------------------------------------------------------------------------

# Attempts of a durable write when the cluster's topology changed under it (failover, resharding)
# and the pause between them, from the second on, while the cluster settles.
_TOPOLOGY_ATTEMPTS = 20
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
    during a slot migration, and when the owner changes (failover, resharding) refreshes the
    topology and sends the pair again.
    """
    try:
        return _run_durable(client, call, replicas, timeout_ms)
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

    ask: AskError | None = None
    for attempt in range(_TOPOLOGY_ATTEMPTS):
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
        except (ConnectionError, TimeoutError):
            if attempt + 1 == _TOPOLOGY_ATTEMPTS:
                raise
            _refresh_topology(client, pause=attempt > 0)
            ask = None
            continue
        reply, ask = replies[0], None
        if call.library is not None and _is_missing(reply):
            library, pause = healing.next(reply)
            time.sleep(pause)
            load_library(client, library)
        elif isinstance(reply, AskError) and not isinstance(reply, MovedError):
            ask = reply
        elif isinstance(reply, _TOPOLOGY_ERRORS):
            _refresh_topology(client, pause=attempt > 0)
        else:
            return _durable_reply(replies, replicas, timeout_ms)
    raise HistoryError(f"the cluster did not settle after {_TOPOLOGY_ATTEMPTS} attempts")


def _refresh_topology(client: redis.cluster.RedisCluster, pause: bool) -> None:
    if pause:
        time.sleep(_TOPOLOGY_PAUSE)
    # Still failing over when this fails: the next attempt tries again.
    with contextlib.suppress(ConnectionError, TimeoutError, RedisClusterException):
        client.nodes_manager.initialize()


async def arun_durable(
    client: redis.asyncio.Redis, call: Call, replicas: int, timeout_ms: int
) -> Any:
    """The asyncio twin of :func:`run_durable`, for a standalone server."""
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
