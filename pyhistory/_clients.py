"""One client (and so one connection pool) per URL in the process, and per event loop for
asyncio, so that constructing a history per request opens no new connections."""

from __future__ import annotations

import asyncio
import threading

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import LoadBalancingStrategy
from redis.retry import Retry

from pyhistory.functions import AsyncClient, SyncClient, prepare

# A URL, whether it names a cluster, and whether the cluster's replicas serve the reads.
Target = tuple[str, bool, bool]

_lock = threading.Lock()
_sync: dict[Target, SyncClient] = {}
# Keyed by the loop itself: a client holds its loop, so weak keys would never be released.
# Entries of closed loops are dropped whenever a new loop asks (asyncio.run() per call, tests).
_async: dict[asyncio.AbstractEventLoop, dict[Target, AsyncClient]] = {}


def _backoff() -> ExponentialWithJitterBackoff:
    """How clients built here ride out a restart or a failover: connection errors and timeouts
    are retried 10 times, backing off from 0.1 s up to 1 s with jitter (about 7 s in all)."""
    return ExponentialWithJitterBackoff(base=0.1, cap=1.0)


_RETRIES = 10


def _replicas(read_from_replicas: bool) -> LoadBalancingStrategy | None:
    """Read-only commands (LRANGE, FCALL_RO) to the replicas in turn, or all to the primaries."""
    return LoadBalancingStrategy.ROUND_ROBIN_REPLICAS if read_from_replicas else None


def _new_sync(target: Target) -> SyncClient:
    url, cluster, read_from_replicas = target
    retry = Retry(_backoff(), retries=_RETRIES)
    if not cluster:
        return redis.Redis.from_url(url, retry=retry)
    client = redis.cluster.RedisCluster.from_url(
        url, load_balancing_strategy=_replicas(read_from_replicas), retry=retry
    )
    prepare(client)
    return client


def _new_async(target: Target) -> AsyncClient:
    url, cluster, read_from_replicas = target
    retry = AsyncRetry(_backoff(), retries=_RETRIES)
    if not cluster:
        return redis.asyncio.Redis.from_url(url, retry=retry)
    client = redis.asyncio.cluster.RedisCluster.from_url(
        url, load_balancing_strategy=_replicas(read_from_replicas), retry=retry
    )
    prepare(client)
    return client


def sync_client(url: str, cluster: bool = False, read_from_replicas: bool = False) -> SyncClient:
    target = (url, cluster, cluster and read_from_replicas)
    client = _sync.get(target)
    if client is None:
        with _lock:
            client = _sync.get(target)
            if client is None:
                client = _sync[target] = _new_sync(target)
    return client


def async_client(url: str, cluster: bool = False, read_from_replicas: bool = False) -> AsyncClient:
    """The client for `url` on the running event loop (a pool is bound to its loop)."""
    loop = asyncio.get_running_loop()
    clients = _async.get(loop)
    if clients is None:
        with _lock:
            for closed in [other for other in _async if other.is_closed()]:
                del _async[closed]
            clients = _async[loop] = {}
    target = (url, cluster, cluster and read_from_replicas)
    client = clients.get(target)
    if client is None:
        client = clients[target] = _new_async(target)
    return client
