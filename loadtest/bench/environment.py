"""What ran where: versions, machine, settings, commit."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import redis

import pyhistory

from .common import (
    REDIS_BENCHMARK,
    ROOT,
    TTL,
    WINDOW,
    Settings,
)
from .servers import Target

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
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    from redis.utils import HIREDIS_AVAILABLE

    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "server_kind": target.kind,
        "server": server.get("valkey_version") or server.get("redis_version"),
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
