"""The PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness import grouped_bars, pyplot


def plots(data: dict[str, Any], out: Path) -> list[str]:
    plt = pyplot()
    if plt is None:
        return []
    written = cost_plot(data, out, plt)
    turns = data.get("chat_turns", [])
    if not turns:
        return written
    names = list(dict.fromkeys(r["contender"] for r in turns))
    labels = list(dict.fromkeys(r["scenario"] for r in turns))
    colours = {
        "pyhistory": "#d62728",
        "pipeline": "#1f77b4",
        "lc-reused": "#2ca02c",
        "lc-per-turn": "#7f7f7f",
    }
    for metric, fname, ylabel, title in (
        ("turns_per_s", "throughput.png", "turns/s (log)", "Chat turn throughput"),
        ("p99_ms", "latency_p99.png", "p99 turn latency, ms (log)", "Chat turn p99 latency"),
    ):
        fig, ax = plt.subplots(figsize=(12, 5.5))
        by = {(r["scenario"], r["contender"]): r[metric] for r in turns}
        series = [
            (name, [by[(label, name)] for label in labels], {"color": colours.get(name)})
            for name in names
        ]
        grouped_bars(ax, series, lambda v: f"{v:.0f}" if v >= 10 else f"{v:.1f}")
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels([label.replace(", ", "\n") for label in labels], fontsize=9)
        ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        env = data["environment"]
        ax.set_title(
            f"{title}: fetch window 20 + add 2 messages — {env['server_name']} {env['server']}, "
            f"{env['cpu_count']} CPUs, median of {env['settings']['reps']}"
        )
        ax.legend()
        ax.grid(axis="y", alpha=0.3, which="both")
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
        written.append(fname)
    return written


PANELS = [
    ("turn", "per chat turn (window 20 + append 2)", 1.1),
    ("read", "per read (window 20, TTL refresh), -P 16", 1.3),
    ("append", "per append (2 entries, trim, TTL), -P 16", 1.3),
]


def cost_plot(data: dict[str, Any], out: Path, plt: Any) -> list[str]:
    """Server CPU per turn, pyhistory against the pipeline, per server and flights pipelined;
    and per read and per append (at -P 16) for every form measured."""
    cost = data.get("server_cost")
    if not cost:
        return []
    servers = data.get("servers", {})
    rows = cost["rows"]
    kinds = list(dict.fromkeys(r["server_kind"] for r in rows))
    colours = ["#d62728", "#1f77b4", "#ff9896", "#2ca02c", "#9467bd", "#8c564b", "#7f7f7f"]
    panels = [
        (group, title)
        for group, title, width in PANELS
        if any(r["group"] == group for r in rows)  # a run may measure some forms only
    ]
    widths = [width for group, _, width in PANELS if group in {g for g, _ in panels}]
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(max(12, 6 * len(panels)), 6.5),
        gridspec_kw={"width_ratios": widths},
    )
    axes = axes if len(panels) > 1 else [axes]
    for ax, (group, title) in zip(axes, panels, strict=True):
        mine = {(r["server_kind"], r["form"], r["depth"]): r for r in rows if r["group"] == group}
        columns = list(dict.fromkeys((form, depth) for (_, form, depth) in mine))
        forms_ = list(dict.fromkeys(form for form, _ in columns))
        if group == "turn":
            columns.sort(key=lambda c: c[1])
        series = [
            (
                f"{form}, -P {depth}" if group == "turn" else form,
                [
                    mine[(k, form, depth)]["server_cpu_us"] if (k, form, depth) in mine else 0.0
                    for k in kinds
                ],
                {
                    "color": colours[(forms_.index(form) if group == "turn" else i) % len(colours)],
                    "hatch": "//" if group == "turn" and depth > 1 else None,
                },
            )
            for i, (form, depth) in enumerate(columns)
        ]
        grouped_bars(ax, series, lambda v: f"{v:.1f}", fontsize=6)
        ax.set_xticks(range(len(kinds)))
        ax.set_xticklabels([servers.get(k, k) for k in kinds], fontsize=9)
        ax.set_ylabel("server CPU, µs per operation")
        ax.set_title(title, fontsize=10)
        top = max((r["server_cpu_us"] for r in mine.values()), default=1.0)
        ax.set_ylim(0, top * (1.6 if group == "turn" else 1.3))
        ax.legend(fontsize=6 if group == "turn" else 7, ncol=2 if group == "turn" else 1)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(
        "What the server spends: used_cpu per operation, pyhistory's commands and the "
        f"alternatives ({cost['connections']} connections, sessions at {cost['max_messages']} "
        "entries)"
    )
    fig.tight_layout()
    fig.savefig(out / "server_cost.png", dpi=110)
    plt.close(fig)
    return ["server_cost.png"]
