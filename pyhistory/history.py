"""RedisChatMessageHistory: LangChain's classic chat-history interface on the MessageStore.

The adapter for ``BaseChatMessageHistory``, which langchain-core deprecated (removal in 2.0). It is
the one module that imports it, and ``import pyhistory`` imports it only when it is asked for.
"""

from __future__ import annotations

from langchain_core.chat_history import BaseChatMessageHistory

from pyhistory.store import MessageStore


class RedisChatMessageHistory(MessageStore, BaseChatMessageHistory):
    """Chat history of one session, in one Redis LIST, laid out as langchain_community lays it out.

    A drop-in for ``langchain_community.chat_message_histories.RedisChatMessageHistory``: the
    first four parameters mean the same, and both read and write the same data. Every operation
    is one round trip; an append (any batch) is atomic with its trim and its TTL. Everything but
    LangChain's helpers (``add_user_message``, ``add_ai_message``, ...) comes from
    :class:`pyhistory.store.MessageStore`, whose docstring lists the parameters.
    """
