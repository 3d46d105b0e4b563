"""What compaction, edits by id, token windows, the sessions index and its listing cost, beside the
plain read and append: server CPU per operation (used_cpu_sys + used_cpu_user from INFO), with
the server-cost harness (server_cost.py: pre-encoded flights, hiredis replies, medians of
interleaved repetitions) on sessions of 40 messages of chat-like sizes, each with an id; and
the client's CPU per call of each public method (sync, one thread, process time around the
calls only), on the first server kind.

A compaction or an edit changes its session, and every repetition must do the same work: those
forms send ``COPY template key REPLACE`` (the session as it started) and the call in one
MULTI/EXEC, beside a form that sends the COPY alone; the call's own cost is the difference
(shown as "net").

    .venv/bin/python loadtest/bench/bounded_cost.py [KINDS] [REPS] [SECONDS]
    e.g. .venv/bin/python loadtest/bench/bounded_cost.py redis,valkey 5 1.0
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "loadtest"))

from bench import server_cost as sc  # noqa: E402
from bench.messages import encode, make_pair  # noqa: E402
from pyhistory import _bounded, _core, load_functions, testing  # noqa: E402

INDEX_SIZE = 100  # sessions in the index a listing pages through
LISTED = "bench:sessions:listed"


def template(rng: random.Random) -> list[str]:
    """A session at the harness's bound, newest first (as stored), every message with an id."""
    messages = []
    while len(messages) < sc.MAX_MESSAGES:
        messages.extend(make_pair(rng))
    stored = [
        encode(m.model_copy(update={"id": f"msg-{i:03d}"}))
        for i, m in enumerate(messages[: sc.MAX_MESSAGES])
    ]
    return stored[::-1]


def forms(session: list[str], entries: list[str]) -> list[sc.Form]:
    bound, ttl = str(sc.MAX_MESSAGES), str(sc.TTL)
    oldest_first = [e.encode() for e in reversed(session)]
    compacted = 10
    digest = _bounded.digest(oldest_first[: compacted + 1])
    summary = encode(_bounded.summary_message("a summary " * 40))
    replacement = encode(make_pair(random.Random(3))[1].model_copy(update={"id": "msg-020"}))

    def read(k: str) -> list[sc.Command]:
        return [("LRANGE", k, "0", str(sc.WINDOW - 1))]

    def append(k: str) -> list[sc.Command]:
        ids = _core.batches_key(k)
        return [("FCALL", _core.APPEND, "2", k, ids, bound, ttl, sc.batch_id(), *entries)]

    def append_plain(k: str) -> list[sc.Command]:
        ids = _core.batches_key(k)
        return [
            ("MULTI",),
            ("LPUSH", k, *entries),
            ("LTRIM", k, "0", str(sc.MAX_MESSAGES - 1)),
            ("EXPIRE", k, ttl),
            ("APPEND", ids, sc.batch_id()),
            ("EXPIRE", ids, str(_core.WINDOW_SECONDS)),
            ("EXEC",),
        ]

    def append_indexed(k: str) -> list[sc.Command]:
        ids, index = _core.batches_key(k), f"bench:sessions:{k[-2:]}"
        return [("FCALL", _core.APPEND, "3", k, ids, index, bound, ttl, sc.batch_id(), *entries)]

    def oldest(k: str) -> list[sc.Command]:
        return [("LRANGE", k, str(-(compacted + 1)), "-1")]

    def fresh(*call: str) -> sc.Step:
        return lambda k: [
            ("MULTI",),
            ("COPY", sc.TEMPLATE, k, "REPLACE"),
            *([(call[0], call[1], "1", k, *call[2:])] if call else []),
            ("EXEC",),
        ]

    def listing(k: str) -> list[sc.Command]:
        return [("FCALL", _bounded.SESSIONS, "1", LISTED, ttl, "0", "20")]

    return [
        sc.Form("LRANGE 20 (read)", "op", (read,), note="reference"),
        sc.Form(
            "plain append (MULTI ... EXEC), 2 entries", "op", (append_plain,), note="reference"
        ),
        sc.Form("FCALL append, 2 entries", "op", (append,), note="reference"),
        sc.Form("FCALL append, 2 entries, sessions index", "op", (append_indexed,)),
        sc.Form("LRANGE oldest 10 + 1 (oldest)", "op", (oldest,)),
        sc.Form("MULTI COPY EXEC", "op", (fresh(),), note="the reset alone"),
        sc.Form(
            "MULTI COPY FCALL compact 10 EXEC",
            "op",
            (fresh("FCALL", _bounded.COMPACT, str(compacted), "1", ttl, digest, summary),),
        ),
        sc.Form(
            "MULTI COPY FCALL edit remove 1 id EXEC",
            "op",
            (fresh("FCALL", _bounded.EDIT, ttl, "remove", "msg-020"),),
        ),
        sc.Form(
            "MULTI COPY FCALL edit replace 1 id EXEC",
            "op",
            (fresh("FCALL", _bounded.EDIT, ttl, "replace", "msg-020", replacement),),
        ),
        sc.Form(
            "MULTI COPY FCALL edit remove 1 unknown id EXEC",
            "op",
            (fresh("FCALL", _bounded.EDIT, ttl, "remove", "msg-none"),),
        ),
        sc.Form(
            f"FCALL sessions, a page of 20 of {INDEX_SIZE}", "op", (listing,), note="read only"
        ),
    ]


def measure(kind: str, reps: int, seconds: float) -> dict[str, Any]:
    rng = random.Random(7)
    session = template(rng)
    entries = [encode(m) for m in make_pair(rng)]
    connections = 16
    keys = [
        f"message_store:bench-cost-{i:04d}" for i in range(connections * sc.KEYS_PER_CONNECTION)
    ]
    server = testing.start_server(kind)
    try:
        admin = server.client()
        load_functions(admin)
        info = admin.info("server")
        target = sc.CostServer(
            kind, f"{kind} {info['redis_version']}", server.host, server.port, admin, _core.LIBRARY
        )
        sc._prepare(target, keys, session)
        now = int(time.time() * 1000)
        admin.zadd(LISTED, {f"message_store:s{i}": now - i for i in range(INDEX_SIZE)})
        all_forms = forms(session, entries)
        samples: dict[str, list[float]] = {}
        for rep in range(reps):
            for depth in (1, 16):
                for form in all_forms if rep % 2 == 0 else all_forms[::-1]:
                    seg = sc._segment(target, form, depth, keys, connections, seconds)
                    samples.setdefault(f"{form.name} -P{depth}", []).append(seg["server_cpu_us"])
                    print(
                        f"  [{target.label}] rep {rep + 1}/{reps} -P{depth:<2} {form.name:<48} "
                        f"{seg['server_cpu_us']:7.2f} us/op",
                        file=sys.stderr,
                        flush=True,
                    )
        result: dict[str, Any] = {
            name: round(statistics.median(v), 2) for name, v in samples.items()
        }
        for depth in (1, 16):
            reset = result[f"MULTI COPY EXEC -P{depth}"]
            for form in all_forms:
                if form.name.startswith("MULTI COPY FCALL"):
                    name = form.name.removeprefix("MULTI COPY ").removesuffix(" EXEC")
                    net = result[f"{form.name} -P{depth}"] - reset
                    result[f"net: {name} -P{depth}"] = round(net, 2)
        return {target.label: result}
    finally:
        server.stop()


def client_cost(kind: str, calls: int = 300) -> dict[str, float]:
    """Client CPU per call (µs, median of 3 rounds) of each public method, on a session of 40
    messages reset (outside the timing) before every call that changes it."""
    from pyhistory import MessageStore, list_sessions

    rng = random.Random(7)
    session = template(rng)
    pair = make_pair(rng)
    server = testing.start_server(kind)
    try:
        admin = server.client()
        load_functions(admin)
        url = f"redis://{server.host}:{server.port}/0"
        admin.rpush(sc.TEMPLATE, *session)
        now = int(time.time() * 1000)
        admin.zadd(LISTED, {f"message_store:s{i}": now - i for i in range(INDEX_SIZE)})
        store = MessageStore("c", url=url, ttl=sc.TTL, max_messages=sc.MAX_MESSAGES, window=20)

        def reset() -> None:
            admin.copy(sc.TEMPLATE, store.key, replace=True)

        def compact() -> None:
            oldest = store.oldest(11)
            store.compact(oldest, oldest.safe_count(10), "a summary " * 40)

        methods: dict[str, tuple[Any, bool]] = {
            "messages (window 20)": (lambda: store.messages, False),
            "add_messages (2)": (lambda: store.add_messages(pair), True),
            "messages_within(2000 tokens)": (lambda: store.messages_within(2000), False),
            "oldest(11) + compact(10)": (compact, True),
            "remove_messages (1 id)": (lambda: store.remove_messages(["msg-020"]), True),
            "list_sessions (page of 20)": (lambda: list_sessions(LISTED, url=url), False),
        }
        rounds: dict[str, list[float]] = {name: [] for name in methods}
        for _ in range(3):
            for name, (method, changes) in methods.items():
                reset()
                method()  # warm: connections, the library, decoded entries
                spent = 0.0
                for _ in range(calls):
                    if changes:
                        reset()
                    started = time.process_time()
                    method()
                    spent += time.process_time() - started
                rounds[name].append(spent / calls * 1e6)
        return {name: round(statistics.median(v), 1) for name, v in rounds.items()}
    finally:
        server.stop()


def main() -> None:
    kinds = sys.argv[1].split(",") if len(sys.argv) > 1 else ["redis"]
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
    for kind in kinds:
        print(json.dumps(measure(kind, reps, seconds), indent=1), flush=True)
    print(json.dumps({"client CPU per call, µs": client_cost(kinds[0])}, indent=1), flush=True)


if __name__ == "__main__":
    main()
