"""What pyhistory.telemetry costs a read on the client: the client CPU time of a 20-message read
(sync ``messages`` and asyncio ``aget_messages``) with the OpenTelemetry API absent (its import
made to fail), with the API but no SDK (the API's no-op tracer and meter), and with the SDK
recording every span (an in-memory exporter) and metric; and with the API installed but
pyhistory imported as if it were not, which tells pyhistory's share from the cost of the API's
presence elsewhere (redis-py 7 and later record metrics of their own through it).
docs/operations/observability.md.

Each setting runs in a fresh interpreter, in turn, REPS times; each run times N reads and reports
the thread CPU time per read (time.thread_time: what the client spends, not the wait for the
server). Medians over the runs, and each setting's ratio to "absent".

    .venv/bin/python loadtest/bench/telemetry_overhead.py [KIND] [REPS] [N]
    e.g. .venv/bin/python loadtest/bench/telemetry_overhead.py redis 7 5000
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pyhistory import testing  # noqa: E402

SETTINGS = {
    "absent": 'import sys; sys.modules["opentelemetry"] = None',
    "api, no sdk": "",
    # The API installed, but pyhistory imported as if it were not (nothing wrapped): what the
    # API's presence costs elsewhere (redis-py >= 7 records its own metrics through it).
    "api, pyhistory unwrapped": """
import sys
sys.modules["opentelemetry"] = None
import pyhistory.telemetry
del sys.modules["opentelemetry"]
assert not pyhistory.telemetry.AVAILABLE
""",
    "sdk recording": """
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))
""",
}

RUN = """
import asyncio, json, sys, time
from langchain_core.messages import AIMessage, HumanMessage
from pyhistory import MessageStore, telemetry
url, n = sys.argv[1], int(sys.argv[2])
store = MessageStore("overhead", url=url)
store.clear()
turns = [HumanMessage(f"question {i}") if i % 2 else AIMessage(f"answer {i}") for i in range(20)]
store.add_messages(turns)
for _ in range(200):
    store.messages
started = time.thread_time()
for _ in range(n):
    store.messages
sync_us = (time.thread_time() - started) / n * 1e6
async def reads():
    for _ in range(200):
        await store.aget_messages()
    started = time.thread_time()
    for _ in range(n):
        await store.aget_messages()
    return (time.thread_time() - started) / n * 1e6
async_us = asyncio.run(reads())
store.clear()
print(json.dumps({"available": telemetry.AVAILABLE, "sync": sync_us, "async": async_us}))
"""

# The wrapper alone, on a method that does nothing (best of 5 x 100,000 calls): what an operation
# pays on top of its own work with the API and no SDK.
WRAPPER = """
import asyncio, time
from pyhistory.telemetry import traced
class Owner:
    session_id = "s"
    url = "redis://localhost:6379/0"
    def plain(self): return 1
    @traced("pyhistory.read")
    def wrapped(self): return 1
    async def aplain(self): return 1
    @traced("pyhistory.read")
    async def awrapped(self): return 1
owner, n = Owner(), 100_000
def best(f):
    times = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(n): f()
        times.append((time.perf_counter() - started) / n * 1e6)
    return min(times)
async def abest(f):
    times = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(n): await f()
        times.append((time.perf_counter() - started) / n * 1e6)
    return min(times)
sync = best(owner.wrapped) - best(owner.plain)
coroutine = asyncio.run(abest(owner.awrapped)) - asyncio.run(abest(owner.aplain))
print(f"the wrapper alone, API and no SDK: sync +{sync:.2f} µs, asyncio +{coroutine:.2f} µs a call")
"""


def main() -> None:
    kind = sys.argv[1] if len(sys.argv) > 1 else "redis"
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 5000
    server = testing.start_server(kind)
    results: dict[str, dict[str, list[float]]] = {s: {"sync": [], "async": []} for s in SETTINGS}
    try:
        for _ in range(reps):
            for setting, prelude in SETTINGS.items():
                done = subprocess.run(
                    [sys.executable, "-c", prelude + "\n" + RUN, server.url, str(n)],
                    capture_output=True,
                    text=True,
                )
                if done.returncode:
                    raise SystemExit(f"{setting}: {done.stderr}")
                row = json.loads(done.stdout)
                wrapped = setting in ("api, no sdk", "sdk recording")
                assert row["available"] == wrapped, (setting, row)
                for way in ("sync", "async"):
                    results[setting][way].append(row[way])
    finally:
        server.stop()
    base = {way: statistics.median(results["absent"][way]) for way in ("sync", "async")}
    print(f"client CPU time per 20-message read, median of {reps} runs of {n} reads ({kind})")
    print("| setting | sync (µs) | ratio | asyncio (µs) | ratio |\n|---|---|---|---|---|")
    for setting, ways in results.items():
        cells = []
        for way in ("sync", "async"):
            median = statistics.median(ways[way])
            cells += [f"{median:.1f}", f"{median / base[way]:.3f}"]
        print(f"| {setting} | " + " | ".join(cells) + " |")
    wrapper = subprocess.run([sys.executable, "-c", WRAPPER], capture_output=True, text=True)
    print(wrapper.stdout.strip() or wrapper.stderr)


if __name__ == "__main__":
    main()
