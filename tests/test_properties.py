"""Property-based tests against a real server.

1. A stateful machine drives random sequences of operations on RedisChatMessageHistory (random
   max_messages, window, ttl, refresh_ttl_on_read per instance) next to a pure-Python model of
   the semantics, and compares, after every step, the stored bytes, the TTL and what was read.
2. For any ARGV, ``FCALL pyhistory_v4_append`` either has exactly its documented effect or fails
   with its documented code word and leaves both keys (value and expiry) unchanged.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hypothesis.configuration
import pytest
import redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    message_to_dict,
)

from pyhistory import HistoryError, RedisChatMessageHistory, load_functions
from pyhistory._core import APPEND, BATCH_ID_LEN, MAX_BATCH, MAX_INT, batches_key

# Hypothesis keeps caches under its "home" (./.hypothesis by default): keep the repo clean.
if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
    hypothesis.configuration.set_hypothesis_home_dir(
        Path(tempfile.gettempdir()) / "pyhistory-hypothesis"
    )

COMMON = {
    "deadline": None,
    "database": None,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
}

# --- messages -------------------------------------------------------------------------------

TEXT = st.one_of(
    st.text(max_size=12),  # any Unicode (no surrogates)
    st.sampled_from(
        ["", "héllo wörld", "日本語のテキスト", "🎉 emoji", "مرحبا", "a\x00b", "\ud83d"]
    ),
)
CALL_IDS = st.integers(0, 9).map(lambda n: f"call_{n}")

human = st.builds(HumanMessage, content=TEXT)
ai = st.builds(AIMessage, content=TEXT)
system = st.builds(SystemMessage, content=TEXT)
lone_tool = st.builds(ToolMessage, content=TEXT, tool_call_id=CALL_IDS)


@st.composite
def tool_exchange(draw: st.DrawFn) -> list[BaseMessage]:
    """An AIMessage with 1-2 tool calls followed by a ToolMessage for each of them."""
    ids = draw(st.lists(CALL_IDS, min_size=1, max_size=2, unique=True))
    calls = [
        {"name": "lookup", "args": {"q": draw(TEXT)}, "id": i, "type": "tool_call"} for i in ids
    ]
    results: list[BaseMessage] = [ToolMessage(draw(TEXT), tool_call_id=i) for i in ids]
    return [AIMessage(draw(TEXT), tool_calls=calls), *results]


UNIT = st.one_of(
    human.map(lambda m: [m]),
    ai.map(lambda m: [m]),
    system.map(lambda m: [m]),
    lone_tool.map(lambda m: [m]),
    tool_exchange(),
)
# 0-5 messages; an exchange may be cut by the limit, leaving its AIMessage without all results.
BATCH = st.lists(UNIT, max_size=4).map(lambda units: list(itertools.chain(*units))[:5])
SIZES = st.none() | st.integers(1, 10)

LONG_TTL = 1000  # what histories with a ttl set: "fresh" means PTTL in (LONG_TTL - 10 s, LONG_TTL]
SHORT_TTL = 100  # what the `shorten` rule sets behind the history's back


def encoded(message: BaseMessage) -> bytes:
    """The stored form: what langchain_community writes (the data contract)."""
    return json.dumps(message_to_dict(message)).encode()


def visible(stored: Sequence[BaseMessage], window: int | None) -> list[BaseMessage]:
    """What a read returns: the newest `window`, without ToolMessages at its start."""
    shown = list(stored[-window:] if window else stored)
    while shown and isinstance(shown[0], ToolMessage):
        shown.pop(0)
    return shown


_sessions = itertools.count()


def history_machine(url: str, client: redis.Redis) -> type[RuleBasedStateMachine]:
    class HistoryMachine(RuleBasedStateMachine):
        """The server against a list: append extends, trims to the newest max_messages; reads
        return the newest `window` minus leading tool results; TTLs as documented."""

        def __init__(self) -> None:
            super().__init__()
            self.stored: list[BaseMessage] = []  # oldest first
            # absent | persistent (no TTL) | fresh (the history's ttl) | short (SHORT_TTL)
            self.expiry = "absent"
            # Whether this process set the session's TTL since it last deleted it: then, with the
            # default refresh interval (a tenth of the TTL, far longer than a run of steps), a
            # read does not refresh it again; with interval 0 every read does.
            self.known = False

        @initialize(
            max_messages=SIZES,
            window=SIZES,
            ttl=st.sampled_from([None, LONG_TTL]),
            refresh=st.booleans(),
            every_read=st.booleans(),
        )
        def configure(
            self,
            max_messages: int | None,
            window: int | None,
            ttl: int | None,
            refresh: bool,
            every_read: bool,
        ) -> None:
            self.max_messages = max_messages
            self.window = window
            self.ttl = ttl
            self.refresh = refresh
            self.every_read = every_read
            self.history = RedisChatMessageHistory(
                f"prop-{next(_sessions)}",
                url=url,
                ttl=ttl,
                max_messages=max_messages,
                window=window,
                refresh_ttl_on_read=refresh,
                ttl_refresh_interval=0 if every_read else None,
            )
            client.delete(self.history.key)

        def teardown(self) -> None:
            if hasattr(self, "history"):
                client.delete(self.history.key)

        # --- the operations ---

        @rule(batch=BATCH)
        def add_messages(self, batch: list[BaseMessage]) -> None:
            self.history.add_messages(batch)
            if not batch:
                return  # an empty batch sends nothing: no key, no TTL refresh
            existed = bool(self.stored)
            self.stored = self.stored + batch
            if self.max_messages is not None:
                self.stored = self.stored[-self.max_messages :]
            if self.ttl:
                self.expiry = "fresh"
                self.known = True
            elif not existed:
                self.expiry = "persistent"

        @rule()
        def read(self) -> None:
            assert self.history.messages == visible(self.stored, self.window)
            due = self.every_read or not self.known
            if self.stored and self.ttl and self.refresh and due:
                self.expiry = "fresh"
                self.known = True

        @rule()
        def length(self) -> None:
            assert len(self.history) == len(self.stored)

        @rule()
        def clear(self) -> None:
            self.history.clear()
            self.stored = []
            self.expiry = "absent"
            self.known = False

        @rule()
        def touch(self) -> None:
            if not self.ttl:
                with pytest.raises(HistoryError):
                    self.history.touch()
                return
            assert self.history.touch() is bool(self.stored)
            if self.stored:
                self.expiry = "fresh"
                self.known = True

        @rule()
        def shorten(self) -> None:
            """Someone else lowers the TTL: appends without a ttl must leave it alone."""
            if client.expire(self.history.key, SHORT_TTL):
                self.expiry = "short"

        @rule()
        def persist(self) -> None:
            if client.persist(self.history.key):
                self.expiry = "persistent"

        # --- after every step ---

        @invariant()
        def server_matches_model(self) -> None:
            key = self.history.key
            assert client.lrange(key, 0, -1) == [encoded(m) for m in reversed(self.stored)]
            pttl = client.pttl(key)
            if self.expiry == "absent":
                assert pttl == -2
            elif self.expiry == "persistent":
                assert pttl == -1
            elif self.expiry == "fresh":
                assert LONG_TTL * 1000 - 10_000 < pttl <= LONG_TTL * 1000
            else:
                assert 0 < pttl <= SHORT_TTL * 1000

    return HistoryMachine


def test_history_behaves_like_its_model(url: str, client: redis.Redis) -> None:
    machine = history_machine(url, client)
    run_state_machine_as_test(
        machine, settings=settings(max_examples=100, stateful_step_count=30, **COMMON)
    )


# --- the raw append function ---------------------------------------------------------------


def number(arg: str) -> float | None:
    """The value of `arg` when the whole string is a number in C syntax (what strtod reads:
    decimal, exponent, hexadecimal, inf, nan; ASCII white space around), else None."""
    text = arg.strip(" \t\n\v\f\r")
    if not text or not text.isascii() or "_" in text or "\x00" in text:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    if re.fullmatch(r"[+-]?0[xX][0-9a-fA-F.]+([pP][+-]?[0-9]+)?", text):
        try:
            return float.fromhex(text)
        except ValueError:
            return None
    return None


def classify(arg: str) -> tuple[str, int | None]:
    """("valid", n) for a plain decimal integer in [0, MAX_INT], which must be accepted;
    ("invalid", None) for what is no integer in range however read, which must be rejected;
    ("lenient", n) for another spelling of an integer n in range (" 5", "5.0", "1e1", "0x10",
    "-0"), which the function may accept (as n) or reject."""
    if re.fullmatch(r"0|[1-9][0-9]*", arg):
        return ("valid", int(arg)) if int(arg) <= MAX_INT else ("invalid", None)
    value = number(arg)
    if value is None or not math.isfinite(value) or not 0 <= value <= MAX_INT:
        return ("invalid", None)
    if value != int(value):
        return ("invalid", None)
    return ("lenient", int(value))


NUMBERS = st.one_of(
    st.integers(0, 12).map(str),
    st.integers(0, MAX_INT).map(str),
    st.integers(-3, -1).map(str),
    st.integers(MAX_INT - 1, MAX_INT + 2).map(str),
    st.sampled_from(
        [
            *("", " ", "-0", "05", "+5", " 7", "7 ", "\t7\n", "5.0", "5.5", "1e1", "1e-400"),
            *("1e309", "0x10", "0x1p4", "inf", "-inf", "nan", "abc", "1_0", "\u0665", "\x005"),
            *("4294967297", "-2147483648"),
        ]
    ),
    st.tuples(st.integers(0, 12).map(str), st.sampled_from(["\x00", "\x00x", "x", ".5", "e"])).map(
        "".join
    ),
    st.text(max_size=5),
)
ENTRIES = st.lists(st.binary(max_size=6) | st.text(max_size=6), max_size=12)
BATCH_IDS = st.binary(min_size=BATCH_ID_LEN, max_size=BATCH_ID_LEN) | st.binary(max_size=10)
ARGV = st.one_of(
    st.tuples(NUMBERS, NUMBERS, BATCH_IDS, ENTRIES).map(lambda t: [t[0], t[1], t[2], *t[3]]),
    st.lists(NUMBERS | st.binary(max_size=4), max_size=5),
)
INITIAL = st.sampled_from(["absent", "list", "list with ttl", "string"])

KEY = "raw:session"
IDS = batches_key(KEY)  # the second key: the session's batch ids
OTHER = "raw:other"  # a third key when the call passes three
ID = b"\x00\r\n{}batch\xff\n"  # a batch id of the right length, of awkward bytes


def as_bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


def snapshot(client: redis.Redis, key: str) -> tuple[Any, int]:
    """The key's value (DUMP) and its absolute expiry (PEXPIRETIME): both exact."""
    return client.dump(key), client.execute_command("PEXPIRETIME", key)


def outcomes(numkeys: int, argv: list[Any], initial: str) -> tuple[list[str], bool]:
    """The error codes the call may answer with, and whether it must fail."""
    if numkeys not in (2, 3) or len(argv) < 4:
        return ["BADARGS"], True
    allowed: list[str] = []
    for code, arg in (("BADSIZE", argv[0]), ("BADTTL", argv[1])):
        if isinstance(arg, bytes):
            try:
                arg = arg.decode()
            except UnicodeDecodeError:
                allowed.append(code)
                return allowed, True
        kind, _ = classify(arg)
        if kind == "invalid":
            allowed.append(code)
            return allowed, True
        if kind == "lenient":
            allowed.append(code)
    if len(as_bytes(argv[2])) != BATCH_ID_LEN:
        return [*allowed, "BADARGS"], True
    if len(argv) - 3 > MAX_BATCH:
        return [*allowed, "TOOMANY"], True
    if initial == "string" or numkeys == 3:  # the third key, a sessions index, is a LIST here
        return [*allowed, "WRONGTYPE"], True
    return allowed, False


@settings(max_examples=150, **COMMON)
@given(numkeys=st.sampled_from([2, 2, 2, 0, 1, 3]), argv=ARGV, initial=INITIAL)
@example(numkeys=2, argv=["5\x00junk", "0", ID, "a"], initial="list")  # a count is not a number
@example(numkeys=2, argv=["0", "60\x00", ID, "a"], initial="absent")  # nor is this TTL
@example(numkeys=2, argv=["3", "60", ID, *["e"] * (MAX_BATCH + 1)], initial="list")
@example(numkeys=2, argv=["3", "60", ID, *["e"] * MAX_BATCH], initial="list with ttl")
@example(numkeys=2, argv=[str(MAX_INT), str(MAX_INT), ID, "e"], initial="absent")
@example(numkeys=2, argv=["0", "0", ID, "e"], initial="string")
@example(numkeys=2, argv=["0", "0", ID[:-1], "e"], initial="list")  # a short batch id
def test_raw_append_has_its_effect_or_fails_cleanly(
    client: redis.Redis, numkeys: int, argv: list[Any], initial: str
) -> None:
    load_functions(client)
    client.delete(KEY, IDS, OTHER)
    if initial == "string":
        client.set(KEY, "not a list")
    elif initial != "absent":
        client.rpush(KEY, b"old-2", b"old-1")
        if initial == "list with ttl":
            client.expire(KEY, 500)
    client.rpush(OTHER, b"other")
    before = client.lrange(KEY, 0, -1) if initial != "string" else None
    key_before, other_before = snapshot(client, KEY), snapshot(client, OTHER)
    keys = [KEY, IDS, OTHER][:numkeys]

    allowed, must_fail = outcomes(numkeys, argv, initial)
    try:
        reply = client.execute_command("FCALL", APPEND, numkeys, *keys, *argv)
    except redis.ResponseError as error:
        code = str(error).split(" ", 1)[0]
        assert code in allowed, f"unexpected error {error!r}; allowed: {allowed}"
        assert snapshot(client, KEY) == key_before, "a failed append changed the key"
        assert snapshot(client, OTHER) == other_before
        assert client.exists(IDS) == 0, "a failed append remembered its batch id"
        return

    assert not must_fail, f"accepted, but must fail with one of {allowed}: reply {reply!r}"
    assert before is not None
    max_messages = classify(as_bytes(argv[0]).decode())[1]
    ttl = classify(as_bytes(argv[1]).decode())[1]
    assert max_messages is not None and ttl is not None
    expected = [as_bytes(entry) for entry in reversed(argv[3:])] + before
    if max_messages:
        expected = expected[:max_messages]
    assert reply == len(expected)
    assert client.lrange(KEY, 0, -1) == expected
    if ttl:
        assert ttl * 1000 - 10_000 < client.pttl(KEY) <= ttl * 1000
    elif initial == "absent":
        assert client.pttl(KEY) == -1, "ttl 0 on a new key: no expiry"
    else:
        assert snapshot(client, KEY)[1] == key_before[1], "ttl 0 must leave the expiry alone"
    assert snapshot(client, OTHER) == other_before
    assert client.get(IDS) == as_bytes(argv[2])
    # sent again: nothing more is applied
    assert client.execute_command("FCALL", APPEND, numkeys, *keys, *argv) == len(expected)
    assert client.lrange(KEY, 0, -1) == expected
