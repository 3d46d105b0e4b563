"""Throwaway Redis Clusters of :class:`LocalServer` nodes, built without redis-cli.

The cluster is assembled with plain commands sent through redis-py (CLUSTER ADDSLOTSRANGE or
ADDSLOTS, MEET, REPLICATE), so any server kind works, the wheels' servers included. The
topology is read with redis-py's own ``CLUSTER NODES`` and ``CLUSTER INFO`` parsing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import redis
import redis.cluster

from pyhistory.testing.servers import LocalServer, command, resolve_kind, stop_all

__all__ = ["LocalCluster", "start_cluster"]

CLUSTER_SLOTS = 16384


@dataclass(frozen=True)
class NodeView:
    """One line of ``CLUSTER NODES`` as one node sees it (from redis-py's parsed reply)."""

    node_id: str
    port: int
    flags: frozenset[str]
    primary_id: str | None
    slots: tuple[tuple[int, int], ...]

    @property
    def is_primary(self) -> bool:
        """A primary not marked FAIL."""
        return "master" in self.flags and "fail" not in self.flags

    @property
    def is_replica(self) -> bool:
        """A replica not marked FAIL."""
        return bool(self.flags & {"slave", "replica"}) and "fail" not in self.flags

    @property
    def settled(self) -> bool:
        """Past the handshake, with an address."""
        return not self.flags & {"handshake", "noaddr"}


def cluster_nodes(client: redis.Redis) -> list[NodeView]:
    """``CLUSTER NODES`` of the node behind ``client``, through redis-py's reply parser."""
    views = []
    parsed: dict[str, dict[str, Any]] = client.cluster("NODES")
    for address, fields in parsed.items():
        port = address.rsplit(":", 1)[-1]
        slots = tuple((int(r[0]), int(r[-1])) for r in fields["slots"])
        master = fields["master_id"]
        views.append(
            NodeView(
                node_id=fields["node_id"],
                port=int(port) if port.isdigit() else 0,
                flags=frozenset(fields["flags"].split(",")),
                primary_id=None if master in ("-", "", None) else master,
                slots=slots,
            )
        )
    return views


def _startup_node(host: str, port: int) -> redis.cluster.ClusterNode:
    return redis.cluster.ClusterNode(host, port)  # type: ignore[no-untyped-call,unused-ignore]


class LocalCluster:
    """A Redis Cluster of :class:`LocalServer` nodes on 127.0.0.1."""

    nodes: list[LocalServer]

    def __init__(self, nodes: list[LocalServer]) -> None:
        self.nodes = nodes

    def __repr__(self) -> str:
        return f"<LocalCluster {[n.port for n in self.nodes]}>"

    @property
    def kind(self) -> str:
        return self.nodes[0].kind if self.nodes else "unknown"

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [(n.host, n.port) for n in self.nodes]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def _by_port(self, port: int) -> LocalServer | None:
        return next((n for n in self.nodes if n.port == port), None)

    def _servers(self, views: Sequence[NodeView]) -> list[LocalServer]:
        return [s for s in (self._by_port(v.port) for v in views) if s is not None]

    def _topology(self) -> list[NodeView]:
        errors = []
        for node in self.nodes:
            if not node.running:
                continue
            try:
                with node._admin() as client:
                    return cluster_nodes(client)
            except redis.RedisError as exc:
                errors.append(f"{node.port}: {exc}")
        raise RuntimeError(f"no cluster node answers CLUSTER NODES: {errors}")

    def primaries(self) -> list[LocalServer]:
        """Current primaries, as a live node sees them (a primary marked FAIL is left out),
        in slot order, those without slots last."""
        views = [v for v in self._topology() if v.is_primary]
        views.sort(key=lambda v: (not v.slots, v.slots[0][0] if v.slots else 0))
        return self._servers(views)

    def replicas(self) -> list[LocalServer]:
        """Current replicas, as a live node sees them (a replica marked FAIL is left out)."""
        return self._servers([v for v in self._topology() if v.is_replica])

    def replicas_of(self, primary: LocalServer) -> list[LocalServer]:
        topology = self._topology()
        pid = next((v.node_id for v in topology if v.port == primary.port), None)
        return self._servers([v for v in topology if v.is_replica and v.primary_id == pid])

    def client(self, **kwargs: Any) -> redis.cluster.RedisCluster:
        """A RedisCluster client whose startup nodes are the live nodes."""
        live = [n for n in self.nodes if n.running] or self.nodes
        params: dict[str, Any] = {"startup_nodes": [_startup_node(n.host, n.port) for n in live]}
        params.update(kwargs)
        return redis.cluster.RedisCluster(**params)

    def _health_problems(self) -> list[str]:
        problems = []
        for node in self.nodes:
            if not node.running:
                continue
            try:
                with node._admin() as client:
                    info: dict[str, Any] = client.cluster("INFO")
            except redis.RedisError as exc:
                problems.append(f"{node.port}: {exc}")
                continue
            state, ok = info.get("cluster_state"), info.get("cluster_slots_ok")
            if state != "ok" or int(ok or 0) != CLUSTER_SLOTS:
                problems.append(f"{node.port}: cluster_state={state} slots_ok={ok}")
        return problems

    def wait_healthy(self, timeout: float = 20.0) -> None:
        """Wait for cluster_state:ok and all 16384 slots ok on every live node."""
        deadline = time.monotonic() + timeout
        while True:
            problems = self._health_problems()
            if not problems:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster not healthy after {timeout:.0f} s: {problems}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop every node (in parallel) and remove their directories. Idempotent."""
        stop_all(self.nodes)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _slot_ranges(primaries: int) -> list[tuple[int, int]]:
    step = CLUSTER_SLOTS / primaries
    return [(round(i * step), round((i + 1) * step) - 1) for i in range(primaries)]


def start_cluster(
    kind: str = "auto",
    *,
    primaries: int = 3,
    replicas_per_primary: int = 1,
    node_timeout_ms: int = 2000,
    args: Sequence[str] = (),
    timeout: float = 30.0,
) -> LocalCluster:
    """Start a cluster of ``primaries`` primaries with ``replicas_per_primary`` replicas each.

    ``kind`` as for :func:`start_server` (``"auto"``: the first installed of ``KINDS``). Built
    with plain cluster commands (ADDSLOTSRANGE, MEET, REPLICATE), no redis-cli. Returns when
    every node is healthy and knows the full topology, and every replica is in sync.
    Everything started is stopped again if start-up fails.
    """
    if primaries < 1 or replicas_per_primary < 0:
        raise ValueError("need primaries >= 1 and replicas_per_primary >= 0")
    kind, binary = resolve_kind(kind)
    deadline = time.monotonic() + timeout
    total = primaries * (1 + replicas_per_primary)
    nodes: list[LocalServer] = []
    cluster = LocalCluster(nodes)
    try:
        for _ in range(total):
            nodes.append(
                LocalServer(kind, binary, args=args, cluster=True, node_timeout_ms=node_timeout_ms)
            )
        for node in nodes:
            node._spawn()
        for node in nodes:
            node._wait_ready()
        _build(nodes, primaries, replicas_per_primary, deadline)
        cluster.wait_healthy(max(1.0, deadline - time.monotonic()))
        _wait_converged(cluster, primaries, replicas_per_primary, deadline)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _add_slots(client: redis.Redis, first: int, last: int) -> None:
    try:
        command(client, "CLUSTER ADDSLOTSRANGE", first, last)
    except redis.ResponseError as exc:
        if "unknown" not in str(exc).lower():
            raise
        command(client, "CLUSTER ADDSLOTS", *range(first, last + 1))  # before Redis 7


def _build(
    nodes: list[LocalServer], primaries: int, replicas_per_primary: int, deadline: float
) -> None:
    clients = [n._admin(timeout=5.0) for n in nodes]
    try:
        ids = [str(c.cluster("MYID")) for c in clients]
        for epoch, c in enumerate(clients, start=1):
            command(c, "CLUSTER SET-CONFIG-EPOCH", epoch)
        for c, (first, last) in zip(clients[:primaries], _slot_ranges(primaries), strict=True):
            _add_slots(c, first, last)
        for node in nodes[1:]:
            command(clients[0], "CLUSTER MEET", node.host, node.port)
        # until every node knows every other one, past the handshake
        while True:
            missing = [
                node.port
                for node, c in zip(nodes, clients, strict=True)
                if not {v.node_id for v in cluster_nodes(c) if v.settled} >= set(ids)
            ]
            if not missing:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster nodes {missing} did not learn the whole cluster")
            time.sleep(0.05)
        for r in range(replicas_per_primary):
            for p in range(primaries):
                replica = primaries + p * replicas_per_primary + r
                command(clients[replica], "CLUSTER REPLICATE", ids[p])
    finally:
        for c in clients:
            c.close()


def _wait_converged(
    cluster: LocalCluster, primaries: int, replicas_per_primary: int, deadline: float
) -> None:
    """Every node sees the same roles, and every replica's link to its primary is up."""
    while True:
        problems = []
        for node in cluster.nodes:
            try:
                with node._admin() as client:
                    views = cluster_nodes(client)
                    repl = client.info("replication")
            except redis.RedisError as exc:
                problems.append(f"{node.port}: {exc}")
                continue
            seen = (
                sum(1 for v in views if v.is_primary and v.slots),
                sum(1 for v in views if v.is_replica),
            )
            if seen != (primaries, primaries * replicas_per_primary):
                problems.append(f"{node.port} sees {seen[0]}+{seen[1]}")
            if repl.get("role") == "slave" and repl.get("master_link_status") != "up":
                problems.append(f"{node.port} replication link down")
        if not problems:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"cluster did not converge: {problems}")
        time.sleep(0.05)
