"""Timing a contender's chat turns in a closed loop: sync threads or asyncio tasks."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from dataclasses import dataclass

from contenders import (
    AsyncContender,
    Contender,
)
from langchain_core.messages import (
    AIMessage,
    HumanMessage,
)

from .common import (
    Settings,
    percentile,
)


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
