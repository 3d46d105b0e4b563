"""pyhistory: chat-message history for LLM applications in Redis, one atomic round trip per
operation, laid out exactly as langchain_community's RedisChatMessageHistory lays it out.

``RedisChatMessageHistory`` (LangChain's classic interface, deprecated by langchain-core) is
imported on first use, so that the rest works where that interface is gone.

Histories built from a URL share one client (one connection pool) per URL in the process, and per
event loop for asyncio. An asyncio loop's clients close with the loop (``asyncio.run``); to close
them at an application's shutdown, call ``await aclose_clients()`` (the running loop's clients,
then the sync ones) or ``close_clients()`` (the sync ones), e.g. in a FastAPI app::

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        yield
        await pyhistory.aclose_clients()

    app = FastAPI(lifespan=lifespan)

A later call builds new clients. A forked child process builds its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pyhistory._bounded import (
    EditResult,
    OldestMessages,
    SessionEntry,
    is_summary,
    summary_message,
)
from pyhistory._clients import aclose_clients, close_clients
from pyhistory._core import LIBRARY, MAX_BATCH, acl_rule
from pyhistory.errors import (
    AuthenticationFailedError,
    BatchTooLargeError,
    CorruptEntryError,
    CrossSlotError,
    FunctionsNotLoadedError,
    HistoryError,
    InvalidArgumentError,
    InvalidSessionIdError,
    InvalidSizeError,
    InvalidTTLError,
    OutOfMemoryError,
    PermissionDeniedError,
    ReadOnlyServerError,
    ReplicationError,
    SerializationError,
    ServerConnectionError,
    ServerError,
    ServerTimeoutError,
    SessionTooLongError,
    WrongEventLoopError,
    WrongTypeError,
)
from pyhistory.sessions import alist_sessions, list_sessions
from pyhistory.store import MessageStore, aload_functions, load_functions
from pyhistory.summaries import Summarizer, asummarize, summarize

if TYPE_CHECKING:
    from pyhistory.history import RedisChatMessageHistory


def __getattr__(name: str) -> Any:
    if name == "RedisChatMessageHistory":
        try:
            from pyhistory.history import RedisChatMessageHistory
        except ModuleNotFoundError as error:
            raise ModuleNotFoundError(
                f"pyhistory.RedisChatMessageHistory adapts LangChain's classic chat-history "
                f"interface, which this langchain-core no longer has ({error}); the same sessions "
                f"are served by pyhistory.MessageStore, and agents by pyhistory.agents",
                name=error.name,
            ) from error
        return RedisChatMessageHistory
    raise AttributeError(f"module 'pyhistory' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "LIBRARY",
    "MAX_BATCH",
    "AuthenticationFailedError",
    "BatchTooLargeError",
    "CorruptEntryError",
    "CrossSlotError",
    "EditResult",
    "FunctionsNotLoadedError",
    "HistoryError",
    "InvalidArgumentError",
    "InvalidSessionIdError",
    "InvalidSizeError",
    "InvalidTTLError",
    "MessageStore",
    "OldestMessages",
    "OutOfMemoryError",
    "PermissionDeniedError",
    "ReadOnlyServerError",
    "RedisChatMessageHistory",
    "ReplicationError",
    "SerializationError",
    "ServerConnectionError",
    "ServerError",
    "ServerTimeoutError",
    "SessionEntry",
    "SessionTooLongError",
    "Summarizer",
    "WrongEventLoopError",
    "WrongTypeError",
    "__version__",
    "acl_rule",
    "aclose_clients",
    "alist_sessions",
    "aload_functions",
    "asummarize",
    "close_clients",
    "is_summary",
    "list_sessions",
    "load_functions",
    "summarize",
    "summary_message",
]
