"""The HTTP load test's summary (summary.json, summary.md) and plots (latency.png, faults.png),
from the exact per-request record the locustfile writes and locust's own CSV."""

from __future__ import annotations

import os
import platform
import sys
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import harness
from harness import MET, grouped_bars, median, table

FLOOR = "memory"
OURS = "pyhistory"
HAND = "pipeline"
THEIRS = "langchain"
P99_BUDGET_MS = 2.0
ENDPOINTS = ("chat", "chat (stream)")


def _locust_aggregated(folder: Path) -> dict[str, int]:
    row = harness.locust_stats(folder).get("Aggregated")
    if row is None:
        return {}
    return {"requests": int(row["Request Count"]), "failures": int(row["Failure Count"])}


def summarise_run(
    name: str,
    backend: str,
    fault: str,
    folder: Path,
    meta: dict[str, Any],
    record: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A run's figures from its per-request record (``record``, read from ``folder`` unless
    given) and what the runner noted (``meta``)."""
    if record is None:
        record = harness.load_requests(folder / "requests.json")
    requests = record["requests"]  # [end, name, ms, ok, error]
    marks = record["marks"]
    start = float(marks.get("start", meta.get("started", 0.0)))
    # Latency is taken once every user runs (harness.SETTLE_S after the ramp-up, by the time
    # each request started); failures over the whole run.
    steady_from = start if fault else harness.settled_since(marks, start)
    steady = [r for r in requests if harness.started_since(r[0], r[2], steady_from)]
    end = max((r[0] for r in requests), default=steady_from)
    window = max(1e-9, end - steady_from)
    names = sorted({r[1] for r in requests})
    by_name = {n: harness.latency_stats([r[2] for r in steady if r[1] == n], window) for n in names}
    failures = [r for r in requests if not r[3]]
    errors = Counter(r[4] for r in failures)
    out: dict[str, Any] = {
        "name": name,
        "backend": backend,
        "fault": fault,
        "requests": len(requests),
        "failures": len(failures),
        "errors": errors.most_common(8),
        "locust": _locust_aggregated(folder),
        "locust_exit_code": meta.get("locust_exit_code"),
        "seconds": meta.get("seconds"),
        "steady_seconds": window,
        "by_name": by_name,
        "all": harness.latency_stats([r[2] for r in steady], window),
        "server_timing": {
            k: harness.latency_stats(v)
            for k, v in record["server_timing"].items()
            if isinstance(v, list) and v
        },
        "folder": folder.name,
        "machine_cpu_busy": meta.get("machine_cpu_busy"),
        "loadavg_end": meta.get("loadavg_end"),
    }
    # one second per bin, from the run's start: successes, failures, slowest response
    bins: dict[int, list[Any]] = {}
    for r in requests:
        index = int(r[0] - start)
        cell = bins.setdefault(index, [0, 0, 0.0])
        cell[0 if r[3] else 1] += 1
        cell[2] = max(cell[2], r[2])
    out["timeline"] = [[i, *bins.get(i, [0, 0, 0.0])] for i in range(0, max(bins, default=0) + 1)]
    if fault and "fault_start" in meta:
        t0, t1 = float(meta["fault_start"]), float(meta["fault_end"])
        out["fault_at_s"] = t0 - start
        out["fault_seconds"] = t1 - t0
        fails = [(r[0] - t0, r[2]) for r in failures]
        # requests in the air while the fault lasted: they ended after it began and started before
        # it ended
        during = [r for r in requests if r[0] >= t0 and r[0] - r[2] / 1000 <= t1]
        after = [r for r in requests if r[3] and harness.started_since(r[0], r[2], t1)]
        out["fault"] = fault
        out["fault_report"] = {
            "failed": len(failures),
            "first_failure_s": min((f[0] for f in fails), default=None),
            "last_failure_s": max((f[0] for f in fails), default=None),
            "slowest_failure_ms": max((f[1] for f in fails), default=None),
            "slowest_request_in_fault_ms": max((r[2] for r in during), default=None),
            "requests_in_fault": len(during),
            "first_success_after_s": (min(r[0] for r in after) - t1) if after else None,
        }
    return out


def summarise(
    results: list[dict[str, Any]],
    *,
    settings: dict[str, Any],
    redis_label: str,
    started: str,
    elapsed_s: float,
) -> dict[str, Any]:
    clean = [r for r in results if not r["fault"]]
    backends: dict[str, dict[str, Any]] = {}
    for backend in dict.fromkeys(r["backend"] for r in clean):
        runs = [r for r in clean if r["backend"] == backend]
        names = sorted({n for r in runs for n in r["by_name"]})
        backends[backend] = {
            "runs": [r["name"] for r in runs],
            "requests": sum(r["requests"] for r in runs),
            "failures": sum(r["failures"] for r in runs),
            "per_s": median([r["all"].get("per_s", float("nan")) for r in runs]),
            "loadavg_end": median([r["loadavg_end"][0] for r in runs if r.get("loadavg_end")]),
            "machine_cpu_busy": median(
                [r["machine_cpu_busy"] for r in runs if r.get("machine_cpu_busy") is not None]
            ),
            "by_name": {
                n: {
                    k: median([r["by_name"][n][k] for r in runs if n in r["by_name"]])
                    for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")
                }
                for n in names
            },
            "all": {k: median([r["all"][k] for r in runs]) for k in ("p50_ms", "p90_ms", "p99_ms")},
            "server_timing": {
                part: {
                    k: median(
                        [r["server_timing"][part][k] for r in runs if part in r["server_timing"]]
                    )
                    for k in ("p50_ms", "p99_ms", "mean_ms")
                }
                for part in ("read", "append", "first_token", "stream_read", "stream_append")
                if any(part in r["server_timing"] for r in runs)
            },
        }
    data: dict[str, Any] = {
        "started": started,
        "elapsed_s": elapsed_s,
        "redis": redis_label,
        "settings": settings,
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_end": os.getloadavg(),
        },
        "backends": backends,
        "runs": results,
    }
    data["targets"] = targets(data)
    return data


def targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def add(measure: str, target: str, value: str, met: bool | None, note: str = "") -> None:
        rows.append(
            {"measure": measure, "target": target, "value": value, "met": met, "note": note}
        )

    backends = data["backends"]
    for name, b in backends.items():
        add(
            f"{name}: failed requests",
            "0",
            f"{b['failures']} of {b['requests']}",
            not b["failures"],
        )
    if OURS in backends and FLOOR in backends:
        for endpoint in ENDPOINTS:
            ours = backends[OURS]["by_name"].get(endpoint)
            floor = backends[FLOOR]["by_name"].get(endpoint)
            if not ours or not floor:
                continue
            extra = ours["p99_ms"] - floor["p99_ms"]
            extra50 = ours["p50_ms"] - floor["p50_ms"]
            add(
                f"pyhistory p99 over the in-process floor, {endpoint}",
                f"<= {P99_BUDGET_MS:g} ms",
                f"{extra:+.2f} ms ({ours['p99_ms']:.2f} vs {floor['p99_ms']:.2f} ms; "
                f"p50 {extra50:+.2f} ms)",
                extra <= P99_BUDGET_MS,
                _p99_note(backends[OURS], extra),
            )
    if all(name in backends for name in (OURS, HAND, FLOOR)):
        for endpoint in ENDPOINTS:
            ours = backends[OURS]["by_name"].get(endpoint)
            hand = backends[HAND]["by_name"].get(endpoint)
            floor = backends[FLOOR]["by_name"].get(endpoint)
            if not (ours and hand and floor):
                continue
            over_ours = ours["p99_ms"] - floor["p99_ms"]
            over_hand = hand["p99_ms"] - floor["p99_ms"]
            add(
                f"pyhistory p99 over the floor <= the hand-written pipeline's, {endpoint}",
                "<= the pipeline's",
                f"{over_ours:+.2f} vs {over_hand:+.2f} ms ({ours['p99_ms']:.2f} vs "
                f"{hand['p99_ms']:.2f} ms; floor {floor['p99_ms']:.2f} ms)",
                over_ours <= over_hand,
                "the same service, Redis and load, one after the other"
                + _rounds_note(data["runs"], endpoint),
            )
    if OURS in backends and THEIRS in backends:
        for endpoint in ENDPOINTS:
            ours = backends[OURS]["by_name"].get(endpoint)
            theirs = backends[THEIRS]["by_name"].get(endpoint)
            if ours and theirs:
                add(
                    f"langchain_community / pyhistory, {endpoint} p99",
                    "reported",
                    f"{theirs['p99_ms'] / ours['p99_ms']:.2f}x "
                    f"({theirs['p99_ms']:.1f} / {ours['p99_ms']:.1f} ms)",
                    None,
                )
        o, t = backends[OURS]["server_timing"], backends[THEIRS]["server_timing"]
        if "read" in o and "read" in t:
            ours_ms = o["read"]["p50_ms"] + o["append"]["p50_ms"]
            theirs_ms = t["read"]["p50_ms"] + t["append"]["p50_ms"]
            add(
                "langchain_community / pyhistory, history time per turn (read + append p50)",
                "reported",
                f"{theirs_ms / ours_ms:.2f}x ({theirs_ms:.2f} / {ours_ms:.2f} ms)",
                None,
            )
    bound = data["settings"].get("failure_bound_s")
    limit_ms = None if bound is None else (bound + 1.0) * 1000  # + the model and the service
    for run in data["runs"]:
        report = run.get("fault_report")
        if not report:
            continue
        slowest = report["slowest_request_in_fault_ms"]
        recovered = report["first_success_after_s"]
        within = limit_ms is None or (slowest is not None and slowest <= limit_ms)
        bound_text = "-" if bound is None else f"{bound:g} s"
        if run["fault"] == "restart":
            add(
                "Redis restarted mid-run: failed requests",
                "0",
                f"{run['failures']} of {run['requests']}; slowest request in the fault "
                f"{_ms(slowest)}",
                not run["failures"],
            )
            continue
        seconds = run.get("fault_seconds", 0.0)
        clear = all("history store unavailable" in text for text, _ in run["errors"])
        outcome = (
            f"{run['failures']} of {run['requests']} failed ({_errors(run)}); slowest request "
            f"in the fault {_ms(slowest)}; first success after it +{_s(recovered)}"
        )
        if run["fault"] == "pause":
            add(
                f"Redis paused {seconds:.0f} s: every request ends within the client's failure "
                f"bound ({bound_text}) + 1 s, failures name the error, then the service recovers",
                "bounded, clear, recovered",
                outcome,
                within and clear and recovered is not None,
                "a pause shorter than the read timeout is served late, not failed",
            )
        else:
            add(
                f"Redis paused {seconds:.0f} s (longer than the bound): requests fail within the "
                f"client's failure bound ({bound_text}) + 1 s with a clear error, then recover",
                "failures bounded, clear, recovered",
                outcome,
                bool(run["failures"]) and within and clear and recovered is not None,
            )
    return rows


def _rounds_note(runs: list[dict[str, Any]], endpoint: str) -> str:
    """Each round's p99 over that round's floor, ours against the pipeline's: how far a single
    round's comparison moves (a p99 rests on the slowest 1 % of a round's requests)."""
    p99 = {
        name: [
            r["by_name"][endpoint]["p99_ms"]
            for r in runs
            if r["backend"] == name and not r["fault"] and endpoint in r["by_name"]
        ]
        for name in (OURS, HAND, FLOOR)
    }
    pairs = [(o - f, h - f) for o, h, f in zip(p99[OURS], p99[HAND], p99[FLOOR], strict=False)]
    if len(pairs) < 2:
        return ""
    shown = ", ".join(f"{ours:+.2f} vs {hand:+.2f}" for ours, hand in pairs)
    ahead = sum(1 for ours, hand in pairs if ours <= hand)
    return f"; by round: {shown} ms (pyhistory at or below in {ahead} of {len(pairs)})"


def _p99_note(ours: dict[str, Any], extra: float) -> str:
    """What the history itself spent, against the p99 difference."""
    st = ours["server_timing"]
    if "read" not in st or "append" not in st:
        return ""
    text = (
        f"the history's own time per turn (Server-Timing): read p99 {st['read']['p99_ms']:.2f} + "
        f"append p99 {st['append']['p99_ms']:.2f} ms"
    )
    if extra > P99_BUDGET_MS:
        text += (
            "; the call's p99 is mostly waiting (for the worker's event loop, busy with other "
            "requests, to resume it once the reply is in, and for a core shared by Redis, the "
            "workers and locust), which any networked store pays"
        )
    return text


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.1f} ms"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _errors(run: dict[str, Any]) -> str:
    if not run["errors"]:
        return "no error"
    return "; ".join(f"{count} x {text[:160]}" for text, count in run["errors"][:3])


def _f(value: float | None, digits: int = 2) -> str:
    if value is None or value != value:
        return "-"
    return f"{value:,.{digits}f}"


def markdown(data: dict[str, Any]) -> str:
    s = data["settings"]
    m = data["machine"]
    lines = [
        "# The chat service under load: history backends side by side",
        "",
        f"Generated by `make loadtest-http` (`python loadtest/httpchat/run.py"
        f"{' --quick' if s.get('quick') else ''}`) on {data['started']}, in "
        f"{data['elapsed_s'] / 60:.1f} min.",
        "",
        f"- service: FastAPI on uvicorn, {s['workers']} workers; each turn reads the window of "
        f"{s['window']}, calls the fake model ({s['model_first_token_ms']:g} ms to the first "
        f"token, then {s['model_tokens'] - 1} tokens {s['model_token_ms']:g} ms apart: "
        f"{s['model_first_token_ms'] + s['model_token_ms'] * (s['model_tokens'] - 1):g} ms), "
        f"appends the human and the AI message (ttl {s['ttl']} s, max_messages "
        f"{s['max_messages']}); {s['stream_share']:.0%} of the turns stream the answer",
        f"- load: locust, {s['users']} users (spawned at {s['spawn_rate']:g}/s), "
        f"{s['run_time']} s per backend and round ({s.get('rounds', 1)} rounds, every other "
        f"in reverse order), think time {s['think']} s between turns, conversations of 3-8 "
        "turns, then a new session or back to an earlier one"
        + (f"; first, an unreported warm-up run of {s['warm_up']} s" if s.get("warm_up") else ""),
        "- the service's workers and locust move their start-up objects out of the garbage "
        "collector's reach (`gc.freeze()`, as long-running services do): without it a full "
        "collection pauses a process 70-90 ms about once a minute, whatever the backend",
        f"- Redis: {data['redis']} on loopback; machine: {m['cpu_count']} CPUs shared by Redis, "
        "the service's workers and locust (and other work on the machine: expect noise of a "
        f"few ms in the tails); Python {m['python']}",
        "- latencies are exact (timed per request by the locustfile; locust's own CSV rounds "
        f"them), for the requests that started {harness.SETTLE_S:g} s or more after every user "
        "ran (the last users' first requests open their connections); failures over the whole "
        "run",
        "",
        "## Targets",
        "",
        *table(
            "measure | target | measured | met | note",
            (
                f"{r['measure']} | {r['target']} | {r['value']} | {MET[r['met']]} | {r['note']}"
                for r in data["targets"]
            ),
        ),
    ]
    backends = data["backends"]
    floor = backends.get(FLOOR, {}).get("by_name", {})
    lines += [
        "",
        "## Backends",
        "",
        "Response time in ms, p50 / p99 (p99 over the floor in brackets); `chat (stream)` is "
        "timed to the stream's last event. History: the service's own time in the history "
        "calls (Server-Timing), read and append, p50 / p99 ms. Machine CPU busy: both cores, "
        "over the run, whatever ran on them (Redis, the workers, locust, other work); load "
        "average: the machine's, over the last minute, at the end of the run (medians over the "
        "rounds).",
        "",
    ]
    rows = []
    for name, b in backends.items():
        cells = [name, b["requests"], b["failures"], _f(b["per_s"], 1)]
        for endpoint in ENDPOINTS:
            e = b["by_name"].get(endpoint)
            if not e:
                cells.append("-")
                continue
            over = ""
            if name != FLOOR and endpoint in floor:
                over = f" ({e['p99_ms'] - floor[endpoint]['p99_ms']:+.2f})"
            cells.append(f"{_f(e['p50_ms'])} / {_f(e['p99_ms'])}{over}")
        st = b["server_timing"]
        first = st.get("first_token")
        cells.append(f"{_f(first['p50_ms'])} / {_f(first['p99_ms'])}" if first else "-")
        for part in ("read", "append"):
            p = st.get(part)
            cells.append(f"{_f(p['p50_ms'], 3)} / {_f(p['p99_ms'], 3)}" if p else "-")
        cells.append(f"{_f(b.get('machine_cpu_busy', float('nan')) * 100, 0)} %")
        cells.append(_f(b.get("loadavg_end", float("nan"))))
        rows.append(cells)
    header = (
        "backend | requests | failed | req/s | chat | chat (stream) | first token | history read "
    )
    lines += table(header + "| history append | machine CPU busy | load average", rows)
    faults = [r for r in data["runs"] if r.get("fault_report")]
    if faults:
        bound = data["settings"].get("failure_bound_s")
        lines += [
            "",
            "## Faults under load (backend pyhistory)",
            "",
            "The same scenario while the Redis server is restarted (no persistence: sessions and "
            "the library are gone, the library is loaded again on first use), and paused with "
            "SIGSTOP, then SIGCONT. pyhistory's URL-built clients time out and retry within a "
            f"failure bound of {bound if bound is not None else '?'} s (`FAILURE_BOUND`); the "
            "service answers 503 with the error when the history fails. Times are from the "
            "fault's start.",
            "",
        ]
        header = "fault | at | lasted | requests | failed | first / last failure after the fault "
        header += "began | slowest request in the fault | first success after the fault | errors"
        rows = []
        for run in faults:
            f = run["fault_report"]
            rows.append(
                f"{run['fault']} | {run['fault_at_s']:.1f} s | {run['fault_seconds']:.2f} s | "
                f"{run['requests']} | {run['failures']} | {_s(f['first_failure_s'])} / "
                f"{_s(f['last_failure_s'])} | {_ms(f['slowest_request_in_fault_ms'])} | "
                f"+{_s(f['first_success_after_s'])} | {_errors(run)}"
            )
        lines += table(header, rows)
    lines += [
        "",
        "## Files",
        "",
        "Here: this summary, `summary.json` (every figure above, and every run's figures and "
        "per-second timeline), the plots `latency.png` (backends) and `faults.png` (the fault "
        "runs over time). Each run's locust CSV and output, uvicorn's log and the exact "
        "per-request record stay on the machine that ran it (`--raw`, by default "
        "`loadtest/results/http-<time>/`).",
        "",
    ]
    return "\n".join(lines)


def plots(data: dict[str, Any], out: Path) -> list[str]:
    plt = harness.pyplot()
    if plt is None:
        return []
    written = []
    backends = data["backends"]
    s = data["settings"]
    model_ms = s["model_first_token_ms"] + s["model_token_ms"] * (s["model_tokens"] - 1)
    if backends:
        names = list(backends)
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(15, 5.5))
        colours = ["#9ecae1", "#1f77b4", "#fdae6b", "#e6550d"]
        series = [
            (
                f"{endpoint} {key[:3]}",
                [b["by_name"].get(endpoint, {}).get(key, 0.0) for b in backends.values()],
                {"color": colour},
            )
            for (endpoint, key), colour in zip(
                [(e, k) for e in ENDPOINTS for k in ("p50_ms", "p99_ms")], colours, strict=True
            )
        ]
        grouped_bars(ax, series, lambda v: f"{v:.1f}")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(
            [f"{n}\n{backends[n]['failures']} failed / {backends[n]['requests']}" for n in names]
        )
        ax.set_ylabel("response time, ms")
        ax.set_title(f"Chat turn response time (the model's {model_ms:g} ms included)", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        colours = ["#a1d99b", "#31a354", "#bcbddc", "#756bb1"]
        series = [
            (
                f"history {part} {key[:3]}",
                [b["server_timing"].get(part, {}).get(key, 0.0) for b in backends.values()],
                {"color": colour},
            )
            for (part, key), colour in zip(
                [(p, k) for p in ("read", "append") for k in ("p50_ms", "p99_ms")],
                colours,
                strict=True,
            )
        ]
        grouped_bars(ax2, series, lambda v: f"{v:.2f}")
        ax2.set_xticks(range(len(names)))
        ax2.set_xticklabels(names)
        ax2.set_yscale("symlog", linthresh=1.0)
        ax2.set_ylabel("ms (symlog)")
        ax2.set_title("The service's time in the history per turn (Server-Timing)", fontsize=10)
        ax2.legend(fontsize=8)
        ax2.grid(axis="y", alpha=0.3)
        fig.suptitle(
            f"{s['users']} users, {s['run_time']} s per backend, uvicorn {s['workers']} workers, "
            f"{data['redis']}, {data['machine']['cpu_count']} CPUs"
        )
        fig.tight_layout()
        fig.savefig(out / "latency.png", dpi=110)
        plt.close(fig)
        written.append("latency.png")
    faults = [r for r in data["runs"] if r.get("fault_report")]
    if faults:
        fig, axes = plt.subplots(len(faults), 1, figsize=(12, 3.6 * len(faults)), squeeze=False)
        for ax, run in zip(axes[:, 0], faults, strict=True):
            timeline = run["timeline"]
            xs = [t[0] for t in timeline]
            ax.bar(xs, [t[1] for t in timeline], 0.9, color="#31a354", label="succeeded / s")
            ax.bar(
                xs,
                [t[2] for t in timeline],
                0.9,
                bottom=[t[1] for t in timeline],
                color="#d62728",
                label="failed / s",
            )
            ax.axvspan(
                run["fault_at_s"],
                run["fault_at_s"] + run["fault_seconds"],
                color="#999999",
                alpha=0.3,
                label=run["fault"],
            )
            ax.set_ylabel("requests ending per s")
            twin = ax.twinx()
            twin.plot(xs, [t[3] / 1000 for t in timeline], color="#000000", lw=1, label="slowest")
            twin.set_ylabel("slowest request ending that second, s")
            ax.set_title(
                f"Redis {run['fault']} at {run['fault_at_s']:.0f} s: {run['failures']} of "
                f"{run['requests']} requests failed",
                fontsize=10,
            )
            ax.set_xlabel("seconds into the run")
            ax.legend(loc="upper left", fontsize=8)
            twin.legend(loc="upper right", fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "faults.png", dpi=110)
        plt.close(fig)
        written.append("faults.png")
    return written
