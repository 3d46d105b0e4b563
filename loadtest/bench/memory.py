"""MEMORY USAGE of a session against the bytes of its messages."""

from __future__ import annotations

import random
from typing import Any

import redis
from contenders import (
    KEY_PREFIX,
)

import pyhistory

from .common import (
    TTL,
    Settings,
    log,
)
from .messages import encode, make_pair

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
