"""Headless locust run of the chat-turn load test, against a throwaway local server.

    python loadtest/run.py [--users 20] [--spawn-rate R] [--run-time 30s] [--contender pyhistory]
                           [--mode sync|async] [--results DIR] [--compare] [SCENARIO OPTIONS]
                           [-- LOCUST ARGS]

Starts a server (``pyhistory.testing.start_server``; ``--server-kind``, default the first
installed: Debian's redis-server 7.0) and stops it afterwards, or uses ``REDIS_URL`` when set.
Runs ``python -m locust -f loadtest/locustfile.py --headless ...`` as a subprocess and writes,
into the results folder (default ``loadtest/results/<timestamp>-<contender>/``):

- ``locust_stats.csv``, ``locust_stats_history.csv``, ``locust_failures.csv``,
  ``locust_exceptions.csv``: locust's ``--csv`` output;
- ``report.html``: locust's ``--html`` report (here only: it is not committed anywhere);
- ``latency.json``: exact per-operation latencies of the requests that started a second or more
  after the ramp-up (``harness.SETTLE_S``): the summary's p50 and p99; its requests/s and max
  are locust's, over the whole run (locust's percentiles are whole milliseconds);
- ``locust.log`` (what locust printed), ``command.txt``, ``summary.json``.

The server, the locust subprocess and its CSV are ``loadtest/harness.py``'s, shared with
``make loadtest-http``.

Prints a short summary and exits non-zero when any request failed (locust's own exit code, with
``--exit-code-on-error 1``, and the failure count in its CSV), or when locust did not finish.

``--compare`` runs every contender one after another, with the same settings against the same
server, into ``loadtest/results/<timestamp>-compare/<contender>/``, and prints (and writes as
``compare.md`` / ``compare.json``) a side-by-side table: turns/s, and requests/s, p50 and p99 per
operation. With ``--mode async`` only the contenders with a native asyncio client take part.

The scenario's own options (``--window``, ``--ttl``, ``--max-messages``,
``--sessions-per-user``, ``--session-pick``, ``--think-time``, ``--turn-wait``,
``--message-chars``, ``--prefill``: see ``loadtest/locustfile.py``) go to locust unchanged, with
the locustfile's defaults, which checks them; so do the arguments after ``--`` (e.g.
``-- --loglevel DEBUG``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import harness  # noqa: E402

LOCUSTFILE = HERE / "locustfile.py"
DEFAULT_RESULTS = HERE / "results"
OPERATIONS = ("fetch", "add_user", "add_ai")
# The same list as locustfile.ASYNC_CONTENDERS (not imported: importing the locustfile would
# monkey-patch this process with gevent).
ASYNC_CONTENDERS = ("pyhistory", "pipeline")


def _contender_names() -> tuple[str, ...]:
    import contenders

    return tuple(contenders.NAMES)


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    names = _contender_names()
    parser = argparse.ArgumentParser(
        description="Headless locust run of the chat-turn load test (see the module docstring).",
        allow_abbrev=False,
        epilog="Other options are the locustfile's; they, and the arguments after --, are passed "
        "to locust.",
    )
    harness.add_run_arguments(parser, users=20, run_time=30)
    parser.add_argument("--contender", choices=names, default="pyhistory")
    parser.add_argument("--mode", choices=["sync", "async"], default="sync")
    parser.add_argument("--compare", action="store_true", help="run every contender in turn")
    parser.add_argument("--results", type=Path, help="results folder (default: a new one)")
    parser.add_argument("--quiet", "-q", action="store_true", help="do not echo locust output")
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    # Everything this runner does not know is the scenario's (the locustfile's options).
    args, args.scenario = parser.parse_known_args(argv)
    args.seconds = args.run_time
    if args.users < 1 or args.seconds < 1:
        parser.error("--users and --run-time must be at least 1")
    if args.spawn_rate is None:
        args.spawn_rate = float(args.users)
    if args.compare:
        args.contenders = [n for n in names if args.mode == "sync" or n in ASYNC_CONTENDERS]
    else:
        if args.mode == "async" and args.contender not in ASYNC_CONTENDERS:
            parser.error(
                f"--mode async supports {', '.join(ASYNC_CONTENDERS)} (native asyncio clients); "
                f"see loadtest/locustfile.py"
            )
        args.contenders = [args.contender]
    return args, extra


# --------------------------------------------------------------------------- one run


def locust_options(args: argparse.Namespace, contender: str, out: Path) -> list[str]:
    """The locustfile's own options (see loadtest/locustfile.py)."""
    latency = ("--latency-file", str(out / "latency.json"))
    return ["--contender", contender, "--mode", args.mode, *latency, *args.scenario]


def run_one(
    args: argparse.Namespace, url: str, contender: str, out: Path, extra: list[str], echo: bool
) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    code = harness.run_locust(
        LOCUSTFILE,
        host=url,
        users=args.users,
        spawn_rate=args.spawn_rate,
        seconds=args.seconds,
        folder=out,
        options=[*locust_options(args, contender, out), *extra],
        html=True,
        echo=echo,
    )
    stats = harness.locust_stats(out)
    latency_file = out / "latency.json"
    latency = json.loads(latency_file.read_text(encoding="utf-8")) if latency_file.exists() else {}
    aggregated = stats.get("Aggregated", {})
    requests = int(aggregated.get("Request Count", 0) or 0)
    failures = int(aggregated.get("Failure Count", 0) or 0)
    problems = []
    if code is None:
        problems.append(f"locust did not finish within {args.seconds + 120} s (killed)")
    elif code != 0:
        problems.append(f"locust exited with {code}")
    if not stats:
        problems.append("no locust_stats.csv")
    elif requests == 0:
        problems.append("no requests were made")
    if failures:
        problems.append(f"{failures} of {requests} requests failed")
    if not (out / "report.html").exists():
        problems.append("no report.html")
    summary: dict[str, Any] = {
        "contender": contender,
        "mode": args.mode,
        "exit_code": code,
        "requests": requests,
        "failures": failures,
        "problems": problems,
        "results": str(out),
        "operations": {},
        # exact: from latency.json, the requests after the ramp-up (an operation made only
        # during it has locust's, its own "percentiles" says so); locust: its whole-millisecond
        # buckets over the whole run (e.g. with --processes)
        "percentiles": "exact" if latency else "locust",
    }
    for op in (*OPERATIONS, "prefill"):
        row = stats.get(op)
        if row is None:
            continue
        exact = latency.get(op, {})
        summary["operations"][op] = {
            "requests": int(row["Request Count"]),
            "failures": int(row["Failure Count"]),
            "rps": float(row["Requests/s"]),
            "avg_ms": float(row["Average Response Time"]),
            # exact when latency.json has them (an operation made only during the ramp-up,
            # like prefill, has none), else locust's whole milliseconds
            "p50_ms": exact.get("p50_ms", _float(row.get("50%"))),
            "p99_ms": exact.get("p99_ms", _float(row.get("99%"))),
            "max_ms": float(row["Max Response Time"]),
            "percentiles": "exact" if "p50_ms" in exact else "locust",
        }
    add_ai = summary["operations"].get("add_ai")
    summary["turns_per_s"] = add_ai["rps"] if add_ai else 0.0
    return summary


def _float(value: str | None) -> float:
    try:
        return float(value or "nan")
    except ValueError:
        return float("nan")


# --------------------------------------------------------------------------- printing


def _ms(value: float) -> str:
    if value != value:  # NaN
        return "n/a"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def format_run(summary: dict[str, Any]) -> str:
    lines = [
        f"{summary['contender']} ({summary['mode']}): {summary['requests']} requests, "
        f"{summary['failures']} failed, {summary['turns_per_s']:.0f} turns/s",
        f"  {'operation':<10} {'requests':>9} {'fails':>6} {'req/s':>9} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'max ms':>8}"
        + ("" if summary["percentiles"] == "exact" else "  (percentiles: locust's, whole ms)"),
    ]
    for op, s in summary["operations"].items():
        lines.append(
            f"  {op:<10} {s['requests']:>9} {s['failures']:>6} {s['rps']:>9.1f} "
            f"{_ms(s['p50_ms']):>8} {_ms(s['p99_ms']):>8} {_ms(s['max_ms']):>8}"
            + (
                "  (percentiles: locust's, the whole run)"
                if summary["percentiles"] == "exact" and s["percentiles"] == "locust"
                else ""
            )
        )
    for problem in summary["problems"]:
        lines.append(f"  PROBLEM: {problem}")
    lines.append(f"  results: {summary['results']}")
    return "\n".join(lines)


def compare_table(summaries: list[dict[str, Any]]) -> str:
    """A markdown table: one row per contender, req/s, p50 and p99 per operation."""
    header = ["contender", "turns/s", "vs pyhistory"]
    for op in OPERATIONS:
        header += [f"{op} req/s", f"{op} p50 ms", f"{op} p99 ms"]
    header.append("failures")
    base = next((s["turns_per_s"] for s in summaries if s["contender"] == "pyhistory"), None)
    rows = []
    for s in summaries:
        ratio = f"{s['turns_per_s'] / base:.2f}x" if base else "n/a"
        row = [s["contender"], f"{s['turns_per_s']:.0f}", ratio]
        for op in OPERATIONS:
            o = s["operations"].get(op)
            row += [f"{o['rps']:.0f}", _ms(o["p50_ms"]), _ms(o["p99_ms"])] if o else ["n/a"] * 3
        row.append(str(s["failures"]) + ("" if not s["problems"] else " (!)"))
        rows.append(row)
    return "\n".join(harness.table(header, rows, pad=True))


# --------------------------------------------------------------------------- main


def settings_text(args: argparse.Namespace, url: str) -> str:
    scenario = " ".join(args.scenario) or "the locustfile's defaults"
    return (
        f"{args.users} users (spawn rate {args.spawn_rate:g}/s), {args.seconds} s per run, "
        f"mode {args.mode}, {scenario}; server {url}"
    )


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(argv)
    if importlib.util.find_spec("locust") is None:
        print("locust is not installed: pip install -e '.[test]' (or pip install locust)")
        return 2
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    suffix = "" if args.mode == "sync" else "-async"
    label = "compare" if args.compare else args.contender
    root: Path = args.results or DEFAULT_RESULTS / f"{stamp}-{label}{suffix}"

    redis_ = harness.RedisUnderTest(args.server_kind)
    url = redis_.url
    try:
        print(f"load test: {settings_text(args, url)}", flush=True)
        summaries = []
        for name in args.contenders:
            out = root / name if args.compare else root
            if args.compare:
                print(f"\n== {name}: {args.seconds} s ...", flush=True)
            summary = run_one(args, url, name, out, extra, echo=not (args.quiet or args.compare))
            summaries.append(summary)
            (out / "summary.json").write_text(
                json.dumps({"settings": vars_for_json(args, url), **summary}, indent=2),
                encoding="utf-8",
            )
            print(format_run(summary), flush=True)
            if args.compare and summary["problems"]:
                print(f"  (locust output: {out / 'locust.log'})")
    finally:
        redis_.stop()

    if args.compare:
        table = compare_table(summaries)
        header = f"# Chat-turn load test, {stamp}\n\n{settings_text(args, url)}\n\n"
        notes = (
            "\nreq/s per operation; p50/p99 in ms, measured per operation by the locust user "
            "(exact, not locust's whole-millisecond buckets). turns/s = add_ai req/s. "
            "langchain_community's contenders read whole sessions (no window).\n"
        )
        (root / "compare.md").write_text(header + table + "\n" + notes, encoding="utf-8")
        (root / "compare.json").write_text(
            json.dumps({"settings": vars_for_json(args, url), "runs": summaries}, indent=2),
            encoding="utf-8",
        )
        print(f"\n{table}\n\nwritten: {root / 'compare.md'}")
    failed = [s["contender"] for s in summaries if s["problems"]]
    if failed:
        print(f"FAILED: {', '.join(failed)}")
        return 1
    return 0


def vars_for_json(args: argparse.Namespace, url: str) -> dict[str, Any]:
    keep = ("users", "spawn_rate", "seconds", "mode", "scenario")
    return {"url": url, **{k: getattr(args, k) for k in keep}}


if __name__ == "__main__":
    sys.exit(main())
