"""MessageStore: one session's messages in one Redis LIST, on the pyhistory Functions library.

The core of every adapter (LangChain's classic chat history, the agent middleware). It imports no
deprecated LangChain class: only messages, which LangChain keeps.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

import redis.asyncio.cluster
import redis.cluster
from langchain_core.messages import BaseMessage

from pyhistory import _bounded, _clients, _core, _expiry, _refusals, _tokens
from pyhistory._bounded import EditResult, OldestMessages
from pyhistory._library import Call
from pyhistory._tokens import TokenCounter
from pyhistory.errors import (
    HistoryError,
    InvalidArgumentError,
    WrongTypeError,
    may_have_been_applied,
    translate,
)
from pyhistory.functions import (
    AsyncClient,
    SyncClient,
    aload_library,
    arun,
    arun_pair,
    arun_plain,
    arun_reads,
    arun_write,
    load_library,
    plain_client,
    run,
    run_pair,
    run_plain_first,
    run_read,
    run_reads,
    run_write,
)
from pyhistory.telemetry import traced


def load_functions(client: SyncClient) -> str:
    """Load (or replace with identical code) the history's library; on a cluster, on every
    primary. Call it at start-up or deploy time; histories also load it lazily. Returns the
    library's name, e.g. ``"pyhistory_v2"``."""
    return load_library(client, _core.HISTORY)


async def aload_functions(client: AsyncClient) -> str:
    """The asyncio twin of :func:`load_functions`."""
    return await aload_library(client, _core.HISTORY)


def _session(store: MessageStore, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    return store.session_id


def _messages(store: MessageStore, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return args[0] if args else kwargs.get("messages")


class MessageStore:
    """One session's messages, in one Redis LIST, laid out as langchain_community lays it out.

    Every operation is one round trip; an append (any batch) is atomic with its trim and its TTL.
    Construction does no I/O: clients are shared per URL (per event loop for asyncio), so a store
    per request costs nothing on the network.

    Args:
        session_id: the conversation's id; the key is ``key_prefix + session_id``.
        url: the server, used when no client is given. Histories built from the same URL share one
            connection pool per process (and per event loop for asyncio).
        key_prefix: prepended to the session id to form the key.
        ttl: seconds (an int, or a ``timedelta``) until an idle session expires; every append
            sets it again and, unless ``refresh_ttl_on_read`` is False, reads keep it sliding:
            after any read or append by this process the session lives at least
            ``ttl - ttl_refresh_interval`` seconds more. None or 0: the key's TTL is left alone.
        max_messages: keep only this many of the newest messages; older ones are dropped by the
            append that pushes them out. None: unbounded.
        window: how many of the newest messages a read returns. None: all that are stored.
        refresh_ttl_on_read: whether reads also keep the TTL sliding (default True).
        ttl_refresh_interval: how much of the TTL a session may lose before a read refreshes it
            (seconds, or a ``timedelta``). A read refreshes the TTL only when this process has
            not set it within that long; otherwise it is a plain read. Default: a tenth of
            ``ttl`` (a session lives at least 0.9 x ``ttl`` after any read or append); 0: every
            read refreshes it. :meth:`touch` always does.
        redis_client: a redis-py client (``redis.Redis`` or ``redis.cluster.RedisCluster``) to use
            instead of ``url``. Without ``async_redis_client``, the asyncio methods run this client
            in a worker thread.
        async_redis_client: a ``redis.asyncio`` client (or asyncio ``RedisCluster``).
        cluster: ``url`` names a node of a Redis Cluster (``RedisCluster.from_url``).
        read_from_replicas: reads go to replicas (a plain LRANGE) and accept their lag; they no
            longer refresh the TTL (replicas cannot write), appends still do. On a cluster built
            from ``url`` the cluster client routes them; on a standalone server, name the replica
            with ``replica_url`` or ``replica_client`` / ``async_replica_client``. (Reads through
            ``url`` or ``redis_client`` that reach a replica anyway stand, but the replica refuses
            their TTL refresh: that is logged as a warning on the ``pyhistory`` logger.)
        wait_for_replicas: after each write, wait until this many replicas acknowledged it
            (``WAIT``, pipelined with the write: still one round trip), else raise
            ``ReplicationError``. 0: do not wait.
        wait_timeout_ms: how long a write waits for its replicas (default 1000 ms).
        sessions_index: the key of a sessions index (a sorted set) this session is listed in,
            by its last append (:func:`pyhistory.list_sessions`): each append updates it in the
            same atomic call, and :meth:`clear` removes the session from it. The index and the
            session's key must hash to one Redis Cluster slot, on any server (share a hash tag:
            ``key_prefix="chat:{alice}:"`` with ``sessions_index="sessions:{alice}"``); else
            ``CrossSlotError``. None: no index (the default).
    """

    def __init__(
        self,
        session_id: str,
        url: str = "redis://localhost:6379/0",
        key_prefix: str = "message_store:",
        ttl: int | timedelta | None = None,
        *,
        max_messages: int | None = None,
        window: int | None = None,
        refresh_ttl_on_read: bool = True,
        ttl_refresh_interval: float | timedelta | None = None,
        redis_client: SyncClient | None = None,
        async_redis_client: AsyncClient | None = None,
        cluster: bool = False,
        read_from_replicas: bool = False,
        replica_url: str | None = None,
        replica_client: SyncClient | None = None,
        async_replica_client: AsyncClient | None = None,
        wait_for_replicas: int = 0,
        wait_timeout_ms: int = 1000,
        sessions_index: str | None = None,
    ) -> None:
        self._sessions_index: str | None = None
        self.session_id = session_id
        self.key_prefix = key_prefix
        self.url = url
        self.refresh_ttl_on_read = refresh_ttl_on_read
        self.ttl = ttl
        self.ttl_refresh_interval = ttl_refresh_interval
        self.max_messages = max_messages
        self.window = window
        self.cluster = cluster
        self.replica_url = replica_url
        has_replica = bool(replica_url or replica_client or async_replica_client)
        self.read_from_replicas = read_from_replicas or has_replica
        if (
            read_from_replicas
            and not (cluster or has_replica)
            and not _is_cluster(redis_client, async_redis_client)
        ):
            raise InvalidArgumentError(
                "read_from_replicas needs a cluster (cluster=True or a RedisCluster client) or a "
                "replica (replica_url, replica_client or async_replica_client)"
            )
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
        self.sessions_index = sessions_index
        self._redis_client = redis_client
        self._async_redis_client = async_redis_client
        self._replica_client = replica_client
        self._async_replica_client = async_replica_client

    # The settings are checked when set, here or later, so a bad value never reaches the server.
    @property
    def session_id(self) -> str:
        return self._session_id

    @session_id.setter
    def session_id(self, session_id: str) -> None:
        checked: str = _core.check_session_id(session_id)
        if self._sessions_index is not None:
            _bounded.check_index(self._sessions_index, self.key_prefix + checked)
        self._session_id: str = checked

    @property
    def key_prefix(self) -> str:
        return self._key_prefix

    @key_prefix.setter
    def key_prefix(self, key_prefix: str) -> None:
        checked: str = _core.check_key_prefix(key_prefix)
        if self._sessions_index is not None:
            _bounded.check_index(self._sessions_index, checked + self.session_id)
        self._key_prefix: str = checked

    @property
    def sessions_index(self) -> str | None:
        """The key of the sessions index this session is listed in, or None (see the class)."""
        return self._sessions_index

    @sessions_index.setter
    def sessions_index(self, index: str | None) -> None:
        self._sessions_index = _bounded.check_index(index, self.key)

    @property
    def ttl(self) -> int | None:
        return self._ttl or None

    @ttl.setter
    def ttl(self, ttl: int | timedelta | None) -> None:
        self._ttl = _core.check_ttl(ttl)
        if hasattr(self, "_interval_setting"):
            self.ttl_refresh_interval = self._interval_setting

    @property
    def ttl_refresh_interval(self) -> float:
        """Seconds of TTL a session may lose before a read refreshes it (see the class)."""
        return self._interval

    @ttl_refresh_interval.setter
    def ttl_refresh_interval(self, interval: float | timedelta | None) -> None:
        self._interval = _core.check_refresh_interval(interval, self._ttl)
        self._interval_setting = interval

    @property
    def max_messages(self) -> int | None:
        return self._max_messages or None

    @max_messages.setter
    def max_messages(self, max_messages: int | None) -> None:
        self._max_messages = _core.check_size("max_messages", max_messages)

    @property
    def window(self) -> int | None:
        return self._window or None

    @window.setter
    def window(self, window: int | None) -> None:
        self._window = _core.check_size("window", window)

    @property
    def key(self) -> str:
        """The session's Redis key: ``key_prefix + session_id``, as they are now."""
        return self._key_prefix + self._session_id

    def __bool__(self) -> bool:
        """Always true, as for langchain_community's history (``history or default`` keeps the
        history); ``len()`` is the number of stored messages and asks the server."""
        return True

    # --- clients -------------------------------------------------------------------------------

    @property
    def redis_client(self) -> SyncClient:
        """The sync client in use: the one given, or the shared one for ``url``."""
        if self._redis_client is not None:
            return self._redis_client
        if self._async_redis_client is not None:
            raise HistoryError(
                "this history was given only an async_redis_client: use the a* methods "
                "(aget_messages, aadd_messages, aclear) or also pass redis_client"
            )
        return _clients.sync_client(self.url, self.cluster, self.read_from_replicas)

    async def _async_client(self) -> AsyncClient | None:
        """The asyncio client in use, or None when only a sync client was given."""
        if self._async_redis_client is not None:
            return self._async_redis_client
        if self._redis_client is not None:
            return None
        return await _clients.async_client(self.url, self.cluster, self.read_from_replicas)

    def _read_client(self) -> SyncClient:
        if self._replica_client is not None:
            return self._replica_client
        if self.replica_url is not None:
            return _clients.sync_client(self.replica_url)
        return self.redis_client

    async def _async_read_client(self) -> AsyncClient | None:
        if self._async_replica_client is not None:
            return self._async_replica_client
        client = await self._async_client()
        if client is not None and self.replica_url is not None:
            return await _clients.async_client(self.replica_url)
        return client

    # --- calls ---------------------------------------------------------------------------------

    def _refresh_call(self, client: object) -> Call | None:
        """The TTL refresh that goes with a read: none without a TTL, from a replica, or when this
        process set the TTL recently enough (pyhistory._expiry)."""
        if (
            self._ttl
            and self.refresh_ttl_on_read
            and not self.read_from_replicas
            and _expiry.expiries(client).due(self.key, self._ttl, self._interval)
        ):
            return _core.touch(self.key, self._ttl)
        return None

    def _refreshed(self, client: object, sent_at: float, existed: Any = 1) -> None:
        """A command sent at ``sent_at`` set the session's TTL (when it existed)."""
        if self._ttl and existed:
            _expiry.expiries(client).refreshed(self.key, self._ttl, sent_at)

    def _read_refreshed(self, client: object, sent_at: float, reply: Any) -> None:
        """The refresh sent with a read at ``sent_at`` answered ``reply``: the key existed, or
        the server refused it (the read stands; pyhistory._refusals warns)."""
        if isinstance(reply, BaseException):
            _refusals.refused(client, self.key, reply)
        else:
            self._refreshed(client, sent_at, reply)

    def _append_call(
        self, messages: Iterable[BaseMessage] | BaseMessage, idempotency_key: str | None
    ) -> Call | None:
        """The append, with the batch id every retry of it carries (docs/exactly-once.md)."""
        batch_id = None if idempotency_key is None else _core.batch_id_for(idempotency_key)
        batch = [messages] if isinstance(messages, BaseMessage) else list(messages)
        encoded = _core.encode_batch(batch)
        if not encoded:
            return None
        if self._sessions_index is not None:
            return _bounded.append_indexed(
                self.key, self._sessions_index, encoded, self._max_messages, self._ttl, batch_id
            )
        return _core.append(self.key, encoded, self._max_messages, self._ttl, batch_id)

    def _touch_call(self) -> Call:
        if not self._ttl:
            raise HistoryError("touch() needs a history constructed with a ttl")
        return _core.touch(self.key, self._ttl)

    def _write(self, call: Call) -> Any:
        return run_write(self.redis_client, call, self.wait_for_replicas, self.wait_timeout_ms)

    def _found_list(self, client: object) -> None:
        """A read from ``client`` found the session holding a list or nothing."""
        if not self.read_from_replicas:
            _expiry.expiries(client).found_list(self.key)

    def _plain(self, client: object, call: Call, idempotency_key: str | None) -> bool:
        """Whether this append may be plain commands (pyhistory._core.plain_append): the server
        pays for a transaction about half of what it pays for a function. Not for a caller's
        idempotency key (its first attempt may be a retry too), a sessions index, a durable
        write, a cluster or a batch the library would refuse; only on a key last found holding a
        list or nothing."""
        return (
            idempotency_key is None
            and self._sessions_index is None  # the index is kept by the library's append
            and not self.wait_for_replicas
            and plain_client(client)
            and len(call.args) - 7 <= _core.MAX_BATCH
            and _expiry.expiries(client).takes_plain(self.key)
        )

    def _failed(self, client: object, error: HistoryError) -> None:
        if isinstance(error, WrongTypeError):
            _expiry.expiries(client).doubt(self.key)

    def _appended(self, client: object, call: Call, replies: list[Any] | None) -> None:
        """What an append (plain when ``replies`` are EXEC's) tells of the session's key."""
        known = _expiry.expiries(client)
        if replies is None:
            known.found_list(self.key)
            return
        try:
            _, trim_due = _core.plain_append_reply(call, replies)
        except Exception as error:
            known.doubt(self.key)
            raise translate(error) from error
        if trim_due:
            known.doubt(self.key)

    def _append(self, call: Call, idempotency_key: str | None) -> None:
        client = self.redis_client
        if self._plain(client, call, idempotency_key):
            replies, _ = run_plain_first(client, _core.plain_append(call), call)
        else:
            self._write(call)
            replies = None
        self._appended(client, call, replies)

    async def _aappend(self, call: Call, idempotency_key: str | None) -> None:
        client = await self._async_client()
        if client is not None and self._plain(client, call, idempotency_key):
            replies, _ = await arun_plain(client, _core.plain_append(call), call)
        else:
            await self._awrite(call)
            replies = None
        self._appended(self._expiry_client(client), call, replies)

    async def _awrite(self, call: Call) -> Any:
        client = await self._async_client()
        return await arun_write(
            client, call, self.wait_for_replicas, self.wait_timeout_ms, self._write
        )

    def _expiry_client(self, client: object | None) -> object:
        """The client whose server the session lives on, for what this process knows of its
        TTL: the asyncio client's work may run on the sync one (in a thread)."""
        return client if client is not None else self.redis_client

    # --- reads ---------------------------------------------------------------------------------

    @property
    @traced("pyhistory.read", session=_session)
    def messages(self) -> list[BaseMessage]:
        """The newest ``window`` messages (all when unset), oldest first, in one round trip: a
        plain LRANGE and, when the TTL is due for a refresh, the library's touch written in the
        same flight."""
        client = self._read_client()
        read, refresh = _core.read(self.key, self._window), self._refresh_call(client)
        if refresh is None:
            entries = run_read(client, read)
        else:
            sent_at = time.monotonic()
            entries, existed = run_pair(client, read, refresh)
            self._read_refreshed(client, sent_at, existed)
        self._found_list(client)
        return _core.decode(entries)

    @messages.setter
    def messages(self, messages: list[BaseMessage]) -> None:
        raise NotImplementedError(
            "Direct assignment to 'messages' is not allowed. Use the 'add_messages' instead."
        )

    @traced("pyhistory.read", session=_session)
    async def aget_messages(self) -> list[BaseMessage]:
        """The asyncio twin of ``messages``."""
        client = await self._async_read_client()
        if client is None:
            return await asyncio.to_thread(lambda: self.messages)
        read, refresh = _core.read(self.key, self._window), self._refresh_call(client)
        if refresh is None:
            entries = await arun(client, read)
        else:
            sent_at = time.monotonic()
            entries, existed = await arun_pair(client, read, refresh)
            self._read_refreshed(client, sent_at, existed)
        self._found_list(client)
        return _core.decode(entries)

    def _within_calls(
        self, max_tokens: int, token_counter: TokenCounter | None, window: int | None
    ) -> tuple[int, TokenCounter]:
        """A token window's checks, before any I/O: the window to read and the counter."""
        counter = _tokens.check_budget(max_tokens, token_counter)
        size = self._window if window is None else _core.check_size("window", window)
        return size, counter

    @traced("pyhistory.read", session=_session)
    def messages_within(
        self,
        max_tokens: int,
        *,
        token_counter: TokenCounter | None = None,
        window: int | None = None,
        with_summary: bool = True,
    ) -> list[BaseMessage]:
        """The newest messages whose tokens fit ``max_tokens``, oldest first, in one round trip.

        ``window`` bounds what is read (the newest ``window`` entries: this call's, else the
        store's, else all); ``max_tokens`` bounds what is returned: the newest of those whose
        counts add up to at most ``max_tokens``, stopping at the first that does not fit. The
        result never starts with a tool result whose tool call it does not hold (LLM APIs reject
        those), so it may hold less than the budget allows.

        With ``with_summary``, a summary the session holds as its oldest message (a
        ``HumanMessage`` with ``additional_kwargs={"lc_source": "summarization"}``, as LangChain's
        SummarizationMiddleware and :func:`pyhistory.summarize` write it) comes first, counted
        against the budget first: it is read in the same flight, even when the window does not
        reach it, and left out only when it alone exceeds the budget.

        Each message is counted once per process: counts are kept by counter and stored bytes
        (:class:`pyhistory._tokens.TokenCounts`, bounded), and a message is counted alone, so a
        window's total is the sum of its messages' counts. The messages returned are the
        caller's own: changing them changes no later read. The TTL is kept sliding as by
        :attr:`messages`.

        Args:
            max_tokens: the budget, an int >= 0.
            token_counter: counts the tokens of a list of messages (LangChain's signature):
                ``langchain_core.messages.utils.count_tokens_approximately`` by default, or, e.g.,
                a chat model's ``get_num_tokens_from_messages``. Pass the same object from call
                to call, so that its counts are reused.
            window: the most entries to read (None: the store's ``window``, else all).
            with_summary: put the session's summary first.

        Raises:
            InvalidArgumentError: a negative budget, a counter that is not callable or a bad
                window, before any I/O; a counter that returns something else than an int >= 0.
        """
        size, counter = self._within_calls(max_tokens, token_counter, window)
        client = self._read_client()
        reads = _tokens.reads(self.key, size, with_summary)
        refresh = self._refresh_call(client)
        sent_at = time.monotonic()
        replies, existed = run_reads(client, reads, refresh)
        if refresh is not None:
            self._read_refreshed(client, sent_at, existed)
        return _tokens.choose(replies, size, max_tokens, counter, with_summary)

    @traced("pyhistory.read", session=_session)
    async def amessages_within(
        self,
        max_tokens: int,
        *,
        token_counter: TokenCounter | None = None,
        window: int | None = None,
        with_summary: bool = True,
    ) -> list[BaseMessage]:
        """The asyncio twin of :meth:`messages_within`."""
        size, counter = self._within_calls(max_tokens, token_counter, window)
        client = await self._async_read_client()
        if client is None:
            return await asyncio.to_thread(
                self.messages_within,
                max_tokens,
                token_counter=token_counter,
                window=window,
                with_summary=with_summary,
            )
        reads = _tokens.reads(self.key, size, with_summary)
        refresh = self._refresh_call(client)
        sent_at = time.monotonic()
        replies, existed = await arun_reads(client, reads, refresh)
        if refresh is not None:
            self._read_refreshed(client, sent_at, existed)
        return _tokens.choose(replies, size, max_tokens, counter, with_summary)

    @traced("pyhistory.length", session=_session)
    def __len__(self) -> int:
        """How many messages the session stores (may exceed ``window``)."""
        return int(run(self.redis_client, _core.length(self.key)))

    @traced("pyhistory.length", session=_session)
    async def alength(self) -> int:
        """The asyncio twin of ``len(history)``."""
        client = await self._async_client()
        if client is None:
            return await asyncio.to_thread(len, self)
        return int(await arun(client, _core.length(self.key)))

    # --- writes --------------------------------------------------------------------------------

    @traced("pyhistory.append", session=_session, batch=_messages)
    def add_messages(
        self,
        messages: Iterable[BaseMessage] | BaseMessage,
        *,
        idempotency_key: str | None = None,
    ) -> None:
        """Append the whole batch (any iterable, or one message) atomically, trimmed and with its
        TTL, in one round trip, exactly once. Nothing is stored when any message cannot be
        encoded.

        Exactly once: every retry of the call (the client's after a lost reply, a reload of the
        library, a failover) carries the batch's id, and the server does not apply a batch it
        applied already (within ``pyhistory._core.WINDOW_SECONDS`` and the session's next 255
        appends at least; docs/exactly-once.md). When the call raises after the batch may have been
        applied, the error says so: the batch is then stored once or not at all.

        Args:
            idempotency_key: names the batch across calls (any str, e.g. the id of the request
                that produced it): calling again with the same key within the window, after an
                error or a crash, does not store the batch twice. None: a new batch every call.
        """
        call = self._append_call(messages, idempotency_key)
        if call is not None:
            sent_at = time.monotonic()
            try:
                self._append(call, idempotency_key)
            except HistoryError as error:
                self._failed(self.redis_client, error)
                may_have_been_applied(error, _how_to_retry(idempotency_key))
                raise
            self._refreshed(self.redis_client, sent_at)

    @traced("pyhistory.append", session=_session, batch=_messages)
    async def aadd_messages(
        self,
        messages: Iterable[BaseMessage] | BaseMessage,
        *,
        idempotency_key: str | None = None,
    ) -> None:
        """The asyncio twin of :meth:`add_messages`."""
        call = self._append_call(messages, idempotency_key)
        if call is not None:
            client = await self._async_client()
            sent_at = time.monotonic()
            try:
                await self._aappend(call, idempotency_key)
            except HistoryError as error:
                self._failed(self._expiry_client(client), error)
                may_have_been_applied(error, _how_to_retry(idempotency_key))
                raise
            self._refreshed(self._expiry_client(client), sent_at)

    def _clear_call(self) -> Call:
        if self._sessions_index is not None:
            return _bounded.clear_indexed(self.key, self._sessions_index)
        return _core.clear(self.key)

    @traced("pyhistory.clear", session=_session)
    def clear(self) -> None:
        """Delete the session (and the ids of its recent batches); with a sessions index, remove
        it from the index in the same atomic step."""
        self._write(self._clear_call())
        _expiry.expiries(self.redis_client).forget(self.key)

    @traced("pyhistory.clear", session=_session)
    async def aclear(self) -> None:
        client = await self._async_client()
        await self._awrite(self._clear_call())
        _expiry.expiries(self._expiry_client(client)).forget(self.key)

    # --- compaction and edits (pyhistory._bounded) ----------------------------------------------

    @traced("pyhistory.read", session=_session)
    def oldest(self, count: int) -> OldestMessages:
        """The oldest ``count`` messages of the session (fewer when it holds fewer), oldest
        first, in one round trip (a plain LRANGE, no TTL refresh), for a compaction: summarise
        some of them, then :meth:`compact` them. Also reads the message after them, so that a
        compaction knows what it leaves first."""
        call = _bounded.oldest(self.key, count)
        return _bounded.oldest_reply(count, run(self.redis_client, call))

    @traced("pyhistory.read", session=_session)
    async def aoldest(self, count: int) -> OldestMessages:
        """The asyncio twin of :meth:`oldest`."""
        call = _bounded.oldest(self.key, count)
        client = await self._async_client()
        if client is None:
            return await asyncio.to_thread(self.oldest, count)
        return _bounded.oldest_reply(count, await arun(client, call))

    @traced("pyhistory.compact", session=_session)
    def compact(self, oldest: OldestMessages, count: int, summary: BaseMessage | str) -> bool:
        """Replace the ``count`` oldest messages of ``oldest`` by ``summary`` (a message, or a
        text made into :func:`pyhistory.summary_message`), placed where they were, in one atomic
        call, and set the TTL as an append does: only if the session's oldest messages (and the
        one after them) are still exactly those ``oldest`` read. Messages appended meanwhile
        stay. Returns True when applied, False when the session changed since (read again with
        :meth:`oldest`): of two compactions of the same read, one applies.

        Refused (``InvalidArgumentError``, nothing sent): ``count`` < 1, more than were read, or
        a count that would leave a tool result first among the kept messages (see
        ``oldest.safe_count``)."""
        call = _bounded.compact(self.key, oldest, count, summary, self._ttl)
        sent_at = time.monotonic()
        applied = bool(self._write(call))
        if applied:
            self._refreshed(self.redis_client, sent_at)
        return applied

    @traced("pyhistory.compact", session=_session)
    async def acompact(
        self, oldest: OldestMessages, count: int, summary: BaseMessage | str
    ) -> bool:
        """The asyncio twin of :meth:`compact`."""
        call = _bounded.compact(self.key, oldest, count, summary, self._ttl)
        client = await self._async_client()
        sent_at = time.monotonic()
        applied = bool(await self._awrite(call))
        if applied:
            self._refreshed(self._expiry_client(client), sent_at)
        return applied

    @traced("pyhistory.edit", session=_session)
    def remove_messages(self, ids: Sequence[str]) -> EditResult:
        """Remove every stored message whose id is one of ``ids``, in one atomic call; the others
        keep their order. Messages without an id cannot be named, so they stay. The result says
        how many were removed and which ids no message has."""
        return _bounded.edit_reply(self._write(_bounded.remove(self.key, ids, self._ttl)))

    @traced("pyhistory.edit", session=_session)
    async def aremove_messages(self, ids: Sequence[str]) -> EditResult:
        """The asyncio twin of :meth:`remove_messages`."""
        call = _bounded.remove(self.key, ids, self._ttl)
        return _bounded.edit_reply(await self._awrite(call))

    @traced("pyhistory.edit", session=_session)
    def replace_message(self, id: str, message: BaseMessage) -> EditResult:
        """Replace every stored message whose id is ``id`` by ``message``, in place, in one
        atomic call. ``message`` keeps ``id`` when it has no id of its own. ``missing`` holds
        ``id`` when no message has it (nothing is changed then)."""
        call = _bounded.replace(self.key, id, message, self._ttl)
        return _bounded.edit_reply(self._write(call))

    @traced("pyhistory.edit", session=_session)
    async def areplace_message(self, id: str, message: BaseMessage) -> EditResult:
        """The asyncio twin of :meth:`replace_message`."""
        call = _bounded.replace(self.key, id, message, self._ttl)
        return _bounded.edit_reply(await self._awrite(call))

    @traced("pyhistory.touch", session=_session)
    def touch(self) -> bool:
        """Refresh the session's TTL without reading it, always (whatever the refresh interval);
        False when the session does not exist."""
        sent_at = time.monotonic()
        existed = bool(self._write(self._touch_call()))
        self._refreshed(self.redis_client, sent_at, existed)
        return existed

    @traced("pyhistory.touch", session=_session)
    async def atouch(self) -> bool:
        client = await self._async_client()
        sent_at = time.monotonic()
        existed = bool(await self._awrite(self._touch_call()))
        self._refreshed(self._expiry_client(client), sent_at, existed)
        return existed

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(session_id={self.session_id!r}, key={self.key!r}, "
            f"ttl={self.ttl!r}, max_messages={self.max_messages!r}, window={self.window!r})"
        )


def _how_to_retry(idempotency_key: str | None) -> str:
    window = f"within {_core.WINDOW_SECONDS} s"
    if idempotency_key is not None:
        return f"calling again with the same idempotency_key {window} stores it at most once"
    return (
        f"it had no idempotency_key, so calling again stores it again if it was applied: check "
        f"the session first, or pass an idempotency_key ({window}, a retry is then recognised)"
    )


def _is_cluster(*clients: object) -> bool:
    return any(
        isinstance(c, (redis.cluster.RedisCluster, redis.asyncio.cluster.RedisCluster))
        for c in clients
    )
