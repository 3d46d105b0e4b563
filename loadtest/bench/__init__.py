"""Side-by-side benchmarks of pyhistory: ``make bench`` (``python loadtest/bench``).

One room per module:

- ``common``: the settings (full and quick), constants, logging, medians and percentiles;
- ``messages``: the chat messages the benchmarks write (seeded, realistic sizes);
- ``servers``: the servers under test (throwaway ones of every kind, or ``REDIS_URL``), the
  template sessions copied before every segment, and the server probes (INFO cpu, commandstats);
- ``timing``: how a contender's turns are timed (closed loops, sync threads or asyncio tasks);
- ``scenarios``: the chat turns, the round trips counted through a proxy, and the turns through a
  proxy that adds latency;
- ``server_cost``: what a turn, a read and an append cost the server (used_cpu from INFO), with
  the exact commands each contender sends, at 1 and at 16 flights pipelined, on every server kind;
- ``redis_benchmark``: redis-benchmark on the library's functions against the plain commands;
- ``memory``: MEMORY USAGE of a session against the bytes of its messages;
- ``environment``: what ran where (versions, machine, commit);
- ``report``: the target table and the markdown report; ``plots``: the PNGs;
- ``cli``: the command line and the order of the run.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The contenders (loadtest/contenders.py) and the latency proxy are modules of loadtest/, shared
# with the locust load test, which imports them by these top-level names.
_LOADTEST = str(Path(__file__).resolve().parents[1])
if _LOADTEST not in sys.path:
    sys.path.insert(0, _LOADTEST)
