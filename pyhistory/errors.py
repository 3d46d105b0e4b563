"""The exception types, and the one table that maps the server's error codes onto them."""

from __future__ import annotations

from redis.exceptions import NoPermissionError, ResponseError


class HistoryError(Exception):
    """Base class of every error pyhistory raises on purpose."""


class InvalidArgumentError(HistoryError, ValueError):
    """An argument is out of its contract (BADARGS from the server). Nothing was stored."""


class InvalidSessionIdError(InvalidArgumentError):
    """The session id is not a non-empty string."""


class InvalidSizeError(InvalidArgumentError):
    """A count (max_messages, window) is not a positive integer (BADSIZE)."""


class InvalidTTLError(InvalidArgumentError):
    """A TTL is not a non-negative whole number of seconds (BADTTL)."""


class BatchTooLargeError(InvalidArgumentError):
    """One append carries more messages than a batch may hold (TOOMANY). Nothing was stored."""


class SerializationError(HistoryError, TypeError):
    """A message cannot be encoded as JSON (for example a datetime or bytes inside it)."""


class CorruptEntryError(HistoryError, ValueError):
    """A stored entry is not a serialised message (not JSON, or not a message dict)."""


class WrongTypeError(HistoryError, TypeError):
    """The session's key holds another Redis type than a LIST (WRONGTYPE). Nothing was changed."""


class FunctionsNotLoadedError(HistoryError):
    """The server lacks the pyhistory functions and they could not be loaded from here."""


class PermissionDeniedError(HistoryError):
    """The server's ACL refused the command (NOPERM)."""


class ReplicationError(HistoryError):
    """Fewer replicas than asked acknowledged a write in time. The write itself was applied."""

    def __init__(self, message: str, *, acknowledged: int, required: int) -> None:
        super().__init__(message)
        self.acknowledged = acknowledged
        self.required = required


# Error code word at the start of a server reply -> the exception raised for it. The Lua library
# documents the same codes in its header; tests check that every code it can send is listed here.
SERVER_ERRORS: dict[str, type[HistoryError]] = {
    "BADARGS": InvalidArgumentError,
    "BADSIZE": InvalidSizeError,
    "BADTTL": InvalidTTLError,
    "TOOMANY": BatchTooLargeError,
    "WRONGTYPE": WrongTypeError,
    "NOPERM": PermissionDeniedError,  # redis-py strips this code: see translate()
}


def translate(error: ResponseError) -> Exception:
    """The typed exception for a server error reply, or the reply itself when it is not ours."""
    if isinstance(error, NoPermissionError):
        return PermissionDeniedError(f"NOPERM {error}")
    message = str(error)
    kind = SERVER_ERRORS.get(message.split(" ", 1)[0])
    return error if kind is None else kind(message)
