"""The servers under test, the template sessions every segment starts from, and the server
probes (INFO cpu and commandstats)."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlparse

import redis
from contenders import (
    KEY_PREFIX,
)

from .common import (
    ROOT,
    WINDOW,
    Settings,
    log,
)
from .messages import encode, make_pair
from .server_cost import CostServer

# --- server and sessions -----------------------------------------------------------------------


@dataclass
class Target:
    url: str
    host: str
    port: int
    password: str | None
    kind: str
    stop: Callable[[], None]
    label: str = ""  # e.g. "redis 7.0.15"


def start_target(kind: str) -> Target:
    """A throwaway server of `kind`, or the server at REDIS_URL when it is set."""
    env_url = os.environ.get("REDIS_URL")
    if env_url:
        parsed = urlparse(env_url)
        log(f"using REDIS_URL={env_url}")
        target = Target(
            env_url,
            parsed.hostname or "127.0.0.1",
            parsed.port or 6379,
            parsed.password,
            "external",
            lambda: None,
        )
    else:
        from pyhistory.testing import start_server

        server = start_server(kind)
        log(f"started {kind} server {server.binary} on port {server.port}")
        target = Target(server.url, "127.0.0.1", server.port, None, kind, server.stop)
    with redis.Redis.from_url(target.url) as client:
        info = client.info("server")
    version = info.get("valkey_version") or info["redis_version"]
    target.label = f"{info.get('server_name', 'redis')} {version}"
    return target


def start_targets(kinds: Sequence[str]) -> list[Target]:
    """One server of each kind (only the REDIS_URL one when that is set), all running at once."""
    if os.environ.get("REDIS_URL"):
        return [start_target("external")]
    started: list[Target] = []
    try:
        for kind in kinds:
            started.append(start_target(kind))
    except BaseException:
        for target in started:
            target.stop()
        raise
    return started


def library_source() -> str:
    return (ROOT / "lua" / "pyhistory.lua").read_text()


def library_name() -> str:
    """The history library's name, from the Lua file's first line ("#!lua name=...")."""
    return library_source().split("\n", 1)[0].split("name=", 1)[1].strip()


def load_library(client: redis.Redis) -> None:
    """FUNCTION LOAD REPLACE of the history library, from the source in the checkout."""
    client.execute_command("FUNCTION", "LOAD", "REPLACE", library_source())


def cost_server(target: Target) -> CostServer:
    if target.password:
        raise ValueError("the server-cost driver does not authenticate: use a server without one")
    admin = redis.Redis.from_url(target.url)
    return CostServer(target.kind, target.label, target.host, target.port, admin, library_name())


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


def commandstats(admin: redis.Redis) -> dict[str, int]:
    """Calls per command, plus error replies (unknown commands are in no cmdstat entry: a
    client's handshake commands that an older server rejects show up only here)."""
    stats = admin.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
    errors = admin.info("errorstats")
    calls["(error replies)"] = sum(int(v["count"]) for v in errors.values())
    return calls
