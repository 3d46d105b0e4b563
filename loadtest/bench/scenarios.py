"""Scenarios through the real contenders: chat turns, round trips counted by a proxy, and turns
through a proxy that adds latency."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import redis
from contenders import (
    AsyncContender,
    Contender,
    aclose_contender,
    close_contender,
    make_async_contender,
    make_contender,
)
from harness import server_cpu_seconds
from langchain_core.messages import (
    AIMessage,
    HumanMessage,
)
from latency_proxy import LatencyProxy

from .common import (
    LOADTEST,
    MAX_MESSAGES,
    TTL,
    WINDOW,
    Settings,
    log,
    median,
    percentile,
)
from .servers import Sessions, Target, commandstats
from .timing import Segment, TurnSource, run_async_segment, run_sync_segment

# --- scenario 1: chat turns --------------------------------------------------------------------


def scenario_label(mode: str, workers: int, history: int) -> str:
    unit = "thread" if mode == "sync" else "task"
    plural = "" if workers == 1 else "s"
    return f"{mode} {workers} {unit}{plural}, {history} msgs"


def chat_turns(
    target: Target,
    sessions: Sessions,
    settings: Settings,
    contenders: Sequence[str],
    pairs: list[tuple[HumanMessage, AIMessage]],
    loop: asyncio.AbstractEventLoop,
) -> list[dict[str, Any]]:
    sync = {
        name: make_contender(name, target.url, window=WINDOW, ttl=TTL, max_messages=MAX_MESSAGES)
        for name in contenders
    }
    asyn = {
        name: make_async_contender(
            name, target.url, window=WINDOW, ttl=TTL, max_messages=MAX_MESSAGES
        )
        for name in contenders
    }
    results: list[dict[str, Any]] = []
    blocks = [(m, w, h) for h in settings.histories for (m, w) in settings.concurrency]
    log(
        f"  {len(blocks)} blocks x {len(contenders)} contenders x {settings.reps} repetitions x "
        f"{settings.warmup + settings.duration:g} s"
    )
    for block, (mode, workers, history) in enumerate(blocks, 1):
        label = scenario_label(mode, workers, history)
        runs: dict[str, list[Segment]] = {name: [] for name in contenders}
        if "lc-reused" in contenders:
            # Steady state for the per-session cache: an instance (and a connection) for every
            # session of the pool exists before the measured segments.
            ids = sessions.ids(history)
            if mode == "sync":
                for session_id in ids:
                    sync["lc-reused"].fetch(session_id)
            else:
                for session_id in ids:
                    loop.run_until_complete(asyn["lc-reused"].fetch(session_id))
        for rep in range(settings.reps):
            shift = (rep + block) % len(contenders)
            order = list(contenders[shift:]) + list(contenders[:shift])
            for name in order:
                ids = sessions.reset(history)
                source = TurnSource(ids, pairs)
                client_cpu, server_cpu = time.process_time(), server_cpu_seconds(sessions.admin)
                if mode == "sync":
                    seg = run_sync_segment(sync[name], workers, source, settings)
                else:
                    seg = loop.run_until_complete(
                        run_async_segment(asyn[name], workers, source, settings)
                    )
                client_cpu = time.process_time() - client_cpu
                server_cpu = server_cpu_seconds(sessions.admin) - server_cpu
                if seg.all_turns:
                    seg.client_cpu_us_per_turn = client_cpu / seg.all_turns * 1e6
                    seg.server_cpu_us_per_turn = server_cpu / seg.all_turns * 1e6
                runs[name].append(seg)
                err = f", {seg.errors} errors, first: {seg.first_error}" if seg.errors else ""
                cpu = (
                    f"CPU/turn: client {seg.client_cpu_us_per_turn:7.0f} us, "
                    f"server {seg.server_cpu_us_per_turn:5.0f} us"
                )
                log(
                    f"  [{label}] rep {rep + 1}/{settings.reps} {name:<12} "
                    f"{seg.turns_per_s:9.1f} turns/s  p50 {seg.p50_ms:7.2f} ms  "
                    f"p99 {seg.p99_ms:8.2f} ms  {cpu}{err}"
                )
        for name in contenders:
            segs = runs[name]
            results.append(
                {
                    "scenario": label,
                    "server_kind": target.kind,
                    "mode": mode,
                    "workers": workers,
                    "history": history,
                    "contender": name,
                    "turns_per_s": median([s.turns_per_s for s in segs]),
                    "p50_ms": median([s.p50_ms for s in segs]),
                    "p99_ms": median([s.p99_ms for s in segs]),
                    "client_cpu_us_per_turn": median([s.client_cpu_us_per_turn for s in segs]),
                    "server_cpu_us_per_turn": median([s.server_cpu_us_per_turn for s in segs]),
                    "errors": sum(s.errors for s in segs),
                    "reps": [s.__dict__ for s in segs],
                }
            )
    for contender in sync.values():
        close_contender(contender)
    for acontender in asyn.values():
        loop.run_until_complete(aclose_contender(acontender))
    return results


def round_trips(
    target: Target,
    sessions: Sessions,
    settings: Settings,
    contenders: Sequence[str],
    pairs: list[tuple[HumanMessage, AIMessage]],
    loop: asyncio.AbstractEventLoop,
    admin: redis.Redis,
) -> list[dict[str, Any]]:
    """Real counts: turns go through a zero-delay proxy that counts request flights and TCP
    connections, and INFO commandstats around them counts the commands the server ran."""
    results = []
    turns = settings.rtt_turns
    with LatencyProxy(target.port, delay_ms=0.0, target_host=target.host) as proxy:
        url = _proxied_url(target, proxy.port)
        for name in contenders:
            for mode in ("sync", "async"):
                # Two sessions, both touched by the warm-up turns: lc-reused then has its two
                # instances (and connections) and every contender counts steady-state turns.
                ids = sessions.reset(min(settings.histories))[:2]
                source = TurnSource(ids, pairs)
                if mode == "sync":
                    contender = make_contender(
                        name, url, window=WINDOW, ttl=TTL, max_messages=MAX_MESSAGES
                    )
                    for _ in range(2):  # warm: pools, connections, loaded functions
                        _sync_turn(contender, *source.next())
                    before = commandstats(admin)
                    proxy.stats.reset()
                    for _ in range(turns):
                        _sync_turn(contender, *source.next())
                    counted = proxy.stats.snapshot()
                    after = commandstats(admin)
                    close_contender(contender)
                else:
                    acontender = make_async_contender(
                        name, url, window=WINDOW, ttl=TTL, max_messages=MAX_MESSAGES
                    )

                    async def arun(
                        n: int, c: AsyncContender = acontender, src: TurnSource = source
                    ) -> None:
                        for _ in range(n):
                            session_id, pair = src.next()
                            await c.fetch(session_id)
                            await c.add(session_id, pair)

                    loop.run_until_complete(arun(2))
                    before = commandstats(admin)
                    proxy.stats.reset()
                    loop.run_until_complete(arun(turns))
                    counted = proxy.stats.snapshot()
                    after = commandstats(admin)
                    loop.run_until_complete(aclose_contender(acontender))
                commands = {k: after.get(k, 0) - before.get(k, 0) for k in after}
                # the two INFO calls that read `before`
                commands["info"] = commands.get("info", 0) - 2
                commands = {k: v for k, v in commands.items() if v > 0}
                row = {
                    "contender": name,
                    "mode": mode,
                    "turns": turns,
                    "round_trips_per_turn": counted.round_trips / turns,
                    "connections_per_turn": counted.connections / turns,
                    "commands_per_turn": sum(
                        v for k, v in commands.items() if not k.startswith("(")
                    )
                    / turns,
                    "commands": {k: v / turns for k, v in sorted(commands.items())},
                    "bytes_up_per_turn": counted.bytes_up / turns,
                    "bytes_down_per_turn": counted.bytes_down / turns,
                }
                results.append(row)
                log(
                    f"  round trips {name:<12} {mode:<5}: "
                    f"{row['round_trips_per_turn']:.2f} RT/turn, "
                    f"{row['connections_per_turn']:.2f} new connections/turn, "
                    f"{row['commands_per_turn']:.2f} commands/turn "
                    + " ".join(f"{k}={v:g}" for k, v in row["commands"].items())
                )
    return results


def _sync_turn(contender: Contender, session_id: str, pair: tuple[HumanMessage, AIMessage]) -> None:
    contender.fetch(session_id)
    contender.add(session_id, pair)


def _proxied_url(target: Target, port: int) -> str:
    auth = f":{target.password}@" if target.password else ""
    return f"redis://{auth}127.0.0.1:{port}/0"


# --- scenario 2: turns through a 1 ms-each-way proxy -------------------------------------------


@contextlib.contextmanager
def proxy_process(target: Target, delay_ms: float) -> Iterator[int]:
    """The latency proxy in its own process, so it does not share the client's GIL."""
    process = subprocess.Popen(
        [
            sys.executable,
            str(LOADTEST / "latency_proxy.py"),
            "--target-host",
            target.host,
            "--target-port",
            str(target.port),
            "--delay-ms",
            str(delay_ms),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("proxying"):
            raise RuntimeError(f"latency proxy did not start: {line!r}")
        port = int(line.split()[1].rsplit(":", 1)[1])
        yield port
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def latency_proxy_turns(
    target: Target,
    sessions: Sessions,
    settings: Settings,
    contenders: Sequence[str],
    pairs: list[tuple[HumanMessage, AIMessage]],
    delay_ms: float = 1.0,
) -> dict[str, Any]:
    history = min(settings.histories)
    out: dict[str, Any] = {"delay_ms_each_way": delay_ms, "history": history, "contenders": {}}
    with proxy_process(target, delay_ms) as port:
        url = _proxied_url(target, port)
        ping_client = redis.Redis.from_url(url)
        ping_client.ping()
        sync = {
            name: make_contender(name, url, window=WINDOW, ttl=TTL, max_messages=MAX_MESSAGES)
            for name in contenders
        }
        turns: dict[str, list[float]] = {name: [] for name in contenders}
        pings: dict[str, list[float]] = {name: [] for name in contenders}
        # 64 sessions (each turn adds 2 messages to one of them: ~5 turns each per block); every
        # contender reads each once first, so lc-reused has its instances and connections.
        ids = sessions.reset(history)[:64]
        for name in contenders:
            for session_id in ids:
                sync[name].fetch(session_id)
        for rep in range(settings.proxy_reps):
            shift = rep % len(contenders)
            for name in list(contenders[shift:]) + list(contenders[:shift]):
                ids = sessions.reset(history)[:64]
                source = TurnSource(ids, pairs)
                contender = sync[name]
                _sync_turn(contender, *source.next())  # warm
                # A PING before every turn, timed the same way (the sync client, perf_counter
                # around the call), so both samples see the same background load.
                ping_sample: list[float] = []
                turn_sample: list[float] = []
                for _ in range(settings.proxy_turns):
                    t0 = time.perf_counter()
                    ping_client.ping()
                    ping_sample.append(time.perf_counter() - t0)
                    session_id, pair = source.next()
                    t0 = time.perf_counter()
                    contender.fetch(session_id)
                    contender.add(session_id, pair)
                    turn_sample.append(time.perf_counter() - t0)
                turns[name].append(percentile(turn_sample, 50) * 1e3)
                pings[name].append(percentile(ping_sample, 50) * 1e3)
                log(
                    f"  [+{delay_ms} ms each way] rep {rep + 1}/{settings.proxy_reps} "
                    f"{name:<12} turn p50 {turns[name][-1]:.3f} ms, "
                    f"PING p50 {pings[name][-1]:.3f} ms, "
                    f"ratio {turns[name][-1] / pings[name][-1]:.2f}"
                )
        ping_client.close()
        for contender in sync.values():
            close_contender(contender)
    out["ping_p50_ms"] = median([p for name in contenders for p in pings[name]])
    for name in contenders:
        out["contenders"][name] = {
            "turn_p50_ms": median(turns[name]),
            "turn_p50_ms_reps": turns[name],
            "ping_p50_ms_reps": pings[name],
            # per repetition (turn p50 / PING p50 of the same interleaved block), then median
            "turn_over_rtt": median([t / p for t, p in zip(turns[name], pings[name], strict=True)]),
        }
    return out
