"""The exception types, and the one place that turns what the server or the connection raised
into them.

Every exception pyhistory raises is a HistoryError. One that comes from the server or the
connection is also still an instance of the redis-py class raised for it (a refused connection is
a ``redis.exceptions.ConnectionError``, an ACL refusal a ``NoPermissionError``, ...), so code
written against langchain_community's history, which lets redis-py's exceptions through, keeps
catching what it caught.
"""

from __future__ import annotations

import sys
from typing import Any

from redis import exceptions as redis_errors

from pyhistory import _forks


class HistoryError(Exception):
    """Base class of every error pyhistory raises on purpose."""

    #: Raised by an append that may have been applied before the error (its reply was lost): the
    #: batch is stored once or not at all (exactly-once appends), and the message says so.
    may_have_been_applied: bool = False


class InvalidArgumentError(HistoryError, ValueError):
    """An argument is out of its contract (BADARGS from the server). Nothing was stored."""


class InvalidSessionIdError(InvalidArgumentError):
    """The session id is not a non-empty string."""


class InvalidSizeError(InvalidArgumentError):
    """A count (max_messages, window) is not a positive integer (BADSIZE)."""


class InvalidTTLError(InvalidArgumentError):
    """A TTL is not a non-negative whole number of seconds (BADTTL)."""


class BatchTooLargeError(InvalidArgumentError):
    """One call carries more than it may (TOOMANY): an append more messages than a batch holds,
    an edit more ids, a listing a larger page. Nothing was stored."""


class CrossSlotError(InvalidArgumentError):
    """Keys that one atomic call must update together (a session and its sessions index) hash to
    different Redis Cluster slots: they need one hash tag (``chat:{alice}:...`` with
    ``sessions:{alice}``). Refused on any server, before anything is sent."""


class SessionTooLongError(InvalidArgumentError):
    """An edit by message id reads the whole session, and this one holds more entries than an
    edit may read (TOOLONG; ``pyhistory._bounded.MAX_SCAN``). Nothing was changed."""


class InvalidCheckpointIdError(InvalidArgumentError):
    """A thread id, namespace, checkpoint id, channel, version, task id or path the checkpoint
    library cannot store: not a str, empty where it may not be, or holding a NUL (BADID)."""


class InvalidValueError(InvalidArgumentError):
    """A typed value sent to the checkpoint library without its type name (BADVALUE)."""


class StaleOwnerError(HistoryError):
    """A checkpoint write carried an owner epoch that no longer owns the thread: another worker
    claimed it since, or it was deleted or expired (STALEOWNER). Nothing was written."""


class SerializationError(HistoryError, TypeError):
    """A message cannot be encoded as JSON (for example a datetime or bytes inside it)."""


class WrongEventLoopError(HistoryError, RuntimeError):
    """An asyncio client was used on another event loop than the one its connections belong to
    (typically: that loop has closed, as each ``asyncio.run`` closes its own)."""


class CorruptEntryError(HistoryError, ValueError):
    """A stored entry is not a serialised message (not JSON, or not a message dict)."""


# --- from the server or the connection: HistoryError and the redis-py class -----------------


class ServerConnectionError(HistoryError, redis_errors.ConnectionError):
    """The server could not be reached or the connection broke, after the client's retries."""


class AuthenticationFailedError(ServerConnectionError, redis_errors.AuthenticationError):
    """The server refused the credentials (never retried)."""


class ServerTimeoutError(HistoryError, redis_errors.TimeoutError):
    """The server did not answer in time (a hung or overloaded server), after the retries."""


class ServerError(HistoryError, redis_errors.ResponseError):
    """An error reply from the server that no more specific class below describes."""


class WrongTypeError(ServerError, TypeError):
    """The session's key holds another Redis type than a LIST (WRONGTYPE). Nothing was changed."""


class OutOfMemoryError(ServerError, redis_errors.OutOfMemoryError):
    """The server is at maxmemory with the noeviction policy: writes are refused (OOM)."""


class ReadOnlyServerError(ServerError, redis_errors.ReadOnlyError):
    """A write reached a replica (READONLY)."""


class PermissionDeniedError(ServerError, redis_errors.NoPermissionError):
    """The server's ACL refused the command (NOPERM)."""


class FunctionsNotLoadedError(PermissionDeniedError):
    """The server lacks the Functions library and this client may not load it (NOPERM on
    FUNCTION LOAD), or lost it again after every load for as long as a call heals
    (``pyhistory.functions.HEAL_WINDOW``: something keeps deleting it)."""


class ReplicationError(HistoryError):
    """Fewer replicas than asked acknowledged a write in time. The write itself was applied."""

    def __init__(self, message: str, *, acknowledged: int, required: int) -> None:
        super().__init__(message)
        self.acknowledged = acknowledged
        self.required = required

    def __reduce__(self) -> tuple[Any, ...]:
        # pickle calls cls(*args): the counts are keyword-only, so they travel as arguments.
        return (_replication_error, (str(self), self.acknowledged, self.required), self.__dict__)


def _replication_error(message: str, acknowledged: int, required: int) -> ReplicationError:
    return ReplicationError(message, acknowledged=acknowledged, required=required)


def may_have_been_applied(error: HistoryError, how_to_retry: str) -> None:
    """Amend ``error``, raised by an append, to say that the append may have been applied and is
    then stored once (exactly-once appends), and how to retry it; set its
    ``may_have_been_applied``. Not for a refused argument: the server applied nothing, and a retry
    is refused alike."""
    if isinstance(error, (InvalidArgumentError, SerializationError)) or error.may_have_been_applied:
        return
    note = f"the batch may have been applied: it is stored once or not at all; {how_to_retry}"
    message = str(error.args[0]) if error.args else type(error).__name__
    error.args = (f"{message} ({note})", *error.args[1:])
    error.may_have_been_applied = True


# Error code word at the start of a server reply -> the exception raised for it. Each Lua library
# documents the codes it sends in its header; tests check that every code is listed here.
SERVER_ERRORS: dict[str, type[HistoryError]] = {
    "BADARGS": InvalidArgumentError,
    "BADSIZE": InvalidSizeError,
    "BADTTL": InvalidTTLError,
    "TOOMANY": BatchTooLargeError,
    "TOOLONG": SessionTooLongError,
    "WRONGTYPE": WrongTypeError,
    # lua/pyhistory_checkpoint.lua
    "BADID": InvalidCheckpointIdError,
    "BADVALUE": InvalidValueError,
    "STALEOWNER": StaleOwnerError,
}

# redis-py's classes -> ours, the most specific first.
_BY_CLASS: tuple[tuple[type[Exception], type[HistoryError]], ...] = (
    (redis_errors.AuthenticationError, AuthenticationFailedError),
    (redis_errors.ConnectionError, ServerConnectionError),
    (redis_errors.TimeoutError, ServerTimeoutError),
    (redis_errors.NoPermissionError, PermissionDeniedError),
    (redis_errors.OutOfMemoryError, OutOfMemoryError),
    (redis_errors.ReadOnlyError, ReadOnlyServerError),
)
# Every other redis-py class gets a subclass of ours (or of HistoryError) and of itself, made once.
_MADE: dict[type[Exception], type[HistoryError]] = {}
_MADE_LOCK = _forks.lock(sys.modules[__name__], "_MADE_LOCK")


def _typed_class(kind: type[Exception], ours: type[HistoryError]) -> type[HistoryError]:
    made = _MADE.get(kind)
    if made is None:
        with _MADE_LOCK:
            made = _MADE.get(kind)
            if made is None:
                made = _MADE[kind] = type(
                    kind.__name__,
                    (ours, kind),
                    {"__reduce__": _reduce_made, "__module__": __name__},
                )
    return made


# What redis-py says when a server that requires a password got none: RESP3's HELLO refused, or
# RESP2's NOAUTH. Said plainly instead.
_NO_CREDENTIALS = (
    "HELLO must be called with the client already authenticated",
    "Authentication required",
)
NO_CREDENTIALS_MESSAGE = (
    "the server requires authentication, and no password was given: put the user and password in "
    "the URL (redis://user:password@host:6379/0, or redis://:password@host:6379/0 for the default "
    "user) or pass them to the client"
)


def _reduce_made(error: BaseException) -> tuple[Any, ...]:
    """How an instance of a class made by _typed_class pickles: a made class cannot be found by
    its name in another process, so it travels as the two classes it is made of (both importable)
    and is made again there (multiprocessing, celery: errors cross process boundaries)."""
    made = type(error)
    ours = next(base for base in made.__bases__ if issubclass(base, HistoryError))
    kind = next(base for base in made.__bases__ if not issubclass(base, HistoryError))
    return (_remade, (kind, ours, error.args), error.__dict__ or None)


def _remade(
    kind: type[Exception], ours: type[HistoryError], args: tuple[Any, ...]
) -> BaseException:
    made = _typed_class(kind, ours)
    error = made.__new__(made, *args)
    error.args = args
    return error


_OTHER_LOOP = ("Event loop is closed", "attached to a different loop", "different event loop")
_OTHER_LOOP_HINT = (
    "an asyncio client was used on another event loop than the one it was made on ({error}): "
    "a redis.asyncio client's connections belong to the loop that opened them, and each "
    "asyncio.run() closes its own. Make the async_redis_client inside the loop that uses it "
    "(one per loop), or pass url= and let pyhistory keep one client per loop"
)


def translate(error: BaseException) -> BaseException:
    """What pyhistory raises for an exception from redis-py: the class for the reply's code word,
    else ours for its redis-py class, else a HistoryError subclass of that very class; for an
    asyncio client used on another (closed) event loop, WrongEventLoopError. Anything else that
    is not redis-py's (or already ours) is returned as it is."""
    if type(error) is RuntimeError and any(text in str(error) for text in _OTHER_LOOP):
        return WrongEventLoopError(_OTHER_LOOP_HINT.format(error=error))
    if isinstance(error, HistoryError) or not isinstance(
        error, (redis_errors.RedisError, redis_errors.RedisClusterException)
    ):
        return error
    if type(error) is redis_errors.ResponseError:
        kind = SERVER_ERRORS.get(str(error).split(" ", 1)[0])
        if kind is not None:
            return kind(str(error))
        return ServerError(*error.args)
    if isinstance(error, redis_errors.AuthenticationError) and str(error).startswith(
        _NO_CREDENTIALS
    ):
        return AuthenticationFailedError(NO_CREDENTIALS_MESSAGE)
    for theirs, ours in _BY_CLASS:
        if isinstance(error, theirs):
            if type(error) is not theirs:  # e.g. BusyLoadingError, a ConnectionError
                ours = _typed_class(type(error), ours)
            return ours(*error.args)
    return _typed_class(type(error), HistoryError)(*error.args)
