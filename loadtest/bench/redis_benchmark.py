"""redis-benchmark on the library's functions against the plain commands they wrap."""

from __future__ import annotations

import random
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from langchain_core.messages import (
    AIMessage,
)

from pyhistory._core import BATCH_ID_LEN, batches_key

from .common import (
    REDIS_BENCHMARK,
    Settings,
    log,
    median,
)
from .messages import _text, encode, make_pair
from .servers import Target, library_name

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
    lib = library_name()
    rng = random.Random(7)
    pair = make_pair(rng)
    payload = encode(AIMessage(_text(rng, 190, 200)))  # a serialised message of ~300 bytes
    entries: list[str] = []
    while len(entries) < 2000:
        entries.extend(encode(m) for m in make_pair(rng))
    del pair
    bounded = "bench:rb:bounded"

    def append_call(key: str, max_messages: str, ttl: str, entry: str) -> tuple[str, ...]:
        # -r: redis-benchmark writes a new random 12-digit number for each __rand_int__, a new
        # batch id for each call (exactly-once appends: a repeated id is not applied)
        assert BATCH_ID_LEN == 12  # the digits redis-benchmark writes for __rand_int__
        ids = batches_key(key)
        return ("-r", "1000000000000", "FCALL", f"{lib}_append", "2", key, ids, max_messages, ttl,
                "__rand_int__", entry)  # fmt: skip

    window_key = "bench:rb:window"
    long_key_ = "bench:rb:long"
    pairs = [
        Pair(
            "append vs LPUSH",
            append_call("bench:rb:append", "0", "0", payload),
            ("LPUSH", "bench:rb:append", payload),
            "bench:rb:append",
            0,
            target=0.80,
            note="unbounded, as LPUSH: the key is deleted before each run and grows by -n",
        ),
        Pair(
            "append max 1000 ttl 3600 vs LPUSH",
            append_call(bounded, "1000", "3600", payload),
            ("LPUSH", bounded, payload),
            bounded,
            1000,
            note="the realistic call: LPUSH + LTRIM + EXPIRE in the function; LPUSH alone grows",
        ),
        Pair(
            "window_ro 20 vs LRANGE 0 19",
            ("FCALL_RO", f"{lib}_window_ro", "1", window_key, "20"),
            ("LRANGE", window_key, "0", "19"),
            window_key,
            200,
            target=0.75,
        ),
        Pair(
            "window 20 ttl 3600 vs LRANGE 0 19",
            ("FCALL", f"{lib}_window", "1", window_key, "20", "3600"),
            ("LRANGE", window_key, "0", "19"),
            window_key,
            200,
            note="the library's window, kept for other clients (pyhistory: LRANGE + touch)",
        ),
        Pair(
            "window_ro all (2,000) vs LRANGE 0 -1",
            ("FCALL_RO", f"{lib}_window_ro", "1", long_key_, "0"),
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
