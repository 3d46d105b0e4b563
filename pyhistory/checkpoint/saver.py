"""RedisSaver: LangGraph's BaseCheckpointSaver on the pyhistory_checkpoint Functions library.

Sync and native asyncio methods on one class, as LangGraph's own savers have them. Every method is
one round trip to the thread's node (a list is one per page); see lua/pyhistory_checkpoint.lua
for what each call does on the server.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Generator, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any, NamedTuple

import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    DeltaChannelHistory,
)
from langgraph.checkpoint.serde.base import SerializerProtocol
from redis.crc import key_slot

from pyhistory import _clients, _core, _forks
from pyhistory._library import Call
from pyhistory.checkpoint import _calls
from pyhistory.errors import HistoryError, InvalidArgumentError
from pyhistory.functions import (
    AsyncClient,
    SyncClient,
    aload_library,
    arun,
    arun_plain,
    arun_write,
    load_library,
    plain_client,
    run,
    run_plain_first,
    run_write,
)
from pyhistory.telemetry import traced


class _Get(NamedTuple):
    """A get_tuple: the library's get, and, when this saver knows the namespace's newest
    checkpoint (``head``), the same as plain commands (``plain``, see ``_calls.newest``)."""

    thread_id: str
    ns: str
    call: Call
    known: dict[str, tuple[str, bytes]]
    newest: bool  # the config names no checkpoint id
    head: _calls.Head | None
    plain: list[tuple[Any, ...]] | None


_PRUNE_STRATEGIES = ("keep_latest", "delete")


def load_checkpoint_functions(client: SyncClient) -> str:
    """Load (or replace with identical code) the saver's library; on a cluster, on every primary.
    Returns its name, e.g. ``"pyhistory_checkpoint_v5"``. The saver also loads it lazily."""
    return load_library(client, _calls.LIBRARY)


async def aload_checkpoint_functions(client: AsyncClient) -> str:
    """The asyncio twin of :func:`load_checkpoint_functions`."""
    return await aload_library(client, _calls.LIBRARY)


def _config_thread(saver: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    config = args[0] if args else kwargs.get("config")
    return (config or {}).get("configurable", {}).get("thread_id")


def _thread_arg(saver: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return args[0] if args else kwargs.get("thread_id", kwargs.get("source_thread_id"))


class RedisSaver(BaseCheckpointSaver[str]):
    """LangGraph checkpoints in Redis (or Valkey, or a Redis Cluster), no modules needed.

    Each thread is two keys sharing one hash tag, ``<key_prefix>{t:<thread id>}:data`` and
    ``...:index``: every operation is one atomic Functions call on the thread's node, and nothing
    ever scans the keyspace. Sync and asyncio methods alike (asyncio natively, on
    ``redis.asyncio``).

    Args:
        url: the server, used when no client is given. Savers built from the same URL share one
            connection pool per process (and per event loop for asyncio).
        key_prefix: the start of every key (no braces: the thread id makes the hash tag).
        ttl: seconds (int or ``timedelta``) until an idle thread expires, both keys together.
            Every write sets it again and, unless ``refresh_ttl_on_read`` is False, so does every
            ``get_tuple`` (sliding expiry). None: threads never expire.
        refresh_ttl_on_read: whether ``get_tuple`` also refreshes the TTL (default True).
        keep_last: keep only the newest N checkpoints per thread and namespace, trimmed inside
            a ``put`` (see ``trim_every``; older ones go with their pending writes and the values
            only they used), except those a kept checkpoint's ``DeltaChannel`` values are
            rebuilt from and those with pending writes no child checkpoint has applied yet (an
            interrupt waiting for its resume). None: keep all (what LangGraph's time travel
            needs).
        max_age: seconds (or ``timedelta``): a ``put`` (see ``trim_every``) also removes the
            checkpoints of its namespace made longer ago than this (by their uuid6 ids and this
            process's clock), with the same exceptions, and never the newest. None: no age
            limit.
        max_bytes: each ``put`` also removes the oldest checkpoints of its namespace while the
            thread holds more than this many bytes (checkpoints, metadata and the values they
            name, as stored; pending writes are not counted), with the same exceptions, and
            never the newest. Counted by the writes of savers with retention only. None: no limit.
        trim_every: with keep_last or max_age (and no max_bytes), apply them on this saver's
            first put to a thread's namespace and then on every ``trim_every``-th put to it, so
            that one trim removes several checkpoints at once (a namespace holds at most
            ``keep_last + trim_every - 1`` checkpoints that retention may remove, per saver
            writing it). None: ``max(1, keep_last // 2)`` (1 with max_age alone); 1: every put.
            With max_bytes every put applies retention.
        value_cache_bytes: the most bytes of values (the serializer's output) this saver keeps
            of the newest versions it wrote or read, per thread and namespace (least recently
            used threads go first), so that ``get_tuple`` of a thread this process just wrote
            brings back only what changed. Values are decoded anew on every read. A quarter as
            much again bounds the DeltaChannel walks it holds (the newest per thread, namespace
            and channels), so that a step's walk reads only the ancestors added since the last
            one, once the server has checked that the ones held are unchanged. 0: off.
        redis_client: a redis-py client (``redis.Redis`` or ``redis.cluster.RedisCluster``). Without
            ``async_redis_client`` the asyncio methods run it in a worker thread.
        async_redis_client: a ``redis.asyncio`` client (or asyncio ``RedisCluster``).
        cluster: ``url`` names a node of a Redis Cluster.
        wait_for_replicas: after each write, wait until this many replicas acknowledged it
            (``WAIT``, pipelined: still one round trip), else raise ``ReplicationError``.
        wait_timeout_ms: how long a write waits for its replicas.
        serde: LangGraph's serializer (default: ``JsonPlusSerializer``).
    """

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        key_prefix: str = "checkpoint:",
        ttl: int | timedelta | None = None,
        refresh_ttl_on_read: bool = True,
        keep_last: int | None = None,
        max_age: float | timedelta | None = None,
        max_bytes: int | None = None,
        trim_every: int | None = None,
        value_cache_bytes: int = 32 * 1024 * 1024,
        redis_client: SyncClient | None = None,
        async_redis_client: AsyncClient | None = None,
        cluster: bool = False,
        wait_for_replicas: int = 0,
        wait_timeout_ms: int = 1000,
        serde: SerializerProtocol | None = None,
    ) -> None:
        super().__init__(serde=serde)
        self.url = url
        self.key_prefix = _calls.check_key_prefix(key_prefix)
        self._ttl = _core.check_ttl(ttl)
        self.refresh_ttl_on_read = refresh_ttl_on_read
        self._keep_last = _calls.check_keep_last(keep_last)
        self._max_age = _calls.check_max_age(max_age)
        self._max_bytes = _calls.check_max_bytes(max_bytes)
        self._trim_every = _calls.check_trim_every(trim_every, self._keep_last)
        # Puts this saver made to a (thread, namespace) since its last trim there.
        self._since_trim: OrderedDict[tuple[str, str], int] = OrderedDict()
        if isinstance(value_cache_bytes, bool) or not isinstance(value_cache_bytes, int):
            raise InvalidArgumentError(
                f"value_cache_bytes must be an int, got {value_cache_bytes!r}"
            )
        self._values = _calls.ValueCache(max(0, value_cache_bytes))
        self._walks = _calls.WalkCache(max(0, value_cache_bytes) // 4)
        # per-call budgets of copy/export and delta (the library's most; tests lower them)
        self._copy_budget = _calls.COPY_BUDGET
        self._delta_budget = _calls.DELTA_BUDGET
        # Write fencing: the epoch this saver claimed, per thread (claim_write_ownership).
        self._epochs: dict[str, int] = {}
        # Where the DeltaChannels of the checkpoints this saver wrote with plain commands are
        # rebuilt from, by (thread, namespace, id): a child's put needs its parent's.
        self._holders: OrderedDict[tuple[str, str, str], dict[str, str]] = OrderedDict()
        # (run id, thread id) pairs this saver put into the index of runs: registered once.
        self._runs: OrderedDict[tuple[str, str], None] = OrderedDict()
        # The newest checkpoint per (thread, namespace) as this saver last wrote or read it: a
        # get of the newest then reads it with plain commands, checking that it still is.
        self._heads: OrderedDict[tuple[str, str], _calls.Head] = OrderedDict()
        self._heads_lock = _forks.lock(self, "_heads_lock")
        self.cluster = cluster
        self.wait_for_replicas, self.wait_timeout_ms = _core.check_replicas(
            wait_for_replicas, wait_timeout_ms
        )
        if (
            self.wait_for_replicas
            and isinstance(async_redis_client, redis.asyncio.cluster.RedisCluster)
            and redis_client is None
        ):
            raise InvalidArgumentError(
                "wait_for_replicas on a cluster needs a sync RedisCluster as redis_client (the "
                "a* methods then run durable writes in a thread)"
            )
        self._redis_client = redis_client
        self._async_redis_client = async_redis_client

    @property
    def ttl(self) -> int | None:
        return self._ttl or None

    @property
    def keep_last(self) -> int | None:
        return self._keep_last or None

    def keys(self, thread_id: str) -> tuple[str, str]:
        """The thread's two keys: its data hash and its index sorted set."""
        return _calls.keys(self.key_prefix, _calls.thread_id_of(thread_id))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(url={self.url!r}, key_prefix={self.key_prefix!r}, "
            f"ttl={self.ttl!r}, keep_last={self.keep_last!r})"
        )

    # --- clients -------------------------------------------------------------------------------

    @property
    def redis_client(self) -> SyncClient:
        """The sync client in use: the one given, or the shared one for ``url``."""
        if self._redis_client is not None:
            return self._redis_client
        if self._async_redis_client is not None:
            raise HistoryError(
                "this saver was given only an async_redis_client: use the a* methods (aget_tuple, "
                "aput, ...) or also pass redis_client"
            )
        return _clients.sync_client(self.url, self.cluster)

    async def _async_client(self) -> AsyncClient | None:
        client: AsyncClient | None
        if self._async_redis_client is not None:
            client = self._async_redis_client
        elif self._redis_client is not None:
            return None
        else:
            client = await _clients.async_client(self.url, self.cluster)
        if isinstance(client, redis.asyncio.cluster.RedisCluster):
            # Many first calls at once on a cluster client that has not loaded its topology yet
            # break inside redis-py; initialize() does that once (and is a no-op after).
            await client.initialize()
        return client

    @traced("pyhistory.checkpoint.setup")
    def setup(self) -> None:
        """Load the library now (it is otherwise loaded on first use)."""
        load_library(self.redis_client, _calls.LIBRARY)

    @traced("pyhistory.checkpoint.setup")
    async def asetup(self) -> None:
        client = await self._async_client()
        if client is None:
            await asyncio.to_thread(self.setup)
        else:
            await aload_library(client, _calls.LIBRARY)

    def _read(self, call: Call) -> Any:
        return run(self.redis_client, call)

    async def _aread(self, call: Call) -> Any:
        client = await self._async_client()
        if client is None:
            return await asyncio.to_thread(self._read, call)
        return await arun(client, call)

    def _write(self, call: Call) -> Any:
        return run_write(self.redis_client, call, self.wait_for_replicas, self.wait_timeout_ms)

    async def _awrite(self, call: Call) -> Any:
        client = await self._async_client()
        return await arun_write(
            client, call, self.wait_for_replicas, self.wait_timeout_ms, self._write
        )

    # --- get_tuple -----------------------------------------------------------------------------

    def _get_call(self, config: RunnableConfig) -> _Get:
        thread_id, ns = _calls.thread_of(config), _calls.namespace_of(config)
        refresh = self._ttl if self.refresh_ttl_on_read else 0
        known = self._values.known(thread_id, ns)
        keys = self.keys(thread_id)
        call = _calls.get(keys, config, refresh, known)
        newest = not _calls.checkpoint_of(config)
        head = self._head(thread_id, ns) if newest else None
        plain = None
        if head is not None and not head.pending:
            plain = _calls.newest(keys, ns, head, known, refresh)
        return _Get(thread_id, ns, call, known, newest, head, plain)

    def _found(self, get: _Get, reply: Any, by_library: bool) -> CheckpointTuple | None:
        """The tuple a get's reply holds; the newest one the library found becomes the head."""
        if reply is None:
            return None
        found = _calls.checkpoint_tuple(self.serde, get.thread_id, reply, get.known, self._values)
        if by_library and get.newest:
            parent = found.parent_config
            self._headed(
                get.thread_id,
                get.ns,
                _calls.head_of(
                    found.checkpoint["id"],
                    parent["configurable"]["checkpoint_id"] if parent else "",
                    found.checkpoint["channel_versions"],
                    bool(found.pending_writes),
                ),
            )
        return found

    def _head(self, thread_id: str, ns: str) -> _calls.Head | None:
        with self._heads_lock:
            head = self._heads.get((thread_id, ns))
            if head is not None:
                self._heads.move_to_end((thread_id, ns))
            return head

    def _headed(self, thread_id: str, ns: str, head: _calls.Head) -> None:
        """Remember the newest checkpoint of a namespace, as this saver wrote or read it."""
        with self._heads_lock:
            self._heads[(thread_id, ns)] = head
            self._heads.move_to_end((thread_id, ns))
            while len(self._heads) > _HEADS_REMEMBERED:
                self._heads.popitem(last=False)

    def _plain_found(
        self, get: _Get, replies: list[Any] | None, reply: Any
    ) -> tuple[bool, CheckpointTuple | None]:
        """What a plain get found: (True, the tuple), or (False, None) when its guess of the
        newest did not hold and the library's get is to follow."""
        if replies is None:  # its connection failed: the library's get ran in its place
            return True, self._found(get, reply, by_library=True)
        assert get.head is not None
        entry = _calls.newest_entry(get.ns, get.head, get.known, replies)
        if entry is None:
            return False, None
        return True, self._found(get, entry, by_library=False)

    @traced("pyhistory.checkpoint.get_tuple", thread=_config_thread)
    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint ``config`` names (its newest when it names no ``checkpoint_id``), with
        its channel values and pending writes, in one round trip; None when there is none.

        The newest checkpoint of a namespace this saver wrote or read last is read with plain
        commands in one MULTI/EXEC (no value crosses into Lua) that also checks that it still is
        the newest and has no pending writes; when it is not, the library's get follows (a
        second round trip)."""
        get = self._get_call(config)
        if get.plain is not None:
            client = self.redis_client
            if plain_client(client):
                done, found = self._plain_found(get, *run_plain_first(client, get.plain, get.call))
                if done:
                    return found
        # Sent as a read even when it refreshes the TTL: a TTL is not worth a WAIT.
        return self._found(get, self._read(get.call), by_library=True)

    @traced("pyhistory.checkpoint.get_tuple", thread=_config_thread)
    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        get = self._get_call(config)
        if get.plain is not None:
            client = await self._async_client()
            if client is not None and plain_client(client):
                replies, reply = await arun_plain(client, get.plain, get.call)
                done, found = self._plain_found(get, replies, reply)
                if done:
                    return found
        return self._found(get, await self._aread(get.call), by_library=True)

    # --- list ----------------------------------------------------------------------------------

    def _list_start(
        self,
        config: RunnableConfig | None,
        filter: dict[str, Any] | None,
        limit: int | None,
    ) -> tuple[str, tuple[str, str], list[str], int | None]:
        if config is None:
            raise InvalidArgumentError(
                "list() needs a config with a thread_id: the saver keeps no index of all threads "
                "(that would be one key every write goes through)"
            )
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
            raise InvalidArgumentError(f"limit must be None or an int, got {limit!r}")
        thread_id = _calls.thread_of(config)
        return thread_id, self.keys(thread_id), _calls.filter_pairs(filter), limit

    @traced("pyhistory.checkpoint.list", thread=_config_thread)
    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        """A thread's checkpoints, newest first: of one namespace when ``config`` names one
        (``checkpoint_ns``), else of all. ``filter`` (top-level metadata keys), ``before`` and
        ``limit`` apply on the server; pages of up to 32 checkpoints, one round trip each."""
        thread_id, thread_keys, filters, left = self._list_start(config, filter, limit)
        assert config is not None
        cursor = ""
        while left is None or left > 0:
            page = _calls.LIST_PAGE if left is None else min(left, _calls.LIST_PAGE)
            call = _calls.list_page(thread_keys, config, before, filters, cursor, page)
            cursor, tuples = _calls.list_reply(self.serde, thread_id, self._read(call))
            yield from tuples
            if left is not None:
                left -= len(tuples)
            if not cursor:
                return

    @traced("pyhistory.checkpoint.list", thread=_config_thread)
    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        thread_id, thread_keys, filters, left = self._list_start(config, filter, limit)
        assert config is not None
        cursor = ""
        while left is None or left > 0:
            page = _calls.LIST_PAGE if left is None else min(left, _calls.LIST_PAGE)
            call = _calls.list_page(thread_keys, config, before, filters, cursor, page)
            cursor, tuples = _calls.list_reply(self.serde, thread_id, await self._aread(call))
            for item in tuples:
                yield item
            if left is not None:
                left -= len(tuples)
            if not cursor:
                return

    # --- put -----------------------------------------------------------------------------------

    def _put_call(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> tuple[Call, RunnableConfig, Call | None, tuple[str, str], _calls.Head]:
        """The put, the config it returns, on a cluster the run's registration to send before it
        (elsewhere it rides in the put's own transaction), (run id, thread id), and the
        checkpoint as its namespace's newest."""
        thread_id = _calls.thread_of(config)
        thread_keys = self.keys(thread_id)
        retention = (
            self._keep_last,
            _calls.age_cut(self._max_age, time.time_ns()),
            self._max_bytes,
        )
        ns, parent = _calls.namespace_of(config), _calls.checkpoint_of(config)
        trim = self._trim_due(thread_id, ns)
        call, stored, run_id, holders, head = _calls.put(
            self.serde,
            thread_keys,
            self._ttl,
            retention,
            self._epoch(thread_id),
            config,
            checkpoint,
            metadata,
            new_versions,
            self._holders.get((thread_id, ns, parent)) if parent else {},
            trim,
        )
        if holders is not None:
            self._holders[(thread_id, ns, stored["configurable"]["checkpoint_id"])] = holders
            while len(self._holders) > _RUNS_REMEMBERED:
                self._holders.popitem(last=False)
        pair = (run_id, thread_id)
        if not run_id or pair in self._runs:
            return call, stored, None, pair, head
        register = _calls.register_run(self.key_prefix, run_id, thread_id, self._ttl)
        if self._on_cluster():
            return call, stored, _calls.alone(register), pair, head
        again = call.again and replace(call.again, before=(*call.again.before, *register))
        call = replace(call, before=(*call.before, *register), again=again)
        return call, stored, None, pair, head

    def _trim_due(self, thread_id: str, ns: str) -> bool:
        """Whether this put applies keep_last/max_age: on the first put to a namespace this saver
        remembers no trim of, then every trim_every-th."""
        if self._trim_every == 1:
            return True
        key = (thread_id, ns)
        done = self._since_trim.get(key)
        if done is None or done + 1 >= self._trim_every:
            self._since_trim[key] = 0
            self._since_trim.move_to_end(key)
            while len(self._since_trim) > _RUNS_REMEMBERED:
                self._since_trim.popitem(last=False)
            return True
        self._since_trim[key] = done + 1
        return False

    def _hold(self, stored: RunnableConfig, call: Call) -> None:
        """Keep the values a put wrote (its HSET's fields) for the next get of the thread."""
        if not call.before or call.before[0][0] != "HSET":
            return
        configurable = stored["configurable"]
        fields = call.before[0][2:]
        self._values.hold(
            configurable["thread_id"],
            configurable["checkpoint_ns"],
            (
                (*_calls.channel_version_of(fields[i]), fields[i + 1])
                for i in range(0, len(fields), 2)
                if fields[i].startswith("b\0")
            ),
        )

    def _pending_at(self, config: RunnableConfig) -> None:
        """A head with pending writes is read through the library (its get brings them)."""
        thread_id, ns = _calls.thread_of(config), _calls.namespace_of(config)
        head = self._head(thread_id, ns)
        if head is not None and head.checkpoint_id == _calls.checkpoint_of(config):
            self._headed(thread_id, ns, replace(head, pending=True))

    def _registered(self, pair: tuple[str, str]) -> None:
        """Remember that this put's run is in the index of runs."""
        if pair[0]:
            self._runs[pair] = None
            while len(self._runs) > _RUNS_REMEMBERED:
                self._runs.popitem(last=False)

    def _on_cluster(self) -> bool:
        client: object = self._async_redis_client or self._redis_client
        if client is None:
            return self.cluster
        return isinstance(client, (redis.cluster.RedisCluster, redis.asyncio.cluster.RedisCluster))

    def _epoch(self, thread_id: str) -> str:
        epoch = self._epochs.get(thread_id)
        return "" if epoch is None else str(epoch)

    @traced("pyhistory.checkpoint.put", thread=_config_thread)
    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Store a checkpoint, the values of the channels it changed and its index entry, apply
        retention (``keep_last``, ``max_age``) and set the TTL: one MULTI/EXEC, the values in a
        plain HSET and one function call that checks, indexes, retains and expires. With a
        claimed epoch (:meth:`claim_write_ownership`) a superseded one raises
        ``StaleOwnerError`` and nothing is stored. On a cluster the first checkpoint of a run
        in a thread also registers the run (one SADD on the run's node) for delete_for_runs."""
        call, stored, register, pair, head = self._put_call(
            config, checkpoint, metadata, new_versions
        )
        if register is not None:
            self._write(register)
        self._write(call)
        self._registered(pair)
        self._hold(stored, call)
        self._headed(pair[1], _calls.namespace_of(config), head)
        return stored

    @traced("pyhistory.checkpoint.put", thread=_config_thread)
    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        call, stored, register, pair, head = self._put_call(
            config, checkpoint, metadata, new_versions
        )
        if register is not None:
            await self._awrite(register)
        await self._awrite(call)
        self._registered(pair)
        self._hold(stored, call)
        self._headed(pair[1], _calls.namespace_of(config), head)
        return stored

    def _writes_call(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str,
    ) -> Call | None:
        thread_id = _calls.thread_of(config)
        return _calls.put_writes(
            self.serde,
            self.keys(thread_id),
            self._ttl,
            self._epoch(thread_id),
            config,
            writes,
            task_id,
            task_path,
        )

    @traced("pyhistory.checkpoint.put_writes", thread=_config_thread)
    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Store a task's writes against the checkpoint ``config`` names, in one atomic call: a
        write already stored for (task_id, index) stays as it is (so a retried call whose first
        attempt was applied stores nothing twice), special ones (errors, interrupts, ...)
        replace theirs. Fenced as :meth:`put` is."""
        call = self._writes_call(config, writes, task_id, task_path)
        if call is not None:
            self._write(call)
            self._pending_at(config)

    @traced("pyhistory.checkpoint.put_writes", thread=_config_thread)
    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        call = self._writes_call(config, writes, task_id, task_path)
        if call is not None:
            await self._awrite(call)
            self._pending_at(config)

    # --- delete, prune, copy -------------------------------------------------------------------

    @traced("pyhistory.checkpoint.delete_thread", thread=_thread_arg)
    def delete_thread(self, thread_id: str) -> None:
        """Delete everything of a thread: one DEL of its two keys."""
        self._write(_calls.delete(self.keys(thread_id)))

    @traced("pyhistory.checkpoint.delete_thread", thread=_thread_arg)
    async def adelete_thread(self, thread_id: str) -> None:
        await self._awrite(_calls.delete(self.keys(thread_id)))

    def _run_ids(self, run_ids: Sequence[str]) -> Sequence[str]:
        if isinstance(run_ids, str):
            raise InvalidArgumentError("run_ids must be a sequence of run ids, not a str")
        return [_calls.run_id_of(run_id) for run_id in dict.fromkeys(run_ids)]

    @traced("pyhistory.checkpoint.delete_for_runs")
    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete every checkpoint the given runs wrote (all threads, all namespaces), with its
        pending writes and the values no remaining checkpoint names.

        Each put of a run registers its thread once in the run's SET of threads (a key of its
        own, with the saver's TTL, counted from the run's first checkpoint in the thread). Per
        run this is one SMEMBERS, one call per thread the run wrote to (on that thread's node,
        removing at most MAX_TRIM checkpoints per call, repeated while there are more), and one
        DEL: no call spans two slots. As LangGraph warns, deleting the run that holds a
        DeltaChannel's snapshot or writes breaks the rebuild of later checkpoints."""
        for run_id in self._run_ids(run_ids):
            key = _calls.run_key(self.key_prefix, run_id)
            for thread in self._read(Call("SMEMBERS", (key,), key)):
                call = _calls.delete_run(self.keys(_calls.text(thread)), run_id)
                while self._write(call) >= _MAX_TRIM:
                    pass
            self._write(Call("DEL", (key,), key))
            self._runs = OrderedDict((pair, None) for pair in self._runs if pair[0] != run_id)

    @traced("pyhistory.checkpoint.delete_for_runs")
    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        for run_id in self._run_ids(run_ids):
            key = _calls.run_key(self.key_prefix, run_id)
            for thread in await self._aread(Call("SMEMBERS", (key,), key)):
                call = _calls.delete_run(self.keys(_calls.text(thread)), run_id)
                while await self._awrite(call) >= _MAX_TRIM:
                    pass
            await self._awrite(Call("DEL", (key,), key))
            self._runs = OrderedDict((pair, None) for pair in self._runs if pair[0] != run_id)

    # --- write fencing -------------------------------------------------------------------------

    @traced("pyhistory.checkpoint.claim_write_ownership", thread=_thread_arg)
    def claim_write_ownership(self, thread_id: str) -> int:
        """Take write ownership of a thread (opt-in write fencing): a new epoch, one above the
        last, which this saver's puts and put_writes on the thread carry from now on. Every
        other writer's (an earlier epoch, or none) is refused atomically inside its call with
        ``StaleOwnerError`` and writes nothing. Call it when a worker starts (or resumes) a
        thread; the epoch ends when another worker claims the thread, or when it is deleted or
        expires. One call; returns the epoch."""
        thread = _calls.thread_id_of(thread_id)
        epoch = int(self._write(_calls.claim(self.keys(thread), self._ttl)))
        self._epochs[thread] = epoch
        return epoch

    @traced("pyhistory.checkpoint.claim_write_ownership", thread=_thread_arg)
    async def aclaim_write_ownership(self, thread_id: str) -> int:
        thread = _calls.thread_id_of(thread_id)
        epoch = int(await self._awrite(_calls.claim(self.keys(thread), self._ttl)))
        self._epochs[thread] = epoch
        return epoch

    def release_write_ownership(self, thread_id: str) -> None:
        """Stop carrying an epoch for the thread (no round trip). The thread stays claimed:
        this saver's next writes to it are refused until it claims it again."""
        self._epochs.pop(_calls.thread_id_of(thread_id), None)

    def write_epoch(self, thread_id: str) -> int | None:
        """The epoch this saver holds for a thread, or None."""
        return self._epochs.get(_calls.thread_id_of(thread_id))

    def _prune_keys(self, thread_ids: Sequence[str], strategy: str) -> Sequence[tuple[str, str]]:
        if strategy not in _PRUNE_STRATEGIES:
            raise InvalidArgumentError(
                f"strategy must be one of {_PRUNE_STRATEGIES}, got {strategy!r}"
            )
        if isinstance(thread_ids, str):
            raise InvalidArgumentError("thread_ids must be a sequence of thread ids, not a str")
        return [self.keys(thread_id) for thread_id in thread_ids]

    @traced("pyhistory.checkpoint.prune")
    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """``"keep_latest"``: keep the newest checkpoint of each namespace of each thread (and
        the ones its DeltaChannels are rebuilt from); ``"delete"``: delete the threads. One call
        per thread (threads live on different nodes of a cluster); a thread with more than 100
        namespaces or 1,000 checkpoints to remove takes a call per such share (bounded work per
        call, with a cursor)."""
        for thread_keys in self._prune_keys(thread_ids, strategy):
            if strategy == "delete":
                self._write(_calls.delete(thread_keys))
                continue
            cursor = ""
            while True:
                _, cursor = self._write(_calls.prune(thread_keys, self._ttl, cursor))
                if not cursor:
                    break
                cursor = _calls.text(cursor)

    @traced("pyhistory.checkpoint.prune")
    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        for thread_keys in self._prune_keys(thread_ids, strategy):
            if strategy == "delete":
                await self._awrite(_calls.delete(thread_keys))
                continue
            cursor = ""
            while True:
                _, cursor = await self._awrite(_calls.prune(thread_keys, self._ttl, cursor))
                if not cursor:
                    break
                cursor = _calls.text(cursor)

    def _copy_plan(
        self, client: object, source_thread_id: str, target_thread_id: str
    ) -> tuple[tuple[str, str], tuple[str, str], bool]:
        source, target = self.keys(source_thread_id), self.keys(target_thread_id)
        one_node = not isinstance(
            client, (redis.cluster.RedisCluster, redis.asyncio.cluster.RedisCluster)
        ) or key_slot(source[0].encode()) == key_slot(target[0].encode())
        return source, target, one_node

    @traced("pyhistory.checkpoint.copy_thread", thread=_thread_arg)
    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Merge every checkpoint, value and pending write of one thread into another, a page
        (about 1,000 fields or index members) per call: copies on one node when both threads
        live on one node, else exports from the source's node and imports on the target's. The
        data goes before the index, so a reader of the target sees only complete checkpoints."""
        source, target, one_node = self._copy_plan(
            self.redis_client, source_thread_id, target_thread_id
        )
        cursor = ""
        while True:
            if one_node:
                cursor = _calls.text(
                    self._write(_calls.copy(source, target, self._ttl, cursor, self._copy_budget))
                )
            else:
                reply = self._read(_calls.export(source, cursor, self._copy_budget))
                cursor, fields, members = _calls.text(reply[0]), reply[1], reply[2]
                if fields or members:
                    self._write(_calls.import_(target, self._ttl, fields, members))
            if not cursor:
                return

    @traced("pyhistory.checkpoint.copy_thread", thread=_thread_arg)
    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        client = await self._async_client()
        if client is None:
            await asyncio.to_thread(self.copy_thread, source_thread_id, target_thread_id)
            return
        source, target, one_node = self._copy_plan(client, source_thread_id, target_thread_id)
        cursor = ""
        while True:
            if one_node:
                call = _calls.copy(source, target, self._ttl, cursor, self._copy_budget)
                cursor = _calls.text(await self._awrite(call))
            else:
                reply = await self._aread(_calls.export(source, cursor, self._copy_budget))
                cursor, fields, members = _calls.text(reply[0]), reply[1], reply[2]
                if fields or members:
                    await self._awrite(_calls.import_(target, self._ttl, fields, members))
            if not cursor:
                return

    # --- DeltaChannel --------------------------------------------------------------------------

    def _delta_calls(
        self, config: RunnableConfig, channels: Sequence[str]
    ) -> Generator[Call | dict[str, DeltaChannelHistory], Any, None]:
        """The walk as a generator shared by sync and asyncio: it yields each call to send (and
        is sent its reply), then the result."""
        thread_id, ns = _calls.thread_of(config), _calls.namespace_of(config)
        known = self._values.known(thread_id, ns)
        names = _calls.unique(channels)
        key = (thread_id, ns, tuple(names))
        walk = _calls.DeltaWalk(names, self._walks.get(key))
        while True:
            asked = walk.pending()
            call = _calls.delta(
                self.keys(thread_id),
                config,
                asked,
                known,
                walk.cursor,
                self._delta_budget,
                walk.offered(),
            )
            reply = yield call
            if walk.add(asked, reply):
                break
        self._walks.hold(key, walk.finished(known))
        yield walk.result(self.serde, known)

    @traced("pyhistory.checkpoint.get_delta_channel_history", thread=_config_thread)
    def get_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        """What each ``DeltaChannel`` is rebuilt from: the writes along the checkpoint's
        ancestors and the nearest stored value, walked on the server (at most 250 ancestors
        per call; a stored value this saver holds already is not sent again, and the ancestors
        of its last walk of the thread are checked on the server rather than read again)."""
        if not channels:
            return {}
        steps = self._delta_calls(config, channels)
        step = next(steps)
        while isinstance(step, Call):
            step = steps.send(self._read(step))
        return step

    @traced("pyhistory.checkpoint.get_delta_channel_history", thread=_config_thread)
    async def aget_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        if not channels:
            return {}
        steps = self._delta_calls(config, channels)
        step = next(steps)
        while isinstance(step, Call):
            step = steps.send(await self._aread(step))
        return step

    def get_next_version(self, current: str | None, channel: None) -> str:
        return _calls.next_version(current)


_MAX_TRIM = _calls.MAX_TRIM
# How many (run, thread) registrations a saver remembers, so that it sends each once.
_RUNS_REMEMBERED = 4096
# How many (thread, namespace) newest checkpoints a saver remembers for its plain gets.
_HEADS_REMEMBERED = 4096
