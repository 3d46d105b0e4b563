"""The ``pyhistory`` command: deploy the Functions library, check which versions servers hold,
remove old ones, and inspect a session or a LangGraph thread.

    pyhistory [--url URL] [--cluster] load [--checkpoint]
    pyhistory [--url URL] [--cluster] status [--json] [--checkpoint]
    pyhistory [--url URL] [--cluster] versions [--json]
    pyhistory [--url URL] [--cluster] remove LIBRARY [--yes] [--force]
    pyhistory [--url URL] [--cluster] show SESSION_ID [--key-prefix P] [--limit N] [--raw] [--json]
    pyhistory [--url URL] [--cluster] thread THREAD_ID [--key-prefix P] [--namespaces N] [--json]

``load`` is the deploy-time step for applications whose runtime ACL user may not run FUNCTION
LOAD. ``status`` reports both of this package's libraries (the history's and the LangGraph
checkpointer's) and exits 0 only when the history's library (with ``--checkpoint``, the
checkpointer's too) is loaded, with this package's code, on every primary, so it can gate a deploy;
``load --checkpoint`` likewise exits 1 when a primary lacks either library afterwards.
Expected failures (connection refused, NOPERM, a wrong-type key, ...) print one line on stderr
and exit 1; usage errors exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.cluster
import redis.sentinel
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage, message_to_dict
from redis.exceptions import NoPermissionError, RedisClusterException, ResponseError

from pyhistory import __version__, _clients, _core, _library
from pyhistory.errors import (
    CorruptEntryError,
    FunctionsNotLoadedError,
    HistoryError,
    WrongTypeError,
    translate,
)
from pyhistory.functions import SyncClient, load_library
from pyhistory.store import MessageStore, load_functions

PROG = "pyhistory"
DEFAULT_URL = "redis://localhost:6379/0"
PREFIX = "pyhistory_"  # every library this package has shipped or will ship starts with it
# Client defaults; query parameters in the URL override them (redis-py's from_url semantics).
CLIENT_OPTIONS: dict[str, Any] = {"socket_connect_timeout": 5.0, "socket_timeout": 30.0}
REPLICA_WAIT_MS = 2000  # how long `load` waits for replicas to acknowledge the new library
NAMESPACES = 20  # checkpoint namespaces `thread` shows by default
PREVIEW = 100  # characters of a message's content `show` prints on its one line

# The libraries this package ships: the history's, and LangGraph's checkpointer's (--checkpoint).
HISTORY = _core.HISTORY
CHECKPOINT = _library.Library.from_file("pyhistory_checkpoint.lua")

CURRENT, MISSING, DIFFERENT = "current", "missing", "different_code"
_STATE_TEXT = {CURRENT: "current", MISSING: "missing", DIFFERENT: "DIFFERENT CODE"}


class CliError(Exception):
    """An expected failure: printed as one line on stderr, exit code 1."""


# --- small helpers ----------------------------------------------------------------------------


def _cmd(client: SyncClient, *args: Any) -> Any:
    """``execute_command`` (untyped in redis-py) behind a typed signature."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call,unused-ignore]


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return "" if value is None else str(value)


def _fields(item: Any) -> dict[str, Any]:
    """A reply map as a dict with str keys: RESP3 sends a map, RESP2 a flat key/value list."""
    if isinstance(item, dict):
        return {_text(k): v for k, v in item.items()}
    return {_text(k): v for k, v in zip(item[::2], item[1::2], strict=True)}


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def redact(url: str) -> str:
    """The URL with its password (in the user info or the query) replaced by ``***``."""
    try:
        parts = urllib.parse.urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            userinfo, hostport = netloc.rsplit("@", 1)
            netloc = f"{userinfo.split(':', 1)[0]}:***@{hostport}"
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        if any("password" in key.lower() for key, _ in query):
            hidden = [(k, "***" if "password" in k.lower() else v) for k, v in query]
            return urllib.parse.urlunsplit(
                parts._replace(netloc=netloc, query=urllib.parse.urlencode(hidden))
            )
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "<unparsable URL>"


def _url_for_node(url: str, host: str, port: int) -> str:
    """The same URL (credentials, TLS options, ...) pointed at another node."""
    parts = urllib.parse.urlsplit(url)
    userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    bracketed = f"[{host}]" if ":" in host else host
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{userinfo}{bracketed}:{port}"))


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        print("  ".join(cells).rstrip())


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


# --- connecting -------------------------------------------------------------------------------


@dataclass
class Target:
    """What the URL points at: a standalone server, or a cluster reached through one node."""

    url: str
    base: redis.Redis  # the node named in the URL
    cluster: redis.cluster.RedisCluster | None = None
    _clients: list[redis.Redis] = field(default_factory=list)

    @property
    def client(self) -> SyncClient:
        """The client for key and library commands: the cluster client routes and broadcasts."""
        return self.cluster if self.cluster is not None else self.base

    def node_client(self, host: str, port: int) -> redis.Redis:
        client = redis.Redis.from_url(_url_for_node(self.url, host, port), **CLIENT_OPTIONS)
        self._clients.append(client)
        return client

    def close(self) -> None:
        for client in [self.base, *self._clients]:
            client.close()
        if self.cluster is not None:
            self.cluster.close()


def _cluster_enabled(client: redis.Redis) -> bool:
    try:
        info = _cmd(client, "INFO", "cluster")
    except ResponseError:  # INFO refused by the ACL, or not understood: treat as standalone
        return False
    if isinstance(info, dict):
        return str(info.get("cluster_enabled")) == "1"
    return "cluster_enabled:1" in _text(info)


def connect(url: str, cluster: bool) -> Target:
    """A client for ``url``; a cluster client when asked or when the server is a cluster node."""
    try:
        if _clients.is_sentinel(url):  # the primary Sentinel names, as the library reaches it
            if cluster:
                raise CliError("--cluster does not go with a Sentinel URL")
            base = _clients._sentinel_master(url)
        else:
            base = redis.Redis.from_url(url, **CLIENT_OPTIONS)
    except ValueError as error:
        raise CliError(f"bad URL {redact(url)}: {_one_line(error)}") from error
    target = Target(url, base)
    try:
        if cluster or _cluster_enabled(base):
            target.cluster = redis.cluster.RedisCluster.from_url(url, **CLIENT_OPTIONS)
    except BaseException:
        target.close()
        raise
    return target


# --- what the nodes hold ----------------------------------------------------------------------


@dataclass(frozen=True)
class Library:
    name: str
    code: bytes
    functions: tuple[str, ...]

    def state(self, shipped: _library.Library = HISTORY) -> str:
        """current, or different_code: held under the shipped library's name with other code."""
        return CURRENT if self.code == shipped.source.encode() else DIFFERENT


@dataclass
class Node:
    """One server: its place in the topology and, once inspected, what it runs and holds."""

    host: str
    port: int
    role: str = "unknown"  # "primary" or "replica"
    primary: str | None = None  # a replica's primary, "host:port"
    failed: bool = False  # marked failed by the cluster
    client: redis.Redis | None = None
    server: str = ""
    version: str = ""
    libraries: dict[str, Library] = field(default_factory=dict)
    error: str | None = None

    @property
    def address(self) -> str:
        if not self.port:  # a unix socket
            return self.host
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_primary(self) -> bool:
        return self.role == "primary" and not self.failed

    def state_of(self, shipped: _library.Library) -> str | None:
        """A shipped library here: current / missing / different_code (None: unknown)."""
        if self.error is not None:
            return None
        library = self.libraries.get(shipped.name)
        return MISSING if library is None else library.state(shipped)

    def missing_of(self, shipped: _library.Library) -> list[str]:
        registered = {fn for library in self.libraries.values() for fn in library.functions}
        return [fn for fn in shipped.functions if fn not in registered]

    def ok_for(self, shipped: _library.Library) -> bool:
        return self.state_of(shipped) == CURRENT and not self.missing_of(shipped)

    @property
    def state(self) -> str | None:
        """The history's library here (see state_of)."""
        return self.state_of(HISTORY)

    @property
    def functions_missing(self) -> list[str]:
        return self.missing_of(HISTORY)

    @property
    def ok(self) -> bool:
        return self.ok_for(HISTORY)

    def role_text(self) -> str:
        role = self.role if self.primary is None else f"{self.role} of {self.primary}"
        return f"{role} (FAILED)" if self.failed else role

    def as_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "role": self.role,
            "primary": self.primary,
            "failed": self.failed,
            "server": self.server or None,
            "version": self.version or None,
            "libraries": sorted(self.libraries),
            "library": self.state,
            "functions_missing": self.functions_missing if self.error is None else None,
            "ok": self.ok,
            "checkpoint_library": self.state_of(CHECKPOINT),
            "checkpoint_functions_missing": (
                self.missing_of(CHECKPOINT) if self.error is None else None
            ),
            "checkpoint_ok": self.ok_for(CHECKPOINT),
            "error": self.error,
        }


def _cluster_nodes(client: redis.Redis, default_host: str) -> list[Node]:
    """Every node with an address, each primary followed by its replicas, from CLUSTER NODES as
    redis-py parses it.

    Not the cluster client's view: that comes from CLUSTER SLOTS, which leaves out replicas that
    have not replicated anything yet and primaries without slots.
    """
    by_id: dict[str, Node] = {}
    primary_ids: dict[str, str] = {}
    parsed: dict[str, dict[str, Any]] = client.cluster("NODES")
    for address, fields in parsed.items():
        flags = set(str(fields["flags"]).split(","))
        if flags & {"handshake", "noaddr"}:
            continue
        host, _, port = address.rpartition(":")
        if not port.isdigit() or int(port) == 0:
            continue
        node = Node(host.strip("[]") or default_host, int(port))
        node.role = "primary" if "master" in flags else "replica"
        node.failed = "fail" in flags
        node_id, primary_id = str(fields["node_id"]), str(fields["master_id"])
        by_id[node_id] = node
        if primary_id != "-":
            primary_ids[node_id] = primary_id
    for node_id, primary_id in primary_ids.items():
        primary = by_id.get(primary_id)
        by_id[node_id].primary = primary.address if primary is not None else primary_id
    primaries = sorted((n for n in by_id.values() if n.role == "primary"), key=_sort_key)
    ordered: list[Node] = []
    for primary in primaries:
        ordered.append(primary)
        replicas = [n for n in by_id.values() if n.primary == primary.address]
        ordered.extend(sorted(replicas, key=_sort_key))
    ordered.extend(sorted((n for n in by_id.values() if n not in ordered), key=_sort_key))
    return ordered


def _sort_key(node: Node) -> tuple[str, int]:
    return (node.host, node.port)


def discover(target: Target) -> list[Node]:
    """Every node: the one server, or every primary and replica of the cluster."""
    kwargs = target.base.connection_pool.connection_kwargs
    host, port = str(kwargs.get("host", "localhost")), int(kwargs.get("port", 6379))
    if isinstance(target.base.connection_pool, redis.sentinel.SentinelConnectionPool):
        host, port = target.base.connection_pool.get_master_address()  # type: ignore[no-untyped-call]
    if target.cluster is None:
        if "path" in kwargs:  # unix socket
            host, port = str(kwargs["path"]), 0
        node = Node(host, port, client=target.base)
        return [node]
    nodes = _cluster_nodes(target.base, host)
    for node in nodes:
        same = (node.host, node.port) == (host, port)
        node.client = target.base if same else target.node_client(node.host, node.port)
    return nodes


def list_libraries(client: SyncClient) -> dict[str, Library]:
    """The pyhistory libraries loaded on one server (LIBRARYNAME is a glob pattern)."""
    reply = _cmd(client, "FUNCTION", "LIST", "LIBRARYNAME", f"{PREFIX}*", "WITHCODE")
    libraries = {}
    for item in reply:
        fields = _fields(item)
        name = _text(fields["library_name"])
        if not name.startswith(PREFIX):  # the pattern matches case-insensitively
            continue
        code = fields.get("library_code") or b""
        functions = tuple(_text(_fields(fn)["name"]) for fn in fields.get("functions") or [])
        libraries[name] = Library(
            name, code if isinstance(code, bytes) else str(code).encode(), functions
        )
    return libraries


def inspect_node(node: Node) -> Node:
    """Fill in what the node runs and which pyhistory libraries it holds (or why it can't)."""
    assert node.client is not None
    try:
        info = _cmd(node.client, "INFO", "server", "replication")
        if info.get("valkey_version"):
            node.server, node.version = "valkey", str(info["valkey_version"])
        else:
            node.server = str(info.get("server_name") or "redis")
            node.version = str(info.get("redis_version", "?"))
        node.role = "primary" if info.get("role") == "master" else "replica"
        if node.role == "replica" and node.primary is None and info.get("master_host"):
            node.primary = f"{info['master_host']}:{info.get('master_port')}"
        node.libraries = list_libraries(node.client)
        node.error = None
    except (redis.RedisError, OSError) as error:
        node.error = _one_line(error)
    return node


def inspect_all(target: Target) -> list[Node]:
    return [inspect_node(node) for node in discover(target)]


def _gate(nodes: Sequence[Node]) -> list[Node]:
    """The nodes that must hold the current library: every live primary (standalone: the one)."""
    if len(nodes) == 1:
        return list(nodes)
    return [n for n in nodes if n.is_primary or (n.role == "unknown" and not n.failed)]


# --- commands ---------------------------------------------------------------------------------


def cmd_load(target: Target, args: argparse.Namespace) -> int:
    try:
        name = load_functions(target.client)
    except FunctionsNotLoadedError as error:
        raise CliError(
            f"permission denied: this user may not load functions ({error.__cause__}); run "
            f"`{PROG} load` as a user that may run FUNCTION LOAD, e.g. --url redis://admin:...@host"
        ) from error
    shipped = _asked(args)
    if args.checkpoint:
        load_library(target.client, CHECKPOINT)  # every primary, as the history's
    nodes = _gate(inspect_all(target))
    print(f"{name}: loaded ({len(_core.FUNCTIONS)} functions, pyhistory {__version__})")
    if args.checkpoint:
        print(f"{CHECKPOINT.name}: loaded ({len(CHECKPOINT.functions)} functions)")
    failures = 0
    for node in nodes:
        for library in shipped:
            if node.error is None and not node.ok_for(library):
                # a primary redis-py does not route to (no slots yet): load it there directly
                assert node.client is not None
                load_library(node.client, library)
                inspect_node(node)
        if node.error is not None:
            failures += 1
            print(f"  {node.address}  {node.role}  ERROR: {node.error}")
            continue
        problems = [
            f"{library.name} NOT LOADED: {_STATE_TEXT.get(node.state_of(library) or '', '?')}; "
            f"missing functions {', '.join(node.missing_of(library)) or 'none'}"
            for library in shipped
            if not node.ok_for(library)
        ]
        if problems:
            failures += 1
            print(f"  {node.address}  {node.role}  {'; '.join(problems)}")
            continue
        what = "both libraries loaded" if len(shipped) > 1 else "loaded"
        print(
            f"  {node.address}  {node.role}  {what}, identical to this package's code"
            f"{_replication(node)}"
        )
    return 1 if failures else 0


def _asked(args: argparse.Namespace) -> list[_library.Library]:
    """The libraries a command checks: the history's, and the checkpointer's with --checkpoint."""
    return [HISTORY, CHECKPOINT] if args.checkpoint else [HISTORY]


def _replication(node: Node) -> str:
    """Wait briefly for the node's replicas to receive the change; describe the outcome."""
    assert node.client is not None
    try:
        replicas = int(_cmd(node.client, "INFO", "replication").get("connected_slaves", 0))
        if not replicas:
            return ""
        acked = int(_cmd(node.client, "WAIT", replicas, REPLICA_WAIT_MS))
    except (redis.RedisError, ValueError, AttributeError):
        return "; replicas not checked"
    return f"; replicated to {acked}/{replicas} replicas"


def cmd_status(target: Target, args: argparse.Namespace) -> int:
    nodes = inspect_all(target)
    gate = _gate(nodes)
    shipped = _asked(args)
    ok = bool(gate) and all(node.ok_for(library) for node in gate for library in shipped)
    mode = "standalone" if target.cluster is None else "cluster"
    if args.json:
        _print_json(
            {
                "url": redact(target.url),
                "mode": mode,
                "package_version": __version__,
                "library": _core.LIBRARY,
                "functions": list(_core.FUNCTIONS),
                "checkpoint_library": CHECKPOINT.name,
                "checkpoint_functions": list(CHECKPOINT.functions),
                "checked": [library.name for library in shipped],
                "ok": ok,
                "nodes": [node.as_json() for node in nodes],
            }
        )
        return 0 if ok else 1
    print(
        f"pyhistory {__version__} calls library {_core.LIBRARY} ({len(_core.FUNCTIONS)} functions)"
        f" and, for LangGraph, {CHECKPOINT.name} ({len(CHECKPOINT.functions)} functions)"
    )
    print(f"{redact(target.url)}: {mode}, {len(nodes)} node{'s' if len(nodes) != 1 else ''}")
    print()
    header = (
        "NODE",
        "ROLE",
        "SERVER",
        _core.LIBRARY,
        "FUNCTIONS",
        CHECKPOINT.name,
        "PYHISTORY LIBRARIES",
    )
    rows = []
    for node in nodes:
        if node.error is not None:
            rows.append(
                (node.address, node.role_text(), "-", "?", "-", "?", f"ERROR: {node.error}")
            )
            continue
        registered = len(_core.FUNCTIONS) - len(node.functions_missing)
        functions = f"{registered}/{len(_core.FUNCTIONS)}"
        if node.functions_missing and node.state != MISSING:
            functions += " (missing " + ", ".join(node.functions_missing) + ")"
        checkpoint = _STATE_TEXT[node.state_of(CHECKPOINT) or MISSING]
        if node.state_of(CHECKPOINT) == CURRENT and node.missing_of(CHECKPOINT):
            checkpoint += " (missing " + ", ".join(node.missing_of(CHECKPOINT)) + ")"
        rows.append(
            (
                node.address,
                node.role_text(),
                f"{node.server} {node.version}",
                _STATE_TEXT[node.state or MISSING],
                functions,
                checkpoint,
                ", ".join(sorted(node.libraries)) or "-",
            )
        )
    _print_table(header, rows)
    print()
    where = "primaries" if target.cluster is not None else "server"
    for library in shipped:
        _print_verdict(library, nodes, gate, where)
    if CHECKPOINT not in shipped:
        good = sum(node.ok_for(CHECKPOINT) for node in gate)
        print(
            f"note: {CHECKPOINT.name} (LangGraph's checkpointer) has this package's code on "
            f"{good}/{len(gate)} {where}; not checked (`{PROG} status --checkpoint` checks it)"
        )
    return 0 if ok else 1


def _print_verdict(
    library: _library.Library, nodes: Sequence[Node], gate: Sequence[Node], where: str
) -> None:
    """OK or NOT READY for one library on the nodes that must hold it, and what to do."""
    good = sum(node.ok_for(library) for node in gate)
    if gate and good == len(gate):
        print(
            f"OK: {library.name} is loaded with this package's code on {good}/{len(gate)} {where}"
        )
    else:
        problems = [
            f"{n.address} "
            f"{'unreachable' if n.error else _STATE_TEXT[n.state_of(library) or MISSING]}"
            for n in gate
            if not n.ok_for(library)
        ]
        print(
            f"NOT READY: {library.name} is current on {good}/{len(gate)} {where} "
            f"({', '.join(problems) or 'no primary found'})"
        )
        if any(n.error is None and not n.ok_for(library) for n in gate):
            flag = " --checkpoint" if library is CHECKPOINT else ""
            print(f"run `{PROG} load{flag}` (as a user that may run FUNCTION LOAD) to load it")
    stale = [
        n.address for n in nodes if n not in gate and n.error is None and not n.ok_for(library)
    ]
    if stale:
        print(f"note: replicas without the current {library.name} (yet): {', '.join(stale)}")


def cmd_versions(target: Target, args: argparse.Namespace) -> int:
    nodes = inspect_all(target)
    answered = [n for n in nodes if n.error is None]
    primaries = [n for n in answered if n.is_primary] if target.cluster else answered
    replicas = [n for n in answered if n not in primaries]
    names = sorted({name for node in answered for name in node.libraries} | {_core.LIBRARY})
    versions = []
    for name in names:
        on_primaries = [n for n in primaries if name in n.libraries]
        entry: dict[str, Any] = {
            "library": name,
            "primaries": len(on_primaries),
            "primaries_total": len(primaries),
            "replicas": sum(name in n.libraries for n in replicas),
            "replicas_total": len(replicas),
            "this_package": name == _core.LIBRARY,
        }
        if name == _core.LIBRARY:
            different = [n for n in on_primaries if n.libraries[name].state() != CURRENT]
            entry["different_code_on"] = [n.address for n in different]
        versions.append(entry)
    errors = [{"address": n.address, "error": n.error} for n in nodes if n.error is not None]
    if args.json:
        _print_json({"library": _core.LIBRARY, "versions": versions, "errors": errors})
        return 1 if errors else 0
    rows = []
    for entry in versions:
        note = ""
        if entry["this_package"]:
            note = f"<- this package (pyhistory {__version__})"
            if not entry["primaries"]:
                note += ": not loaded"
            elif entry["different_code_on"]:
                note += ": DIFFERENT CODE on " + ", ".join(entry["different_code_on"])
        primaries_text = f"{entry['primaries']}/{entry['primaries_total']}"
        replicas_text = f"{entry['replicas']}/{entry['replicas_total']}"
        rows.append([entry["library"], primaries_text, replicas_text, note])
    _print_table(["LIBRARY", "PRIMARIES", "REPLICAS", ""], rows)
    for error in errors:
        print(f"ERROR: {error['address']}: {error['error']}", file=sys.stderr)
    return 1 if errors else 0


def cmd_remove(target: Target, args: argparse.Namespace) -> int:
    name: str = args.library
    if name == _core.LIBRARY and not args.force:
        raise CliError(
            f"refusing to remove {name}: this package (pyhistory {__version__}) calls it, and its "
            f"processes would load it again on their next call; pass --force to remove it anyway"
        )
    nodes = inspect_all(target)
    primaries = _gate(nodes)
    for node in primaries:
        if node.error is not None:
            raise CliError(f"cannot check {node.address}: {node.error}")
    holding = [n for n in primaries if name in n.libraries]
    if not holding:
        print(f"{name} is not loaded on any primary: nothing to remove")
        return 0
    addresses = ", ".join(n.address for n in holding)
    if not args.yes:
        where = "primary" if len(holding) == 1 else "primaries"
        print(f"would delete {name} from {len(holding)} {where}: {addresses}")
        print("(replicas follow their primary) re-run with --yes to delete")
        return 1
    failures = 0
    for node in holding:
        assert node.client is not None
        try:
            _cmd(node.client, "FUNCTION", "DELETE", name)
            print(f"deleted {name} on {node.address}{_replication(node)}")
        except redis.RedisError as error:
            failures += 1
            print(f"{PROG}: {node.address}: {_one_line(error)}", file=sys.stderr)
    return 1 if failures else 0


def cmd_show(target: Target, args: argparse.Namespace) -> int:
    _core.check_session_id(args.session_id)
    key = args.key_prefix + args.session_id
    client = target.client
    kind = _text(_cmd(client, "TYPE", key))
    if kind not in ("list", "none"):
        raise WrongTypeError(f"{key} holds a {kind}, not a list: it is not a chat history")
    ttl = int(_cmd(client, "TTL", key))
    length = int(_cmd(client, "LLEN", key)) if kind == "list" else 0
    memory = _memory(client, key, args.samples) if kind == "list" else None
    batches = _core.batches_key(key)  # the exactly-once companion: the ids of recent appends
    batches_ttl = int(_cmd(client, "TTL", batches))
    entries: list[str] = []
    messages: list[BaseMessage] = []
    if kind == "list" and args.raw:
        stop = -1 if args.limit is None else args.limit - 1
        entries = [_text(entry) for entry in reversed(_cmd(client, "LRANGE", key, 0, stop))]
    elif kind == "list":
        history = MessageStore(
            args.session_id,
            key_prefix=args.key_prefix,
            window=args.limit,
            refresh_ttl_on_read=False,  # read-only: FCALL_RO, the TTL is left alone
            redis_client=client,
        )
        messages = history.messages
    ttl_value = ttl if ttl >= 0 else None
    ttl_text = f"{ttl} s" if ttl >= 0 else ("none" if ttl == -1 else "missing")
    if args.json:
        data: dict[str, Any] = {
            "key": key,
            "type": kind,
            "exists": kind != "none",
            "length": length,
            "ttl": ttl_value,
            "memory_bytes": memory,
            "batches_key": batches,
            "batches_exists": batches_ttl != -2,
            "batches_ttl": batches_ttl if batches_ttl >= 0 else None,
        }
        if args.raw:
            data["entries"] = entries
        else:
            data["messages"] = [message_to_dict(message) for message in messages]
        _print_json(data)
        return 0
    print(f"key     {key}")
    print(f"type    {kind}")
    print(f"length  {length}")
    print(f"ttl     {ttl_text}")
    if kind == "list":
        print(f"memory  {_bytes_text(memory)}")
    # the exactly-once companion key: recent batch ids (absent before the first append, or once
    # its own TTL has run out: it never holds messages)
    companion = "missing" if batches_ttl == -2 else f"exists, {_ttl_text(batches_ttl)}"
    print(f"batches {batches}  {companion}")
    if kind == "none":
        print("(no such session)")
        return 0
    lines = [_escape(entry) for entry in entries] if args.raw else map(_describe, messages)
    shown = len(entries) if args.raw else len(messages)
    what = "stored entries" if args.raw else "messages"
    scope = f"newest {shown} of {length}" if shown < length else f"all {length}"
    print(f"{what} ({scope}, oldest first):")
    width = len(str(length))
    # numbered by position in the session, 1 = the oldest stored
    for number, line in enumerate(lines, start=length - shown + 1):
        print(f"  {number:>{width}}  {line}")
    read = length if args.limit is None else min(args.limit, length)
    if not args.raw and shown < read:  # the history drops tool results cut off from their call
        print(
            f"({read - shown} older tool result(s) in the window, whose tool call lies outside "
            "it, not shown, as the history would not return them; --raw shows them)"
        )
    return 0


def _escape(text: str) -> str:
    """On one line: line breaks shown as \\n, \\r (the rest as is)."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _shorten(text: str, limit: int) -> str:
    text = _escape(text)
    return text if len(text) <= limit else f"{text[: limit - 3]}... ({len(text)} chars)"


def _describe(message: BaseMessage) -> str:
    """One line: the type, the content (shortened), and the tool calls made or answered."""
    content = message.content
    text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
    parts = [f"{message.type:<6}"]
    if text:
        parts.append(_shorten(text, PREVIEW))
    if isinstance(message, AIMessage) and message.tool_calls:
        calls = [
            f"{call['name']}({_shorten(json.dumps(call['args'], ensure_ascii=False), 60)})"
            for call in message.tool_calls
        ]
        parts.append(f"[tool calls: {', '.join(calls)}]")
    elif isinstance(message, ToolMessage):
        parts.append(f"[result of {message.tool_call_id}]")
    return " ".join(parts)


def _memory(client: SyncClient, key: str, samples: int | None) -> int | None:
    """MEMORY USAGE of a key in bytes (Redis estimates an aggregate's from ``samples`` of its
    elements, 5 by default; 0 counts every one), or None when the server refuses MEMORY (an
    ACL without it) or the key is gone."""
    extra = () if samples is None else ("SAMPLES", samples)
    try:
        reply = _cmd(client, "MEMORY", "USAGE", key, *extra)
    except ResponseError:  # NOPERM, or a server without MEMORY
        return None
    return None if reply is None else int(reply)


def _bytes_text(value: int | None) -> str:
    return "unknown (MEMORY USAGE refused)" if value is None else f"{value} B"


def _ttl_text(ttl: int) -> str:
    """A TTL reply in seconds, as `show` prints it: -1 has none, -2 is a missing key."""
    return f"ttl {ttl} s" if ttl >= 0 else ("no ttl" if ttl == -1 else "missing")


def _lex(prefix: bytes) -> tuple[bytes, bytes]:
    """The lexicographic range (ZLEXCOUNT/ZRANGE BYLEX) of the index members starting with
    ``prefix``: the names between the checkpointer's NUL separators hold no 0xFF byte."""
    return b"[" + prefix, b"(" + prefix + b"\xff"


def _thread_namespaces(
    client: SyncClient, index: str, limit: int
) -> tuple[list[dict[str, Any]], bool]:
    """Per checkpoint namespace, in byte order: its checkpoints, the newest one's id and pending
    writes, the writes stored and the checkpoints pinned; at most ``limit`` namespaces (and
    whether there are more). Each namespace costs a few O(log N) commands on the index: the
    next one is found by skipping past the current one's range, not by reading its members."""
    found: list[dict[str, Any]] = []
    start, stop = _lex(b"c\0")
    while True:
        first = _cmd(client, "ZRANGE", index, start, stop, "BYLEX", "LIMIT", 0, 1)
        if not first:
            return found, False
        if len(found) == limit:
            return found, True
        ns = bytes(first[0]).split(b"\0")[1]
        prefix = b"c\0" + ns + b"\0"
        low, high = _lex(prefix)
        newest = _cmd(client, "ZRANGE", index, high, low, "BYLEX", "REV", "LIMIT", 0, 1)
        newest_id = bytes(newest[0])[len(prefix) :] if newest else b""
        found.append(
            {
                "namespace": _text(ns),
                "checkpoints": int(_cmd(client, "ZLEXCOUNT", index, low, high)),
                "newest": _text(newest_id) if newest else None,
                "newest_writes": (
                    int(_cmd(client, "ZLEXCOUNT", index, *_lex(b"w\0%s\0%s\0" % (ns, newest_id))))
                    if newest
                    else 0
                ),
                "writes": int(_cmd(client, "ZLEXCOUNT", index, *_lex(b"w\0" + ns + b"\0"))),
                "pinned": int(_cmd(client, "ZLEXCOUNT", index, *_lex(b"p\0" + ns + b"\0"))),
            }
        )
        start = high  # "(c<0>ns<0><ff>": past every checkpoint of this namespace


def cmd_thread(target: Target, args: argparse.Namespace) -> int:
    try:  # the saver's own naming; needs langgraph (the checkpoint extra)
        from pyhistory.checkpoint import _calls
    except ImportError as error:
        raise CliError(
            f"`{PROG} thread` needs the checkpoint extra: pip install 'pyhistory[checkpoint]' "
            f"({_one_line(error)})"
        ) from error
    thread_id = _calls.thread_id_of(args.thread_id)
    data_key, index_key = _calls.keys(_calls.check_key_prefix(args.key_prefix), thread_id)
    client = target.client
    keys: list[dict[str, Any]] = []
    for key, expected, size in ((data_key, "hash", "HLEN"), (index_key, "zset", "ZCARD")):
        kind = _text(_cmd(client, "TYPE", key))
        if kind not in (expected, "none"):
            raise WrongTypeError(
                f"{key} holds a {kind}, not a {expected}: it is not a checkpointer thread's key"
            )
        exists = kind != "none"
        ttl = int(_cmd(client, "TTL", key))
        keys.append(
            {
                "key": key,
                "type": kind,
                "length": int(_cmd(client, size, key)) if exists else 0,
                "memory_bytes": _memory(client, key, args.samples) if exists else 0,
                "ttl": ttl if ttl >= 0 else None,
                "_ttl": ttl,
            }
        )
    exists = any(held["type"] != "none" for held in keys)
    namespaces, more = _thread_namespaces(client, index_key, args.namespaces)
    epoch = _cmd(client, "HGET", data_key, "o") if keys[0]["type"] == "hash" else None
    memories = [held["memory_bytes"] for held in keys]
    data: dict[str, Any] = {
        "thread_id": thread_id,
        "exists": exists,
        "keys": [{k: v for k, v in held.items() if k != "_ttl"} for held in keys],
        "memory_bytes": None if None in memories else sum(memories),
        "checkpoints": int(_cmd(client, "ZLEXCOUNT", index_key, *_lex(b"c\0"))),
        "writes": int(_cmd(client, "ZLEXCOUNT", index_key, *_lex(b"w\0"))),
        "pinned": int(_cmd(client, "ZLEXCOUNT", index_key, *_lex(b"p\0"))),
        "owner_epoch": None if epoch is None else _text(epoch),
        "namespaces": namespaces,
        "namespaces_truncated": more,
    }
    if args.json:
        _print_json(data)
        return 0
    print(f"thread       {thread_id}")
    for name, held in zip(("data", "index"), keys, strict=True):
        if held["type"] == "none":
            print(f"{name:<12} {held['key']}  missing")
            continue
        what = "fields" if held["type"] == "hash" else "members"
        print(
            f"{name:<12} {held['key']}  {held['type']}, {held['length']} {what}, "
            f"{_bytes_text(held['memory_bytes'])}, {_ttl_text(held['_ttl'])}"
        )
    if not exists:
        print("(no such thread)")
        return 0
    print(f"memory       {_bytes_text(data['memory_bytes'])}")
    print(f"checkpoints  {data['checkpoints']}")
    print(
        f"writes       {data['writes']} stored; {data['pinned']} checkpoint(s) with writes "
        "no child has applied yet"
    )
    print(f"owner epoch  {data['owner_epoch'] or 'none (not fenced)'}")
    if not namespaces:
        return 0
    shown = f"first {len(namespaces)}, more not shown" if more else f"{len(namespaces)}"
    print(f"namespaces ({shown}):")
    rows = [
        [
            json.dumps(ns["namespace"], ensure_ascii=False),
            str(ns["checkpoints"]),
            ns["newest"] or "",
            str(ns["newest_writes"]),
            str(ns["writes"]),
            str(ns["pinned"]),
        ]
        for ns in namespaces
    ]
    header = ["  NAMESPACE", "CHECKPOINTS", "NEWEST", "PENDING", "WRITES", "PINNED"]
    _print_table(header, [["  " + row[0], *row[1:]] for row in rows])
    return 0


# --- the command line -------------------------------------------------------------------------


URL_SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://", "rediss+sentinel://")


def _url_arg(value: str) -> str:
    if not value.startswith(URL_SCHEMES):
        raise argparse.ArgumentTypeError(
            f"expected a redis://, rediss://, unix:// or redis+sentinel:// URL, "
            f"got {redact(value)!r}"
        )
    return value


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if not 1 <= number <= _core.MAX_INT:
        raise argparse.ArgumentTypeError(f"expected an integer in [1, {_core.MAX_INT}]")
    return number


def _count_arg(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if not 0 <= number <= _core.MAX_INT:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, {_core.MAX_INT}]")
    return number


SAMPLES_HELP = (
    "elements MEMORY USAGE samples to estimate a key's size (default: the server's, 5; "
    "0: every element, exact but O(N))"
)


def _library_arg(value: str) -> str:
    if not value.startswith(PREFIX) or value == PREFIX:
        raise argparse.ArgumentTypeError(f"only pyhistory libraries ({PREFIX}...) can be removed")
    return value


Command = Callable[[Target, argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    default_url = os.environ.get("REDIS_URL") or DEFAULT_URL
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Manage the pyhistory Redis Functions libraries; inspect chat sessions and "
        "LangGraph threads.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # The connection options work before or after the subcommand; the subcommands' copies
    # default to SUPPRESS so that they never override a value given before.
    connection = argparse.ArgumentParser(add_help=False)
    for target, default in ((parser, True), (connection, False)):
        target.add_argument(
            "--url",
            type=_url_arg,
            default=default_url if default else argparse.SUPPRESS,
            help="redis://, rediss:// (TLS options as query parameters, e.g. "
            "?ssl_ca_certs=ca.pem), unix:// or redis+sentinel://host:26379/service URL; "
            "default: $REDIS_URL, else " + DEFAULT_URL,
        )
        target.add_argument(
            "--cluster",
            action="store_true",
            default=False if default else argparse.SUPPRESS,
            help="use a cluster client (default: detected from INFO cluster)",
        )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Command, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[connection], help=help, description=help)
        sub.set_defaults(handler=handler)
        return sub

    load = add(
        "load",
        cmd_load,
        "load (or upgrade) this package's library on the server / every primary (deploy step)",
    )
    load.add_argument(
        "--checkpoint",
        action="store_true",
        help="also load the LangGraph checkpointer's library (pyhistory.checkpoint)",
    )
    status = add(
        "status",
        cmd_status,
        "which pyhistory libraries every node holds; exit 0 only when this package's library "
        "(with --checkpoint: and the checkpointer's) is current on every primary",
    )
    status.add_argument("--json", action="store_true", help="print JSON")
    status.add_argument(
        "--checkpoint",
        action="store_true",
        help="also require the LangGraph checkpointer's library (pyhistory.checkpoint)",
    )
    versions = add("versions", cmd_versions, "the pyhistory library versions across the nodes")
    versions.add_argument("--json", action="store_true", help="print JSON")
    remove = add(
        "remove", cmd_remove, "delete a pyhistory library (FUNCTION DELETE) on every primary"
    )
    remove.add_argument("library", type=_library_arg, help="e.g. pyhistory_v1")
    remove.add_argument("--yes", action="store_true", help="delete (without it: only show what)")
    remove.add_argument(
        "--force", action="store_true", help="also remove the library this package calls"
    )
    show = add("show", cmd_show, "print a session: key, type, length, TTL, messages (read-only)")
    show.add_argument("session_id")
    show.add_argument("--key-prefix", default="message_store:", help="default: message_store:")
    show.add_argument(
        "--limit", type=_positive_int, default=None, help="only the newest N (default: all)"
    )
    show.add_argument("--raw", action="store_true", help="the stored entries, not decoded")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.add_argument("--samples", type=_count_arg, default=None, help=SAMPLES_HELP)
    thread = add(
        "thread",
        cmd_thread,
        "print a LangGraph thread (pyhistory.checkpoint): its keys, their size and TTL, its "
        "checkpoints and pending writes per namespace (read-only, no keyspace scan)",
    )
    thread.add_argument("thread_id")
    thread.add_argument(
        "--key-prefix", default="checkpoint:", help="the saver's key_prefix (default: checkpoint:)"
    )
    thread.add_argument(
        "--namespaces",
        type=_positive_int,
        default=NAMESPACES,
        help=f"show at most N checkpoint namespaces (default: {NAMESPACES})",
    )
    thread.add_argument("--json", action="store_true", help="print JSON")
    thread.add_argument("--samples", type=_count_arg, default=None, help=SAMPLES_HELP)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # usage errors (2), --help and --version (0)
        return exit_.code if isinstance(exit_.code, int) else 2
    handler: Command = args.handler
    try:
        target = connect(args.url, args.cluster)
        try:
            return handler(target, args)
        finally:
            target.close()
    except CliError as error:
        return _fail(str(error))
    except HistoryError as error:
        hint = (
            " (`show --raw` prints the stored entries)"
            if isinstance(error, CorruptEntryError)
            else ""
        )
        return _fail(f"{type(error).__name__}: {_one_line(error)}{hint}")
    except NoPermissionError as error:
        return _fail(f"permission denied at {redact(args.url)}: {_one_line(error)}")
    except redis.ConnectionError as error:  # also AuthenticationError
        return _fail(f"cannot connect to {redact(args.url)}: {_one_line(translate(error))}")
    except redis.TimeoutError as error:
        return _fail(f"timed out talking to {redact(args.url)}: {_one_line(error)}")
    except BrokenPipeError:  # stdout closed early (`| head`): stop quietly
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (redis.RedisError, RedisClusterException, OSError) as error:
        return _fail(f"{redact(args.url)}: {_one_line(error)}")
    except KeyboardInterrupt:
        return 130


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
