"""``make loadtest-http``: the chat service under locust, every history backend side by side,
then the faults.

    python loadtest/httpchat/run.py [--quick] [--backends pyhistory,langchain,pipeline,memory]
        [--users 200] [--run-time 60s] [--workers 2] [--faults restart,pause,hang] [--out DIR]
        [--raw DIR]

For every backend in turn, against one throwaway Redis server (``pyhistory.testing``; Debian's
redis-server when installed, else a server from a wheel) or ``REDIS_URL``: start uvicorn with
``--workers`` workers serving ``httpchat.app:app``, wait until it answers, run locust headless
(``loadtest/httpchat/locustfile.py``), stop uvicorn. Then the same scenario with pyhistory while
the Redis server is restarted mid-run (``restart``), while it is paused with SIGSTOP for
``--pause-seconds`` (``pause``, 3 s), and for ``--hang-seconds`` (``hang``, 12 s: longer than
the client's failure bound); these need the throwaway server (not ``REDIS_URL``).

Writes into ``--out`` (default docs/loadtest-http, committed): ``summary.md``, ``summary.json``
(every run's figures and timeline), ``latency.png`` and ``faults.png``. Into ``--raw`` (default
loadtest/results/http-<time>/, not committed): one folder per run with locust's CSV files and
output, uvicorn's log and the exact per-request record (``requests.json.gz``). Exits 1 when a run
without a fault had a failed request, or when a run did not complete.

The server, the locust subprocess and the exact latencies are ``loadtest/harness.py``'s, shared
with ``make loadtest``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOADTEST = Path(__file__).resolve().parents[1]
ROOT = LOADTEST.parent
sys.path.insert(0, str(LOADTEST))
import harness  # noqa: E402
from harness import log  # noqa: E402

from httpchat import report  # noqa: E402
from httpchat.backends import NAMES  # noqa: E402
from pyhistory import testing  # noqa: E402

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"


@dataclass
class Run:
    name: str  # folder name
    backend: str
    fault: str = ""  # "", "restart", "pause" or "hang"
    seconds: float | None = None  # the run's length, when not --run-time's
    reported: bool = True  # False: a warm-up, left out of the summary
    meta: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def service(backend: str, url: str, args: argparse.Namespace, folder: Path) -> Any:
    """uvicorn serving the chat app with `backend`, until the block ends."""
    port = testing.free_port()
    env = dict(
        os.environ,
        CHAT_BACKEND=backend,
        CHAT_REDIS_URL=url,
        CHAT_WINDOW=str(args.window),
        CHAT_TTL=str(args.ttl),
        CHAT_MAX_MESSAGES=str(args.max_messages),
        CHAT_MODEL_FIRST_TOKEN_MS=str(args.model_first_token_ms),
        CHAT_MODEL_TOKEN_MS=str(args.model_token_ms),
        CHAT_MODEL_TOKENS=str(args.model_tokens),
        PYTHONWARNINGS="ignore::DeprecationWarning",
    )
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "httpchat.app:app",
        "--app-dir",
        str(LOADTEST),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(args.workers),
        "--no-access-log",
        # Longer than any user stays idle: a keep-alive connection closed by the server just as
        # a user sends on it fails that request in the client, which says nothing of the backend.
        "--timeout-keep-alive",
        "120",
        "--log-level",
        "warning",
    ]
    if _has("uvloop"):
        command += ["--loop", "uvloop"]
    if _has("httptools"):
        command += ["--http", "httptools"]
    with (folder / "uvicorn.log").open("w") as out:
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base, process, folder, args.workers)
        _warm_up(base, args.workers)
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _wait_healthy(base: str, process: subprocess.Popen[bytes], folder: Path, workers: int) -> None:
    deadline = time.monotonic() + 60
    answered = 0
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"uvicorn exited with {process.returncode}:\n"
                + (folder / "uvicorn.log").read_text()[-3000:]
            )
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                if response.status == 200:
                    answered += 1
                    # every worker is up once a few answers in a row came back
                    if answered >= 4 * workers:
                        return
                    continue
        except OSError:
            answered = 0
        time.sleep(0.2)
    raise RuntimeError(f"uvicorn did not answer on {base} within 60 s")


def _warm_up(base: str, workers: int) -> None:
    """A few turns per worker before the measured run (imports, connections, the library)."""
    for index in range(8 * workers):
        request = urllib.request.Request(
            f"{base}/chat/warm-up-{index}",
            data=json.dumps({"message": "hello"}).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                response.read()
        except urllib.error.HTTPError:
            pass  # a failing backend: the measured run counts its failures


def run_locust(base: str, args: argparse.Namespace, folder: Path, seconds_: int) -> int:
    env = dict(
        os.environ,
        LOADTEST_HTTP_THINK=args.think,
        LOADTEST_HTTP_STREAM_SHARE=str(args.stream_share),
        LOADTEST_HTTP_RECORD=str(folder / "requests.json"),
        LOADTEST_HTTP_TIMEOUT=str(args.timeout),
    )
    code = harness.run_locust(
        LOCUSTFILE,
        host=base,
        users=args.users,
        spawn_rate=args.spawn_rate,
        seconds=seconds_,
        folder=folder,
        options=("--stop-timeout", "10"),
        env=env,
    )
    if code is None:
        raise RuntimeError(f"locust did not finish: see {folder / 'locust.log'}")
    return code


def execute(run: Run, redis_: harness.RedisUnderTest, args: argparse.Namespace) -> dict[str, Any]:
    folder = args.raw / run.name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    redis_.flush()
    duration = run.seconds or (args.fault_run_time if run.fault else args.run_time)
    log(f"{run.name}: {args.users} users, {duration} s, backend {run.backend}")
    with service(run.backend, redis_.url, args, folder) as base:
        fault_thread = None
        if run.fault:
            fault_thread = threading.Thread(target=_fault, args=(run, redis_, args), daemon=True)
        started = time.time()
        busy0 = harness.cpu_ticks()
        if fault_thread:
            fault_thread.start()
        code = run_locust(base, args, folder, duration)
        busy1 = harness.cpu_ticks()
        if fault_thread:
            fault_thread.join()
    run.meta.update(
        started=started,
        locust_exit_code=code,
        seconds=duration,
        # the whole machine's CPU, busy share, over the run (other work on it included)
        machine_cpu_busy=harness.busy_share(busy0, busy1),
        loadavg_end=os.getloadavg(),
    )
    summary = report.summarise_run(run.name, run.backend, run.fault, folder, run.meta)
    harness.write_json(folder / "run.json", summary)
    record = folder / "requests.json"
    with record.open("rb") as raw, gzip.open(f"{record}.gz", "wb") as packed:
        shutil.copyfileobj(raw, packed)
    record.unlink()
    log(
        f"  {run.name}: {summary['requests']} requests, {summary['failures']} failed; "
        + ", ".join(
            f"{name} p50 {s['p50_ms']:.1f} ms p99 {s['p99_ms']:.1f} ms"
            for name, s in summary["by_name"].items()
        )
        + (
            f"; history read p50 {summary['server_timing']['read']['p50_ms']:.2f} ms, "
            f"append p50 {summary['server_timing']['append']['p50_ms']:.2f} ms"
            if summary["server_timing"].get("read")
            else ""
        )
        + f"; load average {os.getloadavg()[0]:.2f}"
    )
    return summary


def _fault(run: Run, redis_: harness.RedisUnderTest, args: argparse.Namespace) -> None:
    time.sleep(args.fault_at)
    run.meta["fault_start"] = time.time()
    if run.fault == "restart":
        log("  restarting the Redis server (no persistence: sessions and functions are lost)")
        redis_.restart()
    else:
        pause = args.pause_seconds if run.fault == "pause" else args.hang_seconds
        log(f"  pausing the Redis server (SIGSTOP) for {pause:g} s")
        redis_.pause(pause)
    run.meta["fault_end"] = time.time()
    log(f"  fault over after {run.meta['fault_end'] - run.meta['fault_start']:.2f} s")


def _summarised_again(run: dict[str, Any], raw: Path) -> dict[str, Any]:
    """A run's figures computed again from its per-run files in ``raw`` when they are there (the
    report's code may have changed since), else as summary.json has them."""
    folder = raw / run["folder"]
    if not (folder / "requests.json.gz").exists():
        return run
    meta = {k: run[k] for k in ("locust_exit_code", "seconds", "machine_cpu_busy", "loadavg_end")}
    record = harness.load_requests(folder / "requests.json")
    if run.get("fault_report"):
        meta["fault_start"] = record["marks"]["start"] + run["fault_at_s"]
        meta["fault_end"] = meta["fault_start"] + run["fault_seconds"]
    return report.summarise_run(run["name"], run["backend"], run["fault"], folder, meta, record)


def failure_bound() -> float | None:
    """The longest a pyhistory call on a URL-built client takes before it raises (seconds)."""
    from pyhistory import _clients

    bound = getattr(_clients, "FAILURE_BOUND", None)
    return float(bound) if bound is not None else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 users, short runs (a check)")
    parser.add_argument("--backends", default=",".join(NAMES))
    parser.add_argument(
        "--faults",
        default="restart,pause,hang",
        help="restart, pause (--pause-seconds), hang (a pause of --hang-seconds, longer than the "
        "client's failure bound), comma-separated, or none",
    )
    harness.add_run_arguments(parser, users=None, run_time=None)
    parser.add_argument("--fault-run-time", type=harness.parse_seconds)
    parser.add_argument("--fault-at", type=float, help="seconds into a fault run")
    parser.add_argument("--pause-seconds", type=float, default=3.0)
    parser.add_argument("--hang-seconds", type=float, default=12.0)
    parser.add_argument(
        "--rounds",
        type=int,
        help="every backend this many times, every other round in reverse (3: the targets take "
        "the median round, so one disturbed round moves no result)",
    )
    parser.add_argument(
        "--warm-up",
        type=harness.parse_seconds,
        help="an unreported run of the first backend before the rounds, s (20; 0: none)",
    )
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers (2)")
    parser.add_argument("--think", default="1-3", help="think time between turns, s (1-3)")
    parser.add_argument("--stream-share", type=float, default=0.3)
    parser.add_argument("--timeout", type=float, default=30.0, help="client timeout, s")
    parser.add_argument("--window", type=int, default=20)
    parser.add_argument("--ttl", type=int, default=3600)
    parser.add_argument("--max-messages", type=int, default=200)
    parser.add_argument("--model-first-token-ms", type=float, default=40.0)
    parser.add_argument("--model-token-ms", type=float, default=2.0)
    parser.add_argument("--model-tokens", type=int, default=24)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "loadtest-http")
    parser.add_argument(
        "--raw", type=Path, help="per-run files (default loadtest/results/http-<time>/)"
    )
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument(
        "--render",
        action="store_true",
        help="write summary.md and the plots from summary.json (each run's figures computed "
        "again from --raw, when given and there)",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {
        "users": 20 if quick else 200,
        "spawn_rate": 20.0,
        "run_time": 10 if quick else 60,
        "rounds": 1 if quick else 3,
        "warm_up": 0 if quick else 20,
        "fault_run_time": 16 if quick else 40,
        "fault_at": 6.0 if quick else 15.0,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.raw is None:
        args.raw = LOADTEST / "results" / f"http-{time.strftime('%Y%m%d-%H%M%S')}"
    args.backend_list = [b.strip() for b in args.backends.split(",") if b.strip()]
    for backend in args.backend_list:
        if backend not in NAMES:
            parser.error(f"unknown backend {backend!r}; expected some of {', '.join(NAMES)}")
    args.fault_list = [f.strip() for f in args.faults.split(",") if f.strip() not in ("", "none")]
    for fault in args.fault_list:
        if fault not in ("restart", "pause", "hang"):
            parser.error(f"unknown fault {fault!r}")
    if args.fault_list and os.environ.get("REDIS_URL"):
        parser.error("faults need the throwaway server: unset REDIS_URL or pass --faults none")
    return args


def write_summary(data: dict[str, Any], out: Path, plots: bool) -> int:
    """summary.json, summary.md and the plots; prints the targets."""
    harness.write_json(out / "summary.json", data)
    (out / "summary.md").write_text(report.markdown(data))
    written = report.plots(data, out) if plots else []
    log(f"wrote {out / 'summary.md'}" + "".join(f", {out / name}" for name in written))
    harness.print_targets(data["targets"], lambda r: f"{r['value']} (target {r['target']})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.render:
        old = json.loads((out / "summary.json").read_text(encoding="utf-8"))
        data = report.summarise(
            [_summarised_again(run, args.raw) for run in old["runs"]],
            settings=old["settings"],
            redis_label=old["redis"],
            started=old["started"],
            elapsed_s=old["elapsed_s"],
        )
        data["machine"] = old["machine"]
        return write_summary(data, out, plots=not args.no_plots)
    runs: list[Run] = []
    if args.warm_up and args.backend_list:
        # Unreported: the session's first run was the slowest of its backend's (a server and a
        # machine not yet in their steady state), whichever backend came first.
        runs.append(Run("warm-up", args.backend_list[0], seconds=args.warm_up, reported=False))
    for round_ in range(args.rounds):
        # Every other round in reverse: over two rounds each backend's mean place is the same,
        # so a drift over the session (the machine warming, other work) favours none.
        order = args.backend_list[:: -1 if round_ % 2 else 1]
        suffix = f"-{round_ + 1}" if args.rounds > 1 else ""
        runs += [Run(f"{backend}{suffix}", backend) for backend in order]
    runs += [Run(f"fault-{fault}", "pyhistory", fault) for fault in args.fault_list]
    started = time.time()
    redis_ = harness.RedisUnderTest(args.server_kind)
    log(f"Redis under test: {redis_.label} at {redis_.url}; per-run files in {args.raw}")
    results = []
    try:
        for run in runs:
            summary = execute(run, redis_, args)
            if run.reported:
                results.append(summary)
    finally:
        redis_.stop()
    settings = {
        k: v
        for k, v in vars(args).items()
        if k not in ("out", "raw", "backend_list", "fault_list") and not k.startswith("_")
    }
    settings["failure_bound_s"] = failure_bound()
    data = report.summarise(
        results,
        settings=settings,
        redis_label=redis_.label,
        started=dt.datetime.fromtimestamp(started, dt.timezone.utc).isoformat(timespec="seconds"),
        elapsed_s=time.time() - started,
    )
    write_summary(data, out, plots=not args.no_plots)
    clean = [r for r in results if not r["fault"]]
    return 1 if any(r["failures"] or r["locust_exit_code"] not in (0, 1) for r in clean) else 0


if __name__ == "__main__":
    sys.exit(main())
