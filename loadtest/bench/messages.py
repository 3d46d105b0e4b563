"""The messages a benchmark writes: seeded text of chat-like sizes, encoded as stored."""

from __future__ import annotations

import json
import random

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    message_to_dict,
)

# --- messages ----------------------------------------------------------------------------------

_WORDS_TEXT = (
    "the of and to in is you that it for on with as are this be at or have from an by not "
    "but what all were when we there can your which their said if will each about how up out "
    "them then she many some so these would other into has more her two like him see time "
    "could no make than first been its who now people my made over did down only way find "
    "use may water long little very after words called just where most know get through back "
    "much go good new write our used me man too any day same right look think also around "
    "another came come work three word must because does part even place well such here take "
    "why help put redis session history window message model prompt token latency answer "
    "question deploy cluster replica python asyncio function atomic pipeline context summary "
    "retrieval vector"
)
_WORDS = tuple(_WORDS_TEXT.split())


def _text(rng: random.Random, low: int, high: int) -> str:
    target = rng.randint(low, high)
    words: list[str] = []
    size = 0
    while size < target:
        word = rng.choice(_WORDS)
        words.append(word)
        size += len(word) + 1
    text = " ".join(words)[:target].rstrip()
    return text[0].upper() + text[1:] + "."


def make_pair(rng: random.Random) -> tuple[HumanMessage, AIMessage]:
    """A user question (~200-350 chars) and a model answer (~350-600 chars)."""
    return HumanMessage(_text(rng, 200, 350)), AIMessage(_text(rng, 350, 600))


def encode(message: BaseMessage) -> str:
    return json.dumps(message_to_dict(message))
