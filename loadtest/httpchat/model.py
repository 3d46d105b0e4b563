"""An offline fake chat model: answers after a configurable latency, optionally token by token.

The answer is made from the words of the question and the size of the history the model was
given, so it is deterministic and depends on its input; nothing leaves the process.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from langchain_core.messages import BaseMessage


@dataclass(frozen=True)
class FakeChatModel:
    first_token_ms: float = 40.0  # time to the first token (prompt processing)
    token_ms: float = 2.0  # time between two tokens
    tokens: int = 24  # tokens in an answer

    @classmethod
    def from_env(cls) -> FakeChatModel:
        return cls(
            first_token_ms=float(os.environ.get("CHAT_MODEL_FIRST_TOKEN_MS", cls.first_token_ms)),
            token_ms=float(os.environ.get("CHAT_MODEL_TOKEN_MS", cls.token_ms)),
            tokens=int(os.environ.get("CHAT_MODEL_TOKENS", cls.tokens)),
        )

    @property
    def latency_ms(self) -> float:
        """How long a whole answer takes."""
        return self.first_token_ms + self.token_ms * max(0, self.tokens - 1)

    def _tokens(self, messages: Sequence[BaseMessage]) -> list[str]:
        question = str(messages[-1].content).split() if messages else []
        words = [f"({len(messages) - 1} earlier messages)"] + (question or ["..."])
        return [words[i % len(words)] + " " for i in range(self.tokens)]

    async def invoke(self, messages: Sequence[BaseMessage]) -> str:
        """The whole answer, after the model's whole latency."""
        await asyncio.sleep(self.latency_ms / 1000)
        return "".join(self._tokens(messages)).rstrip()

    async def stream(self, messages: Sequence[BaseMessage]) -> AsyncIterator[str]:
        """The answer token by token, at the model's pace."""
        for index, token in enumerate(self._tokens(messages)):
            delay = self.first_token_ms if index == 0 else self.token_ms
            await asyncio.sleep(delay / 1000)
            yield token
