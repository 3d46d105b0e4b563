"""The chat service's switchable history backends, one interface: ``read`` the window the model
gets (oldest first) and ``append`` a turn's messages.

===========  ==================================================================================
name         what it is
===========  ==================================================================================
pyhistory    pyhistory's asyncio API, a history built per request (its clients are shared per
             URL and event loop, so that opens nothing).
langchain    langchain_community's ``RedisChatMessageHistory(session_id, url=url, ttl=ttl)``
             built per request, as its documentation's ``RunnableWithMessageHistory`` factory
             builds it, through its inherited ``aget_messages`` / ``aadd_messages`` (a thread
             executor). It reads the whole session; the service gives the model the window.
pipeline     hand-written redis.asyncio: MULTI LRANGE EXPIRE EXEC, MULTI LPUSH LTRIM EXPIRE EXEC.
memory       a dict in the worker process: no network, no serialisation; the floor. Each uvicorn
             worker has its own, so a session's turns served by two workers see two histories.
===========  ==================================================================================

The three Redis backends are ``loadtest/contenders.py``'s asyncio contenders, the same code the
benchmarks time.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from langchain_core.messages import BaseMessage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import contenders

NAMES: tuple[str, ...] = ("pyhistory", "langchain", "pipeline", "memory")
_CONTENDER = {"pyhistory": "pyhistory", "langchain": "lc-per-turn", "pipeline": "pipeline"}


class Backend(Protocol):
    name: str

    async def read(self, session_id: str) -> list[BaseMessage]: ...

    async def append(self, session_id: str, messages: Sequence[BaseMessage]) -> None: ...

    async def close(self) -> None: ...


class RedisBackend:
    def __init__(
        self, name: str, url: str, window: int, ttl: int | None, max_messages: int | None
    ) -> None:
        self.name = name
        self._contender = contenders.make_async_contender(
            _CONTENDER[name], url, window=window, ttl=ttl, max_messages=max_messages
        )

    async def read(self, session_id: str) -> list[BaseMessage]:
        return await self._contender.fetch(session_id)

    async def append(self, session_id: str, messages: Sequence[BaseMessage]) -> None:
        await self._contender.add(session_id, messages)

    async def close(self) -> None:
        await contenders.aclose_contender(self._contender)


class MemoryBackend:
    name = "memory"

    def __init__(self, window: int, max_messages: int | None) -> None:
        self.window = window
        self.max_messages = max_messages
        self._sessions: dict[str, list[BaseMessage]] = {}

    async def read(self, session_id: str) -> list[BaseMessage]:
        return self._sessions.get(session_id, [])[-self.window :]

    async def append(self, session_id: str, messages: Sequence[BaseMessage]) -> None:
        stored = self._sessions.setdefault(session_id, [])
        stored.extend(messages)
        if self.max_messages and len(stored) > self.max_messages:
            del stored[: len(stored) - self.max_messages]

    async def close(self) -> None:
        self._sessions.clear()


def make_backend(
    name: str, url: str, *, window: int, ttl: int | None, max_messages: int | None
) -> Backend:
    if name == "memory":
        return MemoryBackend(window, max_messages)
    if name not in _CONTENDER:
        raise ValueError(f"unknown history backend {name!r}; expected one of {', '.join(NAMES)}")
    return RedisBackend(name, url, window, ttl, max_messages)
