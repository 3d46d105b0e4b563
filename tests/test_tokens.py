"""Token-budget windows (MessageStore.messages_within) against real servers: the budget, orphan
tool results, the session's summary first, one round trip, counts made once, bad input."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import pytest
import redis
from chat import CommandLog
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage

from pyhistory import InvalidArgumentError, InvalidSizeError, MessageStore, _tokens


class Counting:
    """A token counter that counts characters of content and records what it was asked."""

    def __init__(self) -> None:
        self.asked: list[list[str]] = []

    def __call__(self, messages: Sequence[BaseMessage]) -> int:
        self.asked.append([str(m.content) for m in messages])
        return sum(len(str(m.content)) for m in messages)


def summary(text: str) -> HumanMessage:
    return HumanMessage(text, additional_kwargs={"lc_source": "summarization"})


def words(*texts: str) -> list[BaseMessage]:
    """Human and AI messages in turn, with these contents."""
    return [HumanMessage(text) if i % 2 == 0 else AIMessage(text) for i, text in enumerate(texts)]


def contents(messages: Sequence[BaseMessage]) -> list[Any]:
    return [m.content for m in messages]


@pytest.fixture(autouse=True)
def no_counts_from_other_tests() -> None:
    _tokens.COUNTS.clear()


@pytest.fixture(params=["sync", "asyncio"])
def within(request: pytest.FixtureRequest) -> Any:
    """messages_within, or amessages_within run to completion: the same behaviour."""
    if request.param == "sync":
        return lambda store, *args, **kwargs: store.messages_within(*args, **kwargs)

    def run(store: MessageStore, *args: Any, **kwargs: Any) -> list[BaseMessage]:
        import asyncio

        async def go() -> list[BaseMessage]:
            return await store.amessages_within(*args, **kwargs)

        return asyncio.run(go())

    return run


def test_the_newest_messages_that_fit_the_budget(url: str, within: Any) -> None:
    store = MessageStore("s", url=url)
    store.add_messages(words("aaaa", "bbb", "cc", "d"))
    counter = Counting()
    assert contents(within(store, 6, token_counter=counter)) == ["bbb", "cc", "d"]
    assert contents(within(store, 5, token_counter=counter)) == ["cc", "d"]
    assert contents(within(store, 10, token_counter=counter)) == ["aaaa", "bbb", "cc", "d"]
    assert contents(within(store, 100, token_counter=counter)) == ["aaaa", "bbb", "cc", "d"]
    assert within(store, 0, token_counter=counter) == []
    # The first message that does not fit ends the window, even when an older one would fit.
    store.add_messages(words("eeeeeeee"))
    assert within(store, 7, token_counter=counter) == []
    assert within(MessageStore("empty", url=url), 10) == []


def test_the_default_counter_is_langchains_approximation(url: str, within: Any) -> None:
    from langchain_core.messages.utils import count_tokens_approximately

    store = MessageStore("s", url=url)
    messages = words("hello there", "general kenobi", "you are a bold one")
    store.add_messages(messages)
    each = [count_tokens_approximately([m]) for m in messages]
    assert contents(within(store, each[1] + each[2])) == contents(messages[1:])
    assert contents(within(store, sum(each))) == contents(messages)


def test_window_bounds_what_is_read_the_budget_what_is_returned(url: str, within: Any) -> None:
    store = MessageStore("s", url=url, window=3)
    store.add_messages(words("a", "b", "c", "d", "e"))
    counter = Counting()
    assert contents(within(store, 100, token_counter=counter)) == ["c", "d", "e"]
    assert contents(within(store, 2, token_counter=counter)) == ["d", "e"]
    assert contents(within(store, 100, token_counter=counter, window=4)) == ["b", "c", "d", "e"]
    assert len(counter.asked) == 4  # b, c, d and e: each counted once


def test_never_starts_with_an_orphan_tool_result(url: str, within: Any) -> None:
    store = MessageStore("s", url=url)
    call = {"name": "weather", "args": {"city": "Paris"}, "id": "c1"}
    store.add_messages(
        [
            HumanMessage("weather in Paris?"),
            AIMessage("calling", tool_calls=[call]),
            ToolMessage("sunny", tool_call_id="c1"),
            AIMessage("It is sunny."),
        ]
    )
    counter = Counting()
    # The budget reaches the tool result but not its call: the result is left out too.
    assert contents(within(store, len("sunny") + len("It is sunny."), token_counter=counter)) == [
        "It is sunny."
    ]
    assert contents(within(store, 5 + 12 + 7, token_counter=counter)) == [
        "calling",
        "sunny",
        "It is sunny.",
    ]
    # So does a window that cuts between them.
    assert contents(within(store, 100, token_counter=counter, window=2)) == ["It is sunny."]


def test_the_summary_comes_first_and_counts(url: str, within: Any) -> None:
    store = MessageStore("s", url=url)
    store.add_messages([summary("SUMMARY"), *words("aa", "bb", "cc", "dd")])
    counter = Counting()
    got = within(store, 7 + 4, token_counter=counter)
    assert contents(got) == ["SUMMARY", "cc", "dd"]
    assert got[0].additional_kwargs == {"lc_source": "summarization"}
    # Read in the same flight when the window does not reach it.
    assert contents(within(store, 100, token_counter=counter, window=2)) == ["SUMMARY", "cc", "dd"]
    # Within the window, it is given once, first.
    assert contents(within(store, 100, token_counter=counter, window=5)) == [
        "SUMMARY",
        "aa",
        "bb",
        "cc",
        "dd",
    ]
    # Left out when it alone exceeds the budget; the messages still fill it.
    assert contents(within(store, 6, token_counter=counter)) == ["bb", "cc", "dd"]
    # Without with_summary, it is a message like the others.
    assert contents(within(store, 100, token_counter=counter, with_summary=False, window=2)) == [
        "cc",
        "dd",
    ]
    assert contents(within(store, 100, token_counter=counter, with_summary=False)) == [
        "SUMMARY",
        "aa",
        "bb",
        "cc",
        "dd",
    ]


def test_a_summary_that_is_not_the_oldest_is_a_message_like_any(url: str, within: Any) -> None:
    store = MessageStore("s", url=url)
    store.add_messages([*words("aa", "bb"), summary("S"), *words("cc")])
    got = within(store, 100, token_counter=Counting(), window=2)
    assert contents(got) == ["S", "cc"]
    assert contents(within(store, 100, token_counter=Counting())) == ["aa", "bb", "S", "cc"]


def test_a_summary_then_an_orphan_tool_result(url: str, within: Any) -> None:
    store = MessageStore("s", url=url)
    store.add_messages(
        [summary("S"), ToolMessage("sunny", tool_call_id="c1"), AIMessage("It is sunny.")]
    )
    assert contents(within(store, 100, token_counter=Counting())) == ["S", "It is sunny."]


def test_a_message_is_counted_once_per_process(url: str, within: Any) -> None:
    store = MessageStore("s", url=url)
    store.add_messages([summary("S"), *words("aa", "bb", "cc")])
    counter = Counting()
    within(store, 100, token_counter=counter)
    assert sorted(counter.asked) == [["S"], ["aa"], ["bb"], ["cc"]]  # one message at a time
    counter.asked.clear()
    within(store, 100, token_counter=counter)
    within(store, 3, token_counter=counter, window=1)
    within(MessageStore("other", url=url), 100, token_counter=counter)
    assert counter.asked == []
    store.add_messages(words("dd"))
    within(store, 100, token_counter=counter)
    assert counter.asked == [["dd"]]
    # Another counter counts for itself.
    other = Counting()
    within(store, 100, token_counter=other)
    assert len(other.asked) == 5


def test_the_counts_are_bounded(url: str) -> None:
    counts = _tokens.TokenCounts(max_counts=3)
    counter = Counting()
    for entry in (b"a", b"b", b"c", b"d"):
        counts.put(counts.key(counter, entry), 1)
    assert len(counts) == 3
    assert counts.get(counts.key(counter, b"a")) is None  # the oldest went first
    assert counts.get(counts.key(counter, b"d")) == 1


def test_what_is_returned_belongs_to_the_caller(url: str, within: Any) -> None:
    store = MessageStore("s", url=url)
    call = {"name": "weather", "args": {"city": "Paris"}, "id": "c1"}
    store.add_messages(
        [
            summary("S"),
            HumanMessage("hi"),
            AIMessage([{"type": "text", "text": "x"}], tool_calls=[call]),
        ]
    )
    counter = Counting()
    first = within(store, 100, token_counter=counter)
    first[0].additional_kwargs["lc_source"] = "changed"
    first[0].content = "changed"
    first[2].content[0]["text"] = "changed"
    first[2].tool_calls[0]["args"]["city"] = "changed"
    again = within(store, 100, token_counter=counter)
    assert again[0].additional_kwargs == {"lc_source": "summarization"}
    assert contents(again)[:2] == ["S", "hi"]
    assert again[2].content == [{"type": "text", "text": "x"}]
    assert again[2].tool_calls[0]["args"] == {"city": "Paris"}
    assert store.messages[0].content == "S"


def test_one_round_trip_with_the_ttl_kept_sliding(url: str, client: redis.Redis) -> None:
    store = MessageStore("s", url=url, ttl=3600, ttl_refresh_interval=0)
    store.add_messages([summary("S"), *words("aa", "bb", "cc")])
    log = CommandLog(url)
    client.expire(store.key, 100)
    seen = log.commands_of(lambda: store.messages_within(100, window=2))
    assert seen == ["LRANGE", "LRANGE", "FCALL"]
    assert client.ttl(store.key) > 3500
    plain = MessageStore("s", url=url)
    assert log.commands_of(lambda: plain.messages_within(100, window=2)) == ["LRANGE", "LRANGE"]
    assert log.commands_of(lambda: plain.messages_within(100)) == ["LRANGE"]
    assert log.commands_of(lambda: plain.messages_within(100, with_summary=False, window=2)) == [
        "LRANGE"
    ]


async def test_one_round_trip_with_the_ttl_kept_sliding_asyncio(
    url: str, client: redis.Redis
) -> None:
    store = MessageStore("s", url=url, ttl=3600, ttl_refresh_interval=0)
    await store.aadd_messages([summary("S"), *words("aa", "bb", "cc")])
    client.expire(store.key, 100)
    got = await store.amessages_within(100, window=2)
    assert contents(got) == ["S", "bb", "cc"]
    assert client.ttl(store.key) > 3500


def test_the_ttl_refresh_loads_the_library_when_the_server_lost_it(
    url: str, client: redis.Redis
) -> None:
    store = MessageStore("s", url=url, ttl=3600, ttl_refresh_interval=0)
    store.add_messages(words("aa", "bb", "cc"))
    client.function_flush()
    client.expire(store.key, 100)
    assert contents(store.messages_within(100, window=2)) == ["bb", "cc"]
    assert client.ttl(store.key) > 3500


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_tokens": -1}, InvalidArgumentError),
        ({"max_tokens": 1.5}, InvalidArgumentError),
        ({"max_tokens": True}, InvalidArgumentError),
        ({"max_tokens": None}, InvalidArgumentError),
        ({"max_tokens": 10, "token_counter": 3}, InvalidArgumentError),
        ({"max_tokens": 10, "window": 0}, InvalidSizeError),
        ({"max_tokens": 10, "window": -2}, InvalidSizeError),
    ],
)
async def test_bad_input_is_refused_before_any_io(kwargs: dict[str, Any], error: Any) -> None:
    nowhere = MessageStore("s", url="redis://127.0.0.1:1/0")  # nothing listens there
    with pytest.raises(error):
        nowhere.messages_within(**kwargs)
    with pytest.raises(error):
        await nowhere.amessages_within(**kwargs)


def test_a_counter_that_does_not_count_is_a_typed_error(url: str) -> None:
    store = MessageStore("s", url=url)
    store.add_messages(words("aa"))
    with pytest.raises(InvalidArgumentError, match="int >= 0"):
        store.messages_within(10, token_counter=lambda messages: "many")  # type: ignore[arg-type,return-value]


# --- on a cluster --------------------------------------------------------------------------------


@pytest.mark.cluster
def test_on_a_cluster(cluster: Any, cluster_client: Any) -> None:
    """The reads and the TTL refresh of one window go in one flight to the key's node."""
    import asyncio

    for session in ("a", "b", "c"):
        store = MessageStore(session, url=cluster.url, cluster=True, ttl=60, ttl_refresh_interval=0)
        store.add_messages([summary(f"S{session}"), *words("aa", "bb", "cc")])
        got = store.messages_within(100, token_counter=Counting(), window=2)
        assert contents(got) == [f"S{session}", "bb", "cc"]

    async def asyncio_reads() -> list[list[Any]]:
        found = []
        for session in ("a", "b", "c"):
            store = MessageStore(session, url=cluster.url, cluster=True, ttl=60)
            found.append(contents(await store.amessages_within(6, token_counter=Counting())))
        return found

    assert asyncio.run(asyncio_reads()) == [
        ["Sa", "bb", "cc"],
        ["Sb", "bb", "cc"],
        ["Sc", "bb", "cc"],
    ]
    assert 0 < cluster_client.ttl("message_store:a") <= 60


# --- from a replica ------------------------------------------------------------------------------


def test_from_a_replica(replicated: Any) -> None:
    """Reads served by a replica: the window and the summary from there, no TTL refresh."""
    import asyncio

    url, replica = replicated
    store = MessageStore("s", url=url, ttl=60, replica_url=replica.url, ttl_refresh_interval=0)
    store.add_messages([summary("S"), *words("aa", "bb", "cc")])
    with redis.Redis.from_url(replica.url) as on_replica:  # WAIT counts its own connection's
        deadline = time.monotonic() + 10  # writes only: wait for the replica to have them
        while on_replica.llen(store.key) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert contents(store.messages_within(100, token_counter=Counting(), window=1)) == ["S", "cc"]
    log = CommandLog(replica.url)
    seen = log.commands_of(lambda: store.messages_within(100, token_counter=Counting(), window=1))
    assert seen == ["LRANGE", "LRANGE"]  # no TTL refresh: a replica cannot write

    async def read() -> list[BaseMessage]:
        return await store.amessages_within(5, token_counter=Counting())

    assert contents(asyncio.run(read())) == ["S", "bb", "cc"]
