"""Token-budget windows: which of the entries a read fetched fit a budget of tokens, and the
counts already made, so that no message is counted twice by one process. Pure code: no I/O.

A window is chosen from the stored entries (newest first, as LRANGE returns them) and, when asked
for, the session's oldest entry (its summary, when it is one). Counting needs a decoded message
(the counter takes messages, as LangChain's do), but a count already made needs nothing: the
counts are remembered by the stored bytes, and only the entries that end up in the window are
decoded (:data:`pyhistory._core.DECODED`), each one a copy the caller owns.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.messages import BaseMessage

from pyhistory import _core, _forks
from pyhistory._bounded import is_summary
from pyhistory._library import Call
from pyhistory.errors import InvalidArgumentError

TokenCounter = Callable[[Sequence[BaseMessage]], int]
"""A function that counts the tokens of messages, as LangChain's (``count_tokens_approximately``,
a chat model's ``get_num_tokens_from_messages``). A window asks it about one message at a time."""


class TokenCounts:
    """Token counts already made, by (counter, stored entry): a message's count is asked of its
    counter once per process, whatever the session or the number of reads.

    An entry is known by a 128-bit BLAKE2b digest of its bytes (equal bytes, equal count), so the
    cache holds no stored text. Bounded: at most ``max_counts`` counts (about 150 bytes each:
    ~10 MiB at the default 65,536); the oldest go first. A counter is part of the key and is kept
    alive by it: pass the same counter object from call to call (a function, or a model's bound
    method), not a new ``lambda`` per call, or each call counts anew (still bounded).
    """

    def __init__(self, max_counts: int = 65_536) -> None:
        self.max_counts = max_counts
        self._counts: dict[tuple[Any, bytes], int] = {}
        self._lock = _forks.lock(self, "_lock")

    def __len__(self) -> int:
        return len(self._counts)

    @staticmethod
    def key(counter: TokenCounter, entry: bytes | str) -> tuple[Any, bytes]:
        raw = entry if isinstance(entry, bytes) else entry.encode("utf-8", "surrogatepass")
        return counter, hashlib.blake2b(raw, digest_size=16).digest()

    def get(self, key: tuple[Any, bytes]) -> int | None:
        return self._counts.get(key)

    def put(self, key: tuple[Any, bytes], count: int) -> None:
        with self._lock:
            if key in self._counts:
                return
            while len(self._counts) >= self.max_counts and self._counts:
                del self._counts[next(iter(self._counts))]
            self._counts[key] = count

    def clear(self) -> None:
        with self._lock:
            self._counts.clear()


# The process's counts: shared by every store, as the decoded messages are.
COUNTS = TokenCounts()


def _approximate() -> TokenCounter:
    """LangChain's approximate counter, which langchain-core has had since 0.3.x (not 0.3.0)."""
    try:
        from langchain_core.messages.utils import count_tokens_approximately
    except ImportError:
        raise InvalidArgumentError(
            "this langchain-core has no count_tokens_approximately (newer releases have it): "
            "pass a token_counter"
        ) from None
    return count_tokens_approximately


def check_budget(max_tokens: object, token_counter: object) -> TokenCounter:
    """The budget's checks, before any I/O; the counter to use."""
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
        raise InvalidArgumentError(f"max_tokens must be an int >= 0, got {max_tokens!r}")
    if token_counter is None:
        return _approximate()
    if not callable(token_counter):
        raise InvalidArgumentError(
            f"token_counter must be a function of messages returning an int, got {token_counter!r}"
        )
    return token_counter


def reads(key: str, window: int, with_summary: bool) -> list[Call]:
    """The plain reads of a token window, sent in one flight: the newest ``window`` entries (0:
    all) and, with ``with_summary`` and a window, the oldest entry. The window is read with one
    entry more than asked, which tells whether the list holds more than the window (so that the
    oldest entry is not one of them)."""
    if not window:
        return [_core.read(key, 0)]
    newest = Call("LRANGE", (key, 0, window), key)
    if not with_summary:
        return [_core.read(key, window)]
    return [newest, Call("LRANGE", (key, -1, -1), key)]


def choose(
    replies: Sequence[Any],
    window: int,
    max_tokens: int,
    counter: TokenCounter,
    with_summary: bool,
) -> list[BaseMessage]:
    """The token window from the replies of :func:`reads`: the session's summary first (when
    asked for, present and within the budget), then the newest entries whose counts fit what is
    left of the budget, oldest first, never starting with a tool result."""
    entries: list[Any] = list(replies[0])
    oldest: Any = None
    if window and len(entries) > window:  # the list is longer than the window
        del entries[window:]
        if with_summary and replies[1]:
            oldest = replies[1][0]
    elif with_summary and entries:  # the window holds the whole list
        oldest = entries[-1]
    left = max_tokens
    summary: list[BaseMessage] = []
    if oldest is not None:
        message = _core.decode_each([oldest])[0]
        if is_summary(message):
            if entries and entries[-1] == oldest:  # in the window too: given once, first
                entries.pop()
            cost = _count(counter, oldest)  # the counter gets a copy of its own
            if cost <= left:
                left -= cost
                summary.append(message)
    chosen: list[Any] = []
    for entry in entries:  # newest first
        cost = _count(counter, entry)
        if cost > left:
            break
        left -= cost
        chosen.append(entry)
    messages = _core.decode(chosen)  # oldest first, leading tool results dropped
    return summary + messages


def count_entry(counter: TokenCounter, entry: bytes | str, message: BaseMessage) -> int:
    """The count of ``message``, stored as ``entry``: counted once per process."""
    return _count(counter, entry, message)


def _count(counter: TokenCounter, entry: bytes | str, message: BaseMessage | None = None) -> int:
    key = TokenCounts.key(counter, entry)
    count = COUNTS.get(key)
    if count is None:
        if message is None:
            message = _core.decode_each([entry])[0]
        count = counter([message])
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise InvalidArgumentError(
                f"token_counter must return an int >= 0, returned {count!r} for one message"
            )
        COUNTS.put(key, count)
    return count
