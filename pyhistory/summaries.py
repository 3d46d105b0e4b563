"""Running summaries: when a session passes a threshold, its oldest messages are replaced by one
summary message written by the application's chat model, without losing what is appended
meanwhile.

A pass reads the session's length (one round trip; most passes stop here), then its oldest part
(:meth:`MessageStore.oldest`), has the model summarise it (a summary already at the start of the
session is part of what is summarised: a running summary), and replaces those messages with the
new summary by :meth:`MessageStore.compact`, a compare-and-swap: it applies only if the oldest
messages are still those that were read, so messages appended during the model's call are kept,
in order. A pass that loses the swap (the oldest messages changed: another process compacted,
removed or trimmed them) reads again and tries again, at most ``attempts`` times in all; the
model is asked again only when what is to be summarised changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from langchain_core.messages import BaseMessage, HumanMessage, get_buffer_string
from langchain_core.runnables import RunnableConfig

from pyhistory import _core, _tokens
from pyhistory._bounded import (
    MAX_COMPACT,
    OldestMessages,
    is_summary,
    stored,
    summary_message,
)
from pyhistory._tokens import TokenCounter
from pyhistory.errors import InvalidArgumentError
from pyhistory.store import MessageStore

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

__all__ = ["DEFAULT_PROMPT", "Summarizer", "asummarize", "summarize"]

DEFAULT_PROMPT = """Summarise the conversation below for whoever continues it. Keep what the \
rest of the conversation may need: the user's goals and preferences, the facts, names and numbers \
established, the decisions made and why, the tools' results that still matter, and what is still \
open. When it begins with a summary of earlier turns, carry that summary's content into yours: \
yours replaces it. Reply with the summary only.

<conversation>
{messages}
</conversation>"""
"""The default prompt: ``{messages}`` is replaced by the messages to summarise, one per line."""

# The model's call is marked as LangChain's SummarizationMiddleware marks its own, and kept out of
# an agent's streamed tokens (LangGraph's "nostream" tag) when a pass runs inside a graph.
_CALL: RunnableConfig = {"metadata": {"lc_source": "summarization"}, "tags": ["nostream"]}


@dataclass(frozen=True)
class Summarizer:
    """When and how a session is summarised; every setting is checked here, with no I/O.

    Args:
        model: the chat model that writes the summary (any LangChain chat model).
        trigger_messages: summarise once the session holds at least this many messages.
        trigger_tokens: summarise once the session's messages count at least this many tokens
            (each pass then reads the whole session: bound it with ``max_messages``).
        keep_messages: how many of the newest messages are kept as they are (a few more when
            the cut would separate tool results from their tool call).
        token_counter: counts tokens for ``trigger_tokens`` (default: LangChain's
            ``count_tokens_approximately``), once per message per process, as
            :meth:`MessageStore.messages_within` does.
        prompt: the instruction to the model, with ``{messages}`` where the messages go
            (default :data:`DEFAULT_PROMPT`).
        attempts: how many times a pass tries to swap its summary in before giving up (the
            oldest messages kept changing under it); at least 1.

    At least one trigger is required; ``trigger_messages`` must exceed ``keep_messages``.
    """

    model: BaseChatModel
    trigger_messages: int | None = None
    trigger_tokens: int | None = None
    keep_messages: int = 20
    token_counter: TokenCounter | None = None
    prompt: str | None = None
    attempts: int = 3
    _counter: TokenCounter = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.trigger_messages is None and self.trigger_tokens is None:
            raise InvalidArgumentError("a summarizer needs trigger_messages or trigger_tokens")
        _positive("keep_messages", self.keep_messages, minimum=0)
        _positive("attempts", self.attempts)
        if self.trigger_messages is not None:
            _positive("trigger_messages", self.trigger_messages)
            if self.trigger_messages <= self.keep_messages:
                raise InvalidArgumentError(
                    f"trigger_messages ({self.trigger_messages}) must exceed keep_messages "
                    f"({self.keep_messages}), or there is nothing to summarise"
                )
        if self.trigger_tokens is not None:
            _positive("trigger_tokens", self.trigger_tokens)
        if self.prompt is not None and (
            not isinstance(self.prompt, str) or "{messages}" not in self.prompt
        ):
            raise InvalidArgumentError("prompt must be a str holding {messages}")
        counter = _tokens.check_budget(0, self.token_counter)
        object.__setattr__(self, "_counter", counter)

    def check_bound(self, max_messages: int | None) -> None:
        """Refuse a ``trigger_messages`` a session bounded to ``max_messages`` never reaches
        with its summary: the append's trim would drop the oldest messages (the summary first)
        instead of them being summarised."""
        if max_messages and self.trigger_messages and self.trigger_messages >= max_messages:
            raise InvalidArgumentError(
                f"trigger_messages ({self.trigger_messages}) must be below max_messages "
                f"({max_messages}): at the bound, appends trim the oldest messages, the summary "
                f"first, before a summary is made"
            )

    # --- a pass ------------------------------------------------------------------------------

    def summarize(self, history: MessageStore) -> bool:
        """One pass on ``history``: True when its oldest messages were replaced by a summary;
        False when the session is below the threshold, holds nothing to summarise, or changed
        under every attempt (it is then left as it is: the next pass tries again)."""
        self.check_bound(history.max_messages)
        made: tuple[list[BaseMessage], BaseMessage] | None = None
        for _ in range(self.attempts):
            length = len(history)
            if not self._may_be_due(length):
                return False
            oldest = history.oldest(min(length, MAX_COMPACT))
            plan = self._plan(oldest, length)
            if plan is None:
                return False
            count, folded = plan
            if made is None or made[0] != folded:
                made = folded, _summary(self.model.invoke(self._prompt(folded), _CALL))
            if history.compact(oldest, count, made[1]):
                return True
        return False

    async def asummarize(self, history: MessageStore) -> bool:
        """The asyncio twin of :meth:`summarize`."""
        self.check_bound(history.max_messages)
        made: tuple[list[BaseMessage], BaseMessage] | None = None
        for _ in range(self.attempts):
            length = await history.alength()
            if not self._may_be_due(length):
                return False
            oldest = await history.aoldest(min(length, MAX_COMPACT))
            plan = self._plan(oldest, length)
            if plan is None:
                return False
            count, folded = plan
            if made is None or made[0] != folded:
                made = folded, _summary(await self.model.ainvoke(self._prompt(folded), _CALL))
            if await history.acompact(oldest, count, made[1]):
                return True
        return False

    # --- the pure part -----------------------------------------------------------------------

    def _may_be_due(self, length: int) -> bool:
        if length <= self.keep_messages + 1:
            return False  # nothing to fold, or one message: the summary it would be
        if self.trigger_tokens is not None:
            return True  # the oldest messages tell
        return self.trigger_messages is not None and length >= self.trigger_messages

    def _plan(self, oldest: OldestMessages, length: int) -> tuple[int, list[BaseMessage]] | None:
        """How many of the oldest messages to fold and which, or None when it is not due.
        ``oldest`` holds the whole session, or its oldest ``MAX_COMPACT`` messages when it is
        longer (then ``length``, read just before, stands for its length)."""
        messages = list(oldest.messages)
        size = len(messages) if oldest.complete else max(length, len(messages) + 1)
        due = self.trigger_messages is not None and size >= self.trigger_messages
        if not due and self.trigger_tokens is not None:
            # A session longer than MAX_COMPACT messages is due; otherwise its count tells.
            # Counted by their stored bytes, as read (OldestMessages keeps them, oldest first).
            total = sum(
                _tokens.count_entry(self._counter, entry, message)
                for entry, message in stored(oldest)
            )
            due = not oldest.complete or total >= self.trigger_tokens
        if not due:
            return None
        count = oldest.safe_count(min(len(messages), size - self.keep_messages))
        if count < 1 or (count == 1 and is_summary(messages[0])):
            return None  # nothing new to fold in
        return count, messages[:count]

    def _prompt(self, folded: Sequence[BaseMessage]) -> list[BaseMessage]:
        text = get_buffer_string(folded)
        return [HumanMessage((self.prompt or DEFAULT_PROMPT).replace("{messages}", text))]


def summarize(
    history: MessageStore,
    model: BaseChatModel,
    *,
    trigger_messages: int | None = None,
    trigger_tokens: int | None = None,
    keep_messages: int = 20,
    token_counter: TokenCounter | None = None,
    prompt: str | None = None,
    attempts: int = 3,
) -> bool:
    """Summarise ``history``'s oldest messages with ``model`` when it passes a threshold: one pass
    of a :class:`Summarizer` with these settings (see there). True when it did.

    Call it after an append (``add_messages``), e.g. once per turn; below the threshold it costs
    one ``LLEN``. Messages appended while the model writes the summary are kept."""
    return Summarizer(
        model,
        trigger_messages,
        trigger_tokens,
        keep_messages,
        token_counter,
        prompt,
        attempts,
    ).summarize(history)


async def asummarize(
    history: MessageStore,
    model: BaseChatModel,
    *,
    trigger_messages: int | None = None,
    trigger_tokens: int | None = None,
    keep_messages: int = 20,
    token_counter: TokenCounter | None = None,
    prompt: str | None = None,
    attempts: int = 3,
) -> bool:
    """The asyncio twin of :func:`summarize`."""
    return await Summarizer(
        model,
        trigger_messages,
        trigger_tokens,
        keep_messages,
        token_counter,
        prompt,
        attempts,
    ).asummarize(history)


def _summary(reply: BaseMessage) -> BaseMessage:
    return summary_message(_text(reply))


def _text(reply: BaseMessage) -> str:
    """The text of a model's reply (its text blocks, when its content is a list)."""
    content = reply.content
    if isinstance(content, str):
        return content.strip()
    parts = [
        block if isinstance(block, str) else str(block.get("text", ""))
        for block in content
        if isinstance(block, str) or block.get("type") == "text"
    ]
    return "".join(parts).strip()


def _positive(name: str, value: object, minimum: int = 1) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not minimum <= value <= _core.MAX_INT
    ):
        raise InvalidArgumentError(
            f"{name} must be an int in [{minimum}, {_core.MAX_INT}], got {value!r}"
        )
