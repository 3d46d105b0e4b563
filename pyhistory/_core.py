"""Pure code shared by the sync and asyncio executors: the library's names and limits, argument
checks, each call's command and arguments, message encoding and reply decoding. No I/O."""

from __future__ import annotations

import binascii
import copy
import functools
import hashlib
import itertools
import json
import os
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from langchain_core.messages import BaseMessage, message_to_dict, messages_from_dict
from redis.crc import key_slot

from pyhistory import _forks
from pyhistory._library import Call, Library, acl_glob
from pyhistory.errors import (
    BatchTooLargeError,
    CorruptEntryError,
    InvalidArgumentError,
    InvalidSessionIdError,
    InvalidSizeError,
    InvalidTTLError,
    SerializationError,
)

# The history's library. Its Lua file is the single source of truth for the names and limits.
HISTORY: Library = Library.from_file("pyhistory.lua")
LIBRARY: str = HISTORY.name
MAX_INT: int = HISTORY.constant("MAX_INT")
MAX_BATCH: int = HISTORY.constant("MAX_BATCH")
# Exactly-once appends: the batch ids a session remembers, for how long, and how long each is.
BATCH_ID_LEN: int = HISTORY.constant("ID_LEN")
REMEMBERED: int = HISTORY.constant("REMEMBERED")
WINDOW_SECONDS: int = HISTORY.constant("WINDOW")

APPEND = HISTORY.function("append")
WINDOW = HISTORY.function("window")
WINDOW_RO = HISTORY.function("window_ro")
TOUCH = HISTORY.function("touch")
LENGTH = HISTORY.function("length")
FUNCTIONS: tuple[str, ...] = HISTORY.functions


def library_source() -> str:
    """The history library's Lua text."""
    return HISTORY.source


# Commands the library's functions run (Redis checks them against the caller's ACL), and the
# commands the history sends itself: FCALL, DEL for clear(), WAIT for wait_for_replicas, LRANGE
# for reads that refresh no TTL, LLEN for len(), MULTI and EXEC around a plain append (whose
# LPUSH, LTRIM, EXPIRE and APPEND the library runs too).
FUNCTION_COMMANDS: tuple[str, ...] = HISTORY.commands
CLIENT_COMMANDS: tuple[str, ...] = ("fcall", "del", "wait", "lrange", "llen", "multi", "exec")


def acl_rule(key_prefix: str = "message_store:", sessions_index: str | None = None) -> str:
    """The least-privilege ACL rules for an application's runtime user: its sessions' keys and
    their batch ids only (:func:`batches_key`), the calls and what they run, what a cluster client
    needs to find its way, nothing else (no FUNCTION, no KEYS/SCAN, no other keys, no INFO: on a
    cluster, pass ``cluster=True``). Loading the functions is left to an admin user at deploy
    time (``pyhistory load``). ``sessions_index``: also that sessions index's key (a glob
    pattern, e.g. ``"sessions:*"``, as given)."""
    prefix, batches = acl_glob(key_prefix), acl_glob(BATCHES_PREFIX)
    other: tuple[str, ...] = (
        f"{batches}{prefix}*",
        f"{batches}{{{prefix}*",
        f"{batches}{{*}}{prefix}*",
    )
    if sessions_index is not None:
        other = (*other, sessions_index)
    return HISTORY.acl_rule(key_prefix, CLIENT_COMMANDS, other)


# --- exactly-once appends: batch ids ----------------------------------------------------------

BATCHES_PREFIX = "pyhistory:batches:"


def new_batch_id() -> bytes:
    """A batch id: 96 random bits, made once per batch and sent again by every retry of it."""
    return os.urandom(BATCH_ID_LEN)


def batch_id_for(idempotency_key: object) -> bytes:
    """The batch id for a caller's idempotency key (any non-empty str): a 96-bit BLAKE2b hash of
    BLAKE2b hash, so calls with the same key name the same batch."""
    if not isinstance(idempotency_key, str) or not idempotency_key:
        raise InvalidArgumentError(
            f"idempotency_key must be None or a non-empty str, got {idempotency_key!r}"
        )
    encoded = idempotency_key.encode("utf-8", "surrogatepass")
    return hashlib.blake2b(encoded, digest_size=BATCH_ID_LEN).digest()


def batches_key(key: str) -> str:
    """The key holding the batch ids of the session stored at ``key``: in the same cluster slot,
    never a session key itself (it does not start with the key prefix), and named after ``key``:

    - ``key`` has a hash tag (``message_store:{abc}``): ``pyhistory:batches:message_store:{abc}``;
    - else, ``key`` wrapped as a hash tag: ``pyhistory:batches:{message_store:abc}``;
    - else (no hash tag, but a ``}`` that would end the wrapping early): a tag of digits chosen for
      the key's slot, then the key: ``pyhistory:batches:{5031}message_store:a}b``.
    """
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:  # a hash tag: the slot is the tag's, kept by any prefix
            return BATCHES_PREFIX + key
    if "}" not in key:
        return f"{BATCHES_PREFIX}{{{key}}}"
    return f"{BATCHES_PREFIX}{{{_tag_for_slot(key_slot(key.encode()))}}}{key}"


def _tag_for_slot(slot: int) -> str:
    """The smallest number whose decimal digits hash to ``slot`` (Redis Cluster's CRC16)."""
    return _slot_tags()[slot]


@functools.cache
def _slot_tags() -> list[str]:
    """For each of the 16384 slots, the smallest number whose digits hash to it: one pass over
    the numbers up to 109,757 (~0.05 s), made the first time a key needs it."""
    tags: list[str | None] = [None] * 16384
    missing = len(tags)
    for n in itertools.count():
        slot = binascii.crc_hqx(b"%d" % n, 0) % 16384
        if tags[slot] is None:
            tags[slot] = str(n)
            missing -= 1
            if not missing:
                return [tag for tag in tags if tag is not None]
    raise AssertionError("unreachable")


# --- argument checks --------------------------------------------------------------------------


def check_session_id(session_id: object) -> str:
    if not isinstance(session_id, str) or not session_id:
        raise InvalidSessionIdError(f"session_id must be a non-empty str, got {session_id!r}")
    return session_id


def check_key_prefix(key_prefix: object) -> str:
    if not isinstance(key_prefix, str):
        raise InvalidArgumentError(f"key_prefix must be a str, got {key_prefix!r}")
    return key_prefix


def check_size(name: str, value: object) -> int:
    """A count that may be unset: None -> 0 (the library's "none"), else an int in [1, MAX_INT]."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_INT:
        raise InvalidSizeError(f"{name} must be None or an int in [1, {MAX_INT}], got {value!r}")
    return value


def check_ttl(value: object) -> int:
    """A TTL in seconds: None or 0 -> 0 (no TTL, as in langchain_community), else [1, MAX_INT].
    A timedelta counts its whole seconds, as redis-py's EXPIRE does; one under a second is refused
    (EXPIRE 0 would delete the session)."""
    if value is None:
        return 0
    if isinstance(value, timedelta):
        seconds = int(value.total_seconds())
        if seconds < 1:
            raise InvalidTTLError(f"ttl must be at least one second, got {value!r}")
        value = seconds
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INT:
        raise InvalidTTLError(
            f"ttl must be None or a whole number of seconds in [0, {MAX_INT}], got {value!r}"
        )
    return value


def check_refresh_interval(value: object, ttl: int) -> float:
    """How much of the TTL a session may lose before a read refreshes it: None -> a tenth of the
    TTL, else seconds (a number or a ``timedelta``) in [0, ttl)."""
    if value is None:
        return ttl / 10
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0 <= value < max(ttl, 1)
    ):
        raise InvalidTTLError(
            f"ttl_refresh_interval must be None or seconds in [0, ttl={ttl}), got {value!r}"
        )
    return float(value)


# --- encoding and decoding --------------------------------------------------------------------


def encode(message: object) -> str:
    """A message as stored: exactly what langchain_community writes for it."""
    if not isinstance(message, BaseMessage):
        raise SerializationError(f"expected a langchain BaseMessage, got {type(message).__name__}")
    try:
        return json.dumps(message_to_dict(message))
    except (TypeError, ValueError, RecursionError) as error:  # RecursionError: nested too deep
        raise SerializationError(
            f"cannot store {type(message).__name__} as JSON: {error}"
        ) from error


def encode_batch(messages: Sequence[BaseMessage]) -> list[str]:
    if len(messages) > MAX_BATCH:
        raise BatchTooLargeError(f"a batch holds at most {MAX_BATCH} messages, got {len(messages)}")
    return [encode(message) for message in messages]


# orjson reads an integer beyond 64 bits as a float (precision lost); json reads it exactly, as
# langchain_community does. Such an integer has at least 19 digits: an entry with 19 digits in a
# row (digits mapped to "0", then one substring search: about the cost of orjson's own parse) is
# read by json.
_DIGITS = bytes.maketrans(b"123456789", b"000000000")
_NINETEEN_DIGITS = b"0" * 19


def _loads_orjson(entry: bytes | str) -> Any:
    raw = entry if isinstance(entry, bytes) else entry.encode("utf-8", "surrogatepass")
    if _NINETEEN_DIGITS in raw.translate(_DIGITS):
        return json.loads(entry)
    try:
        return orjson.loads(entry)
    except orjson.JSONDecodeError:
        # What orjson refuses but json.dumps can write (NaN, Infinity, lone surrogates) is read as
        # the standard library reads it; anything else fails there too.
        return json.loads(entry)


loads: Callable[[bytes | str], Any]
try:
    import orjson
except ImportError:  # the "fast" extra is optional
    loads = json.loads
else:
    loads = _loads_orjson


class DecodedCache:
    """Messages already decoded, by their stored bytes, so that a read decodes each stored entry
    once per process rather than on every read (decoding is most of a read's client time).

    A read never hands out a cached object: it gets a new message whose mutable parts (``content``
    when it is a list, ``additional_kwargs``, ``response_metadata``, ``tool_calls`` and every
    other dict or list, to any depth) are its own, so whatever the caller does to what a read
    returned never changes what a later read returns. Building that copy costs a fraction of
    decoding: LangChain's validation runs once, on the first read of an entry.

    Bounded: at most ``max_bytes`` of stored bytes are cached (entries larger than
    ``max_entry_bytes`` are never cached); the oldest entries go first. The decoded messages take
    about two to three times their stored bytes, so the defaults hold at most ~16 MiB.
    """

    def __init__(self, max_bytes: int = 4 << 20, max_entry_bytes: int = 64 << 10) -> None:
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        self._recipes: dict[bytes | str, _Recipe] = {}
        self._bytes = 0
        self._lock = _forks.lock(self, "_lock")

    def __len__(self) -> int:
        return len(self._recipes)

    @property
    def size(self) -> int:
        """Stored bytes of the cached entries."""
        return self._bytes

    def get(self, entry: bytes | str) -> BaseMessage | None:
        """A message the caller owns, equal to what ``entry`` decodes to; None when not cached."""
        recipe = self._recipes.get(entry)
        return None if recipe is None else _build(recipe)

    def put(self, entry: bytes | str, message: BaseMessage) -> None:
        """Remember what ``entry`` decodes to (a private copy of ``message``); not a message of a
        class with a ``__new__`` of its own (copies are made without calling it): such an entry
        is decoded anew on every read."""
        size = len(entry)
        if size > self.max_entry_bytes or type(message).__new__ is not _new:
            return
        recipe = _recipe(message)
        with self._lock:
            if entry in self._recipes:
                return
            while self._recipes and self._bytes + size > self.max_bytes:
                oldest = next(iter(self._recipes))
                del self._recipes[oldest]
                self._bytes -= len(oldest)
            self._recipes[entry] = recipe
            self._bytes += size

    def clear(self) -> None:
        with self._lock:
            self._recipes.clear()
            self._bytes = 0


def _dup(value: Any) -> Any:
    """A deep copy of a JSON-like value (what a stored message is made of): dicts and lists are
    new, str, int, float, bool and None are immutable and shared."""
    kind = type(value)
    if kind is dict:
        return {k: _dup(v) for k, v in value.items()} if value else {}
    if kind is list:
        return [_dup(v) for v in value] if value else []
    if kind in (str, int, float, bool) or value is None:
        return value
    return copy.deepcopy(value)


_set = object.__setattr__
_new = object.__new__

# The message classes recipes were taken from; a recipe names its class by its index here.
_CLASSES: list[type[BaseMessage]] = []

# How to build a message equal to a decoded one, sharing nothing mutable with it, as
# ``model_construct`` sets one up: its class (an index into _CLASSES), its field values (copied
# once; None in place of the empty dicts and lists, made anew by each build), the names of those
# empty dicts and lists and of the fields whose values are copied by each build, the fields set,
# and the extra and private attributes. A plain tuple of plain values, so that the garbage
# collector stops tracking it (and its dict of fields) once it has seen it: a cache of thousands
# of recipes adds nothing to the full collections that pause the process.
_Recipe = tuple[
    int,
    dict[str, Any],
    tuple[str, ...],
    tuple[str, ...],
    tuple[str, ...],
    tuple[str, ...],
    "dict[str, Any] | None",
    "dict[str, Any] | None",
]


def _recipe(message: BaseMessage) -> _Recipe:
    cls = type(message)
    try:
        index = _CLASSES.index(cls)
    except ValueError:
        _CLASSES.append(cls)  # another thread may append too: the first of equals is used
        index = _CLASSES.index(cls)
    fields = {k: _dup(v) for k, v in message.__dict__.items()}
    # Most messages' dicts and lists are empty (additional_kwargs, tool_calls, ...): those are
    # made anew without a copy; the others are copied, to any depth.
    kinds = {k: type(v) for k, v in fields.items() if type(v) in (dict, list)}
    dicts = tuple(k for k, t in kinds.items() if t is dict and not fields[k])
    lists = tuple(k for k, t in kinds.items() if t is list and not fields[k])
    mutable = tuple(k for k in kinds if fields[k])
    for name in dicts + lists:
        fields[name] = None
    extra = message.__pydantic_extra__
    private = message.__pydantic_private__
    return (
        index,
        fields,
        dicts,
        lists,
        mutable,
        tuple(message.__pydantic_fields_set__),
        None if extra is None else _dup(extra),
        None if private is None else _dup(private),
    )


def _build(recipe: _Recipe) -> BaseMessage:
    index, fields, dicts, lists, mutable, fields_set, extra, private = recipe
    fields = fields.copy()
    for name in dicts:
        fields[name] = {}
    for name in lists:
        fields[name] = []
    for name in mutable:
        fields[name] = _dup(fields[name])
    message = _new(_CLASSES[index])  # a class with a __new__ of its own gets no recipe
    _set(message, "__dict__", fields)
    _set(message, "__pydantic_fields_set__", set(fields_set))
    # most messages' extra is an empty dict (or None): made anew without a call
    _set(message, "__pydantic_extra__", extra if extra is None else _dup(extra) if extra else {})
    _set(message, "__pydantic_private__", None if private is None else _dup(private))
    return message


# The process's decoded messages: shared by every history, since equal bytes decode to equal
# messages whatever the session or the server.
DECODED = DecodedCache()


def decode(entries: Sequence[bytes | str]) -> list[BaseMessage]:
    """Stored entries (newest first) -> messages (oldest first), each one the caller's own.

    Leading tool results are dropped: their AIMessage with the tool call lies outside the window
    (trimmed by max_messages or cut by the window size), and LLM APIs reject such orphans.
    """
    messages: list[BaseMessage] = []
    for entry in reversed(entries):
        message = DECODED.get(entry)
        if message is None:
            message = _decode_new(entry)
            DECODED.put(entry, message)
        if messages or message.type != "tool":
            messages.append(message)
    return messages


def decode_each(entries: Sequence[bytes | str]) -> list[BaseMessage]:
    """Stored entries -> messages, one each and in the same order (no tool result dropped), each
    one the caller's own."""
    messages: list[BaseMessage] = []
    for entry in entries:
        message = DECODED.get(entry)
        if message is None:
            message = _decode_new(entry)
            DECODED.put(entry, message)
        messages.append(message)
    return messages


def _decode_new(entry: bytes | str) -> BaseMessage:
    """An entry not decoded before, validated by LangChain."""
    try:
        item = loads(entry)
    except ValueError as error:
        raise CorruptEntryError(f"a stored entry is not valid JSON: {error}") from error
    try:
        return messages_from_dict([item])[0]
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise CorruptEntryError(f"a stored entry is not a serialised message: {error!r}") from error


# --- calls ------------------------------------------------------------------------------------


def append(
    key: str, encoded: Sequence[str], max_messages: int, ttl: int, batch_id: bytes | None = None
) -> Call:
    """The batch appended exactly once: the call carries the batch id (new unless given), so
    every retry of this very call is recognised by the library and not applied again."""
    batch_id = new_batch_id() if batch_id is None else batch_id
    args = (APPEND, 2, key, batches_key(key), max_messages, ttl, batch_id, *encoded)
    return Call("FCALL", args, key, HISTORY)


# The batch ids grow by one per plain append; past this many bytes the next append of the
# session by this process is the library's, which keeps the newest REMEMBERED (the library's FULL).
IDS_FULL = 2 * REMEMBERED * BATCH_ID_LEN


def plain_append(call: Call) -> list[tuple[Any, ...]]:
    """The same append as ``call`` (the library's, built by :func:`append`) in plain commands, one
    MULTI/EXEC: the entries pushed, the list trimmed, its TTL set, and the batch id appended to
    the session's batch ids (their expiry set) exactly as the library records it, so that the
    library's append, sent on a retry, recognises the batch. For a session whose key is known to
    hold a list or nothing: the library checks the type before writing, a transaction cannot."""
    _, _, key, ids, max_messages, ttl, batch_id, *entries = call.args
    commands: list[tuple[Any, ...]] = [("MULTI",), ("LPUSH", key, *entries)]
    if max_messages:
        commands.append(("LTRIM", key, 0, max_messages - 1))
    if ttl:
        commands.append(("EXPIRE", key, ttl))
    commands += [("APPEND", ids, batch_id), ("EXPIRE", ids, WINDOW_SECONDS), ("EXEC",)]
    return commands


def plain_append_reply(call: Call, replies: list[Any]) -> tuple[int, bool]:
    """The session's length after a plain append, and whether its batch ids are due for the
    library's trim; raises the first error (a key of another type: WRONGTYPE)."""
    for reply in replies:
        if isinstance(reply, BaseException):
            raise reply
    max_messages = call.args[4]
    length = int(replies[0])
    if max_messages:
        length = min(length, max_messages)
    return length, int(replies[-2]) >= IDS_FULL


def read(key: str, count: int) -> Call:
    """The newest ``count`` entries (0 = all): a plain LRANGE, as atomic as a function and as
    welcome on a replica, at a fraction of the server time a function takes (it pays for turning
    every entry into a Lua string; docs/bench). A read that refreshes the TTL sends the library's
    touch in the same flight (functions.run_pair)."""
    return Call("LRANGE", (key, 0, count - 1), key)


def window(key: str, count: int, ttl: int) -> Call:
    """The library's window function: the newest ``count`` entries, refreshing the TTL when
    ``ttl`` > 0, in one FCALL. Kept for clients in other languages and for the CLI; the history
    reads with :func:`read` (+ :func:`touch`)."""
    return Call("FCALL", (WINDOW, 1, key, count, ttl), key, HISTORY)


def touch(key: str, ttl: int) -> Call:
    return Call("FCALL", (TOUCH, 1, key, ttl), key, HISTORY)


def length(key: str) -> Call:
    """A plain LLEN, for the same reason as the plain LRANGE above (the library's length is the
    FCALL_RO form for other clients)."""
    return Call("LLEN", (key,), key)


def clear(key: str) -> Call:
    """The session and its batch ids: one DEL (one slot)."""
    return Call("DEL", (key, batches_key(key)), key)


# --- durability: WAIT in the same round trip --------------------------------------------------


def check_replicas(replicas: object, timeout_ms: object) -> tuple[int, int]:
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
        raise InvalidArgumentError(f"wait_for_replicas must be an int >= 0, got {replicas!r}")
    if (
        isinstance(timeout_ms, bool)
        or not isinstance(timeout_ms, int)
        or not 1 <= timeout_ms <= MAX_INT
    ):
        raise InvalidArgumentError(
            f"wait_timeout_ms must be an int in [1, {MAX_INT}] (WAIT 0 would block forever), "
            f"got {timeout_ms!r}"
        )
    return replicas, timeout_ms
