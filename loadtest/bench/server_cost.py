"""What a chat turn, a read and an append cost the server: its own CPU time (used_cpu_sys +
used_cpu_user from INFO) per operation, with the exact commands each contender sends.

A lean driver sends them: the requests are encoded once, ahead of time, and the replies are
parsed by hiredis, so the client's own cost does not shape the server's. Each of ``connections``
connections has one flight in the air at a time; a flight carries the commands of ``depth``
operations on different sessions (depth 1: what one client sends per step; depth 16: sixteen
pipelined, as a busy backend multiplexing a connection sends them). A turn is two flights: the
read (window 20, refreshing the TTL) and the append (2 entries, trimmed to ``MAX_MESSAGES``, TTL
set), as a chat backend sends them.

Every segment starts from identical sessions at their bound (``MAX_MESSAGES`` entries, so every
append trims), the server's command statistics reset; segments of all forms and all servers are
interleaved and repeated, and the tables report medians. Server CPU is measured on the server,
so other load on the machine moves it far less than it moves throughput.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import hiredis
import redis
from harness import server_cpu_seconds

from pyhistory._core import BATCH_ID_LEN, REMEMBERED, WINDOW_SECONDS, batches_key

from .common import TTL, WINDOW, Settings, log, median
from .messages import encode, make_pair

MAX_MESSAGES = 40  # sessions start here, so every append of 2 trims 2
KEYS_PER_CONNECTION = 32
TEMPLATE = "bench:cost:template"
# Each connection's flights are made anew this many times, so an append's batch id comes back to
# its key only after more appends than the library remembers ids (REMEMBERED): never a replay.
ROUNDS = REMEMBERED + 1


def batch_id() -> str:
    """A batch id of the library's length: hex digits of random bits."""
    return os.urandom(BATCH_ID_LEN // 2).hex()


Command = tuple[str, ...]
Step = Callable[[str], list[Command]]  # one operation's commands in one flight, for a key


@dataclass(frozen=True)
class Form:
    name: str
    group: str  # "turn", "read" or "append"
    steps: tuple[Step, ...]  # one flight each
    contender: str = ""  # for a turn: which contender sends it
    note: str = ""


def forms(lib: str, entries: Sequence[str], small: Sequence[str]) -> list[Form]:
    window, ttl, bound = str(WINDOW), str(TTL), str(MAX_MESSAGES)
    last = str(WINDOW - 1)
    keep = str(MAX_MESSAGES - 1)

    def fcall(short: str, key: str, *args: str) -> Command:
        return ("FCALL", f"{lib}_{short}", "1", key, *args)

    def read_touch(k: str) -> list[Command]:
        return [("LRANGE", k, "0", last), fcall("touch", k, ttl)]

    def read_window(k: str) -> list[Command]:
        return [fcall("window", k, window, ttl)]

    def read_multi(k: str) -> list[Command]:
        return [("MULTI",), ("LRANGE", k, "0", last), ("EXPIRE", k, ttl), ("EXEC",)]

    def read_expire(k: str) -> list[Command]:
        return [("LRANGE", k, "0", last), ("EXPIRE", k, ttl)]

    def read_plain(k: str) -> list[Command]:
        return [("LRANGE", k, "0", last)]

    def append_fcall(items: Sequence[str]) -> Step:
        # a new batch id in every flight (exactly-once appends: a repeated id is not applied)
        return lambda k: [
            ("FCALL", f"{lib}_append", "2", k, batches_key(k), bound, ttl, batch_id(), *items)
        ]

    def append_multi(items: Sequence[str]) -> Step:
        return lambda k: [
            ("MULTI",),
            ("LPUSH", k, *items),
            ("LTRIM", k, "0", keep),
            ("EXPIRE", k, ttl),
            ("EXEC",),
        ]

    def append_plain(items: Sequence[str]) -> Step:
        # pyhistory._core.plain_append: the batch id recorded beside the entries (one append in
        # REMEMBERED or so is the library's, which cuts the ids back: not modelled here)
        def step(k: str) -> list[Command]:
            ids = batches_key(k)
            return [
                ("MULTI",),
                ("LPUSH", k, *items),
                ("LTRIM", k, "0", keep),
                ("EXPIRE", k, ttl),
                ("APPEND", ids, batch_id()),
                ("EXPIRE", ids, str(WINDOW_SECONDS)),
                ("EXEC",),
            ]

        return step

    def append_multi_touch(k: str) -> list[Command]:
        return [
            ("MULTI",),
            ("LPUSH", k, *entries),
            ("LTRIM", k, "0", keep),
            fcall("touch", k, ttl),
            ("EXEC",),
        ]

    size = sum(len(e) for e in entries) // len(entries)
    tiny = sum(len(e) for e in small) // len(small)
    return [
        Form(
            "pyhistory",
            "turn",
            (read_plain, append_plain(entries)),
            "pyhistory",
            "LRANGE (the TTL is not due: the last append set it); MULTI LPUSH LTRIM EXPIRE "
            "APPEND EXPIRE EXEC (the plain append, its batch id recorded)",
        ),
        Form(
            "pipeline",
            "turn",
            (read_multi, append_multi(entries)),
            "pipeline",
            "MULTI LRANGE EXPIRE EXEC; MULTI LPUSH LTRIM EXPIRE EXEC",
        ),
        Form(
            "pyhistory, every read refreshes the TTL",
            "turn",
            (read_touch, append_plain(entries)),
            "pyhistory (ttl_refresh_interval=0)",
            "ttl_refresh_interval=0: LRANGE + FCALL touch in one flight; the plain append",
        ),
        Form(
            "pyhistory, the library's append",
            "turn",
            (read_plain, append_fcall(entries)),
            "pyhistory (library append)",
            "LRANGE; FCALL append (a session's first append by a process, a caller's "
            "idempotency key, a retry, a cluster)",
        ),
        Form(
            "pyhistory, FCALL window read",
            "turn",
            (read_window, append_fcall(entries)),
            "pyhistory (window read)",
            "the read before LRANGE + touch: FCALL window; FCALL append",
        ),
        Form(
            "read LRANGE + EXPIRE; FCALL append",
            "turn",
            (read_expire, append_fcall(entries)),
            "alternative",
            "an alternative: the TTL refreshed by a plain EXPIRE; the append in the library",
        ),
        Form(
            "read LRANGE + FCALL touch; MULTI append",
            "turn",
            (read_touch, append_multi(entries)),
            "alternative",
            "an alternative: the read as now; the append as MULTI LPUSH LTRIM EXPIRE EXEC",
        ),
        Form("FCALL window 20 ttl", "read", (read_window,)),
        Form("LRANGE + FCALL touch (one flight)", "read", (read_touch,)),
        Form("MULTI LRANGE EXPIRE EXEC", "read", (read_multi,)),
        Form("LRANGE + EXPIRE (one flight)", "read", (read_expire,)),
        Form("LRANGE alone (no TTL refresh)", "read", (read_plain,), note="reference"),
        Form(f"FCALL append, 2 x ~{size} B", "append", (append_fcall(entries),)),
        Form(
            f"plain append (MULTI ... APPEND EXPIRE EXEC), 2 x ~{size} B",
            "append",
            (append_plain(entries),),
        ),
        Form(f"MULTI LPUSH LTRIM EXPIRE EXEC, 2 x ~{size} B", "append", (append_multi(entries),)),
        Form(
            f"MULTI LPUSH LTRIM FCALL touch EXEC, 2 x ~{size} B",
            "append",
            (append_multi_touch,),
            note="entries stay out of Lua; the TTL through the library",
        ),
        Form(f"FCALL append, 2 x {tiny} B", "append", (append_fcall(small),)),
        Form(f"MULTI LPUSH LTRIM EXPIRE EXEC, 2 x {tiny} B", "append", (append_multi(small),)),
    ]


def _resp(commands: Sequence[Command]) -> bytes:
    out = bytearray()
    for command in commands:
        out += b"*%d\r\n" % len(command)
        for arg in command:
            data = arg.encode()
            out += b"$%d\r\n%s\r\n" % (len(data), data)
    return bytes(out)


@dataclass
class Flight:
    payload: bytes
    replies: int


def _flights(form: Form, keys: Sequence[str], depth: int) -> list[list[Flight]]:
    """For one connection: per batch of `depth` keys, one flight per step of the form; the whole
    made ROUNDS times (each append step makes a new batch id)."""
    batches = []
    for _ in range(ROUNDS):
        for start in range(0, len(keys), depth):
            batch = keys[start : start + depth]
            flights = []
            for step in form.steps:
                commands = [c for key in batch for c in step(key)]
                flights.append(Flight(_resp(commands), len(commands)))
            batches.append(flights)
    return batches


async def _drive(
    host: str, port: int, batches: list[list[Flight]], depth: int, deadline: float
) -> int:
    """One connection, one flight in the air at a time, until the deadline: operations done."""
    reader, writer = await asyncio.open_connection(host, port)
    parser = hiredis.Reader()
    done = 0
    try:
        while time.perf_counter() < deadline:
            for flights in batches:
                for flight in flights:
                    writer.write(flight.payload)
                    pending = flight.replies
                    while pending:
                        reply = parser.gets()
                        if reply is False:
                            data = await reader.read(1 << 16)
                            if not data:
                                raise ConnectionError("the server closed the connection")
                            parser.feed(data)
                            continue
                        if isinstance(reply, hiredis.ReplyError):
                            raise RuntimeError(f"server error: {reply}")
                        if isinstance(reply, list):
                            for item in reply:  # EXEC's replies
                                if isinstance(item, hiredis.ReplyError):
                                    raise RuntimeError(f"server error in EXEC: {item}")
                        pending -= 1
                done += depth
    finally:
        writer.close()
        await writer.wait_closed()
    return done


@dataclass
class CostServer:
    kind: str
    label: str  # e.g. "redis 7.0.15"
    host: str
    port: int
    admin: redis.Redis
    library: str  # the history library's name


def _prepare(server: CostServer, keys: Sequence[str], template: Sequence[str]) -> None:
    admin = server.admin
    admin.delete(TEMPLATE)
    admin.rpush(TEMPLATE, *template)
    _reset(admin, keys)


def _reset(admin: redis.Redis, keys: Sequence[str]) -> None:
    pipe = admin.pipeline(transaction=False)
    for key in keys:
        pipe.copy(TEMPLATE, key, replace=True)
    pipe.execute()


def _segment(
    server: CostServer,
    form: Form,
    depth: int,
    keys: Sequence[str],
    connections: int,
    seconds: float,
) -> dict[str, Any]:
    _reset(server.admin, keys)
    per = len(keys) // connections
    plans = [_flights(form, keys[i * per : (i + 1) * per], depth) for i in range(connections)]
    server.admin.config_resetstat()
    cpu0 = server_cpu_seconds(server.admin)
    t0 = time.perf_counter()

    async def run() -> list[int]:
        deadline = time.perf_counter() + seconds
        return await asyncio.gather(
            *(_drive(server.host, server.port, plan, depth, deadline) for plan in plans)
        )

    ops = sum(asyncio.run(run()))
    elapsed = time.perf_counter() - t0
    cpu = server_cpu_seconds(server.admin) - cpu0
    stats = server.admin.info("commandstats")
    errors = server.admin.info("errorstats")
    if errors:
        raise RuntimeError(f"{server.kind}: error replies during {form.name!r}: {errors}")
    skip = ("info", "config", "config|resetstat")
    commands = {
        name.removeprefix("cmdstat_"): (int(v["calls"]) / ops, float(v["usec_per_call"]))
        for name, v in stats.items()
        if name.removeprefix("cmdstat_") not in skip
    }
    return {
        "ops": ops,
        "seconds": elapsed,
        "ops_per_s": ops / elapsed,
        "server_cpu_us": cpu / ops * 1e6,
        "commands": commands,  # name -> (calls per operation, usec per call)
    }


def server_cost(
    servers: Sequence[CostServer], settings: Settings, rng: random.Random
) -> dict[str, Any]:
    lib = servers[0].library
    template: list[str] = []
    while len(template) < MAX_MESSAGES:
        template.extend(encode(m) for m in make_pair(rng))
    template = template[:MAX_MESSAGES]
    human, ai = make_pair(rng)
    entries = [encode(human), encode(ai)]
    small = ["x" * 16, "y" * 16]
    all_forms = [
        f
        for f in forms(lib, entries, small)
        if not settings.cost_forms or f.name.startswith(settings.cost_forms)
    ]
    connections = settings.cost_connections
    keys = [f"message_store:bench-cost-{i:04d}" for i in range(connections * KEYS_PER_CONNECTION)]
    for server in servers:
        _prepare(server, keys, template)
    plan: list[tuple[Form, int]] = []
    for form in all_forms:
        depths = settings.cost_turn_depths if form.group == "turn" else settings.cost_op_depths
        plan.extend((form, depth) for depth in depths)
    log(
        f"  {len(plan)} forms x {len(servers)} servers x {settings.cost_reps} repetitions x "
        f"{settings.cost_seconds:g} s, {connections} connections"
    )
    samples: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for rep in range(settings.cost_reps):
        for index, server in enumerate(servers):
            shift = (rep + index) % len(plan)
            for form, depth in plan[shift:] + plan[:shift]:
                seg = _segment(server, form, depth, keys, connections, settings.cost_seconds)
                samples.setdefault((server.kind, form.name, depth), []).append(seg)
                log(
                    f"  [{server.label}] rep {rep + 1}/{settings.cost_reps} -P {depth:<2} "
                    f"{form.name:<44} {seg['server_cpu_us']:6.2f} us/op server CPU, "
                    f"{seg['ops_per_s']:9.0f} ops/s"
                )
    for server in servers:
        server.admin.delete(TEMPLATE, *keys)
    rows = []
    for server in servers:
        for form, depth in plan:
            segs = samples[(server.kind, form.name, depth)]
            names = sorted({n for s in segs for n in s["commands"]})
            rows.append(
                {
                    "server_kind": server.kind,
                    "server": server.label,
                    "form": form.name,
                    "group": form.group,
                    "contender": form.contender,
                    "note": form.note,
                    "depth": depth,
                    "server_cpu_us": median([s["server_cpu_us"] for s in segs]),
                    "server_cpu_us_reps": [s["server_cpu_us"] for s in segs],
                    "ops_per_s": median([s["ops_per_s"] for s in segs]),
                    "commands": {
                        n: {
                            "calls_per_op": median(
                                [s["commands"][n][0] for s in segs if n in s["commands"]]
                            ),
                            "usec_per_call": median(
                                [s["commands"][n][1] for s in segs if n in s["commands"]]
                            ),
                        }
                        for n in names
                    },
                }
            )
    return {
        "library": lib,
        "connections": connections,
        "keys": len(keys),
        "window": WINDOW,
        "ttl": TTL,
        "max_messages": MAX_MESSAGES,
        "entry_bytes": [len(e) for e in entries],
        "small_entry_bytes": [len(e) for e in small],
        "rows": rows,
    }
