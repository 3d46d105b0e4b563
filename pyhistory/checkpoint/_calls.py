"""Pure code of the LangGraph saver: its library, the thread's keys, each call's arguments, and the
decoding of each reply. No I/O; the saver only runs what this builds.

The layout and every function's contract are in lua/pyhistory_checkpoint.lua and
docs/checkpoint/README.md.
"""

from __future__ import annotations

import json
import math
import random
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic, TypeVar, cast
from uuid import UUID

import ormsgpack
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    DeltaChannelHistory,
    PendingWrite,
    get_checkpoint_id,
    get_serializable_checkpoint_metadata,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

from pyhistory import _forks
from pyhistory._library import Call, Library
from pyhistory.errors import (
    InvalidArgumentError,
    InvalidCheckpointIdError,
    InvalidSizeError,
)

K = TypeVar("K")
V = TypeVar("V")

LIBRARY = Library.from_file("pyhistory_checkpoint.lua")
MAX_INT = LIBRARY.constant("MAX_INT")
PUT = LIBRARY.function("put")
PUT_WRITES = LIBRARY.function("put_writes")
GET = LIBRARY.function("get")
GET_RO = LIBRARY.function("get_ro")
LIST = LIBRARY.function("list")
PRUNE = LIBRARY.function("prune")
COPY = LIBRARY.function("copy")
EXPORT = LIBRARY.function("export")
IMPORT = LIBRARY.function("import")
DELTA = LIBRARY.function("delta")
CLAIM = LIBRARY.function("claim")
RETAIN = LIBRARY.function("retain")
TRIM = LIBRARY.function("trim")
DELETE_RUN = LIBRARY.function("delete_run")
MAX_TRIM = LIBRARY.constant("MAX_TRIM")
IDX_OFFSET = LIBRARY.constant("IDX_OFFSET")

# Checkpoints one list call returns at most: each carries its channel values, so a page of a long
# thread's history stays a few MB at worst.
LIST_PAGE = 32

# Commands the saver sends itself besides FCALL, in MULTI/EXEC: HSET, HINCRBY, ZADD, ZREM and
# EXPIRE for a put (its values always; the rest when it needs no check on the server), HSET,
# HSETNX, ZADD and EXPIRE for an unfenced put_writes, SADD and EXPIRE for the index of runs;
# SMEMBERS and DEL for delete_for_runs, DEL for delete_thread and prune("delete"), WAIT for
# wait_for_replicas.
CLIENT_COMMANDS: tuple[str, ...] = (
    "fcall",
    "multi",
    "exec",
    "hset",
    "hsetnx",
    "hincrby",
    "zadd",
    "zrem",
    "expire",
    "sadd",
    "smembers",
    "del",
    "wait",
)


def acl_rule(key_prefix: str = "checkpoint:") -> str:
    """The least-privilege ACL rules for an application's saver: its threads' keys only, the
    calls and what the library's functions run, nothing else (no FUNCTION, no KEYS/SCAN).
    Loading the library is left to an admin user at deploy time."""
    return LIBRARY.acl_rule(check_key_prefix(key_prefix), CLIENT_COMMANDS)


# --- settings ---------------------------------------------------------------------------------


def check_key_prefix(key_prefix: object) -> str:
    """A prefix without braces: the hash tag of a thread's keys must be the thread's own."""
    if not isinstance(key_prefix, str) or "{" in key_prefix or "}" in key_prefix:
        raise InvalidArgumentError(f"key_prefix must be a str without braces, got {key_prefix!r}")
    return key_prefix


def check_max_bytes(value: object) -> int:
    """None: no byte limit (0 for the library), else an int in [1, MAX_INT]."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_INT:
        raise InvalidSizeError(f"max_bytes must be None or an int in [1, {MAX_INT}], got {value!r}")
    return value


def check_keep_last(value: object) -> int:
    """None: keep every checkpoint (0 for the library), else an int in [1, MAX_INT]."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_INT:
        raise InvalidSizeError(f"keep_last must be None or an int in [1, {MAX_INT}], got {value!r}")
    return value


def check_trim_every(value: object, keep_last: int) -> int:
    """None: half of keep_last (at least 1), else an int in [1, MAX_INT]."""
    if value is None:
        return max(1, keep_last // 2)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_INT:
        raise InvalidSizeError(
            f"trim_every must be None or an int in [1, {MAX_INT}], got {value!r}"
        )
    return value


def check_max_age(value: object) -> float | None:
    """None, or a positive number of seconds (int, float or timedelta)."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise InvalidArgumentError(f"max_age must be None or a positive number, got {value!r}")
    return float(value)


# --- names ------------------------------------------------------------------------------------


def _name(what: str, value: object, *, may_be_empty: bool = True) -> str:
    """A name the library stores between NUL separators: a str, UTF-8 encodable, without NUL."""
    if not isinstance(value, str):
        raise InvalidCheckpointIdError(f"{what} must be a str, got {value!r}")
    if not value and not may_be_empty:
        raise InvalidCheckpointIdError(f"{what} must not be empty")
    if "\0" in value:
        raise InvalidCheckpointIdError(f"{what} must hold no NUL character, got {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidCheckpointIdError(f"{what} is not encodable as UTF-8: {value!r}") from error
    return value


def thread_id_of(value: object) -> str:
    """LangGraph's thread ids are usually str; ints and UUIDs are stored as their str."""
    if value is None or isinstance(value, bool):
        raise InvalidCheckpointIdError(f"thread_id must be a str, got {value!r}")
    text = value if isinstance(value, str) else str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidCheckpointIdError(f"thread_id is not encodable as UTF-8: {text!r}") from error
    return text


def hash_tag(thread_id: str) -> str:
    """The thread's hash tag: "{t:" + the id with %, { and } percent-encoded + "}". Never empty
    (an empty tag would not be a tag), and never holds a brace, so it is exactly the tag."""
    escaped = thread_id.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")
    return "{t:" + escaped + "}"


def keys(key_prefix: str, thread_id: str) -> tuple[str, str]:
    """The thread's data hash and index sorted set."""
    base = key_prefix + hash_tag(thread_id)
    return base + ":data", base + ":index"


def run_key(key_prefix: str, run_id: str) -> str:
    """The SET of the threads a run wrote checkpoints to (for delete_for_runs): its own hash tag,
    "{r:" + the escaped run id + "}", so it never shares a slot by accident with a thread."""
    escaped = run_id.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")
    return key_prefix + "{r:" + escaped + "}:threads"


def age_cut(max_age: float | None, now_ns: int) -> str:
    """The smallest uuid6 checkpoint id made ``max_age`` seconds before ``now_ns``: LangGraph's
    ids are uuid6, whose text sorts by the time they were made, so every checkpoint older than
    that sorts below it. "" without a max_age."""
    if max_age is None:
        return ""
    ticks = (now_ns - int(max_age * 1e9)) // 100 + 0x01B21DD213814000
    value = ((ticks >> 12) & 0xFFFFFFFFFFFF) << 80 | (ticks & 0x0FFF) << 64
    value |= 6 << 76 | 0x8000 << 48  # version 6, RFC 4122 variant; clock_seq and node 0
    return str(UUID(int=value))


# The data hash's fields and the index's members, named as the library names them (see its
# layout and its functions of the same names).


def blob_name(ns: str, channel: str, version: str) -> str:
    """The data hash's field of a channel's value at a version."""
    return f"b\0{ns}\0{channel}\0{version}"


def checkpoint_name(ns: str, checkpoint_id: str) -> str:
    """A checkpoint's record (a data hash field) and its index member."""
    return f"c\0{ns}\0{checkpoint_id}"


def document_field(kind: str, ns: str, checkpoint_id: str) -> str:
    """A checkpoint's own typed values: ``kind`` "k" the checkpoint, "m" its metadata."""
    return f"{kind}\0{ns}\0{checkpoint_id}"


def writes_prefix(ns: str, checkpoint_id: str) -> str:
    """What the fields and index members of a checkpoint's pending writes begin with."""
    return f"w\0{ns}\0{checkpoint_id}\0"


def counter_field(ns: str, channel: str, version: str) -> str:
    """A value's reference count: how many stored records name it."""
    return f"n\0{ns}\0{channel}\0{version}"


def floor_name(ns: str, floor: str, checkpoint_id: str) -> str:
    return f"f\0{ns}\0{checkpoint_id}\0{floor}"


def run_name(run_id: str, ns: str, checkpoint_id: str) -> str:
    return f"r\0{run_id}\0{ns}\0{checkpoint_id}"


def pinned_name(ns: str, checkpoint_id: str) -> str:
    return f"p\0{ns}\0{checkpoint_id}"


def parent_name(ns: str, checkpoint_id: str) -> str:
    """A checkpoint that has a child."""
    return f"a\0{ns}\0{checkpoint_id}"


def channel_version_of(blob: str) -> tuple[str, str]:
    """(channel, version) from a blob_name."""
    _, _, channel, version = blob.split("\0")
    return channel, version


def version_of(version: object) -> str:
    """A channel version as stored: ints and strs as written, floats by repr."""
    if isinstance(version, bool) or not isinstance(version, (str, int, float)):
        raise InvalidArgumentError(
            f"a channel version must be a str, int or float, got {version!r}"
        )
    text = repr(version) if isinstance(version, float) else str(version)
    return _name("a channel version", text, may_be_empty=False)


def next_version(current: str | int | float | None) -> str:
    """The next channel version: a 32-digit counter and a random fraction, so that two branches
    bumping one channel from the same version store two values, not one."""
    if current is None:
        counter = 0
    elif isinstance(current, str):
        counter = int(current.split(".", 1)[0])
    else:
        counter = int(current)
    return f"{counter + 1:032}.{random.random():016}"


# --- values -----------------------------------------------------------------------------------


def typed(serde: SerializerProtocol, value: Any) -> bytes:
    """A value as stored: the serializer's type name, a NUL byte, the serialized bytes."""
    kind, data = serde.dumps_typed(value)
    if not kind or "\0" in kind:
        raise InvalidArgumentError(f"the serializer returned an unusable type name {kind!r}")
    return kind.encode("utf-8") + b"\0" + data


def untyped(serde: SerializerProtocol, stored: bytes) -> Any:
    kind, _, data = stored.partition(b"\0")
    return serde.loads_typed((kind.decode("utf-8"), data))


def _canonical(value: Any) -> str | None:
    """The JSON a filter compares, or None when the value has none."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)  # 1.0 == 1, as Python compares them
    try:
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError):
        return None


def filter_index(metadata: Mapping[str, Any]) -> list[str]:
    """Each top-level metadata key with the canonical JSON of its value, flat."""
    flat: list[str] = []
    for key, value in metadata.items():
        text = _canonical(value)
        if isinstance(key, str) and "\0" not in key and text is not None:
            flat += (key, text)
    return flat


def filter_pairs(filter: Mapping[str, Any] | None) -> list[str]:
    flat: list[str] = []
    for key, value in (filter or {}).items():
        text = _canonical(value)
        if not isinstance(key, str) or "\0" in key or text is None:
            raise InvalidArgumentError(
                f"a list filter compares top-level metadata keys with JSON values, got "
                f"{key!r}: {value!r}"
            )
        flat += (key, text)
    return flat


# --- configs ----------------------------------------------------------------------------------


def _configurable(config: RunnableConfig | None) -> Mapping[str, Any]:
    if not config or not isinstance(config.get("configurable"), Mapping):
        raise InvalidArgumentError("the config must carry a 'configurable' mapping")
    return config["configurable"]


def thread_of(config: RunnableConfig) -> str:
    configurable = _configurable(config)
    if "thread_id" not in configurable:
        raise InvalidArgumentError("the config's 'configurable' must hold a thread_id")
    return thread_id_of(configurable["thread_id"])


def namespace_of(config: RunnableConfig) -> str:
    return _name("checkpoint_ns", _configurable(config).get("checkpoint_ns") or "")


def checkpoint_of(config: RunnableConfig) -> str:
    return _name("checkpoint_id", get_checkpoint_id(config) or "")


def config_for(thread_id: str, ns: str, checkpoint_id: str) -> RunnableConfig:
    return {
        "configurable": {
            "thread_id": thread_id,
            "checkpoint_ns": ns,
            "checkpoint_id": checkpoint_id,
        }
    }


# --- calls ------------------------------------------------------------------------------------


def _fcall(function: str, thread_keys: tuple[str, str], *args: Any) -> Call:
    return Call("FCALL", (function, 2, *thread_keys, *args), thread_keys[0], LIBRARY)


def put(
    serde: SerializerProtocol,
    thread_keys: tuple[str, str],
    ttl: int,
    retention: tuple[int, str, int],
    epoch: str,
    config: RunnableConfig,
    checkpoint: Checkpoint,
    metadata: CheckpointMetadata,
    new_versions: ChannelVersions,
    parent_holders: Mapping[str, str] | None = None,
    trim: bool = True,
) -> tuple[Call, RunnableConfig, str, dict[str, str] | None, Head]:
    """The put call (its values in a plain HSET ahead of it, in one MULTI/EXEC), the config it
    returns, the run id it indexes ("" for none), for a put made of plain commands where its
    DeltaChannels are rebuilt from (for its children's puts), and the checkpoint as the newest
    of its namespace (:class:`Head`). ``retention``: (keep_last,
    age cut, max_bytes); ``parent_holders``: the parent's, when this saver knows them.

    With max_bytes a put of plain commands ends with the library's retain, which indexes and
    counts the checkpoint once and trims, on every put. With keep_last and the age cut, a put
    that trims (``trim``) indexes and counts with plain commands and ends with the library's
    trim; the others are the plain put without retention (see :func:`plain_put`)."""
    thread_id = thread_of(config)
    ns = namespace_of(config)
    parent = checkpoint_of(config)
    checkpoint_id = _name("checkpoint id", checkpoint.get("id"), may_be_empty=False)
    values: Mapping[str, Any] = checkpoint.get("channel_values") or {}
    stored = {k: v for k, v in checkpoint.items() if k != "channel_values"}
    meta = get_serializable_checkpoint_metadata(config, metadata)
    run = meta.get("run_id")
    run_id = run_id_of(run) if run else ""
    versions: list[str] = []
    for channel, version in checkpoint["channel_versions"].items():
        versions += (_name("a channel", channel, may_be_empty=False), version_of(version))
    blobs: list[str] = []
    fields: list[Any] = []
    for channel, version in new_versions.items():
        if channel in values:
            name = _name("a channel", channel, may_be_empty=False)
            text = version_of(version)
            blobs += (name, text)
            fields += (blob_name(ns, name, text), typed(serde, values[channel]))
    # DeltaChannels this checkpoint stores no value of: rebuilt from its ancestors' writes.
    counters = meta.get("counters_since_delta_snapshot") or {}
    deltas = [ch for ch in counters if ch in checkpoint["channel_versions"] and ch not in values]
    filters = filter_index(meta)
    keep_last, cut, max_bytes = retention
    if not trim:
        keep_last, cut = 0, ""
    # A put that trims nothing and counts no bytes indexes itself with plain commands.
    retained = bool(keep_last or cut or max_bytes)
    config_out = config_for(thread_id, ns, checkpoint_id)
    head = Head(checkpoint_id, parent, tuple(zip(versions[::2], versions[1::2], strict=True)))
    if not epoch and (not deltas or parent_holders is not None):
        holders: dict[str, str] = {}
        for channel in deltas:
            holder = (parent_holders or {}).get(channel, parent) if parent else checkpoint_id
            holders[channel] = holder or checkpoint_id
        call = plain_put(
            thread_keys,
            ttl,
            ns,
            checkpoint_id,
            parent,
            run_id,
            (typed(serde, stored), typed(serde, meta)),
            versions,
            fields,
            filters,
            holders,
            (keep_last, cut, max_bytes) if retained else None,
        )
        return call, config_out, run_id, holders, head
    args = (
        ttl,
        keep_last,
        cut,
        max_bytes,
        epoch,
        ns,
        checkpoint_id,
        parent,
        run_id,
        typed(serde, stored),
        typed(serde, meta),
        len(versions) // 2,
        *versions,
        len(blobs) // 2,
        *blobs,
        len(filters) // 2,
        *filters,
        len(deltas),
        *deltas,
    )
    before = (("HSET", thread_keys[0], *fields),) if fields else ()
    call = Call("FCALL", (PUT, 2, *thread_keys, *args), thread_keys[0], LIBRARY, before)
    return call, config_out, run_id, None, head


def plain_put(
    thread_keys: tuple[str, str],
    ttl: int,
    ns: str,
    checkpoint_id: str,
    parent: str,
    run_id: str,
    documents: tuple[bytes, bytes],
    versions: Sequence[str],
    blobs: Sequence[Any],
    filters: Sequence[str],
    holders: Mapping[str, str],
    retention: tuple[int, str, int] | None = None,
) -> Call:
    """A put that needs no check on the server (no owner epoch, and every DeltaChannel's holder
    known from the parent this saver wrote) as plain commands in one MULTI/EXEC, writing what
    the library's put writes (see its header and the layout): the values, the record (msgpack,
    as the library packs it), the checkpoint and its metadata in one HSET; the index entries;
    the parent's pin removed; the TTL.

    The checkpoint's own index entry and its values' reference counts go in once however often
    the transaction is applied. With max_bytes (in ``retention``: keep_last, age cut,
    max_bytes) the library's retain, called after these in the same transaction, adds them
    (and counts their bytes). Otherwise plain ZADD and one HINCRBY per channel version add them
    (no function call reads them: the cheapest put for the server), followed, with keep_last
    or an age cut, by the library's trim; ``again``, sent in place of the transaction when its
    reply was lost, is the retain form, which adds them only if the first was not applied."""
    data, index = thread_keys
    floor = checkpoint_id
    for holder in holders.values():
        if holder.encode() < floor.encode():
            floor = holder
    flat_holders = [item for pair in holders.items() for item in pair]
    record = ormsgpack.packb(
        [parent, list(versions), list(filters), flat_holders, floor, 1, run_id]
    )
    name = checkpoint_name(ns, checkpoint_id)
    written: tuple[Any, ...] = (
        "HSET",
        data,
        *blobs,
        name,
        record,
        document_field("k", ns, checkpoint_id),
        documents[0],
        document_field("m", ns, checkpoint_id),
        documents[1],
    )
    members: list[Any] = []
    if floor != checkpoint_id:
        members += (0, floor_name(ns, floor, checkpoint_id))
    if run_id:
        members += (0, run_name(run_id, ns, checkpoint_id))
    unpinned: tuple[tuple[Any, ...], ...] = ()
    if parent:  # its pending writes are applied here: unpinned, and marked as having a child
        members += (0, parent_name(ns, parent))
        unpinned = (("ZREM", index, pinned_name(ns, parent)),)
    expires: tuple[tuple[Any, ...], ...] = (
        (("EXPIRE", data, ttl), ("EXPIRE", index, ttl)) if ttl else ()
    )
    indexed = (("ZADD", index, *members),) if members else ()
    retained = Call(
        "FCALL",
        (RETAIN, 2, *thread_keys, *(retention or (0, "", 0)), ns, checkpoint_id, *versions),
        data,
        LIBRARY,
        (written, *unpinned, *indexed, *expires),
    )
    if retention is not None and retention[2]:
        return retained  # by bytes: retain counts the checkpoint's bytes as it indexes it
    commands: list[tuple[Any, ...]] = [written]
    for i in range(0, len(versions), 2):
        commands.append(("HINCRBY", data, counter_field(ns, versions[i], versions[i + 1]), 1))
    commands += (*unpinned, ("ZADD", index, 0, name, *members), *expires)
    if retention is not None:  # keep_last, max_age: indexed and counted as without, then trim
        trim = (TRIM, 2, *thread_keys, retention[0], retention[1], ns)
        return Call("FCALL", trim, data, LIBRARY, tuple(commands), again=retained)
    *before, last = commands
    return Call(last[0], tuple(last[1:]), data, None, tuple(before), again=retained)


def put_writes(
    serde: SerializerProtocol,
    thread_keys: tuple[str, str],
    ttl: int,
    epoch: str,
    config: RunnableConfig,
    writes: Sequence[tuple[str, Any]],
    task_id: str,
    task_path: str,
) -> Call | None:
    ns = namespace_of(config)
    checkpoint_id = _name("checkpoint_id", get_checkpoint_id(config), may_be_empty=False)
    flat: list[Any] = []
    for idx, (channel, value) in enumerate(writes):
        flat += (
            WRITES_IDX_MAP.get(channel, idx),
            _name("a channel", channel, may_be_empty=False),
            typed(serde, value),
        )
    if not flat:
        return None
    task = _name("task_id", task_id)
    path = _name("task_path", task_path)
    if epoch:  # fenced: the epoch is checked inside the call, atomically with the writes
        return _fcall(PUT_WRITES, thread_keys, ttl, epoch, ns, checkpoint_id, task, path, *flat)
    return plain_writes(thread_keys, ttl, ns, checkpoint_id, task, path, flat)


def plain_writes(
    thread_keys: tuple[str, str],
    ttl: int,
    ns: str,
    checkpoint_id: str,
    task: str,
    path: str,
    flat: Sequence[Any],
) -> Call:
    """An unfenced put_writes as plain commands in one MULTI/EXEC, doing what the library's
    put_writes does (same fields, members and values; see its header), without a function call:
    HSETNX keeps a write already stored for (task, idx >= 0), so a retried call stores nothing
    twice; HSET replaces a special write (idx < 0); ZADD indexes each (again: a no-op) and pins
    the checkpoint; EXPIRE sets the TTL. A task id fixes its path, so a write is never indexed
    under two paths. The names were checked here; the values are typed."""
    data, index = thread_keys
    commands: list[tuple[Any, ...]] = []
    members: list[Any] = [0, pinned_name(ns, checkpoint_id)]
    prefix = writes_prefix(ns, checkpoint_id)
    for i in range(0, len(flat), 3):
        idx, channel, value = flat[i : i + 3]
        digits = f"{idx + IDX_OFFSET:010d}"
        field = f"{prefix}{task}\0{digits}"
        stored = b"\0".join((task.encode(), path.encode(), channel.encode(), value))
        commands.append(("HSET" if idx < 0 else "HSETNX", data, field, stored))
        members += (0, f"{prefix}{path}\0{task}\0{digits}")
    commands.append(("ZADD", index, *members))
    if ttl:
        commands += (("EXPIRE", data, ttl), ("EXPIRE", index, ttl))
    *before, last = commands
    return Call(last[0], tuple(last[1:]), data, None, tuple(before))


def get(
    thread_keys: tuple[str, str],
    config: RunnableConfig,
    refresh_ttl: int,
    known: Mapping[str, tuple[str, bytes]] | None = None,
) -> Call:
    """The get call; ``known``: channel -> (version, typed value) this process holds, which the
    server then does not send again."""
    ns, checkpoint_id = namespace_of(config), checkpoint_of(config)
    pairs = [item for channel, (version, _) in (known or {}).items() for item in (channel, version)]
    if refresh_ttl:
        return _fcall(GET, thread_keys, refresh_ttl, ns, checkpoint_id, *pairs)
    return _fcall(GET_RO, thread_keys, ns, checkpoint_id, *pairs)


@dataclass(frozen=True)
class Head:
    """The newest checkpoint of a thread's namespace as this saver last wrote or read it: its id,
    its parent's ("" for none), its channel versions as stored (see :func:`newest`), and
    whether it has pending writes."""

    checkpoint_id: str
    parent: str
    versions: tuple[tuple[str, str], ...]
    pending: bool = False  # it has pending writes: read through the library, which sends them


def head_of(
    checkpoint_id: str, parent: str, channel_versions: Mapping[str, Any], pending: bool = False
) -> Head:
    return Head(
        checkpoint_id,
        parent,
        tuple((channel, version_of(version)) for channel, version in channel_versions.items()),
        pending,
    )


def newest(
    thread_keys: tuple[str, str],
    ns: str,
    head: Head,
    known: Mapping[str, tuple[str, bytes]],
    refresh_ttl: int,
) -> list[tuple[Any, ...]]:
    """A get of a namespace's newest checkpoint, when this saver knows which one it was, as plain
    commands in one MULTI/EXEC (no value crosses into Lua): the newest index entry, the
    checkpoint, its metadata and the values this saver does not hold, whether it has pending
    writes, and the TTL. :func:`newest_entry` says whether the guess held."""
    data, index = thread_keys
    checkpoints = checkpoint_name(ns, "").encode()
    prefix = writes_prefix(ns, head.checkpoint_id).encode()
    fields = [document_field(kind, ns, head.checkpoint_id) for kind in "km"]
    fields += [
        blob_name(ns, channel, version)
        for channel, version in head.versions
        if known.get(channel, ("",))[0] != version
    ]
    commands: list[tuple[Any, ...]] = [
        ("MULTI",),
        ("ZREVRANGEBYLEX", index, b"(" + checkpoints + b"\xff", b"[" + checkpoints, "LIMIT", 0, 1),
        ("HMGET", data, *fields),
        ("ZRANGEBYLEX", index, b"[" + prefix, b"(" + prefix + b"\xff", "LIMIT", 0, 1),
    ]
    if refresh_ttl:
        commands += (("EXPIRE", data, refresh_ttl), ("EXPIRE", index, refresh_ttl))
    return [*commands, ("EXEC",)]


def newest_entry(
    ns: str, head: Head, known: Mapping[str, tuple[str, bytes]], replies: Sequence[Any]
) -> list[Any] | None:
    """What the library's get replies, from the replies of :func:`newest`, or None when the guess
    did not hold (another checkpoint is newest, or it has pending writes, or it is gone)."""
    if any(isinstance(reply, BaseException) for reply in replies):
        return None
    found, values, writes = replies[0], replies[1], replies[2]
    name = checkpoint_name(ns, head.checkpoint_id).encode()
    if len(found) != 1 or _bytes(found[0]) != name or writes or values[0] is None:
        return None
    blobs: list[Any] = []
    fetched = iter(values[2:])
    for channel, version in head.versions:
        if known.get(channel, ("",))[0] == version:
            blobs += (channel, b"")
        else:
            value = next(fetched)
            if value is not None:
                blobs += (channel, _bytes(value))
    return [ns, head.checkpoint_id, head.parent, values[0], values[1] or b"", blobs, []]


class BytesLRU(Generic[K, V]):
    """Items and their sizes in bytes, the least recently used dropped first while the sizes add
    up to more than ``max_bytes``. Items are replaced, never changed in place. Thread-safe."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._lock = _forks.lock(self, "_lock")

    def get(self, key: K) -> V | None:
        with self._lock:
            found = self._items.get(key)
            if found is None:
                return None
            self._items.move_to_end(key)
            return found[0]

    def put(self, key: K, item: V | None, size: int = 0) -> None:
        """Hold ``item`` for ``key`` (None: forget what was held)."""
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            if item is None:
                return
            self._items[key] = (item, size)
            self.bytes += size
            while self.bytes > self.max_bytes and self._items:
                _, (_, dropped) = self._items.popitem(last=False)
                self.bytes -= dropped


class ValueCache:
    """The typed values (the serializer's bytes) of the newest version of each channel this
    process wrote or read, per thread and namespace, so that a get need not bring them back
    across the wire and through Lua. Versions name values, so a held value is never stale: the
    server sends every value whose version differs. Bounded by ``max_bytes`` (least recently
    used threads go first; a value over an eighth of it is not held, as it would push every
    other thread out); values are decoded anew on each read, so what a read returns belongs to
    the caller. Thread-safe (two puts to one thread at once may keep one's values only: the
    other's are sent by the server when asked)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._held: BytesLRU[tuple[str, str], dict[str, tuple[str, bytes]]] = BytesLRU(max_bytes)

    @property
    def held_bytes(self) -> int:
        return self._held.bytes

    def known(self, thread_id: str, ns: str) -> dict[str, tuple[str, bytes]]:
        """A snapshot: channel -> (version, typed value)."""
        if not self.max_bytes:
            return {}
        return dict(self._held.get((thread_id, ns)) or {})

    def hold(self, thread_id: str, ns: str, values: Iterable[tuple[str, str, bytes]]) -> None:
        """Remember (channel, version, typed value) triples, replacing older versions."""
        if not self.max_bytes:
            return
        held = self.known(thread_id, ns)
        for channel, version, value in values:
            if len(value) <= self.max_bytes // 8:
                held[channel] = (version, value)
        self._held.put((thread_id, ns), held, sum(len(value) for _, value in held.values()))


def list_page(
    thread_keys: tuple[str, str],
    config: RunnableConfig,
    before: RunnableConfig | None,
    filters: Sequence[str],
    cursor: str,
    limit: int,
) -> Call:
    configurable = _configurable(config)
    scope = "ns" if configurable.get("checkpoint_ns") is not None else "all"
    ns = namespace_of(config)
    before_id = checkpoint_of(before) if before else ""
    return _fcall(
        LIST, thread_keys, scope, ns, checkpoint_of(config), before_id, cursor, limit, *filters
    )


def delete(thread_keys: tuple[str, str]) -> Call:
    return Call("DEL", thread_keys, thread_keys[0])


def prune(thread_keys: tuple[str, str], ttl: int, cursor: str = "") -> Call:
    return _fcall(PRUNE, thread_keys, ttl, cursor)


COPY_BUDGET = 1000  # fields (then index members) per copy or export call: the library's most
DELTA_BUDGET = 250  # ancestors per delta call: the library's most


def copy(
    source: tuple[str, str],
    target: tuple[str, str],
    ttl: int,
    cursor: str = "",
    budget: int = COPY_BUDGET,
) -> Call:
    """One page of a copy on one node; the reply is the cursor ("" when done)."""
    return Call("FCALL", (COPY, 4, *source, *target, ttl, cursor, budget), source[0], LIBRARY)


def export(thread_keys: tuple[str, str], cursor: str = "", budget: int = COPY_BUDGET) -> Call:
    """One page of a thread: the reply is [cursor ("" when done), fields, members]."""
    return _fcall(EXPORT, thread_keys, cursor, budget)


def import_(
    thread_keys: tuple[str, str], ttl: int, fields: Sequence[Any], members: Sequence[Any]
) -> Call:
    return _fcall(IMPORT, thread_keys, ttl, len(fields) // 2, *fields, *members)


def register_run(key_prefix: str, run_id: str, thread_id: str, ttl: int) -> tuple[Any, ...]:
    """The plain commands that add a thread to a run's SET of threads (with the saver's TTL):
    queued into the put's own transaction, or, on a cluster (another slot), sent alone."""
    key = run_key(key_prefix, run_id)
    commands: tuple[tuple[Any, ...], ...] = (("SADD", key, thread_id),)
    if ttl:
        commands += (("EXPIRE", key, ttl),)
    return commands


def alone(commands: tuple[tuple[Any, ...], ...]) -> Call:
    """Plain commands on one key as one call: a MULTI/EXEC when there are several."""
    *before, last = commands
    return Call(last[0], tuple(last[1:]), last[1], None, tuple(before))


def claim(thread_keys: tuple[str, str], ttl: int) -> Call:
    return _fcall(CLAIM, thread_keys, ttl)


def delete_run(thread_keys: tuple[str, str], run_id: str) -> Call:
    return _fcall(DELETE_RUN, thread_keys, _name("run_id", run_id, may_be_empty=False))


def delta(
    thread_keys: tuple[str, str],
    config: RunnableConfig,
    channels: Sequence[str],
    known: Mapping[str, tuple[str, bytes]] | None = None,
    cursor: str = "",
    budget: int = DELTA_BUDGET,
    held: Sequence[tuple[str, int]] = (),
) -> Call:
    """One call of a DeltaChannel walk, from the checkpoint's parent (cursor "") or from the
    ancestor a previous call replied; ``held``: the ancestors of a walk the caller holds for
    the same channels (:class:`HeldWalk`), newest first, with their counts of pending writes."""
    names = [_name("a channel", channel, may_be_empty=False) for channel in channels]
    pairs = [
        item
        for channel, (version, value) in (known or {}).items()
        if channel in names and not value.startswith(b"empty\0")
        for item in (channel, version)
    ]
    ns, checkpoint_id = namespace_of(config), checkpoint_of(config)
    ancestors = [item for ancestor, count in held for item in (ancestor, count)]
    return _fcall(
        DELTA,
        thread_keys,
        ns,
        checkpoint_id,
        cursor,
        budget,
        len(held),
        *ancestors,
        len(names),
        *names,
        *pairs,
    )


# --- replies ----------------------------------------------------------------------------------


def run_id_of(value: object) -> str:
    """A run id as stored: LangGraph's are UUIDs (or their str)."""
    if value is None or isinstance(value, bool):
        raise InvalidCheckpointIdError(f"a run id must be a str, got {value!r}")
    return _name("run_id", value if isinstance(value, str) else str(value), may_be_empty=False)


def text(value: bytes | str) -> str:
    return _text(value)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _bytes(value: bytes | str) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def _write(serde: SerializerProtocol, stored: bytes | str) -> PendingWrite:
    task, _path, channel, rest = _bytes(stored).split(b"\0", 3)
    return (task.decode("utf-8"), channel.decode("utf-8"), untyped(serde, rest))


def checkpoint_tuple(
    serde: SerializerProtocol,
    thread_id: str,
    entry: Sequence[Any],
    known: Mapping[str, tuple[str, bytes]] | None = None,
    cache: ValueCache | None = None,
) -> CheckpointTuple:
    """One entry of a get or list reply; a value the reply leaves empty is the one ``known``
    holds; the values it carries go into ``cache``."""
    ns, checkpoint_id, parent, stored, meta, blobs, writes = entry
    ns, checkpoint_id, parent = _text(ns), _text(checkpoint_id), _text(parent)
    document = untyped(serde, _bytes(stored))
    values: dict[str, Any] = {}
    fetched: list[tuple[str, str, bytes]] = []
    for i in range(0, len(blobs), 2):
        channel, raw = _text(blobs[i]), _bytes(blobs[i + 1])
        if not raw and known is not None:
            raw = known[channel][1]
        elif cache is not None:
            version = document.get("channel_versions", {}).get(channel)
            if version is not None:
                fetched.append((channel, version_of(version), raw))
        if not raw.startswith(b"empty\0"):
            values[channel] = untyped(serde, raw)
    if cache is not None and fetched:
        cache.hold(thread_id, ns, fetched)
    checkpoint = cast(Checkpoint, {**document, "channel_values": values})
    return CheckpointTuple(
        config=config_for(thread_id, ns, checkpoint_id),
        checkpoint=checkpoint,
        metadata=untyped(serde, _bytes(meta)),
        parent_config=config_for(thread_id, ns, parent) if parent else None,
        pending_writes=[_write(serde, w) for w in writes],
    )


def list_reply(
    serde: SerializerProtocol, thread_id: str, reply: Sequence[Any]
) -> tuple[str, list[CheckpointTuple]]:
    """A list page: the cursor ("" when done) and its checkpoints."""
    cursor = _text(reply[0])
    return cursor, [checkpoint_tuple(serde, thread_id, entry) for entry in reply[1:]]


@dataclass(frozen=True)
class HeldWalk:
    """A finished DeltaChannel walk, as a later walk through the same ancestors may reuse it:
    its ancestors (newest first, each with its count of pending writes, which the server checks
    before it relies on them), and per channel the seed (typed, b"" for none) and the writes,
    oldest first, as stored."""

    ancestors: tuple[tuple[str, int], ...]
    seeds: Mapping[str, bytes]
    writes: Mapping[str, tuple[bytes, ...]]

    def size(self) -> int:
        return (
            sum(len(a) + 16 for a, _ in self.ancestors)
            + sum(len(v) for v in self.seeds.values())
            + sum(len(w) for ws in self.writes.values() for w in ws)
        )


class DeltaWalk:
    """The raw result of a DeltaChannel walk spread over several delta calls: each call's writes
    come before the previous call's (it walked older ancestors); a channel is asked for again
    until a call finds its seed or the walk ends. A walk that reaches a :class:`HeldWalk` (the
    server said it still stands) ends with what that one holds."""

    def __init__(self, channels: Sequence[str], held: HeldWalk | None = None) -> None:
        self.channels = list(channels)
        self.seeds: dict[str, bytes] = {}
        self.writes: dict[str, list[bytes]] = {channel: [] for channel in self.channels}
        self.ancestors: list[tuple[str, int]] = []
        self.cursor = ""
        # A held walk is at most DELTA_BUDGET ancestors long: finished() makes no longer one.
        self.held = held
        self._calls = 0

    def pending(self) -> list[str]:
        return [channel for channel in self.channels if channel not in self.seeds]

    def offered(self) -> tuple[tuple[str, int], ...]:
        """The held walk's ancestors, for the first call only (it asks for every channel)."""
        return self.held.ancestors if self.held is not None and not self._calls else ()

    def add(self, asked: Sequence[str], reply: Sequence[Any]) -> bool:
        """Take one call's reply (for the channels ``asked``); True when the walk is done."""
        offered = self.offered()
        self._calls += 1
        self.cursor = _text(reply[0])
        flat = reply[2]
        self.ancestors += [(_text(flat[i]), int(flat[i + 1])) for i in range(0, len(flat), 2)]
        for channel, item in zip(asked, reply[3:], strict=True):
            self.writes[channel][:0] = [_bytes(w) for w in item[1:]]
            seed = _bytes(item[0])
            if seed:
                self.seeds[channel] = seed
        if int(reply[1]) and offered:
            held = self.held
            assert held is not None
            self.ancestors += held.ancestors
            for channel in self.channels:
                self.writes[channel][:0] = held.writes[channel]
                if held.seeds[channel]:
                    self.seeds[channel] = held.seeds[channel]
            return True
        return not self.cursor or not self.pending()

    def finished(self, known: Mapping[str, tuple[str, bytes]] | None) -> HeldWalk | None:
        """What a later walk through these ancestors may reuse, or None (a walk too long to
        offer, or a seed the caller held that it no longer holds)."""
        if (self.cursor and self.pending()) or len(self.ancestors) > DELTA_BUDGET:
            return None
        seeds: dict[str, bytes] = {}
        for channel in self.channels:
            seed = self.seeds.get(channel, b"")
            if seed == b"=":
                if known is None or channel not in known:
                    return None
                seed = known[channel][1]
            seeds[channel] = seed
        return HeldWalk(
            tuple(self.ancestors), seeds, {c: tuple(self.writes[c]) for c in self.channels}
        )

    def result(
        self, serde: SerializerProtocol, known: Mapping[str, tuple[str, bytes]] | None = None
    ) -> dict[str, DeltaChannelHistory]:
        result: dict[str, DeltaChannelHistory] = {}
        for channel in self.channels:
            history: DeltaChannelHistory = {
                "writes": [_write(serde, w) for w in self.writes[channel]]
            }
            seed = self.seeds.get(channel, b"")
            if seed == b"=" and known is not None:
                history["seed"] = untyped(serde, known[channel][1])
            elif seed:
                history["seed"] = untyped(serde, seed)
            result[channel] = history
        return result


class WalkCache:
    """The newest finished DeltaChannel walk per thread, namespace and channels, so that the next
    step's walk reads only the ancestors added since. Bounded by ``max_bytes`` (least recently
    used first; a walk over an eighth of it is not held); what it holds is decoded anew on every
    use. Thread-safe."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._held: BytesLRU[tuple[str, str, tuple[str, ...]], HeldWalk] = BytesLRU(max_bytes)

    @property
    def held_bytes(self) -> int:
        return self._held.bytes

    def get(self, key: tuple[str, str, tuple[str, ...]]) -> HeldWalk | None:
        return self._held.get(key)

    def hold(self, key: tuple[str, str, tuple[str, ...]], walk: HeldWalk | None) -> None:
        """Remember ``walk`` for ``key`` (None: forget what was held)."""
        if not self.max_bytes:
            return
        size = walk.size() if walk is not None else 0
        self._held.put(key, walk if size <= self.max_bytes // 8 else None, size)


def unique(channels: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(channels))
