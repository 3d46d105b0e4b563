"""pyhistory: chat-message history for LLM applications in Redis, one atomic round trip per
operation, laid out exactly as langchain_community's RedisChatMessageHistory lays it out."""

from pyhistory._core import LIBRARY, MAX_BATCH, acl_rule
from pyhistory.errors import (
    BatchTooLargeError,
    CorruptEntryError,
    FunctionsNotLoadedError,
    HistoryError,
    InvalidArgumentError,
    InvalidSessionIdError,
    InvalidSizeError,
    InvalidTTLError,
    PermissionDeniedError,
    ReplicationError,
    SerializationError,
    WrongTypeError,
)
from pyhistory.functions import aload_functions, load_functions
from pyhistory.history import RedisChatMessageHistory

__version__ = "0.1.0"

__all__ = [
    "LIBRARY",
    "MAX_BATCH",
    "BatchTooLargeError",
    "CorruptEntryError",
    "FunctionsNotLoadedError",
    "HistoryError",
    "InvalidArgumentError",
    "InvalidSessionIdError",
    "InvalidSizeError",
    "InvalidTTLError",
    "PermissionDeniedError",
    "RedisChatMessageHistory",
    "ReplicationError",
    "SerializationError",
    "WrongTypeError",
    "__version__",
    "acl_rule",
    "aload_functions",
    "load_functions",
]
