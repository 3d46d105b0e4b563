"""One client (and so one connection pool) per URL in the process, and per event loop for
asyncio, so that constructing a history per request opens no new connections.

Every URL form langchain_community's ``get_client`` accepts: ``redis://``, ``rediss://``,
``unix://``, ``redis+sentinel://`` and ``rediss+sentinel://``; a plain URL that names a node of a
Redis Cluster is detected on first use (``INFO cluster``, once per URL per process) and served by a
cluster client from then on. Clients built here have connect and read timeouts and a bounded
retry policy, so a hung or unreachable server becomes a typed error within ``FAILURE_BOUND``
seconds, while a restart or a failover is ridden out as latency.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import os
import random
import socket
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.connection
import redis.asyncio.sentinel
import redis.cluster
import redis.connection
import redis.sentinel
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.cluster import LoadBalancingStrategy
from redis.connection import parse_url
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    ConnectionError,
    DataError,
    MaxConnectionsError,
    ResponseError,
    TimeoutError,
)
from redis.retry import Retry

from pyhistory import _wire, telemetry

# The bound every URL-built client keeps (pyhistory._limits), importable from here too.
from pyhistory._limits import (
    COMMAND_TIMEOUT,
    CONNECT_TIMEOUT,
    RETRY_WINDOW,
    checked_out,
    close_window,
    once,
    opening_window,
    pool_wait,
)
from pyhistory._limits import FAILURE_BOUND as FAILURE_BOUND
from pyhistory._version import VERSION
from pyhistory.errors import InvalidArgumentError, translate
from pyhistory.functions import AsyncClient, FreshCheckout, SyncClient, mixed_in, prepare

T = TypeVar("T")

# At most this many retries, within the window (a cluster client counts them, not the time).
_RETRIES = 10
# Wrong credentials or a refused user will not get better by asking again.
_NEVER_RETRIED = (AuthenticationError, AuthorizationError)
_RETRIED = (ConnectionError, TimeoutError, OSError)


def _backoff() -> ExponentialBackoff:
    # Jitter is added by _pause(): redis-py's jittered backoffs differ between its releases.
    return ExponentialBackoff(cap=1.0, base=0.05)


class _BoundedRetry(Retry):
    """redis-py's Retry, bounded by time rather than by count, and never for credentials."""

    def call_with_retry(
        self,
        do: Callable[[], T],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        started, window = opening_window()
        failures = 0
        try:
            while True:
                try:
                    return do()
                except _RETRIED as error:
                    failures += 1
                    _failed(fail, error, failures, with_failure_count)
                    pause = _pause(self, error, failures, started, is_retryable)
                    time.sleep(pause)
        finally:
            close_window(window)


class _AsyncBoundedRetry(AsyncRetry):
    """The asyncio twin of _BoundedRetry; within pyhistory._limits.sending_once it does not retry
    (a flight carrying a plain append: pyhistory._coalesce)."""

    honours_once = True

    async def call_with_retry(
        self,
        do: Callable[[], Awaitable[T]],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        started, window = opening_window()
        failures = 0
        try:
            while True:
                try:
                    return await do()
                except _RETRIED as error:
                    failures += 1
                    outcome = _failed(fail, error, failures, with_failure_count)
                    if inspect.isawaitable(outcome):
                        await outcome
                    if once():  # a flight that must not be sent again as it is
                        raise
                    pause = _pause(self, error, failures, started, is_retryable)
                    await asyncio.sleep(pause)
        finally:
            close_window(window)


def _failed(fail: Callable[..., Any], error: Exception, failures: int, count: bool) -> Any:
    """redis-py's failure handler (it disconnects the broken connection)."""
    telemetry.retried(error)
    return fail(error, failures) if count else fail(error)


def _pause(
    retry: Retry | AsyncRetry,
    error: Exception,
    failures: int,
    started: float,
    is_retryable: Callable[[Exception], bool] | None,
) -> float:
    """How long to wait before the next attempt; raises ``error`` when there is none."""
    if isinstance(error, _NEVER_RETRIED) or (is_retryable is not None and not is_retryable(error)):
        raise error
    pause = retry._backoff.compute(failures) * random.uniform(0.5, 1.5)
    if failures > retry.get_retries() or time.monotonic() - started + pause > RETRY_WINDOW:
        raise error
    return pause


def _driver_options() -> dict[str, Any]:
    """How the connections pyhistory builds name themselves to the server (``CLIENT SETINFO``,
    seen in ``CLIENT LIST``): ``lib-name=redis-py(pyhistory_v<version>)`` and redis-py's own
    ``lib-ver``. Through redis-py's ``driver_info`` where it has it, its ``lib_name`` and
    ``lib_version`` otherwise. Both versions are passed explicitly, read once at import: redis-py
    would otherwise look its own version up (importlib.metadata: file system calls) for each new
    connection, which for an asyncio client blocks the event loop."""
    try:
        from redis.driver_info import DriverInfo
    except ImportError:  # redis-py before driver_info
        return {"lib_name": f"redis-py(pyhistory_v{VERSION})", "lib_version": redis.__version__}
    info = DriverInfo(lib_version=redis.__version__).add_upstream_driver("pyhistory", VERSION)
    return {"driver_info": info}


DRIVER_OPTIONS = _driver_options()


def _options(asyncio_client: bool) -> dict[str, Any]:
    """Timeouts and the retry policy for a client built from a URL; options in
    the URL's query (``?socket_timeout=10``) take precedence, as redis-py's from_url has it."""
    retry_class = _AsyncBoundedRetry if asyncio_client else _BoundedRetry
    return {
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": COMMAND_TIMEOUT,
        "retry": retry_class(_backoff(), retries=_RETRIES),
        **DRIVER_OPTIONS,
    }


# --- commands packed by hiredis ------------------------------------------------------------

_hiredis_pack: Callable[..., bytes] | None
try:
    import hiredis

    _hiredis_pack = hiredis.pack_command
except ImportError:  # the hiredis extra is not installed: redis-py's packer
    _hiredis_pack = None


def _packed(args: tuple[Any, ...]) -> list[bytes]:
    """One command in the Redis protocol, as redis-py's sync connections pack it with hiredis
    (redis.connection.HiredisRespSerializer): a command name with spaces split, bytearrays and
    memoryviews as bytes, str as UTF-8."""
    assert _hiredis_pack is not None
    name = args[0]
    if (" " if isinstance(name, str) else b" ") in name:
        args = (*(name.encode() if isinstance(name, str) else name).split(), *args[1:])
    try:
        return [_hiredis_pack(args)]
    except TypeError as error:
        if not any(isinstance(arg, (bytearray, memoryview)) for arg in args):
            raise DataError(error) from error
    args = tuple(bytes(a) if isinstance(a, (bytearray, memoryview)) else a for a in args)
    try:
        return [_hiredis_pack(args)]
    except TypeError as error:
        raise DataError(error) from error


class _HiredisPacking:
    """For the asyncio connections of clients built here: commands packed by hiredis, as
    redis-py's sync connections pack them, rather than by redis.asyncio's pure-Python packer,
    which costs several times more (a chat turn's commands: about 4 µs against 29; a
    checkpoint put's: 4 against 24). With the default encoding only (UTF-8, strict: what
    hiredis writes); otherwise redis-py's own. tests/test_wire.py fails when redis-py stops
    packing through ``pack_command``."""

    encoder: Any

    def pack_command(self, *args: Any) -> list[bytes]:
        encoder = self.encoder
        if encoder.encoding != "utf-8" or encoder.encoding_errors != "strict":
            return super().pack_command(*args)  # type: ignore[misc, no-any-return]
        return _packed(args)


class _Packer:
    """The ``command_packer`` (an argument of redis-py's sync ``Connection``) of the sync clients
    built here: the same hiredis packing as redis-py's own packer without its encoding of each
    argument in Python first (a chat turn's commands: about 6 µs against 45). With the default
    encoding only; tests/test_wire.py fails when redis-py stops packing through it."""

    def pack(self, *args: Any) -> list[bytes]:
        return _packed(args)


_PACKER = _Packer()


def _pack_sync(pool: redis.ConnectionPool) -> None:
    """The pool's new connections pack with :class:`_Packer` (hiredis and the default encoding;
    else redis-py's packer, as in :class:`_HiredisPacking`)."""
    kwargs = pool.connection_kwargs
    if (
        _hiredis_pack is not None
        and kwargs.get("encoding", "utf-8") == "utf-8"
        and kwargs.get("encoding_errors", "strict") == "strict"
    ):
        kwargs["command_packer"] = _PACKER


def _packing(connection_class: type[Any]) -> type[Any]:
    """``connection_class`` with :class:`_HiredisPacking` (the same class without hiredis)."""
    if _hiredis_pack is None:
        return connection_class
    return mixed_in(_HiredisPacking, connection_class)


# A URL-built client holds at most this many connections; a call that finds them all busy waits
# for one (as long as a reply may take) instead of failing at once.
MAX_CONNECTIONS = 100


class _WindowedWait:
    """For the blocking pools of URL-built clients: a wait for a free connection counts toward
    the call's retry window and ends with it (pyhistory._limits.pool_wait, checked_out). Without
    this, an attempt that started late in the window could wait out the pool's timeout and then
    a read timeout (a hung server: calls succeeded 12 s in, past the 10 s bound), and a checkout
    made by redis-py before its retry policy runs would not count at all. The pools read
    ``timeout`` once per checkout that waits (redis-py's sync BlockingConnectionPool: every
    checkout; :class:`_AsyncCappedPool`: one that finds every connection in use);
    tests/test_production.py fails when a call outlives the bound."""

    _wait: float | None = None

    @property
    def timeout(self) -> float | None:
        return pool_wait(self._wait)

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        self._wait = value

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        waited_from = time.monotonic()
        connection = super().get_connection(*args, **kwargs)  # type: ignore[misc]
        checked_out(waited_from)
        return connection


class _AsyncCappedPool(_WindowedWait):
    """The asyncio twin of :class:`_WindowedWait`, over redis.asyncio's plain ``ConnectionPool``
    and its public methods. A checkout that finds a connection free, or room for one more, takes
    it as that pool does: no condition, no timer. Only a checkout that finds all
    ``max_connections`` in use waits, in turn, until a release wakes it or its ``timeout`` ends
    (``ConnectionError("No connection available.")``, as redis-py's blocking pool has it).
    redis.asyncio's ``BlockingConnectionPool`` enters a condition and a timer on every checkout
    and release: 14.7 µs of client time for a checkout and its release, against 6.1 µs here
    (redis-py 8.2, Python 3.11). tests/test_production.py holds its tests."""

    def __init__(self, *args: Any, timeout: float | None = COMMAND_TIMEOUT, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout = timeout
        # The checkouts waiting for a release, in turn.
        self._sleepers: collections.deque[asyncio.Future[None]] = collections.deque()

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        waited_from = time.monotonic()
        connection = None
        if not self._sleepers and self.can_get_connection():  # type: ignore[attr-defined]
            connection = await self._take()
        if connection is None:
            connection = await self._wait_for_connection()
        checked_out(waited_from)  # a checkout that reconnected counts too
        return connection

    async def _wait_for_connection(self) -> Any:
        loop = asyncio.get_running_loop()
        wait = self.timeout
        deadline = None if wait is None else loop.time() + wait
        woken_before = False
        while True:
            woken: asyncio.Future[None] = loop.create_future()
            if woken_before:  # woken, and a checkout that came meanwhile took the connection
                self._sleepers.appendleft(woken)
            else:
                self._sleepers.append(woken)
            try:
                # Not asyncio.wait_for: before Python 3.12 it returns a result that came with
                # a cancellation and swallows the cancellation.
                async with _wire.deadline_timer(
                    None if deadline is None else deadline - loop.time()
                ):
                    await woken
            except BaseException as error:
                if woken.done() and not woken.cancelled():
                    self._wake_one()  # woken, then cancelled: the next one in line takes it
                else:
                    with contextlib.suppress(ValueError):
                        self._sleepers.remove(woken)
                if isinstance(error, asyncio.TimeoutError):
                    raise ConnectionError("No connection available.") from error
                raise
            woken_before = True
            if self.can_get_connection():  # type: ignore[attr-defined]
                try:
                    connection = await self._take()
                except BaseException:
                    if self.can_get_connection():  # type: ignore[attr-defined]
                        self._wake_one()  # its turn passes on with the free connection
                    raise
                if connection is not None:
                    return connection

    async def _take(self) -> Any:
        """A connection from the plain pool, or None when the last was taken while this checkout
        awaited the pool's lock (redis-py 7.2 and later say so with MaxConnectionsError)."""
        try:
            return await super(_WindowedWait, self).get_connection()  # type: ignore[misc]
        except MaxConnectionsError:
            return None

    def _wake_one(self) -> None:
        while self._sleepers:
            sleeper = self._sleepers.popleft()
            if not sleeper.done():
                sleeper.set_result(None)
                return

    async def release(self, connection: Any) -> None:
        try:
            await super().release(connection)  # type: ignore[misc]
        finally:
            if self._sleepers:
                self._wake_one()


class _AsyncWindowedWait(_WindowedWait):
    """:class:`_WindowedWait` for redis.asyncio's ``BlockingConnectionPool``."""

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        waited_from = time.monotonic()
        connection = await super(_WindowedWait, self).get_connection()  # type: ignore[misc]
        checked_out(waited_from)
        return connection


def _major_minor(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:2] if part.isdigit())


# redis.asyncio's plain pool connects a connection outside its lock from redis-py 7.2. Before,
# a checkout that finds a connection free would wait behind every other checkout's connect, with
# no deadline (a server that does not answer: a connect timeout each, one after the other), so
# older redis-py keeps the blocking pool, whose checkouts wait under their timeout.
_CAPPED_POOL = _major_minor(redis.__version__) >= (7, 2)


class _BlockingPool(_WindowedWait, redis.BlockingConnectionPool):
    pass


class _AsyncCappedPlainPool(_AsyncCappedPool, redis.asyncio.ConnectionPool):
    pass


class _AsyncOldBlockingPool(_AsyncWindowedWait, redis.asyncio.BlockingConnectionPool):
    pass


# The pool of URL-built asyncio clients.
_AsyncBlockingPool: type[Any] = _AsyncCappedPlainPool if _CAPPED_POOL else _AsyncOldBlockingPool


def _pool(asyncio_client: bool) -> dict[str, Any]:
    return {
        **_options(asyncio_client),
        "max_connections": MAX_CONNECTIONS,
        "timeout": COMMAND_TIMEOUT,
    }


# --- Sentinel URLs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SentinelURL:
    """``redis+sentinel://[user:password@]host[:port][,host[:port]...]/[service]/[db][?options]``
    (``rediss+sentinel://`` for TLS): langchain_community's grammar, plus several sentinels."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    options: dict[str, Any] = field(hash=False, compare=False)
    sentinel_options: dict[str, Any] = field(hash=False, compare=False)


def is_sentinel(url: str) -> bool:
    return url.startswith(("redis+sentinel://", "rediss+sentinel://"))


def parse_sentinel_url(url: str) -> SentinelURL:
    parts = urlsplit(url)
    tls = parts.scheme == "rediss+sentinel"
    userinfo, _, hosts = parts.netloc.rpartition("@")
    sentinels = tuple(_host_port(h) for h in hosts.split(",")) if hosts else (("localhost", 26379),)
    path = [unquote(p) for p in parts.path.split("/")[1:]]
    service = path[0] if path and path[0] else "mymaster"
    # Options in the query, typed as redis-py types them for its own URLs.
    options: dict[str, Any] = parse_url(f"redis://localhost/?{parts.query}")
    options.pop("host", None)
    if len(path) > 1 and path[1] and "db" not in options:
        try:
            options["db"] = int(path[1])
        except ValueError:
            raise InvalidArgumentError(
                f"the db in a Sentinel URL must be a number: {url!r}"
            ) from None
    credentials: dict[str, Any] = {}
    if userinfo:
        user, has_password, password = userinfo.partition(":")
        if user:
            credentials["username"] = unquote(user)
        if has_password:
            credentials["password"] = unquote(password)
    options.update(credentials)
    if tls:
        options["ssl"] = True
        options.setdefault("ssl_cert_reqs", "none")  # as langchain_community's get_client
    # The sentinels get the same credentials and TLS settings (langchain_community's rule).
    sentinel_options = {
        **credentials,
        **{k: v for k, v in options.items() if k.startswith(("ssl", "socket_", "client_name"))},
    }
    return SentinelURL(sentinels, service, options, sentinel_options)


def _host_port(text: str) -> tuple[str, int]:
    if text.startswith("["):  # [::1]:26379
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":")
    else:
        host, _, port = text.partition(":")
    try:
        return unquote(host) or "localhost", int(port) if port else 26379
    except ValueError:
        raise InvalidArgumentError(f"not a host[:port] in a Sentinel URL: {text!r}") from None


class _SentinelConnection(redis.sentinel.SentinelManagedConnection):
    """A connection to the primary Sentinel names, that asks the sentinels again whenever it
    reconnects. redis-py's SentinelManagedConnection asks them in connect(), but a command sent on
    a broken connection reconnects through connect_check_health(), which goes back to the address
    it had: after a failover, the dead primary's, for the whole retry window. (Older redis-py
    reaches connect_check_health() from inside connect() too: the flag stops the loop.)"""

    _asking_sentinels = False

    def connect_check_health(self, *args: Any, **kwargs: Any) -> None:
        if self._sock or self._asking_sentinels or kwargs.get("retry_socket_connect") is False:
            super().connect_check_health(*args, **kwargs)
            return
        self._asking_sentinels = True
        try:
            self.connect()
        finally:
            self._asking_sentinels = False


class _SentinelSSLConnection(_SentinelConnection, redis.connection.SSLConnection):
    pass


class _AsyncSentinelConnection(redis.asyncio.sentinel.SentinelManagedConnection):
    """The asyncio twin of _SentinelConnection."""

    _asking_sentinels = False

    async def connect_check_health(self, *args: Any, **kwargs: Any) -> None:
        if (
            self.is_connected
            or self._asking_sentinels
            or kwargs.get("retry_socket_connect") is False
        ):
            await super().connect_check_health(*args, **kwargs)
            return
        self._asking_sentinels = True
        try:
            await self.connect()
        finally:
            self._asking_sentinels = False


class _AsyncSentinelSSLConnection(_AsyncSentinelConnection, redis.asyncio.connection.SSLConnection):
    pass


class _BlockingSentinelPool(
    _WindowedWait, redis.sentinel.SentinelConnectionPool, redis.BlockingConnectionPool
):
    """The pool of the primary Sentinel names, capped as the other URL forms' pools are: a call
    that finds every connection busy waits for one."""

    def disconnect(self, inuse_connections: bool = True) -> None:
        # redis-py's Sentinel asks its pool to drop idle connections when the primary changed
        # (inuse_connections=False); the blocking pool of older redis-py (6.0) takes no argument
        # and drops them all, which a changed primary calls for anyway.
        if _BLOCKING_DISCONNECT_TAKES_FLAG:
            super().disconnect(inuse_connections=inuse_connections)
        else:
            super().disconnect()


_BLOCKING_DISCONNECT_TAKES_FLAG = (
    "inuse_connections" in inspect.signature(redis.BlockingConnectionPool.disconnect).parameters
)


class _AsyncCappedSentinelPool(_AsyncCappedPool, redis.asyncio.sentinel.SentinelConnectionPool):
    """The asyncio twin of _BlockingSentinelPool."""


class _AsyncOldBlockingSentinelPool(
    _AsyncWindowedWait,
    redis.asyncio.sentinel.SentinelConnectionPool,
    redis.asyncio.BlockingConnectionPool,
):
    """The asyncio twin of _BlockingSentinelPool, before redis-py 7.2 (see _CAPPED_POOL)."""


_AsyncBlockingSentinelPool: type[Any] = (
    _AsyncCappedSentinelPool if _CAPPED_POOL else _AsyncOldBlockingSentinelPool
)


def _sentinel_pool(asyncio_client: bool) -> dict[str, Any]:
    """master_for's options for the primary's pool: its class and its cap."""
    pool = _AsyncBlockingSentinelPool if asyncio_client else _BlockingSentinelPool
    return {
        "connection_pool_class": pool,
        "max_connections": MAX_CONNECTIONS,
        "timeout": COMMAND_TIMEOUT,
    }


def _sentinel_connection_class(options: dict[str, Any], asyncio_client: bool) -> type[Any]:
    """The connection class for the primary's pool; takes ``ssl`` out of ``options``."""
    tls = bool(options.pop("ssl", False))
    if asyncio_client:
        return _AsyncSentinelSSLConnection if tls else _AsyncSentinelConnection
    return _SentinelSSLConnection if tls else _SentinelConnection


def _no_password_set(error: AuthenticationError) -> bool:
    """The sentinel has no password while the URL carries one (langchain_community retries the
    sentinels without it)."""
    message = str(error).lower()
    return "no password is set" in message or "without any password configured" in message


def _sentinel_options(parsed: SentinelURL, asyncio_client: bool) -> dict[str, Any]:
    """The sentinels' clients: the URL's credentials and TLS settings, timeouts, and one attempt
    each. redis-py asks the sentinels in turn and passes over one that does not answer; the
    primary's connection retries that round as a whole (RETRY_WINDOW), so a retried sentinel
    would only hold every round up for the window while the next one is there to answer."""
    once = AsyncRetry(NoBackoff(), 0) if asyncio_client else Retry(NoBackoff(), 0)
    return {**_options(asyncio_client), **parsed.sentinel_options, "retry": once}


def _without_credentials(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k not in ("username", "password")}


def _sentinel_unanswered(started: float, failures: int, error: Exception) -> float:
    """The pause before asking the sentinels again, when none of them answered; raises ``error``
    when the retry window is over."""
    pause = _backoff().compute(failures) * random.uniform(0.5, 1.5)
    if time.monotonic() - started + pause > RETRY_WINDOW:
        raise error
    return pause


def _sentinel_credentials(parsed: SentinelURL, options: dict[str, Any]) -> dict[str, Any]:
    """The sentinels' options, without the URL's credentials when the sentinels have no password
    set (langchain_community's rule). Each listed sentinel is asked in turn until one answers: one
    that is down is passed over; when none answers, they are asked again within RETRY_WINDOW."""
    if "password" not in options:
        return options
    started, failures = time.monotonic(), 0
    while True:
        for host, port in parsed.sentinels:
            probe = redis.Redis(host=host, port=port, **options)
            try:
                probe.ping()
            except AuthenticationError as error:
                if not _no_password_set(error):
                    raise
                return _without_credentials(options)
            except (ConnectionError, TimeoutError, OSError) as error:
                unanswered = error
                continue
            finally:
                probe.close()
            return options
        failures += 1
        time.sleep(_sentinel_unanswered(started, failures, unanswered))


async def _async_sentinel_credentials(
    parsed: SentinelURL, options: dict[str, Any]
) -> dict[str, Any]:
    """The asyncio twin of :func:`_sentinel_credentials`."""
    if "password" not in options:
        return options
    started, failures = time.monotonic(), 0
    while True:
        for host, port in parsed.sentinels:
            probe = redis.asyncio.Redis(host=host, port=port, **options)
            try:
                await probe.ping()
            except AuthenticationError as error:
                if not _no_password_set(error):
                    raise
                return _without_credentials(options)
            except (ConnectionError, TimeoutError, OSError) as error:
                unanswered = error
                continue
            finally:
                await probe.aclose()
            return options
        failures += 1
        await asyncio.sleep(_sentinel_unanswered(started, failures, unanswered))


def _sentinel_master(url: str) -> redis.Redis:
    parsed = parse_sentinel_url(url)
    options = {**_options(False), **parsed.options}
    sentinel_options = _sentinel_credentials(parsed, _sentinel_options(parsed, False))
    sentinel = redis.sentinel.Sentinel(
        parsed.sentinels, sentinel_kwargs=sentinel_options, **options
    )
    connection_class = _sentinel_connection_class(sentinel.connection_kwargs, False)
    master: redis.Redis = sentinel.master_for(
        parsed.service,
        redis_class=redis.Redis,
        connection_class=connection_class,
        **_sentinel_pool(False),
    )
    _pack_sync(master.connection_pool)
    return master


async def _async_sentinel_master(
    url: str,
) -> tuple[redis.asyncio.Redis, list[redis.asyncio.Redis]]:
    """The primary's client, and the sentinels' clients it asks (to close with it)."""
    parsed = parse_sentinel_url(url)
    options = {**_options(True), **parsed.options}
    sentinel_options = await _async_sentinel_credentials(parsed, _sentinel_options(parsed, True))
    sentinel = redis.asyncio.sentinel.Sentinel(
        parsed.sentinels, sentinel_kwargs=sentinel_options, **options
    )
    connection_class = _packing(_sentinel_connection_class(sentinel.connection_kwargs, True))
    master: redis.asyncio.Redis = sentinel.master_for(
        parsed.service,
        redis_class=redis.asyncio.Redis,
        connection_class=connection_class,
        **_sentinel_pool(True),
    )
    return master, list(sentinel.sentinels)


# --- cluster detection ------------------------------------------------------------------------

# URL -> whether it names a Redis Cluster node, learnt once per process (sync or asyncio).
_is_cluster: dict[str, bool] = {}


def _cluster_enabled(info: dict[str, Any]) -> bool:
    return str(info.get("cluster_enabled", "0")) == "1"


def _replicas(read_from_replicas: bool) -> LoadBalancingStrategy | None:
    """Read-only commands (LRANGE, FCALL_RO) to the replicas in turn, or all to the primaries."""
    return LoadBalancingStrategy.ROUND_ROBIN_REPLICAS if read_from_replicas else None


def _sync_cluster(url: str, read_from_replicas: bool) -> SyncClient:
    client = redis.cluster.RedisCluster.from_url(
        url, load_balancing_strategy=_replicas(read_from_replicas), **_options(False)
    )
    prepare(client)
    return client


async def _async_cluster(url: str, read_from_replicas: bool) -> AsyncClient:
    client = redis.asyncio.cluster.RedisCluster.from_url(
        url, load_balancing_strategy=_replicas(read_from_replicas), **_options(True)
    )
    prepare(client)
    # Learn the topology now, once: many first calls at once on a client that has not would each
    # start learning it.
    await client.initialize()
    return client


def _new_sync(url: str, cluster: bool, read_from_replicas: bool) -> SyncClient:
    if is_sentinel(url):
        return _sentinel_master(url)
    if cluster or _is_cluster.get(url):
        return _sync_cluster(url, read_from_replicas)
    pool = _BlockingPool.from_url(url, **_pool(False))
    _pack_sync(pool)
    if pool.connection_kwargs.get("protocol") in (None, 2, "2"):
        # RESP3's pending pushes (redis-py's maintenance notices) are read at the checkout poll
        pool.connection_class = mixed_in(FreshCheckout, pool.connection_class)
    client = redis.Redis.from_pool(pool)
    if url not in _is_cluster:
        try:
            _is_cluster[url] = _cluster_enabled(client.info("cluster"))
        except ResponseError:  # INFO refused (a least-privilege ACL user): a plain server
            _is_cluster[url] = False
        if _is_cluster[url]:
            client.close()
            return _sync_cluster(url, read_from_replicas)
    return client


async def _new_async(
    url: str, cluster: bool, read_from_replicas: bool, companions: list[AsyncClient]
) -> AsyncClient:
    """A new client; clients it leans on and that must be closed with it go to ``companions``."""
    if is_sentinel(url):
        master, sentinels = await _async_sentinel_master(url)
        companions.extend(sentinels)
        return master
    if cluster or _is_cluster.get(url):
        return await _async_cluster(url, read_from_replicas)
    pool = _AsyncBlockingPool.from_url(url, **_pool(True))
    pool.connection_class = _packing(pool.connection_class)
    client = redis.asyncio.Redis.from_pool(pool)
    if url not in _is_cluster:
        try:
            _is_cluster[url] = _cluster_enabled(await client.info("cluster"))
        except ResponseError:
            _is_cluster[url] = False
        if _is_cluster[url]:
            await client.aclose()
            return await _async_cluster(url, read_from_replicas)
    return client


# --- the shared clients -----------------------------------------------------------------------

# A URL, whether it was declared a cluster, and whether the cluster's replicas serve the reads.
Target = tuple[str, bool, bool]

# Guards the tables below, for a moment: never held while a client is built (that talks to the
# server: INFO, a Sentinel's sentinels, a cluster's topology), so one unreachable URL holds up no
# other. Threads that want the same new client wait for one build on that target's own lock.
_lock = threading.Lock()
_sync: dict[Target, SyncClient] = {}
_building: dict[Target, threading.Lock] = {}


@dataclass
class _LoopClients:
    """The clients of one event loop, and the async generator that closes them when the loop
    shuts down (asyncio.run and asyncio.Runner close every async generator before closing)."""

    clients: dict[Target, AsyncClient] = field(default_factory=dict)
    companions: list[AsyncClient] = field(default_factory=list)  # e.g. a Sentinel's sentinels
    closer: AsyncGenerator[None, None] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


# Keyed by the loop itself: the entries of closed loops are dropped whenever another loop asks.
_async: dict[asyncio.AbstractEventLoop, _LoopClients] = {}


def _target(url: str, cluster: bool, read_from_replicas: bool) -> Target:
    return (url, cluster, cluster and read_from_replicas)


def sync_client(url: str, cluster: bool = False, read_from_replicas: bool = False) -> SyncClient:
    """The process's client for ``url``, built on first use."""
    target = _target(url, cluster, read_from_replicas)
    client = _sync.get(target)
    if client is not None:
        return client
    with _lock:
        building = _building.setdefault(target, threading.Lock())
    with building:
        client = _sync.get(target)
        if client is None:
            try:
                client = _new_sync(url, cluster, read_from_replicas)
            except Exception as error:
                raise translate(error) from error
            with _lock:
                _sync[target] = client
                _building.pop(target, None)
    return client


def _start_afresh_after_fork() -> None:
    """In a child process (gunicorn, celery, multiprocessing's fork): the parent's clients share
    their sockets with the parent, and a lock another thread of the parent held at the fork stays
    held here forever. The child forgets both and builds its own clients. The parent's clients are
    not closed here: their sockets are the parent's too (redis-py's disconnect leaves a socket of
    another process alone, and the garbage collector closes the child's copies)."""
    global _lock
    _lock = threading.Lock()
    _sync.clear()
    _building.clear()
    _async.clear()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_start_afresh_after_fork)


async def _close_at_shutdown(entry: _LoopClients) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        for client in [*entry.clients.values(), *entry.companions]:
            with contextlib.suppress(Exception):
                await client.aclose()
        entry.clients.clear()
        entry.companions.clear()


def _loop_clients(loop: asyncio.AbstractEventLoop) -> _LoopClients:
    entry = _async.get(loop)
    if entry is None:
        with _lock:
            evicted = [_async.pop(other) for other in list(_async) if other.is_closed()]
            entry = _async.setdefault(loop, _LoopClients())
        for abandoned in evicted:
            _shut_down(abandoned)
    return entry


def _shut_down(entry: _LoopClients) -> None:
    """The clients of a loop closed without closing its async generators first (``loop.close()``
    without ``shutdown_asyncgens()``, as asyncio.run does it): they cannot be closed through their
    loop any more. Their sockets are shut down, so the server lets go of the connections now; the
    garbage collector closes the file descriptors."""
    for client in [*entry.clients.values(), *entry.companions]:
        for connection in _connections(client):
            writer = getattr(connection, "_writer", None)
            sock = writer.get_extra_info("socket") if writer is not None else None
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
    entry.clients.clear()
    entry.companions.clear()


def _connections(client: AsyncClient) -> list[Any]:
    """The connections an asyncio client holds: its pool's, or each cluster node's."""
    if isinstance(client, redis.asyncio.cluster.RedisCluster):
        nodes = client.nodes_manager.nodes_cache.values()
        return [c for node in nodes for c in getattr(node, "_connections", ())]
    pool = client.connection_pool
    return [
        *getattr(pool, "_available_connections", ()),
        *getattr(pool, "_in_use_connections", ()),
    ]


def close_clients() -> None:
    """Close the clients this process built from URLs for sync calls (at shutdown, when nothing
    uses them any more); a later call builds new ones. The asyncio clients are closed by
    :func:`aclose_clients`, or with their event loop."""
    with _lock:
        clients = list(_sync.values())
        _sync.clear()
    for client in clients:
        with contextlib.suppress(Exception):
            client.close()


async def aclose_clients() -> None:
    """Close the running event loop's clients, then (in a worker thread) the sync ones: at an
    application's shutdown, e.g. at the end of a FastAPI ``lifespan``. A later call builds new
    ones."""
    loop = asyncio.get_running_loop()
    with _lock:
        entry = _async.pop(loop, None)
    if entry is not None and entry.closer is not None:
        await entry.closer.aclose()  # closes the clients and their companions
    await asyncio.to_thread(close_clients)


async def async_client(
    url: str, cluster: bool = False, read_from_replicas: bool = False
) -> AsyncClient:
    """The running loop's client for ``url`` (a pool is bound to its loop), built on first use;
    closed when the loop shuts down."""
    entry = _loop_clients(asyncio.get_running_loop())
    target = _target(url, cluster, read_from_replicas)
    client = entry.clients.get(target)
    if client is not None:
        return client
    async with entry.lock:
        client = entry.clients.get(target)
        if client is None:
            try:
                client = await _new_async(url, cluster, read_from_replicas, entry.companions)
            except Exception as error:
                raise translate(error) from error
            entry.clients[target] = client
            if entry.closer is None:
                entry.closer = _close_at_shutdown(entry)
                await entry.closer.__anext__()  # now the loop knows it, and closes it at shutdown
    return client
