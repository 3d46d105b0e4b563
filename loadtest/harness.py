"""What the load tests and the benchmarks share: the two locust scenarios
(``loadtest/locustfile.py``, chat turns against the history classes, ``make loadtest``;
``loadtest/httpchat/locustfile.py``, people chatting with the HTTP service, ``make
loadtest-http``), their runners, and the report writers of ``make bench``, ``make loadtest-http``
and ``make bench-checkpoint``.

For the runners: the Redis server under test, one headless locust run, locust's CSV, exact latency
statistics, the machine's and the server's CPU. For the reports: markdown tables, the target
lines, grouped bar plots. This module does not import locust (that would monkey-patch the runner
with gevent); :class:`RequestLog`, for the locustfiles, is handed locust's events.
"""

from __future__ import annotations

import argparse
import csv
import gc
import gzip
import json
import math
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyhistory import testing


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def freeze_collected() -> None:
    """Collect, then move every object that exists now (modules: locust, FastAPI, langchain) out
    of the garbage collector's reach. A full collection stalls the whole process: in a service
    worker or the locust process holding 50-115k objects after start-up, 70-90 ms, about once a
    minute under this load, whichever history backend the run measures (tracked with
    ``gc.callbacks``). After this, collections scan what the run allocates. Long-running Python
    services do the same at start-up."""
    gc.collect()
    gc.freeze()


def median(values: Sequence[float]) -> float:
    """The median of the values that are not NaN; NaN when there are none."""
    clean = [v for v in values if v == v]
    return statistics.median(clean) if clean else float("nan")


def parse_seconds(text: str) -> int:
    """Locust's time strings: ``90``, ``30s``, ``5m``, ``1h30m``, ``1m30s``."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    match = re.fullmatch(r"(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s)?", text)
    if not match or not any(match.groups()):
        raise argparse.ArgumentTypeError(f"expected a time like 30s, 5m or 1h30m, not {text!r}")
    hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def add_run_arguments(
    parser: argparse.ArgumentParser, *, users: int | None, run_time: int | None
) -> None:
    """A runner's options for its locust runs (``--users``, ``--spawn-rate``, ``--run-time``) and
    for the Redis server it starts (``--server-kind``). A default of None: the runner's own."""
    parser.add_argument(
        "--users", "-u", type=int, default=users, help="concurrent users" + _default(users)
    )
    parser.add_argument("--spawn-rate", "-r", type=float, help="users started per s")
    parser.add_argument(
        "--run-time",
        "-t",
        type=parse_seconds,
        default=run_time,
        help="per run: seconds, or e.g. 30s, 5m" + _default(run_time, "s"),
    )
    parser.add_argument(
        "--server-kind",
        default="auto",
        choices=["auto", *testing.KINDS],
        help="server to start when REDIS_URL is not set (auto: the first installed)",
    )


def _default(value: object, unit: str = "") -> str:
    return "" if value is None else f" ({value}{unit})"


@dataclass(frozen=True)
class Range:
    """A duration in seconds, fixed or uniformly random between two bounds."""

    low: float
    high: float

    @classmethod
    def parse(cls, text: object) -> Range:
        parts = str(text).strip().split("-")
        try:
            values = [float(p) for p in parts]
        except ValueError:
            values = []
        if len(values) not in (1, 2) or min(values) < 0 or values[0] > values[-1]:
            raise ValueError(f"expected seconds like 0, 1.5 or 0.5-2, not {text!r}")
        return cls(values[0], values[-1])

    def sample(self) -> float:
        return self.low if self.low == self.high else random.uniform(self.low, self.high)


# --- exact latencies ---------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank percentile (``q`` in percent) of ``values``; NaN when there are none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def latency_stats(values: Sequence[float], seconds: float | None = None) -> dict[str, float]:
    """Count, mean, p50, p90, p99, p99.9 and max of response times in ms (and per s, given the
    seconds they were made in)."""
    ordered = sorted(values)
    out: dict[str, float] = {
        "count": len(ordered),
        "mean_ms": statistics.fmean(ordered) if ordered else float("nan"),
        **{f"p{q:g}_ms": percentile(ordered, q) for q in (50, 90, 99, 99.9)},
        "max_ms": ordered[-1] if ordered else float("nan"),
    }
    if seconds:
        out["per_s"] = len(ordered) / seconds
    return out


# name, default, choices (or None), help: a locustfile's option (see add_locust_options)
Option = tuple[str, Any, list[str] | None, str]


def add_locust_options(
    events: Any, options: Sequence[Option], env_prefix: str, hidden: Sequence[str] = ()
) -> None:
    """A locustfile's options on locust's command line: ``--<name>`` each, also read from the
    environment as ``<env_prefix><NAME>``; a default of False makes a flag. Those named in
    ``hidden`` stay out of the web UI. Values set in the web UI arrive as strings."""

    def add(parser: Any) -> None:
        # Straight on locust's parser: an argument group would not take include_in_web_ui.
        for name, default, choices, text in options:
            kind = {"action": "store_true"} if default is False else {"type": type(default)}
            parser.add_argument(
                f"--{name}",
                default=default,
                **({} if choices is None else {"choices": choices}),
                **kind,
                env_var=env_prefix + name.upper().replace("-", "_"),
                include_in_web_ui=name not in hidden,
                help=f"{text} (default {default})",
            )

    events.init_command_line_parser.add_listener(add)


# Latency counts the requests that started this long after locust finished spawning the users:
# the last users' first requests, which open their connections while locust is still spawning,
# are left out (in the chat service's runs they were most of a round's slowest 1 %).
SETTLE_S = 1.0


def settled_since(marks: dict[str, float], otherwise: float) -> float:
    """When a run's latencies start to count: SETTLE_S after its ramp-up ended, or ``otherwise``
    when the run recorded no end of one."""
    spawned = marks.get("spawned")
    return otherwise if spawned is None else float(spawned) + SETTLE_S


def started_since(end: float, ms: float, since: float) -> bool:
    """Whether a request that ended at ``end`` (epoch s) after ``ms`` started at ``since`` or
    later."""
    return end - ms / 1000 >= since


class RequestLog:
    """Every request of one locust process: its end (epoch s), name, exact response time (ms)
    and error, if any. Locust's own percentiles are whole milliseconds, too coarse for a call
    that takes a fraction of one; and a timeline needs each request's time.

    Columns in arrays, so a long run at thousands of requests per second stays small.
    """

    def __init__(self) -> None:
        self.marks: dict[str, float] = {"start": time.time()}
        self._names: dict[str, int] = {}
        self._name = array("H")
        self._end = array("d")
        self._ms = array("d")
        self._errors: dict[int, str] = {}  # request index -> error

    def __len__(self) -> int:
        return len(self._ms)

    def install(
        self,
        events: Any,
        path: Callable[[Any], str],
        write: Callable[[RequestLog, str], None],
    ) -> None:
        """Listen to locust's events: every request, the end of the ramp-up; when a test stops,
        give locust's CSV writer its last turn; when locust quits, ``write(self, file)`` unless
        nothing was recorded or ``path(environment)`` is empty (a locust worker writes its own
        file, ``<name>.<pid><ext>``)."""
        events.request.add_listener(self._on_request)
        events.spawning_complete.add_listener(self._on_spawned)

        def on_test_stop(environment: Any, **_: Any) -> None:
            # Locust rewrites its --csv stats once a second and never again at exit, so the file
            # can miss the last second of the run: let its writer run once more, now that all
            # users are stopped.
            if getattr(environment.parsed_options, "csv_prefix", None):
                import gevent
                from locust.stats import CSV_STATS_INTERVAL_SEC

                gevent.sleep(CSV_STATS_INTERVAL_SEC + 0.25)

        def on_quitting(environment: Any, **_: Any) -> None:
            from locust.runners import WorkerRunner

            file = path(environment)
            if not file or not len(self):
                return
            if isinstance(environment.runner, WorkerRunner):
                root, ext = os.path.splitext(file)
                file = f"{root}.{os.getpid()}{ext}"
            os.makedirs(os.path.dirname(os.path.abspath(file)), exist_ok=True)
            write(self, file)

        events.test_stop.add_listener(on_test_stop)
        events.quitting.add_listener(on_quitting)

    def clear(self) -> None:
        self.__init__()  # type: ignore[misc]

    def _on_request(
        self, name: str, response_time: float, exception: BaseException | None, **_: Any
    ) -> None:
        if exception is not None:
            self._errors[len(self._ms)] = f"{type(exception).__name__}: {exception}"[:300]
        self._name.append(self._names.setdefault(name, len(self._names)))
        self._end.append(time.time())
        self._ms.append(float(response_time))

    def _on_spawned(self, **_: Any) -> None:
        self.marks["spawned"] = time.time()

    def requests(self) -> list[tuple[float, str, float, bool, str]]:
        """(end, name, ms, ok, error) of every request, in the order they ended."""
        names = list(self._names)
        return [
            (end, names[n], ms, i not in self._errors, self._errors.get(i, ""))
            for i, (n, end, ms) in enumerate(zip(self._name, self._end, self._ms, strict=True))
        ]

    def summary(self) -> dict[str, dict[str, float]]:
        """Per name, exact latencies (ms) of the requests that started SETTLE_S or more after
        the ramp-up ended (:func:`settled_since`), and failures over the whole run. A name none
        of whose requests counts (one made only during the ramp-up) has its failures only."""
        since = settled_since(self.marks, self.marks["start"])
        out: dict[str, dict[str, float]] = {}
        for name, code in sorted(self._names.items()):
            picked = [i for i, n in enumerate(self._name) if n == code]
            counted = [
                self._ms[i] for i in picked if started_since(self._end[i], self._ms[i], since)
            ]
            out[name] = {
                **(latency_stats(counted) if counted else {}),
                "failures": sum(1 for i in picked if i in self._errors),
            }
        return out

    def dump(self, path: str | os.PathLike[str], **extra: Any) -> None:
        """Every request, and ``extra``, as JSON: what :func:`load_requests` reads."""
        with open(path, "w", encoding="utf-8") as fh:
            json.dump({"marks": self.marks, "requests": self.requests(), **extra}, fh)


def load_requests(path: Path) -> dict[str, Any]:
    """What :meth:`RequestLog.dump` wrote (``path``, or ``path`` + ``.gz`` once packed)."""
    if not path.exists():
        with gzip.open(f"{path}.gz", "rt", encoding="utf-8") as packed:
            return json.load(packed)  # type: ignore[no-any-return]
    return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


# --- the Redis server under test ---------------------------------------------------------------


class RedisUnderTest:
    """A throwaway server (``pyhistory.testing``; faults can hit it) or ``REDIS_URL``."""

    def __init__(self, kind: str = "auto") -> None:
        import redis

        self.server: testing.LocalServer | None = None
        self.url = os.environ.get("REDIS_URL", "")
        if not self.url:
            self.server = testing.start_server(kind)
            self.url = self.server.url
        with redis.Redis.from_url(self.url) as client:
            info = client.info("server")
        version = info.get("valkey_version") or info["redis_version"]
        self.label = f"{info.get('server_name', 'redis')} {version}"

    def flush(self) -> None:
        import redis

        with redis.Redis.from_url(self.url) as client:
            client.flushall()

    def restart(self) -> None:
        assert self.server is not None
        self.server.restart()

    def pause(self, seconds: float) -> None:
        """SIGSTOP, then SIGCONT after ``seconds``."""
        assert self.server is not None and self.server.pid is not None
        os.kill(self.server.pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            os.kill(self.server.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


# --- one headless locust run -------------------------------------------------------------------


def run_locust(
    locustfile: Path,
    *,
    host: str,
    users: int,
    spawn_rate: float,
    seconds: int,
    folder: Path,
    options: Sequence[str] = (),
    env: dict[str, str] | None = None,
    html: bool = False,
    echo: bool = False,
) -> int | None:
    """``locust -f locustfile --headless`` until it ends; its CSV files (``locust_*.csv``) and
    output (``locust.log``) into ``folder``, and with ``html`` its report (``report.html``).
    Returns its exit code (1 when a request failed: ``--exit-code-on-error 1``), None when it
    did not finish within two minutes after the run time (it is killed)."""
    command = [
        *(sys.executable, "-m", "locust", "-f", str(locustfile), "--headless", "--only-summary"),
        *("--users", str(users), "--spawn-rate", str(spawn_rate), "--run-time", f"{seconds}s"),
        *("--host", host, "--csv", str(folder / "locust"), "--exit-code-on-error", "1"),
        *(("--html", str(folder / "report.html")) if html else ()),
        *options,
    ]
    (folder / "command.txt").write_text(" ".join(command) + "\n", encoding="utf-8")
    environment = dict(os.environ if env is None else env)
    environment.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    with (folder / "locust.log").open("w", encoding="utf-8") as out:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=environment,
        )

        def copy() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                out.write(line)
                if echo:
                    sys.stdout.write(line)
                    sys.stdout.flush()

        copier = threading.Thread(target=copy, daemon=True)
        copier.start()
        try:
            code: int | None = process.wait(seconds + 120)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            code = None
        copier.join(10)
    return code


def locust_stats(folder: Path) -> dict[str, dict[str, str]]:
    """Rows of locust's ``locust_stats.csv`` by name ("Aggregated" included); {} if missing."""
    path = folder / "locust_stats.csv"
    if not path.exists():
        return {}
    with path.open(newline="", encoding="utf-8") as fh:
        return {row["Name"]: row for row in csv.DictReader(fh)}


# --- the machine and the server's CPU ------------------------------------------------------------


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat ((0, 0) where there is none)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def busy_share(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    """The share of the machine's CPU time that was busy between two :func:`cpu_ticks`."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else None


def server_cpu_seconds(client: Any) -> float:
    """Seconds of CPU the server process has used, all its threads (INFO cpu)."""
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


# --- reports: tables, targets, plots -------------------------------------------------------------

# A target's "met" cell in a markdown table, and its state on the console.
MET = {True: "met", False: "**not met**", None: "-"}
_STATE = {True: "met    ", False: "NOT MET", None: "info   "}


def table(
    header: str | Sequence[str],
    rows: Iterable[str | Sequence[object]],
    align: str = "",
    pad: bool = False,
) -> list[str]:
    """A markdown table's lines. The header and each row: its cells, or one string of them
    joined by `` | ``. ``align``: a letter per column, ``l`` (the default) or ``r``; ``pad``:
    columns padded to one width (the first left-aligned, the others right-aligned), for a table
    also read on a console."""
    cells = [r.split(" | ") if isinstance(r, str) else [str(c) for c in r] for r in (header, *rows)]
    if not pad:
        rule = "|" + "|".join("---:" if a == "r" else "---" for a in align.ljust(len(cells[0])))
        return [_line(cells[0]), rule + "|", *(_line(r) for r in cells[1:])]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    padded = [
        [r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True))]
        for r in cells
    ]
    rule = "|:" + "-" * (widths[0] + 1) + "|" + "|".join("-" * (w + 1) + ":" for w in widths[1:])
    return [_line(padded[0]), rule + "|", *(_line(r) for r in padded[1:])]


def _line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def print_targets(rows: Iterable[dict[str, Any]], detail: Callable[[dict[str, Any]], str]) -> None:
    """One console line per target row (``measure``, ``met``): its state, then ``detail(row)``."""
    for row in rows:
        print(f"  {_STATE[row['met']]}  {row['measure']}: {detail(row)}")


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend; None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no plots")
        return None
    return plt


def grouped_bars(
    ax: Any,
    series: Sequence[tuple[str, Sequence[float], dict[str, Any]]],
    text: Callable[[float], str],
    fontsize: float = 7,
) -> None:
    """One group of bars per x (0, 1, ...), one bar per series (label, values, bar style), each
    annotated with ``text(value)``."""
    width = 0.8 / max(1, len(series))
    for i, (label, values, style) in enumerate(series):
        xs = [x + (i - (len(series) - 1) / 2) * width for x in range(len(values))]
        bars = ax.bar(xs, values, width, label=label, **style)
        for bar, value in zip(bars, values, strict=True):
            x, height = bar.get_x() + bar.get_width() / 2, bar.get_height()
            ax.annotate(text(value), (x, height), ha="center", va="bottom", fontsize=fontsize)


def write_json(path: Path, data: Any) -> None:
    """Indented JSON, with every list of plain values on one line (timelines stay short)."""
    inline: dict[str, str] = {}

    def mark(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: mark(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            if any(isinstance(v, (dict, list, tuple)) for v in value):
                return [mark(v) for v in value]
            key = f"\0{len(inline)}\0"
            inline[json.dumps(key)] = json.dumps(value)
            return key
        return value

    text = json.dumps(mark(data), indent=1)
    text = re.sub(r'"\\u0000\d+\\u0000"', lambda m: inline[m[0]], text)
    path.write_text(text + "\n", encoding="utf-8")
