"""Bounded conversation memory in Redis for LangChain 1.x agents (``create_agent``).

``RedisHistoryMiddleware`` keeps an agent's conversation in the same Redis LIST, in the same bytes,
as ``RedisChatMessageHistory`` (and langchain_community's class): a session begun by a
``RunnableWithMessageHistory`` chain continues in the agent, and the other way round.

Per invocation it costs two round trips, whatever the number of model and tool steps inside it:
one read before the agent runs (the newest ``window`` messages, placed before the new input) and
one atomic append after it finished (exactly the messages the invocation added, trimmed to
``max_messages`` and with the TTL set), exactly once: named after the ids of the messages it
appends, so a run retried after the append raised does not store them twice
(docs/exactly-once.md). A run that fails or is interrupted part-way stores nothing. What the
run removed from its state is removed from the session, and a summary LangChain's
SummarizationMiddleware made replaces the messages it summarised (docs/agents.md).

Needs the ``agents`` extra: ``pip install 'pyhistory[agents]'``.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Annotated, Any

try:
    from langchain.agents.middleware import AgentMiddleware, AgentState
    from langchain.agents.middleware.types import PrivateStateAttr
    from langchain_core.messages import BaseMessage, RemoveMessage, SystemMessage
    from langchain_core.runnables import RunnableConfig
    from langgraph.config import get_config
    from langgraph.graph.message import REMOVE_ALL_MESSAGES
    from langgraph.runtime import Runtime
except ImportError as error:  # pragma: no cover - exercised by a test that hides langchain
    raise ImportError(
        "pyhistory.agents needs LangChain 1.x (langchain>=1.0): pip install 'pyhistory[agents]'"
    ) from error
from typing_extensions import NotRequired

from pyhistory import _core
from pyhistory._bounded import MAX_COMPACT, OldestMessages, is_summary
from pyhistory.errors import InvalidArgumentError, InvalidSessionIdError
from pyhistory.functions import AsyncClient, SyncClient
from pyhistory.store import MessageStore
from pyhistory.summaries import Summarizer
from pyhistory.telemetry import traced

__all__ = ["DEFAULT_SESSION_KEYS", "HistoryState", "RedisHistoryMiddleware", "SessionResolver"]

DEFAULT_SESSION_KEYS: tuple[str, ...] = ("thread_id", "session_id")
"""Where the session id is looked for, in order: each key in the run's context, then in
``config["configurable"]``."""

SessionResolver = Callable[[Runtime[Any], RunnableConfig], str]
"""A function that names the session of a run from its runtime and its config."""

KNOWN = "pyhistory_known"
_NO_CONFIG: RunnableConfig = {}
# The id a message stored without one goes by in the agent's state (see _state_ids).
NO_ID = "pyhistory-noid-"
# How many times a summary from the agent's state is swapped in before it is left out.
COMPACT_ATTEMPTS = 3


class HistoryState(AgentState[Any]):
    """The agent state the middleware adds to: the ids of the messages that were already stored
    (or are not to be stored) when this invocation began. Private: not in the agent's input or
    output; kept by a checkpointer, so a thread's next invocation knows what is new."""

    pyhistory_known: NotRequired[Annotated[list[str], PrivateStateAttr]]


class RedisHistoryMiddleware(AgentMiddleware[HistoryState, Any]):
    """Conversation memory for ``create_agent`` in a Redis LIST per session.

    Before the agent runs, the newest ``window`` messages of the session are read (one round trip)
    and placed before the invocation's input; system messages that lead the input stay first and
    are not stored. After the agent ran, the messages this invocation added (its input, the AI
    messages with their tool calls, the tool results, the final answer) are appended in one
    atomic call, trimmed to ``max_messages`` and with ``ttl`` set. A run that raises or is
    interrupted never reaches that append, so it stores nothing.

    With a checkpointer, the checkpointed thread is the model's context: the session is read only
    on the thread's first invocation (so a conversation stored by a chain or by another agent
    continues), never prepended again, and each invocation still appends what it added, so the
    Redis session stays current for every other reader. A run resumed after an error or an
    interrupt appends its messages once, when it completes.

    Messages the run removed from its state (a ``RemoveMessage`` from the agent or another
    middleware) that the session stores are removed from the session by id after the append.
    A summary LangChain's ``SummarizationMiddleware`` put in place of older messages is stored
    in their place (:meth:`MessageStore.compact`) when they are the session's oldest; see
    docs/agents.md for the exact rules.

    Args:
        url: the server, used when no client is given (one shared pool per URL).
        key_prefix: prepended to the session id to form the key (as langchain_community's).
        ttl: seconds until an idle session expires; set by every append and refreshed by reads.
        max_messages: keep only this many of the newest messages. None: unbounded.
        window: how many of the newest messages are given to the agent. None: all.
        session: where the run's session id comes from: a key, or keys tried in order, looked up
            in the run's context (a mapping or an object's attributes) and then in
            ``config["configurable"]`` (default: ``thread_id``, then ``session_id``); or a
            function ``(runtime, config) -> str``.
        redis_client: a redis-py client to use instead of ``url``.
        async_redis_client: a ``redis.asyncio`` client for the asyncio hooks.
        summarizer: summarise the session after each append, when it passes the summarizer's
            threshold (:class:`pyhistory.Summarizer`: its model, trigger and how many messages
            it keeps); costs one more round trip (``LLEN``) per invocation, and the model's call
            when it is due. Its ``trigger_messages`` must be below ``max_messages``.
        **store_options: any other keyword of ``pyhistory.store.MessageStore`` (``cluster``,
            ``refresh_ttl_on_read``, ``wait_for_replicas``, ...).

    Raises:
        InvalidSessionIdError: (when a run starts) no session id was found, or it is empty.
    """

    state_schema = HistoryState

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        key_prefix: str = "message_store:",
        ttl: int | timedelta | None = None,
        *,
        max_messages: int | None = None,
        window: int | None = None,
        session: str | Sequence[str] | SessionResolver = DEFAULT_SESSION_KEYS,
        redis_client: SyncClient | None = None,
        async_redis_client: AsyncClient | None = None,
        summarizer: Summarizer | None = None,
        **store_options: Any,
    ) -> None:
        super().__init__()
        self.url = url
        self.key_prefix = key_prefix
        self.ttl = ttl
        self.max_messages = max_messages
        self.window = window
        self.redis_client = redis_client
        self.async_redis_client = async_redis_client
        self.store_options = dict(store_options)
        if isinstance(session, str):
            session = (session,)
        if not callable(session):
            session = tuple(session)
            if not session or not all(isinstance(key, str) and key for key in session):
                raise InvalidArgumentError(
                    f"session must be a key, keys or a function, got {session!r}"
                )
        self.session = session
        if summarizer is not None:
            if not isinstance(summarizer, Summarizer):
                raise InvalidArgumentError(
                    f"summarizer must be a pyhistory.Summarizer, got {summarizer!r}"
                )
            summarizer.check_bound(max_messages)
        self.summarizer = summarizer
        try:
            self.store("settings-check")  # every setting checked now, with no I/O
        except TypeError as error:  # a keyword MessageStore does not take
            raise InvalidArgumentError(f"{type(self).__name__}: {error}") from error

    def store(self, session_id: str) -> MessageStore:
        """The session's store with this middleware's settings (no I/O; clients are shared)."""
        return MessageStore(
            session_id,
            self.url,
            self.key_prefix,
            self.ttl,
            max_messages=self.max_messages,
            window=self.window,
            redis_client=self.redis_client,
            async_redis_client=self.async_redis_client,
            **self.store_options,
        )

    def session_id(self, runtime: Runtime[Any], config: RunnableConfig | None = None) -> str:
        """The session of the current run, from its context or its config (the one given, else
        the running graph's)."""
        if not config:
            try:
                config = get_config()
            except RuntimeError:  # outside a graph run
                config = {}
        if callable(self.session):
            return _checked(self.session(runtime, config), "the session function")
        context = runtime.context
        configurable = config.get("configurable") or {}
        for key in self.session:
            for where, value in (
                ("the run's context", _lookup(context, key)),
                ('config["configurable"]', configurable.get(key)),
            ):
                if value is not None:
                    return _checked(value, f"{key!r} in {where}")
        raise InvalidSessionIdError(
            f"{self.name} found no session id for this run: pass it as "
            f"config={{'configurable': {{{self.session[0]!r}: ...}}}} or in the run's context "
            f"(looked for {', '.join(map(repr, self.session))})"
        )

    # --- hooks ---------------------------------------------------------------------------------
    # LangGraph passes each hook the run's config (a node's `config` parameter), which asyncio
    # code on Python 3.10 could not read from get_config().

    @traced("pyhistory.agent.before_agent", kind="internal")
    def before_agent(
        self, state: HistoryState, runtime: Runtime[Any], config: RunnableConfig = _NO_CONFIG
    ) -> dict[str, Any] | None:
        if KNOWN in state:  # a checkpointed thread: its state already holds the conversation
            return None
        history = self.store(self.session_id(runtime, config)).messages
        return _placed(state["messages"], history)

    @traced("pyhistory.agent.before_agent", kind="internal")
    async def abefore_agent(
        self, state: HistoryState, runtime: Runtime[Any], config: RunnableConfig = _NO_CONFIG
    ) -> dict[str, Any] | None:
        if KNOWN in state:
            return None
        history = await self.store(self.session_id(runtime, config)).aget_messages()
        return _placed(state["messages"], history)

    @traced("pyhistory.agent.after_agent", kind="internal")
    def after_agent(
        self, state: HistoryState, runtime: Runtime[Any], config: RunnableConfig = _NO_CONFIG
    ) -> dict[str, Any] | None:
        added, (removed, summary) = _added(state), _removed(state)
        if added or removed or self.summarizer is not None:
            store = self.store(self.session_id(runtime, config))
            if added:
                store.add_messages(added, idempotency_key=_batch_key(added))
            if removed and summary is not None:
                for _ in range(COMPACT_ATTEMPTS):
                    oldest = store.oldest(min(len(removed), MAX_COMPACT))
                    count = _summarised(oldest, removed)
                    if not count or store.compact(oldest, count, summary):
                        break
            elif removed and _addressable(removed):
                store.remove_messages(_addressable(removed))
            if self.summarizer is not None:
                self.summarizer.summarize(store)
        return _stored(state)

    @traced("pyhistory.agent.after_agent", kind="internal")
    async def aafter_agent(
        self, state: HistoryState, runtime: Runtime[Any], config: RunnableConfig = _NO_CONFIG
    ) -> dict[str, Any] | None:
        added, (removed, summary) = _added(state), _removed(state)
        if added or removed or self.summarizer is not None:
            store = self.store(self.session_id(runtime, config))
            if added:
                await store.aadd_messages(added, idempotency_key=_batch_key(added))
            if removed and summary is not None:
                for _ in range(COMPACT_ATTEMPTS):
                    oldest = await store.aoldest(min(len(removed), MAX_COMPACT))
                    count = _summarised(oldest, removed)
                    if not count or await store.acompact(oldest, count, summary):
                        break
            elif removed and _addressable(removed):
                await store.aremove_messages(_addressable(removed))
            if self.summarizer is not None:
                await self.summarizer.asummarize(store)
        return _stored(state)


# --- the pure part: what to place, what to store ------------------------------------------------


def _placed(messages: Sequence[BaseMessage], history: list[BaseMessage]) -> dict[str, Any]:
    """The state update that puts the stored ``history`` between the input's leading system
    messages and the rest of the input, and remembers which messages are not this run's."""
    lead = 0
    while lead < len(messages) and isinstance(messages[lead], SystemMessage):
        lead += 1
    history = [
        m if m.id else m.model_copy(update={"id": i})
        for m, i in zip(history, _state_ids(history), strict=True)
    ]
    stored = {m.id for m in history}
    # An input message already stored (the same id, sent again by a retried request) is not
    # placed or stored twice.
    rest = [m for m in messages[lead:] if m.id not in stored]
    known = [*_ids(messages[:lead]), *_ids(history)]
    if not history and len(rest) == len(messages) - lead:
        return {KNOWN: known}
    placed = [*messages[:lead], *history, *rest]
    return {"messages": [RemoveMessage(id=REMOVE_ALL_MESSAGES), *placed], KNOWN: known}


def _added(state: HistoryState) -> list[BaseMessage]:
    """The messages of the state that this invocation added, in order, but for a summary that
    SummarizationMiddleware put in place of older messages: it is not appended, but swapped in
    for the messages it replaced when they are the session's oldest (see after_agent)."""
    known = set(state.get("pyhistory_known") or ())
    return [
        m
        for m in state["messages"]
        if (m.id is None or m.id not in known)
        and m.additional_kwargs.get("lc_source") != "summarization"
    ]


def _removed(state: HistoryState) -> tuple[list[str], BaseMessage | None]:
    """The ids of the messages known when the run began (stored, or not to be stored) that its
    final state no longer holds, and the summary this run put in their place, if any (a summary
    message not known before: SummarizationMiddleware's)."""
    known = state.get("pyhistory_known") or ()
    present = {m.id for m in state["messages"]}
    removed = [i for i in known if i not in present]
    known_ids = set(known)
    summary = next((m for m in state["messages"] if is_summary(m) and m.id not in known_ids), None)
    return removed, summary


def _addressable(removed: Sequence[str]) -> list[str]:
    """The removed ids that stored messages can have: not those made up for messages stored
    without an id (they cannot be named, so they stay)."""
    return [i for i in removed if not i.startswith(NO_ID)]


def _summarised(oldest: OldestMessages, removed: Sequence[str]) -> int:
    """How many of the session's oldest messages the summary replaces: those, from the start,
    that the run removed (none when the session does not start with them: the messages read
    before the run were not its oldest), cut where no tool result is left first."""
    gone = set(removed)
    count = 0
    for state_id in _state_ids(oldest.messages):
        if state_id not in gone:
            break
        count += 1
    return oldest.safe_count(count)


def _state_ids(messages: Iterable[BaseMessage]) -> list[str]:
    """The id each stored message goes by in the agent's state: its own, or, for one stored
    without an id (by a chain, say), one made from its stored bytes and how many equal messages
    come before it, so that the same messages read again get the same ids."""
    seen: dict[str, int] = {}
    ids = []
    for message in messages:
        if message.id:
            ids.append(message.id)
            continue
        raw = _core.encode(message).encode("utf-8", "surrogatepass")
        digest = hashlib.blake2b(raw, digest_size=8).hexdigest()
        rank = seen.get(digest, 0)
        seen[digest] = rank + 1
        ids.append(f"{NO_ID}{digest}-{rank}")
    return ids


def _batch_key(added: Sequence[BaseMessage]) -> str | None:
    """The append's idempotency key: the ids of the messages it stores (LangGraph gives every
    message of the state one). A run retried after its append raised (the append may have been
    applied: a lost reply) appends the same messages under the same key, which the library
    recognises (docs/exactly-once.md): stored once. None when a message has no id."""
    ids = [m.id for m in added]
    if any(not i for i in ids):
        return None
    return "agent\x1f" + "\x1f".join(str(i) for i in ids)


def _stored(state: HistoryState) -> dict[str, Any]:
    """After a successful append every message of the state is known: a second pass of the hook
    (a retried node, a resumed thread) stores nothing again."""
    return {KNOWN: _ids(state["messages"])}


def _ids(messages: Iterable[BaseMessage]) -> list[str]:
    return [m.id for m in messages if m.id is not None]


def _lookup(context: object, key: str) -> object:
    if context is None:
        return None
    if isinstance(context, Mapping):
        return context.get(key)
    return getattr(context, key, None)


def _checked(value: object, where: str) -> str:
    if isinstance(value, (int, uuid.UUID)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value:
        raise InvalidSessionIdError(
            f"the session id from {where} must be a non-empty str, got {value!r}"
        )
    return value
