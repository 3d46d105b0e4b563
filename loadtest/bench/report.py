"""The target table and the markdown report (results.md)."""

from __future__ import annotations

import math
from typing import Any

from harness import MET, table

from .common import WINDOW, median

# --- targets, tables, plots --------------------------------------------------------------------


def _turn(results: list[dict[str, Any]], mode: str, workers: int, history: int, name: str) -> Any:
    for row in results:
        if (row["mode"], row["workers"], row["history"], row["contender"]) == (
            mode,
            workers,
            history,
            name,
        ):
            return row
    return None


def paired(ours: list[float], theirs: list[float]) -> tuple[float, list[float]]:
    """The median of the ratios ours / theirs taken repetition by repetition (each repetition
    runs every contender once, within seconds of one another, so a slow spell of the machine
    moves both sides of one ratio more than it moves two repetitions), with those ratios (a
    repetition whose ``theirs`` is 0 left out); the ratio of the medians when the repetitions
    do not pair up; NaN when there is nothing to divide by."""
    if ours and len(ours) == len(theirs):
        each = [a / b for a, b in zip(ours, theirs, strict=True) if b]
        if each:
            return median(each), each
    below = median(theirs) if theirs else 0.0
    return (median(ours) / below if ours and below else math.nan), []


def _rows_ratio(
    ours_each: list[float], theirs_each: list[float], ours: float, theirs: float
) -> tuple[float, list[float]]:
    """Two rows' figure, paired by repetition when both rows have their repetitions' figures,
    else the rows' own (their medians) divided, with no per-repetition ratios."""
    if ours_each and theirs_each:
        return paired(ours_each, theirs_each)
    return paired([ours], [theirs])[0], []


def _turns_ratio(
    ours: dict[str, Any], theirs: dict[str, Any], key: str = "turns_per_s"
) -> tuple[float, list[float]]:
    """One contender's figure ``key`` over another's (rows of one scenario)."""

    def each(row: dict[str, Any]) -> list[float]:
        reps = row.get("reps", [])
        return [r[key] for r in reps] if all(key in r for r in reps) else []

    return _rows_ratio(each(ours), each(theirs), ours[key], theirs[key])


def _each(ratios: list[float]) -> str:
    return f"; by repetition {', '.join(f'{r:.2f}' for r in ratios)}" if ratios else ""


def cost_breakdown(cost: dict[str, Any], kind: str) -> dict[str, float]:
    """What the measured forms say about where a turn's extra server time goes (µs per op)."""
    rows = {
        (r["form"], r["depth"]): r["server_cpu_us"]
        for r in cost.get("rows", [])
        if (r["server_kind"] == kind)
    }

    def get(prefix: str, depth: int = 16) -> float:
        for (form, d), value in rows.items():
            if form.startswith(prefix) and d == depth:
                return float(value)
        return float("nan")

    big, small = cost["entry_bytes"], cost["small_entry_bytes"]
    out = {
        # a function call's own cost: FCALL append of two tiny entries vs the MULTI of the same
        "fcall_fixed": get(f"FCALL append, 2 x {small[0]} B")
        - get(f"MULTI LPUSH LTRIM EXPIRE EXEC, 2 x {small[0]} B"),
        # what the entries' bytes add on top, beyond what they cost a MULTI
        "crossing": (get("FCALL append, 2 x ~") - get(f"FCALL append, 2 x {small[0]} B"))
        - (
            get("MULTI LPUSH LTRIM EXPIRE EXEC, 2 x ~")
            - get(f"MULTI LPUSH LTRIM EXPIRE EXEC, 2 x {small[0]} B")
        ),
        "touch_over_expire": get("LRANGE + FCALL touch") - get("LRANGE + EXPIRE"),
        "touch_over_multi": get("LRANGE + FCALL touch") - get("MULTI LRANGE EXPIRE EXEC"),
        "append_over_multi": get("FCALL append, 2 x ~")
        - get("MULTI LPUSH LTRIM EXPIRE EXEC, 2 x ~"),
        "window_over_touch": get("FCALL window") - get("LRANGE + FCALL touch"),
        "multi_over_plain": get("MULTI LRANGE EXPIRE EXEC") - get("LRANGE alone"),
        # the plain append's two commands for its batch id (APPEND, EXPIRE) beyond the pipeline's
        "plain_over_multi": get("plain append") - get("MULTI LPUSH LTRIM EXPIRE EXEC, 2 x ~"),
        "entry_bytes": float(sum(big)),
    }
    return out


def _cost_reason(cost: dict[str, Any], kind: str) -> str:
    b = cost_breakdown(cost, kind)
    if math.isnan(b["multi_over_plain"]) or math.isnan(b["plain_over_multi"]):
        return (
            "the turn costs the server the pipeline's commands but one: a plain LRANGE against "
            "MULTI LRANGE EXPIRE EXEC, and an append that also records its batch id (APPEND, "
            "EXPIRE) in its MULTI/EXEC; the difference is within the repetitions' spread "
            "(the per-command forms were not run: see Server cost)"
        )
    return (
        "the read is a plain LRANGE, cheaper than the pipeline's MULTI LRANGE EXPIRE EXEC by "
        f"{b['multi_over_plain']:.1f} µs; the plain append records its batch id (APPEND, EXPIRE "
        f"in its MULTI/EXEC), {b['plain_over_multi']:+.1f} µs against the pipeline's append "
        "(at -P 16); see Server cost"
    )


# Server CPU per turn against the pipeline, at one flight per client: Redis 7.0 runs functions
# dearer than 8.x and Valkey (the FCALL fixed cost), hence its own bound.
def _cost_goal(label: str) -> float:
    return 1.1 if label.startswith("redis 7.") else 1.0


def targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def add(
        measure: str,
        target: str,
        value: float | None,
        ok: bool | None,
        how: str,
        reason: str = "",
    ) -> None:
        rows.append(
            {
                "measure": measure,
                "target": target,
                "value": value,
                "met": ok,
                "how": how,
                "reason": "" if ok or ok is None else reason,
            }
        )

    cost = data.get("server_cost")
    servers = data.get("servers", {})
    if cost:
        for kind, label in servers.items():
            for depth in (1, 16):
                ours = _cost(cost, kind, "pyhistory", depth)
                theirs = _cost(cost, kind, "pipeline", depth)
                if ours is None or theirs is None:
                    continue
                value, each = _cost_ratio(ours, theirs)
                flights = "1 flight per client" if depth == 1 else f"{depth} turns pipelined"
                goal = _cost_goal(label)
                add(
                    f"{label}: server CPU per turn vs the pipeline, {flights}",
                    f"<= {goal:.2f}x" if depth == 1 else "reported",
                    value,
                    value <= goal if depth == 1 else None,
                    f"{ours['server_cpu_us']:.1f} / {theirs['server_cpu_us']:.1f} µs (used_cpu "
                    f"per turn: window 20 + append 2, ttl, max_messages {cost['max_messages']})"
                    + _each(each),
                    _cost_reason(cost, kind),
                )
    sent = _sent_by_library(data)
    if sent:
        library, form = sent
        add(
            "the server-cost form 'pyhistory' sends what the library sends (commands per turn)",
            "the same",
            None,
            library == form,
            f"library (round-trip scenario): {_cmds(library)}; form: {_cmds(form)}",
            "the form in loadtest/bench/server_cost.py no longer matches the library: update it",
        )
    turns = data.get("chat_turns", [])
    kind_turns = data.get("kind_turns", [])

    def ratio(
        rows_: list[dict[str, Any]], mode: str, workers: int, history: int, other: str
    ) -> tuple[float, str] | None:
        ours = _turn(rows_, mode, workers, history, "pyhistory")
        theirs = _turn(rows_, mode, workers, history, other)
        if ours is None or theirs is None or not theirs["turns_per_s"]:
            return None
        value, each = _turns_ratio(ours, theirs)
        return value, (
            f"{ours['turns_per_s']:.0f} / {theirs['turns_per_s']:.1f} turns/s; CPU per turn, "
            f"client + server: {ours['client_cpu_us_per_turn']:.0f} + "
            f"{ours['server_cpu_us_per_turn']:.0f} vs {theirs['client_cpu_us_per_turn']:.0f} + "
            f"{theirs['server_cpu_us_per_turn']:.0f} µs" + _each(each)
        )

    histories = sorted({r["history"] for r in turns})
    primary = next(iter(servers.values()), "")
    primary_kind = next(iter(servers), "")
    for kind, label in servers.items():
        rows_ = (
            turns if kind == primary_kind else [r for r in kind_turns if r["server_kind"] == kind]
        )
        if not rows_:
            continue
        small = min(r["history"] for r in rows_)
        ours = _turn(rows_, "async", 64, small, "pyhistory")
        theirs = _turn(rows_, "async", 64, small, "pipeline")
        if ours and theirs and theirs["server_cpu_us_per_turn"]:
            add(
                f"{label}: server CPU per turn vs the pipeline, the real clients (asyncio 64 "
                f"tasks, {small} msgs)",
                "reported",
                _turns_ratio(ours, theirs, "server_cpu_us_per_turn")[0],
                None,
                f"{ours['server_cpu_us_per_turn']:.0f} / {theirs['server_cpu_us_per_turn']:.0f} "
                "µs (used_cpu over the segment / all its turns; the server also idles between "
                "flights, so more epoll wake-ups per turn than with the lean driver)",
            )
    for rows_, label in [(turns, primary)] + [
        ([r for r in kind_turns if r["server_kind"] == k], servers[k])
        for k in dict.fromkeys(r["server_kind"] for r in kind_turns)
    ]:
        for history in sorted({r["history"] for r in rows_}):
            got = ratio(rows_, "async", 64, history, "pipeline")
            ours = _turn(rows_, "async", 64, history, "pyhistory")
            theirs = _turn(rows_, "async", 64, history, "pipeline")
            if got and ours and theirs:
                client = _turns_ratio(theirs, ours, "client_cpu_us_per_turn")[0]
                add(
                    f"{label}: asyncio 64 tasks, {history} msgs: turns/s vs the pipeline",
                    ">= 2.0x",
                    got[0],
                    got[0] >= 2.0,
                    got[1],
                    "the one client process is the bottleneck, so turns/s follow the client's "
                    f"CPU per turn, which pyhistory cuts by {client:.2f}x, not 2.0x",
                )
    for history in histories:
        for workers in (1, 8):
            got = ratio(turns, "sync", workers, history, "pipeline")
            ours = _turn(turns, "sync", workers, history, "pyhistory")
            theirs = _turn(turns, "sync", workers, history, "pipeline")
            if got and ours and theirs:
                client = _turns_ratio(theirs, ours, "client_cpu_us_per_turn")[0]
                threads = "thread" if workers == 1 else "threads"
                add(
                    f"{primary}: sync {workers} {threads}, {history} msgs: turns/s vs the pipeline",
                    ">= 1.5x",
                    got[0],
                    got[0] >= 1.5,
                    got[1],
                    "a sync turn waits for each reply (no other work to share a flight with), so "
                    f"the client's CPU per turn, cut by {client:.2f}x, and the two round trips "
                    "decide it",
                )
    for history in [h for h in histories if h > WINDOW]:
        for mode, workers, goal in (("sync", 1, 50.0), ("sync", 8, 50.0), ("async", 64, 10.0)):
            got = ratio(turns, mode, workers, history, "lc-per-turn")
            if got:
                unit = "thread" if mode == "sync" else "task"
                add(
                    f"{mode} {workers} {unit}{'s' if workers > 1 else ''}, {history} msgs: "
                    "turns/s vs langchain_community per turn",
                    f">= {goal:g}x",
                    got[0],
                    got[0] >= goal,
                    got[1],
                )
    for row in data.get("round_trips", []):
        if row["contender"] == "pyhistory":
            value = row["round_trips_per_turn"] + row["connections_per_turn"]
            add(
                f"round trips per turn ({row['mode']})",
                "2",
                value,
                abs(value - 2) < 1e-9,
                f"{row['commands_per_turn']:g} commands/turn: "
                + ", ".join(f"{k} {v:g}" for k, v in row["commands"].items()),
            )
    proxy = data.get("latency_proxy")
    if proxy and "pyhistory" in proxy["contenders"]:
        row = proxy["contenders"]["pyhistory"]
        add(
            f"turn p50 with {proxy['delay_ms_each_way']:g} ms each way / one round trip",
            "<= 2.3",
            row["turn_over_rtt"],
            row["turn_over_rtt"] <= 2.3,
            f"{row['turn_p50_ms']:.3f} ms / PING {proxy['ping_p50_ms']:.3f} ms",
        )
    mem = data.get("memory", {}).get("sessions", [])
    for row in mem:
        if row["messages"] >= 20:
            add(
                f"memory / payload, {row['messages']} msgs ({row['encoding']})",
                "<= 1.10",
                row["ratio"],
                row["ratio"] <= 1.10,
                f"{row['memory_usage_bytes']} B / {row['payload_bytes']} B",
            )
    return rows


def _sent_by_library(data: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]] | None:
    """Commands per turn the client itself sends: the library's (counted in the round-trip
    scenario) and the server-cost form's. What the functions run inside (LPUSH, LTRIM, EXPIRE,
    TYPE, and the batch ids' GETEX, APPEND, SET) is left out: how often depends on the session's
    state, not on the client."""
    rts = [r for r in data.get("round_trips", []) if r["contender"] == "pyhistory"]
    cost = data.get("server_cost")
    if not rts or not cost:
        return None
    kind = next(iter(data.get("servers", {})), "")
    row = next(
        (
            r
            for r in cost["rows"]
            if r["server_kind"] == kind and r["form"] == "pyhistory" and r["depth"] == 1
        ),
        None,
    )
    if row is None:
        return None
    inner = ("lpush", "ltrim", "expire", "type", "getex", "append", "set")  # set: one append in 64
    form = {
        n: round(v["calls_per_op"], 2)
        for n, v in row["commands"].items()
        if n not in inner and round(v["calls_per_op"], 2)
    }
    library = {
        n: round(v, 2)
        for n, v in rts[0]["commands"].items()
        if n not in inner and not n.startswith("(") and round(v, 2)
    }
    return library, form


def _cmds(counts: dict[str, float]) -> str:
    return ", ".join(f"{n} {v:g}" for n, v in sorted(counts.items())) or "-"


def _cost(cost: dict[str, Any], kind: str, contender: str, depth: int) -> Any:
    for row in cost.get("rows", []):
        if (
            row["server_kind"] == kind
            and row["group"] == "turn"
            and row["contender"] == contender
            and row["depth"] == depth
        ):
            return row
    return None


def _cost_ratio(ours: dict[str, Any], theirs: dict[str, Any]) -> tuple[float, list[float]]:
    """pyhistory's server CPU per operation over another form's (rows of one server)."""
    return _rows_ratio(
        ours.get("server_cpu_us_reps", []),
        theirs.get("server_cpu_us_reps", []),
        ours["server_cpu_us"],
        theirs["server_cpu_us"],
    )


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None or value != value:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def markdown(data: dict[str, Any]) -> str:
    env = data["environment"]
    lines = [
        "# pyhistory benchmarks",
        "",
        f"Generated by `python loadtest/bench{' --quick' if env['settings']['quick'] else ''}`"
        f" on {env['date']}. One run, the servers side by side, the same concurrency for every "
        "contender, repetitions interleaved (the order rotates), medians over repetitions. "
        "A ratio between contenders is the median of the ratios within each repetition, which "
        "runs every contender once (a slow spell of the shared machine moves both sides of one "
        "ratio); the targets list those ratios.",
        "",
        f"- servers, on loopback: {', '.join(data.get('servers', {}).values())} (every "
        f"scenario on {env['server_name']} {env['server']}; the server cost and the asyncio "
        "turns on each)",
        f"- client: Python {env['python']}, redis-py {env['redis_py']} "
        f"(hiredis {env['hiredis']}), langchain-core {env['langchain_core']}, "
        f"langchain-community {env['langchain_community']}, orjson {env['orjson']}",
        f"- machine: {env['cpu_count']} CPUs ({env['cpu_model']}), {env['platform']}; "
        f"load average at start {', '.join(f'{x:.2f}' for x in env['loadavg_start'])}"
        + (
            f", at end {', '.join(f'{x:.2f}' for x in data['loadavg_end'])}"
            if "loadavg_end" in data
            else ""
        ),
        f"- settings: {env['settings']['reps']} repetitions x {env['settings']['duration']} s "
        f"(+{env['settings']['warmup']} s warm-up) per chat-turn segment; window {env['window']}, "
        f"ttl {env['ttl']} s; server and clients share the same {env['cpu_count']} cores, "
        "with other work running on the machine: throughput is noisy, CPU per operation "
        "much less so",
        "",
        "## Targets",
        "",
        *table(
            "measure | target | measured | met | from | why not met",
            (
                f"{r['measure']} | {r['target']} | {_fmt(r['value'])} | {MET[r['met']]} | "
                f"{r['how']} | {r['reason']}"
                for r in data["targets"]
            ),
        ),
    ]
    lines += server_cost_section(data)
    turns = data.get("chat_turns", [])
    names = list(dict.fromkeys(r["contender"] for r in turns))
    if turns:
        lines += [
            "",
            "## 1. Chat turn: fetch the window of 20 + add a human and an AI message",
            "",
            "turns/s (p50 / p99 ms). `lc-*` read the whole history (they cannot window); "
            "the ratio column is pyhistory's turns/s over each other contender's (paired by "
            "repetition).",
            "",
        ]
        others = [n for n in names if n != "pyhistory"]
        rows = []
        for label in dict.fromkeys(r["scenario"] for r in turns):
            by = {r["contender"]: r for r in turns if r["scenario"] == label}
            cells = [label]
            for name in names:
                r = by[name]
                cells.append(
                    f"{_fmt(r['turns_per_s'], 0)} ({_fmt(r['p50_ms'])} / {_fmt(r['p99_ms'])})"
                )
            ours = by.get("pyhistory")
            for name in others:
                if ours and by[name]["turns_per_s"]:
                    cells.append(f"{_turns_ratio(ours, by[name])[0]:.2f}x")
                else:
                    cells.append("-")
            rows.append(cells)
        lines += table(["scenario", *names, *(f"pyhistory / {n}" for n in others)], rows)
        lines += [
            "",
            "CPU per turn, µs, client / server (median over repetitions): the client's process "
            "time and the server's used_cpu_sys+user over the segment, divided by all the turns "
            "it ran. Much less sensitive than turns/s to other load on a shared machine; the "
            "server's figure includes its network system calls.",
            "",
        ]
        rows = []
        for label in dict.fromkeys(r["scenario"] for r in turns):
            by = {r["contender"]: r for r in turns if r["scenario"] == label}
            rows.append(
                [label]
                + [
                    f"{_fmt(by[n]['client_cpu_us_per_turn'], 0)} / "
                    f"{_fmt(by[n]['server_cpu_us_per_turn'], 0)}"
                    for n in names
                ]
            )
        lines += table(["scenario", *names], rows)
    lines += _kind_turns_section(data)
    rts = data.get("round_trips", [])
    if rts:
        lines += [
            "",
            "### Round trips and commands per turn (counted, not assumed)",
            "",
            "Round trips: request flights counted per connection by a zero-delay proxy (a "
            "pipeline written at once is one); new connections add a TCP handshake each. "
            "Commands: INFO commandstats on the server around the turns (commands inside "
            "MULTI/EXEC and inside functions are counted too).",
            "",
            *table(
                "contender | mode | round trips / turn | new connections / turn | "
                "commands / turn | commands",
                (
                    f"{r['contender']} | {r['mode']} | {r['round_trips_per_turn']:.2f} | "
                    f"{r['connections_per_turn']:.2f} | {r['commands_per_turn']:.2f} | "
                    + ", ".join(f"{k} {v:g}" for k, v in r["commands"].items())
                    for r in rts
                ),
            ),
        ]
    proxy = data.get("latency_proxy")
    if proxy:
        lines += [
            "",
            f"## 2. With {proxy['delay_ms_each_way']:g} ms added each way (latency proxy), "
            f"sync, 1 thread, {proxy['history']} msgs",
            "",
            "One round trip: a PING through the proxy before every turn, timed the same way, "
            f"p50 {proxy['ping_p50_ms']:.3f} ms overall. The ratio is taken per repetition "
            "(turn p50 / PING p50 of the same interleaved block), then the median. The proxy "
            "does not delay TCP handshakes, so contenders that connect per turn look better "
            "here than over a real network.",
            "",
            *table(
                "contender | turn p50 (ms) | PING p50 (ms) | turn p50 / one round trip",
                (
                    f"{name} | {r['turn_p50_ms']:.3f} | {median(r['ping_p50_ms_reps']):.3f} | "
                    f"{r['turn_over_rtt']:.2f}"
                    for name, r in proxy["contenders"].items()
                ),
            ),
        ]
    server = data.get("server_side")
    if server:
        lines += [
            "",
            "## 3. Server-side cost: redis-benchmark",
            "",
            f"Payload: one serialised message of {server['payload_bytes']} bytes. "
            f"`-c {server['pairs'][0]['clients']}`, the same `-n`/`-P` for both sides of a pair, "
            "runs alternated, median req/s. µs/call from INFO commandstats (reset before each "
            "run); a function's own entry includes the commands it calls, which are also "
            "listed under their own names.",
            "",
            "| pair | -P | -n | function req/s | plain req/s | ratio | µs per call "
            "(function run; plain run) | note |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in server["pairs"]:
            fn = ", ".join(
                f"{k.split(':')[1]} {v:.2f}"
                for k, v in row["usec_per_call"].items()
                if k.startswith("function:")
            )
            pl = ", ".join(
                f"{k.split(':')[1]} {v:.2f}"
                for k, v in row["usec_per_call"].items()
                if k.startswith("plain:")
            )
            lines.append(
                f"| `{row['function_cmd']}` vs `{row['plain_cmd']}` | {row['pipeline']} | "
                f"{row['requests']} | {_fmt(row['function_rps'], 0)} | "
                f"{_fmt(row['plain_rps'], 0)} | {row['ratio']:.3f} | {fn}; {pl} | {row['note']} |"
            )
    mem = data.get("memory")
    if mem:
        cfg = ", ".join(f"{k} {v}" for k, v in mem["config"].items())
        lines += [
            "",
            "## 4. Memory: MEMORY USAGE (SAMPLES 0) of one session",
            "",
            f"Messages alternate human (~200-350 chars) and AI (~350-600 chars); {cfg}.",
            "",
            "| messages | encoding | payload bytes | MEMORY USAGE | bytes / message | "
            "overhead / message | usage / payload |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in mem["sessions"]:
            lines.append(
                f"| {row['messages']} | {row['encoding']} | {row['payload_bytes']} | "
                f"{row['memory_usage_bytes']} | {row['bytes_per_message']:.1f} | "
                f"{row['overhead_per_message']:.1f} | {row['ratio']:.3f} |"
            )
    lines += [
        "",
        "## Contenders",
        "",
        "- **pyhistory**: `pyhistory.RedisChatMessageHistory(..., ttl=3600, window=20)` built "
        "per call (one shared pool per URL); asyncio through its native `aget_messages` / "
        "`aadd_messages`.",
        "- **lc-per-turn**: `langchain_community`'s `RedisChatMessageHistory(session_id, url=url, "
        "ttl=3600)` built once per turn, as `RunnableWithMessageHistory`'s factory does (a new "
        "client and connection each turn); reads the whole history; asyncio through its "
        "inherited executor-based `aget_messages` / `aadd_messages`.",
        "- **lc-reused**: the same class, one instance per session kept across turns.",
        "- **pipeline**: hand-written redis-py, one shared client, MULTI LRANGE 0 19 + EXPIRE EXEC "
        "and MULTI LPUSH + LTRIM + EXPIRE EXEC; asyncio twin on redis.asyncio.",
        "",
        "Every contender that can trim is given max_messages 4,000 (sent with every append, "
        "never reached here).",
        "",
        "Plots: `server_cost.png` (server CPU per turn), `throughput.png` (turns/s) and "
        "`latency_p99.png` (p99 turn latency).",
        "",
    ]
    return "\n".join(lines)


def server_cost_section(data: dict[str, Any]) -> list[str]:
    cost = data.get("server_cost")
    if not cost:
        return []
    servers = data.get("servers", {})
    kinds = list(dict.fromkeys(r["server_kind"] for r in cost["rows"]))
    labels = [servers.get(k, k) for k in kinds]
    by = {(r["server_kind"], r["form"], r["depth"]): r for r in cost["rows"]}
    notes = {r["form"]: r["note"] for r in cost["rows"]}
    lines = [
        "",
        "## Server cost: what a turn, a read and an append cost the server",
        "",
        "Server CPU (used_cpu_sys + used_cpu_user from INFO) per operation, µs, with the exact "
        "commands each contender sends, driven by a lean client (requests encoded ahead, "
        f"replies parsed by hiredis) on {cost['connections']} connections, one flight in the air "
        "per connection; `-P 16`: each flight carries 16 operations on different sessions. "
        f"Sessions start at their bound of {cost['max_messages']} entries (so every append "
        f"trims); reads take the newest {cost['window']} and refresh a {cost['ttl']} s TTL; an "
        f"append adds 2 entries of {' and '.join(str(b) for b in cost['entry_bytes'])} bytes. "
        "Medians over interleaved repetitions; pyhistory / pipeline is the median of the "
        "ratios taken repetition by repetition.",
        "",
        "### Per chat turn (read flight + append flight)",
        "",
        "| form | -P | " + " | ".join(labels) + " | commands |",
        "|---|---|" + "---|" * len(labels) + "---|",
    ]
    turn_forms = list(dict.fromkeys(r["form"] for r in cost["rows"] if r["group"] == "turn"))
    depths = sorted({r["depth"] for r in cost["rows"] if r["group"] == "turn"})
    for depth in depths:
        for form in turn_forms:
            cells = [
                _fmt(by[(k, form, depth)]["server_cpu_us"]) if (k, form, depth) in by else "-"
                for k in kinds
            ]
            lines.append(f"| {form} | {depth} | " + " | ".join(cells) + f" | {notes[form]} |")
        ratios = []
        for k in kinds:
            ours, theirs = by.get((k, "pyhistory", depth)), by.get((k, "pipeline", depth))
            ratios.append(f"**{_cost_ratio(ours, theirs)[0]:.2f}x**" if ours and theirs else "-")
        lines.append(f"| pyhistory / pipeline | {depth} | " + " | ".join(ratios) + " | |")
    for group, title in (("read", "Per read"), ("append", "Per append")):
        forms_ = list(dict.fromkeys(r["form"] for r in cost["rows"] if r["group"] == group))
        if not forms_:
            continue
        op_depths = sorted({r["depth"] for r in cost["rows"] if r["group"] == group})
        lines += [
            "",
            f"### {title}",
            "",
            "µs of server CPU per operation. Commands: INFO commandstats µs per call on the "
            "first server (FCALL's own figure includes the commands it runs).",
            "",
            "| form | -P | " + " | ".join(labels) + " | note | commands |",
            "|---|---|" + "---|" * len(labels) + "---|---|",
        ]
        for depth in op_depths:
            for form in forms_:
                cells = []
                for k in kinds:
                    row = by.get((k, form, depth))
                    cells.append(_fmt(row["server_cpu_us"]) if row else "-")
                first = by.get((kinds[0], form, depth))
                stats = ""
                if first:
                    stats = ", ".join(
                        f"{n} {v['usec_per_call']:.2f}"
                        for n, v in first["commands"].items()
                        if n in ("fcall", "lrange", "expire", "type", "lpush", "ltrim", "exec")
                    )
                lines.append(
                    f"| {form} | {depth} | " + " | ".join(cells) + f" | {notes[form]} | {stats} |"
                )
    parts = {k: cost_breakdown(cost, k) for k in kinds}
    small = cost["small_entry_bytes"][0]
    entry = parts[kinds[0]]["entry_bytes"] / 2
    lines += [
        "",
        "### Where pyhistory's extra server time goes (µs per operation, -P 16)",
        "",
        "| | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    for key, text in (
        (
            "fcall_fixed",
            f"one FCALL's own cost (FCALL append minus MULTI LPUSH LTRIM EXPIRE EXEC, "
            f"2 x {small} B)",
        ),
        (
            "crossing",
            f"2 entries of ~{entry:.0f} B crossing into Lua and back (what the bytes add to "
            "FCALL append beyond what they add to MULTI)",
        ),
        ("append_over_multi", "FCALL append minus MULTI LPUSH LTRIM EXPIRE EXEC (real entries)"),
        ("touch_over_multi", "LRANGE + FCALL touch minus MULTI LRANGE EXPIRE EXEC"),
        ("touch_over_expire", "LRANGE + FCALL touch minus LRANGE + EXPIRE"),
        (
            "window_over_touch",
            "FCALL window minus LRANGE + FCALL touch (what the read change saves)",
        ),
    ):
        lines.append(f"| {text} | " + " | ".join(f"{parts[k][key]:+.2f}" for k in kinds) + " |")

    def ratio(form: str, depth: int) -> str:
        cells = []
        for k, label in zip(kinds, labels, strict=True):
            ours, theirs = by.get((k, form, depth)), by.get((k, "pipeline", depth))
            if ours and theirs:
                cells.append(f"{_cost_ratio(ours, theirs)[0]:.2f}x ({label})")
        return ", ".join(cells) or "-"

    first = parts[kinds[0]]
    lines += [
        "",
        "**What limits it.** A turn makes two function calls, `touch` and `append`. Each FCALL "
        f"costs the server about {first['fcall_fixed']:.1f} µs beyond the commands it runs "
        f"({labels[0]}): Redis finds the function, enters Lua, builds KEYS and ARGV as Lua "
        "values, and every `redis.call` inside converts its arguments back into Redis strings "
        "and its reply into Lua values. The append's entries make that crossing twice (into Lua "
        f"strings, then into the list): {first['crossing']:.1f} µs for 2 x ~{entry:.0f} B. "
        "Neither is reducible inside the library: it is how Redis runs a function, whatever the "
        "function does; the Lua itself (argument checks, the trim test) is a small part. What a "
        "client could still give up, measured as whole turns above:",
        "",
        "- the read's TTL refresh as a plain `EXPIRE` instead of `FCALL touch` "
        "(`read LRANGE + EXPIRE; FCALL append`, at 1 flight per client: "
        f"{ratio('read LRANGE + EXPIRE; FCALL append', 1)} of the pipeline). It gives up "
        "touch's type check: `EXPIRE` would set a TTL on a key of another type;",
        "- the append as `MULTI LPUSH LTRIM EXPIRE EXEC` (`read LRANGE + FCALL touch; MULTI "
        f"append`: {ratio('read LRANGE + FCALL touch; MULTI append', 1)}). It gives up the "
        "server-side validation and the WRONGTYPE guarantee (in MULTI, `EXPIRE` still runs "
        "when `LPUSH` fails on a key of another type), and the library's one-call contract "
        "that other clients share;",
        "- both: that is the pipeline contender itself (1.00x).",
    ]
    return lines


def _kind_turns_section(data: dict[str, Any]) -> list[str]:
    servers = data.get("servers", {})
    rows = [dict(r, server_kind=next(iter(servers), "")) for r in data.get("chat_turns", [])]
    rows += data.get("kind_turns", [])
    if not data.get("kind_turns"):
        return []
    lines = [
        "",
        "### The asyncio turn on every server kind",
        "",
        "asyncio, 64 tasks, sessions of 20: turns/s (p50 / p99 ms), and CPU per turn, client / "
        "server µs.",
        "",
        "| server | pyhistory | pipeline | pyhistory / pipeline | CPU pyhistory | CPU pipeline |",
        "|---|---|---|---|---|---|",
    ]
    for kind, label in servers.items():
        mine = [r for r in rows if r["server_kind"] == kind]
        if not mine:
            continue
        history = min(r["history"] for r in mine)
        ours = _turn(mine, "async", 64, history, "pyhistory")
        theirs = _turn(mine, "async", 64, history, "pipeline")
        if not ours or not theirs:
            continue
        lines.append(
            f"| {label} | {_fmt(ours['turns_per_s'], 0)} ({_fmt(ours['p50_ms'])} / "
            f"{_fmt(ours['p99_ms'])}) | {_fmt(theirs['turns_per_s'], 0)} "
            f"({_fmt(theirs['p50_ms'])} / {_fmt(theirs['p99_ms'])}) | "
            f"{_turns_ratio(ours, theirs)[0]:.2f}x | "
            f"{_fmt(ours['client_cpu_us_per_turn'], 0)} / "
            f"{_fmt(ours['server_cpu_us_per_turn'], 0)} | "
            f"{_fmt(theirs['client_cpu_us_per_turn'], 0)} / "
            f"{_fmt(theirs['server_cpu_us_per_turn'], 0)} |"
        )
    return lines
