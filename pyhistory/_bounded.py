"""Bounded memory beyond a count, pure code: compaction with a summary (compare-and-swap), edits
by message id, the sessions index. What each call sends, how its reply reads, the checks made
before anything is sent. No I/O; the store (pyhistory.store) and the listing
(pyhistory.sessions) run what this builds."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage
from redis.crc import key_slot

from pyhistory import _core
from pyhistory._library import Call
from pyhistory.errors import CrossSlotError, InvalidArgumentError, InvalidSizeError

COMPACT = _core.HISTORY.function("compact")
EDIT = _core.HISTORY.function("edit")
CLEAR = _core.HISTORY.function("clear")
SESSIONS = _core.HISTORY.function("sessions")
MAX_COMPACT: int = _core.HISTORY.constant("MAX_COMPACT")
MAX_SCAN: int = _core.HISTORY.constant("MAX_SCAN")
MAX_IDS: int = _core.HISTORY.constant("MAX_IDS")
MAX_PAGE: int = _core.HISTORY.constant("MAX_PAGE")

# --- summaries --------------------------------------------------------------------------------

# How LangChain 1.x's SummarizationMiddleware writes and marks the summary it puts in place of
# the messages it summarised (langchain/agents/middleware/summarization.py).
SUMMARY_PREFIX = "Here is a summary of the conversation to date:\n\n"
SUMMARY_SOURCE = "summarization"


def summary_message(text: str) -> HumanMessage:
    """A summary of earlier messages, written and marked as LangChain's
    ``SummarizationMiddleware`` writes its own: a ``HumanMessage`` reading "Here is a summary of
    the conversation to date:" then ``text``, with ``additional_kwargs={"lc_source":
    "summarization"}``."""
    if not isinstance(text, str):
        raise InvalidArgumentError(f"a summary is a str, got {type(text).__name__}")
    return HumanMessage(
        content=f"{SUMMARY_PREFIX}{text}", additional_kwargs={"lc_source": SUMMARY_SOURCE}
    )


def is_summary(message: BaseMessage) -> bool:
    """Whether ``message`` is a summary marked as :func:`summary_message` (and LangChain's
    ``SummarizationMiddleware``) mark them: ``additional_kwargs["lc_source"] ==
    "summarization"``."""
    kwargs = getattr(message, "additional_kwargs", None)
    return isinstance(kwargs, dict) and kwargs.get("lc_source") == SUMMARY_SOURCE


# --- compaction -------------------------------------------------------------------------------


def digest(entries: Sequence[bytes]) -> str:
    """The SHA-1 (hex) the library's compact compares: entries oldest first, each as its length
    in bytes, ``:``, then its bytes, concatenated."""
    sha = hashlib.sha1(usedforsecurity=False)
    for entry in entries:
        sha.update(b"%d:" % len(entry))
        sha.update(entry)
    return sha.hexdigest()


def _raw(entry: bytes | str) -> bytes:
    return entry if isinstance(entry, bytes) else entry.encode("utf-8", "surrogatepass")


@dataclass(frozen=True)
class OldestMessages:
    """The oldest messages of a session as one read saw them (:meth:`MessageStore.oldest`), for
    a compaction of some of them (:meth:`MessageStore.compact`).

    Attributes:
        messages: the oldest messages, oldest first (at most the count asked for), decoded as
            stored: a leading tool result is kept (nothing here is handed to a model).
        complete: whether they are the whole session (no message was kept after them).
    """

    messages: tuple[BaseMessage, ...]
    complete: bool
    # The stored entries, oldest first: the messages', then the first kept one when there is one.
    _entries: tuple[bytes, ...] = field(repr=False, compare=False)

    @property
    def length(self) -> int:
        """How many messages were read (``len(messages)``)."""
        return len(self.messages)

    def __len__(self) -> int:
        return len(self.messages)

    def _kept(self, count: int) -> BaseMessage | None:
        """The message that would be the first kept after compacting ``count``, when read."""
        if count < len(self.messages):
            return self.messages[count]
        if count == len(self.messages) and len(self._entries) > count:
            return _core.decode_each(self._entries[count:])[0]
        return None

    def safe_count(self, n: int) -> int:
        """The largest count ≤ ``n`` whose compaction does not leave a tool result first among
        the kept messages (its tool call would be summarised away: LLM APIs refuse such an
        orphan); 0 when there is none."""
        count = min(_check_count(n, allow_zero=True), len(self.messages))
        while count > 0:
            kept = self._kept(count)
            if kept is None or kept.type != "tool":
                return count
            count -= 1
        return 0

    def _compaction(self, count: object) -> tuple[int, int, str]:
        """(count, boundary, digest) for the library's compact; refused when ``count`` is out of
        range or would leave an orphan tool result first."""
        count = _check_count(count)
        if count > len(self.messages):
            raise InvalidArgumentError(
                f"cannot compact {count} messages: only {len(self.messages)} were read"
            )
        if self.safe_count(count) != count:
            raise InvalidArgumentError(
                f"compacting {count} messages would leave a tool result first among the kept "
                f"messages (its tool call summarised away): compact oldest.safe_count({count}) "
                f"= {self.safe_count(count)} instead"
            )
        covered = self._entries[: count + 1]
        boundary = 1 if len(covered) > count else 0
        return count, boundary, digest(covered)


def stored(oldest: OldestMessages) -> Iterator[tuple[bytes, BaseMessage]]:
    """Each of ``oldest``'s messages with its bytes as stored (a token count is cached by them)."""
    return zip(oldest._entries, oldest.messages, strict=False)


def _check_count(count: object, allow_zero: bool = False) -> int:
    low = 0 if allow_zero else 1
    if isinstance(count, bool) or not isinstance(count, int) or not low <= count <= MAX_COMPACT:
        raise InvalidSizeError(f"count must be an int in [{low}, {MAX_COMPACT}], got {count!r}")
    return count


def oldest(key: str, count: object) -> Call:
    """The oldest ``count`` entries and the one after them: a plain LRANGE."""
    count = _check_count(count)
    return Call("LRANGE", (key, -(count + 1), -1), key)


def oldest_reply(count: int, entries: Sequence[bytes | str]) -> OldestMessages:
    """The LRANGE's reply (newest first) -> OldestMessages."""
    raw = tuple(_raw(entry) for entry in reversed(entries))
    complete = len(raw) <= count
    messages = tuple(_core.decode_each(raw[:count]))
    return OldestMessages(messages, complete, raw)


def compact(key: str, oldest: object, count: object, summary: object, ttl: int) -> Call:
    """The compare-and-swap of ``count`` oldest messages of ``oldest`` by ``summary``."""
    if not isinstance(oldest, OldestMessages):
        raise InvalidArgumentError(
            f"oldest must be what MessageStore.oldest() returned, got {type(oldest).__name__}"
        )
    checked, boundary, expected = oldest._compaction(count)
    message = summary_message(summary) if isinstance(summary, str) else summary
    entry = _core.encode(message)
    return Call(
        "FCALL", (COMPACT, 1, key, checked, boundary, ttl, expected, entry), key, _core.HISTORY
    )


# --- edits by message id ----------------------------------------------------------------------


@dataclass(frozen=True)
class EditResult:
    """What an edit did.

    Attributes:
        changed: how many stored messages were removed or replaced.
        missing: the ids asked for that no stored message has, in the order given.
    """

    changed: int
    missing: tuple[str, ...]


def _check_id(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidArgumentError(f"a message id is a non-empty str, got {value!r}")
    return value


def remove(key: str, ids: object, ttl: int) -> Call:
    if isinstance(ids, str) or not isinstance(ids, Sequence):
        raise InvalidArgumentError(
            f"ids must be a sequence of message ids (a list, a tuple), got {ids!r}"
        )
    checked = [_check_id(i) for i in ids]
    if not checked:
        raise InvalidArgumentError("ids must name at least one message id")
    if len(checked) > MAX_IDS:
        raise InvalidArgumentError(f"an edit names at most {MAX_IDS} ids, got {len(checked)}")
    return Call("FCALL", (EDIT, 1, key, ttl, "remove", *checked), key, _core.HISTORY)


def replace(key: str, message_id: object, message: object, ttl: int) -> Call:
    """The replacement keeps the id it replaces when the new message has none of its own."""
    checked = _check_id(message_id)
    if isinstance(message, BaseMessage) and message.id is None:
        message = message.model_copy(update={"id": checked})
    entry = _core.encode(message)
    return Call("FCALL", (EDIT, 1, key, ttl, "replace", checked, entry), key, _core.HISTORY)


def edit_reply(reply: Sequence[Any]) -> EditResult:
    changed, *missing = reply
    return EditResult(int(changed), tuple(_text(m) for m in missing))


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


# --- the sessions index -----------------------------------------------------------------------


@dataclass(frozen=True)
class SessionEntry:
    """One session of a sessions index.

    Attributes:
        session_id: the session's id: its key without ``key_prefix`` (the whole key when it does
            not start with it).
        last_activity: when the session last had messages appended (the server's clock, UTC).
        key: the session's Redis key.
    """

    session_id: str
    last_activity: datetime
    key: str


def check_index(index: object, key: str) -> str | None:
    """A sessions index name, checked against the session's key: both must hash to one cluster
    slot (the append updates both atomically), on any server, so a configuration that works on
    one server works on a cluster."""
    if index is None:
        return None
    if not isinstance(index, str) or not index:
        raise InvalidArgumentError(f"sessions_index must be None or a non-empty str, got {index!r}")
    if key_slot(index.encode()) != key_slot(key.encode()):
        raise CrossSlotError(
            f"the sessions index {index!r} and the session key {key!r} hash to different Redis "
            f"Cluster slots ({key_slot(index.encode())} and {key_slot(key.encode())}), and each "
            f"append updates both in one atomic call: give both one hash tag, e.g. "
            f'key_prefix="chat:{{alice}}:" with sessions_index="sessions:{{alice}}"'
        )
    return index


def append_indexed(
    key: str,
    index: str,
    encoded: Sequence[str],
    max_messages: int,
    ttl: int,
    batch_id: bytes | None = None,
) -> Call:
    """The append (exactly once, as _core.append) with the sessions index as a third key, built
    here so that the plain append's call stays _core's alone."""
    batch_id = _core.new_batch_id() if batch_id is None else batch_id
    ids = _core.batches_key(key)
    args = (_core.APPEND, 3, key, ids, index, max_messages, ttl, batch_id, *encoded)
    return Call("FCALL", args, key, _core.HISTORY)


def clear_indexed(key: str, index: str) -> Call:
    """The session, its batch ids and its place in the index: one function, atomic."""
    return Call("FCALL", (CLEAR, 3, key, _core.batches_key(key), index), key, _core.HISTORY)


def sessions(index: object, ttl: object, offset: object, count: object) -> Call:
    if not isinstance(index, str) or not index:
        raise InvalidArgumentError(f"index must be a non-empty str, got {index!r}")
    seconds = _core.check_ttl(ttl)
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= _core.MAX_INT:
        raise InvalidSizeError(f"offset must be an int in [0, {_core.MAX_INT}], got {offset!r}")
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_PAGE:
        raise InvalidSizeError(f"count must be an int in [1, {MAX_PAGE}], got {count!r}")
    return Call("FCALL", (SESSIONS, 1, index, seconds, offset, count), index, _core.HISTORY)


def sessions_reply(reply: Sequence[Any], key_prefix: str) -> list[SessionEntry]:
    entries = []
    for member, score in zip(reply[::2], reply[1::2], strict=True):
        key = _text(member)
        session_id = key[len(key_prefix) :] if key.startswith(key_prefix) else key
        when = datetime.fromtimestamp(int(float(score)) / 1000, tz=timezone.utc)
        entries.append(SessionEntry(session_id, when, key))
    return entries
