"""The chat-history implementations the benchmarks compare, behind one small interface.

Every contender stores the same bytes under the same key (``message_store:<session_id>``, a LIST,
newest first, each element ``json.dumps(message_to_dict(m))``), so they can be pointed at the same
pre-filled sessions.

=============  ==============================================================================
name           what it is
=============  ==============================================================================
pyhistory      ``pyhistory.RedisChatMessageHistory`` built per call (the factory pattern; one
               pool per URL is shared), ``.messages`` / ``.add_messages``; asyncio: the native
               ``aget_messages`` / ``aadd_messages``.
lc-per-turn    ``langchain_community``'s ``RedisChatMessageHistory`` built once per turn, as
               ``RunnableWithMessageHistory``'s factory builds it: ``fetch`` constructs a new
               instance (a new client and pool, an ``INFO cluster`` probe, a new connection) and
               the following ``add`` of the same session reuses that instance, as the runnable
               does for one invocation. Reads the whole history (it has no window). asyncio:
               its inherited ``aget_messages`` / ``aadd_messages`` (thread executor).
lc-reused      the same class, one instance per session, kept for the contender's lifetime.
pipeline       hand-written redis-py: one shared client (hiredis parser when installed),
               add = MULTI LPUSH [LTRIM] [EXPIRE] EXEC, fetch = MULTI LRANGE [EXPIRE] EXEC, each
               one round trip. asyncio twin on ``redis.asyncio``.
=============  ==============================================================================

``fetch`` returns what the model would get: the newest ``window`` messages, oldest first (all of
them for the langchain_community contenders, which cannot window).
"""

from __future__ import annotations

import asyncio
import json
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol

import redis
import redis.asyncio
from langchain_core.messages import BaseMessage, message_to_dict, messages_from_dict

import pyhistory

with warnings.catch_warnings():
    # langchain-community warns on import that it is being sunset; it is what users run today.
    warnings.simplefilter("ignore", DeprecationWarning)
    from langchain_community.chat_message_histories import (
        RedisChatMessageHistory as LCRedisChatMessageHistory,
    )

__all__ = [
    "KEY_PREFIX",
    "NAMES",
    "AsyncContender",
    "Contender",
    "aclose_contender",
    "close_contender",
    "make_async_contender",
    "make_contender",
]

NAMES: tuple[str, ...] = ("pyhistory", "lc-per-turn", "lc-reused", "pipeline")
KEY_PREFIX = "message_store:"

# lc-per-turn keeps the instance built by a fetch for the add of the same turn; at most this many
# turns may be in flight at once before the oldest instance is dropped (it is then rebuilt).
_PER_TURN_SLOTS = 4096


class Contender(Protocol):
    """A sync chat-history implementation."""

    name: str

    def fetch(self, session_id: str) -> list[BaseMessage]:
        """The window (newest ``window`` messages, oldest first) the model would get."""
        ...

    def add(self, session_id: str, messages: Sequence[BaseMessage]) -> None:
        """Append messages (oldest first) to the session."""
        ...


class AsyncContender(Protocol):
    """An asyncio chat-history implementation."""

    name: str

    async def fetch(self, session_id: str) -> list[BaseMessage]:
        """The window (newest ``window`` messages, oldest first) the model would get."""
        ...

    async def add(self, session_id: str, messages: Sequence[BaseMessage]) -> None:
        """Append messages (oldest first) to the session."""
        ...


def _encode(messages: Sequence[BaseMessage]) -> list[str]:
    return [json.dumps(message_to_dict(message)) for message in messages]


def _decode(entries: Sequence[bytes]) -> list[BaseMessage]:
    """Entries newest first -> messages oldest first."""
    return messages_from_dict([json.loads(entry) for entry in reversed(entries)])


def _lc_history(session_id: str, url: str, ttl: int | None) -> LCRedisChatMessageHistory:
    return LCRedisChatMessageHistory(session_id, url=url, ttl=ttl)


def _close_lc(history: LCRedisChatMessageHistory) -> None:
    client: Any = getattr(history, "redis_client", None)
    if client is not None:
        client.close()


# --- pyhistory -------------------------------------------------------------------------------


class _PyHistoryBase:
    name = "pyhistory"

    def __init__(self, url: str, window: int, ttl: int | None, max_messages: int | None) -> None:
        self.url = url
        self.window = window
        self.ttl = ttl
        self.max_messages = max_messages

    def _history(self, session_id: str) -> pyhistory.RedisChatMessageHistory:
        return pyhistory.RedisChatMessageHistory(
            session_id,
            url=self.url,
            ttl=self.ttl,
            max_messages=self.max_messages,
            window=self.window,
        )


class PyHistoryContender(_PyHistoryBase):
    def fetch(self, session_id: str) -> list[BaseMessage]:
        return self._history(session_id).messages

    def add(self, session_id: str, messages: Sequence[BaseMessage]) -> None:
        self._history(session_id).add_messages(messages)

    def close(self) -> None:
        """Nothing to close: pyhistory owns its per-URL pool for the process's lifetime."""


class AsyncPyHistoryContender(_PyHistoryBase):
    async def fetch(self, session_id: str) -> list[BaseMessage]:
        return await self._history(session_id).aget_messages()

    async def add(self, session_id: str, messages: Sequence[BaseMessage]) -> None:
        await self._history(session_id).aadd_messages(messages)

    async def aclose(self) -> None:
        """Nothing to close: pyhistory owns its per-URL, per-loop pool."""


# --- langchain_community, one instance per turn ----------------------------------------------


class _PerTurnSlots:
    """The instance a turn's fetch built, kept for that turn's add (bounded, thread-safe)."""

    def __init__(self, url: str, ttl: int | None) -> None:
        self.url = url
        self.ttl = ttl
        self._lock = threading.Lock()
        self._slots: OrderedDict[str, LCRedisChatMessageHistory] = OrderedDict()

    def start_turn(self, session_id: str) -> LCRedisChatMessageHistory:
        history = _lc_history(session_id, self.url, self.ttl)
        with self._lock:
            self._slots[session_id] = history
            self._slots.move_to_end(session_id)
            while len(self._slots) > _PER_TURN_SLOTS:
                self._slots.popitem(last=False)
        return history

    def end_turn(self, session_id: str) -> LCRedisChatMessageHistory:
        with self._lock:
            history = self._slots.pop(session_id, None)
        if history is None:  # an add without a fetch first: a turn of its own
            history = _lc_history(session_id, self.url, self.ttl)
        return history

    def clear(self) -> None:
        with self._lock:
            histories = list(self._slots.values())
            self._slots.clear()
        for history in histories:
            _close_lc(history)


class LCPerTurnContender:
    name = "lc-per-turn"

    def __init__(self, url: str, ttl: int | None) -> None:
        self._turns = _PerTurnSlots(url, ttl)

    def fetch(self, session_id: str) -> list[BaseMessage]:
        return self._turns.start_turn(session_id).messages

    def add(self, session_id: str, messages: Sequence[BaseMessage]) -> None:
        history = self._turns.end_turn(session_id)
        try:
            history.add_messages(messages)
        finally:
            _close_lc(history)  # the instance dies with the turn, as it does in the runnable

    def close(self) -> None:
        self._turns.clear()


class AsyncLCPerTurnContender:
    name = "lc-per-turn"

    def __init__(self, url: str, ttl: int | None) -> None:
        self._turns = _PerTurnSlots(url, ttl)

    async def fetch(self, session_id: str) -> list[BaseMessage]:
        # The factory runs (and probes the server) on the event loop, as in the runnable.
        return await self._turns.start_turn(session_id).aget_messages()

    async def add(self, session_id: str, messages: Sequence[BaseMessage]) -> None:
        history = self._turns.end_turn(session_id)
        try:
            await history.aadd_messages(messages)
        finally:
            _close_lc(history)

    async def aclose(self) -> None:
        self._turns.clear()


# --- langchain_community, one instance per session -------------------------------------------


class _LCReusedBase:
    name = "lc-reused"

    def __init__(self, url: str, ttl: int | None) -> None:
        self.url = url
        self.ttl = ttl
        self._lock = threading.Lock()
        self._histories: dict[str, LCRedisChatMessageHistory] = {}

    def _history(self, session_id: str) -> LCRedisChatMessageHistory:
        history = self._histories.get(session_id)
        if history is None:
            with self._lock:
                history = self._histories.get(session_id)
                if history is None:
                    history = _lc_history(session_id, self.url, self.ttl)
                    self._histories[session_id] = history
        return history

    def _close_all(self) -> None:
        with self._lock:
            histories = list(self._histories.values())
            self._histories.clear()
        for history in histories:
            _close_lc(history)


class LCReusedContender(_LCReusedBase):
    def fetch(self, session_id: str) -> list[BaseMessage]:
        return self._history(session_id).messages

    def add(self, session_id: str, messages: Sequence[BaseMessage]) -> None:
        self._history(session_id).add_messages(messages)

    def close(self) -> None:
        self._close_all()


class AsyncLCReusedContender(_LCReusedBase):
    async def fetch(self, session_id: str) -> list[BaseMessage]:
        return await self._history(session_id).aget_messages()

    async def add(self, session_id: str, messages: Sequence[BaseMessage]) -> None:
        await self._history(session_id).aadd_messages(messages)

    async def aclose(self) -> None:
        self._close_all()


# --- hand-written MULTI/EXEC pipelines -------------------------------------------------------


class _PipelineBase:
    name = "pipeline"

    def __init__(self, window: int, ttl: int | None, max_messages: int | None) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = window
        self.ttl = ttl or 0
        self.max_messages = max_messages or 0


class PipelineContender(_PipelineBase):
    def __init__(self, url: str, window: int, ttl: int | None, max_messages: int | None) -> None:
        super().__init__(window, ttl, max_messages)
        self.client: redis.Redis = redis.Redis.from_url(url)

    def fetch(self, session_id: str) -> list[BaseMessage]:
        key = KEY_PREFIX + session_id
        pipe = self.client.pipeline(transaction=True)
        pipe.lrange(key, 0, self.window - 1)
        if self.ttl:
            pipe.expire(key, self.ttl)
        replies = pipe.execute()
        return _decode(replies[0])

    def add(self, session_id: str, messages: Sequence[BaseMessage]) -> None:
        if not messages:
            return
        key = KEY_PREFIX + session_id
        pipe = self.client.pipeline(transaction=True)
        pipe.lpush(key, *_encode(messages))
        if self.max_messages:
            pipe.ltrim(key, 0, self.max_messages - 1)
        if self.ttl:
            pipe.expire(key, self.ttl)
        pipe.execute()

    def close(self) -> None:
        self.client.close()


class AsyncPipelineContender(_PipelineBase):
    def __init__(self, url: str, window: int, ttl: int | None, max_messages: int | None) -> None:
        super().__init__(window, ttl, max_messages)
        self.url = url
        # A redis.asyncio pool is bound to the event loop it first ran on: one client per loop.
        self._clients: dict[asyncio.AbstractEventLoop, redis.asyncio.Redis] = {}

    def _client(self) -> redis.asyncio.Redis:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = self._clients[loop] = redis.asyncio.Redis.from_url(self.url)
        return client

    async def fetch(self, session_id: str) -> list[BaseMessage]:
        key = KEY_PREFIX + session_id
        pipe = self._client().pipeline(transaction=True)
        pipe.lrange(key, 0, self.window - 1)
        if self.ttl:
            pipe.expire(key, self.ttl)
        replies = await pipe.execute()
        return _decode(replies[0])

    async def add(self, session_id: str, messages: Sequence[BaseMessage]) -> None:
        if not messages:
            return
        key = KEY_PREFIX + session_id
        pipe = self._client().pipeline(transaction=True)
        pipe.lpush(key, *_encode(messages))
        if self.max_messages:
            pipe.ltrim(key, 0, self.max_messages - 1)
        if self.ttl:
            pipe.expire(key, self.ttl)
        await pipe.execute()

    async def aclose(self) -> None:
        clients = list(self._clients.values())
        self._clients.clear()
        for client in clients:
            await client.aclose()


# --- factories -------------------------------------------------------------------------------


def _check_name(name: str) -> None:
    if name not in NAMES:
        raise ValueError(f"unknown contender {name!r}; expected one of {', '.join(NAMES)}")


def make_contender(
    name: str,
    url: str,
    *,
    window: int = 20,
    ttl: int | None = 3600,
    max_messages: int | None = None,
) -> Contender:
    """A sync contender by name (see :data:`NAMES`).

    ``window`` and ``max_messages`` are ignored by the langchain_community contenders, which
    read everything and never trim.
    """
    _check_name(name)
    if name == "pyhistory":
        return PyHistoryContender(url, window, ttl, max_messages)
    if name == "lc-per-turn":
        return LCPerTurnContender(url, ttl)
    if name == "lc-reused":
        return LCReusedContender(url, ttl)
    return PipelineContender(url, window, ttl, max_messages)


def make_async_contender(
    name: str,
    url: str,
    *,
    window: int = 20,
    ttl: int | None = 3600,
    max_messages: int | None = None,
) -> AsyncContender:
    """An asyncio contender by name (see :data:`NAMES`); call it from inside the event loop
    that will use it or from anywhere (clients are bound to a loop lazily, on first use)."""
    _check_name(name)
    if name == "pyhistory":
        return AsyncPyHistoryContender(url, window, ttl, max_messages)
    if name == "lc-per-turn":
        return AsyncLCPerTurnContender(url, ttl)
    if name == "lc-reused":
        return AsyncLCReusedContender(url, ttl)
    return AsyncPipelineContender(url, window, ttl, max_messages)


def close_contender(contender: Contender) -> None:
    """Release what a sync contender holds (connections), when it holds anything."""
    close = getattr(contender, "close", None)
    if close is not None:
        close()


async def aclose_contender(contender: AsyncContender) -> None:
    """Release what an asyncio contender holds (connections), when it holds anything."""
    aclose = getattr(contender, "aclose", None)
    if aclose is not None:
        await aclose()
