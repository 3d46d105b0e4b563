"""OpenTelemetry spans and metrics for pyhistory's operations, through the OpenTelemetry API only.

Installed with the ``otel`` extra (``pip install 'pyhistory[otel]'``: ``opentelemetry-api``); the
application configures an SDK (a tracer and a meter provider, exporters) as it does for
everything else. Without the API, the operations are not wrapped at all: nothing is traced and
nothing is paid. With the API but no SDK configured, each operation costs one no-op span.

What is traced (docs/operations/observability.md): every :class:`pyhistory.store.MessageStore`
(and so ``RedisChatMessageHistory``) operation, sync and asyncio, as a CLIENT span
``pyhistory.<operation>``; every LangGraph saver operation as ``pyhistory.checkpoint.<operation>``;
the agent middleware's hooks as INTERNAL spans ``pyhistory.agent.<hook>`` around them. Attributes
follow OpenTelemetry's database conventions (``db.system.name``, ``db.operation.name``,
``db.namespace``, ``server.address``, ``server.port``, ``db.operation.batch.size``,
``error.type``). Message content is never recorded; session and thread ids only when asked
(:func:`configure`, or ``PYHISTORY_OTEL_RECORD_SESSION_IDS``), and exception messages never (they
may name a key).

Metrics: ``db.client.operation.duration`` (seconds, per operation and outcome),
``pyhistory.append.batch.size`` (messages per append), ``pyhistory.client.retries`` (a command
attempted again after a connection failure or a timeout) and ``pyhistory.library.reloads`` (a
Functions library loaded again because the server had lost it).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import inspect
import os
import time
import weakref
from collections.abc import Callable, Mapping, Sized
from typing import Any, Literal, TypeVar, cast
from urllib.parse import parse_qs, urlsplit

from pyhistory._version import VERSION as _VERSION

try:  # the API only; imported once, here (never on an event loop)
    from opentelemetry import context as _context
    from opentelemetry import metrics as _metrics
    from opentelemetry import trace as _trace
except ImportError:  # the otel extra is not installed: nothing below is ever wrapped
    _context = None  # type: ignore[assignment]
    _trace = None  # type: ignore[assignment]
    _metrics = None  # type: ignore[assignment]

__all__ = ["AVAILABLE", "configure"]

AVAILABLE: bool = _trace is not None
"""Whether the OpenTelemetry API is installed (and so operations are instrumented)."""

F = TypeVar("F", bound=Callable[..., Any])
SessionMode = Literal[False, True, "hash"]

_ENV = "PYHISTORY_OTEL_RECORD_SESSION_IDS"


def _mode_from_env() -> SessionMode:
    value = os.environ.get(_ENV, "").strip().lower()
    if value == "hash":
        return "hash"
    return value in ("1", "true", "yes", "on")


_record_session_ids: SessionMode = _mode_from_env()


def configure(*, record_session_ids: bool | Literal["hash"] | None = None) -> None:
    """Choose what the spans may say about whose data an operation touched.

    Args:
        record_session_ids: ``True``: the raw session id (``pyhistory.session.id``) and the
            LangGraph thread id (``pyhistory.thread.id``) go on the spans; ``"hash"``: the first
            16 hex digits of their SHA-256 (``pyhistory.session.hash``, ``pyhistory.thread.hash``),
            enough to tell operations on one session apart from another's, not to read the id
            back where ids are unguessable; ``False`` (the default, unless the environment
            variable ``PYHISTORY_OTEL_RECORD_SESSION_IDS`` says ``1`` or ``hash``): neither.
            None leaves the setting as it is.
    """
    global _record_session_ids
    if record_session_ids is not None:
        if record_session_ids not in (True, False, "hash"):
            raise ValueError(
                f"record_session_ids must be a bool or 'hash', got {record_session_ids!r}"
            )
        _record_session_ids = record_session_ids


# --- what goes on a span ------------------------------------------------------------------------

SYSTEM = "redis"
_DEFAULT_PORT = 6379


def _hashed(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _identity(kind: str, value: object) -> dict[str, str]:
    mode = _record_session_ids
    if not mode or not isinstance(value, str):
        return {}
    if mode == "hash":
        return {f"pyhistory.{kind}.hash": _hashed(value)}
    return {f"pyhistory.{kind}.id": value}


# Server attributes by URL (never the URL itself: it may carry a password) and by client.
_by_url: dict[str, dict[str, Any]] = {}
_by_client: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def _url_attributes(url: str, cluster: bool) -> dict[str, Any]:
    found = _by_url.get(url)
    if found is not None:
        return found
    attributes: dict[str, Any] = {}
    try:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        if parts.scheme in ("redis+sentinel", "rediss+sentinel"):
            path = parts.path.split("/")  # /service/db: the primary is the sentinels' to name
            db = path[2] if len(path) > 2 and path[2] else "0"
        elif parts.scheme == "unix":
            attributes["server.address"] = parts.path
            db = query.get("db", ["0"])[0]
        else:
            if parts.hostname and not cluster:  # a cluster's node is not where a key lives
                attributes["server.address"] = parts.hostname
                attributes["server.port"] = parts.port or _DEFAULT_PORT
            db = query.get("db", [parts.path.strip("/") or "0"])[0]
        attributes["db.namespace"] = str(int(db))
    except ValueError:
        pass
    if len(_by_url) < 256:
        _by_url[url] = attributes
    return attributes


def _client_attributes(client: Any) -> dict[str, Any]:
    try:
        found = _by_client.get(client)
    except TypeError:  # not weakly referenceable
        found = None
    if found is not None:
        return found
    attributes: dict[str, Any] = {}
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    if isinstance(kwargs, Mapping):
        if kwargs.get("path"):
            attributes["server.address"] = str(kwargs["path"])
        elif kwargs.get("host"):
            attributes["server.address"] = str(kwargs["host"])
            attributes["server.port"] = int(kwargs.get("port") or _DEFAULT_PORT)
        attributes["db.namespace"] = str(kwargs.get("db") or 0)
    else:  # a cluster client: database 0, on whichever node owns the key
        attributes["db.namespace"] = "0"
    with contextlib.suppress(TypeError):
        _by_client[client] = attributes
    return attributes


def _server_attributes(owner: Any) -> dict[str, Any]:
    """Where ``owner`` (a store or a saver) sends its commands, without asking the server."""
    for name in ("_redis_client", "_async_redis_client"):
        client = getattr(owner, name, None)
        if client is not None:
            return _client_attributes(client)
    url = getattr(owner, "url", None)
    return _url_attributes(url, bool(getattr(owner, "cluster", False))) if url else {}


def _batch_size(messages: object) -> int | None:
    """How many messages an append was given: a list's length, 1 for one message, None for an
    iterator (not consumed here)."""
    if isinstance(messages, Sized):
        return len(messages)
    if hasattr(messages, "content"):
        return 1
    return None


def error_type(error: BaseException) -> str:
    kind = type(error)
    return (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )


# --- the instruments ------------------------------------------------------------------------------

# Set while a pyhistory CLIENT span is open: an operation that runs another one (an asyncio
# method falling back to its sync twin in a thread) is one span, not two.
_inside: contextvars.ContextVar[bool] = contextvars.ContextVar("pyhistory_span", default=False)

if _trace is not None and _metrics is not None:
    _tracer = _trace.get_tracer("pyhistory", _VERSION)  # a proxy: follows the provider set later
    _meter = _metrics.get_meter("pyhistory", _VERSION)
    _CLIENT = _trace.SpanKind.CLIENT
    _INTERNAL = _trace.SpanKind.INTERNAL
    _ERROR = _trace.StatusCode.ERROR
    _NO_SPAN: _trace.Span = _trace.INVALID_SPAN
    _duration = _meter.create_histogram(
        "db.client.operation.duration",
        unit="s",
        description="Duration of pyhistory operations (each one round trip, or one per page).",
        explicit_bucket_boundaries_advisory=[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0
        ],
    )  # fmt: skip
    _batches = _meter.create_histogram(
        "pyhistory.append.batch.size",
        unit="{message}",
        description="Messages per append.",
        explicit_bucket_boundaries_advisory=[1, 2, 4, 8, 16, 32, 64, 128, 256, 1024],
    )
    _retries = _meter.create_counter(
        "pyhistory.client.retries",
        unit="{retry}",
        description="Commands attempted again after a connection failure or a timeout.",
    )
    _reloads = _meter.create_counter(
        "pyhistory.library.reloads",
        unit="{load}",
        description="Functions libraries loaded again because the server had lost them.",
    )


def retried(error: BaseException) -> None:
    """A URL-built client attempts a command again after ``error``."""
    if AVAILABLE:
        _retries.add(1, {"db.system.name": SYSTEM, "error.type": error_type(error)})


def reloaded(library: str) -> None:
    """An operation loads ``library`` again because the server lost it."""
    if AVAILABLE:
        _reloads.add(1, {"db.system.name": SYSTEM, "pyhistory.library": library})


def _no_tracer_provider() -> bool:
    """Whether no tracer provider is set yet (no SDK): then every span would be the API's no-op
    span, which this skips making (a couple of microseconds an operation). The API's proxy
    tracer reads the same global to decide; an API without it is assumed configured."""
    return getattr(_trace, "_TRACER_PROVIDER", True) is None


def _attach(span: Any) -> Any:
    """Make a recording span the current one (what runs inside is its child); a no-op span
    (no SDK, or not sampled) is left out of the context: nothing would read it there."""
    if span.is_recording():
        return _context.attach(_trace.set_span_in_context(span))
    return None


# --- the decorator --------------------------------------------------------------------------------

Extract = Callable[[Any, tuple[Any, ...], dict[str, Any]], Any]


class _Operation:
    """One traced operation: its names, and how to read its session and its batch."""

    def __init__(
        self,
        name: str,
        kind: Literal["client", "internal"],
        identity: tuple[str, Extract] | None,
        batch: Extract | None,
    ) -> None:
        self.span_name = name
        self.client = kind == "client"
        self.start_attributes: dict[str, Any] = (
            {"db.system.name": SYSTEM, "db.operation.name": name} if self.client else {}
        )
        self.metric_attributes = {"db.system.name": SYSTEM, "db.operation.name": name}
        self.identity = identity
        self.batch = batch

    def start(self, owner: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if _no_tracer_provider():
            span = _NO_SPAN
        else:
            span = _tracer.start_span(
                self.span_name,
                kind=_CLIENT if self.client else _INTERNAL,
                attributes=self.start_attributes,
            )
        if self.batch is not None:
            size = _batch_size(self.batch(owner, args, kwargs))
            if size is not None:
                _batches.record(size, self.metric_attributes)
                if size > 1 and span.is_recording():  # a batch is two or more, by convention
                    span.set_attribute("db.operation.batch.size", size)
        if span.is_recording():
            if self.client:
                span.set_attributes(_server_attributes(owner))
            if self.identity is not None and _record_session_ids:
                kind, extract = self.identity
                # A bad argument raises in the operation itself, which says what is wrong.
                with contextlib.suppress(Exception):
                    span.set_attributes(_identity(kind, extract(owner, args, kwargs)))
        return span

    def end(self, span: Any, started: float, error: BaseException | None) -> None:
        attributes = self.metric_attributes
        if error is not None:
            kind = error_type(error)
            attributes = {**attributes, "error.type": kind}
            if span.is_recording():
                span.set_attribute("error.type", kind)
                span.set_status(_ERROR, kind)  # never the message: it may name a key
        if self.client:
            _duration.record(time.perf_counter() - started, attributes)
        span.end()


def traced(
    name: str,
    *,
    kind: Literal["client", "internal"] = "client",
    session: Extract | None = None,
    thread: Extract | None = None,
    batch: Extract | None = None,
) -> Callable[[F], F]:
    """Wrap a method (sync, async, generator or async generator) in a span named ``name``.

    ``session``/``thread`` read the session or thread id from ``(self, args, kwargs)`` (recorded
    only when :func:`configure` allows); ``batch`` the messages an append was given. Without the
    OpenTelemetry API the method is returned as it is.
    """

    def decorate(fn: F) -> F:
        if not AVAILABLE:
            return fn
        identity = ("session", session) if session else ("thread", thread) if thread else None
        op = _Operation(name, kind, identity, batch)
        nests = op.client

        if inspect.isasyncgenfunction(fn):

            @functools.wraps(fn)
            async def agen(self: Any, *args: Any, **kwargs: Any) -> Any:
                if nests and _inside.get():
                    async for item in fn(self, *args, **kwargs):
                        yield item
                    return
                started = time.perf_counter()
                span = op.start(self, args, kwargs)  # not made current: the caller runs between
                error: BaseException | None = None
                try:
                    async for item in fn(self, *args, **kwargs):
                        yield item
                except Exception as caught:
                    error = caught
                    raise
                finally:
                    op.end(span, started, error)

            return cast(F, agen)

        if inspect.isgeneratorfunction(fn):

            @functools.wraps(fn)
            def gen(self: Any, *args: Any, **kwargs: Any) -> Any:
                if nests and _inside.get():
                    yield from fn(self, *args, **kwargs)
                    return
                started = time.perf_counter()
                span = op.start(self, args, kwargs)
                error: BaseException | None = None
                try:
                    yield from fn(self, *args, **kwargs)
                except Exception as caught:
                    error = caught
                    raise
                finally:
                    op.end(span, started, error)

            return cast(F, gen)

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def coroutine(self: Any, *args: Any, **kwargs: Any) -> Any:
                if nests and _inside.get():
                    return await fn(self, *args, **kwargs)
                started = time.perf_counter()
                span = op.start(self, args, kwargs)
                token = _attach(span)
                inside = _inside.set(True) if nests and token is not None else None
                error: BaseException | None = None
                try:
                    return await fn(self, *args, **kwargs)
                except Exception as caught:
                    error = caught
                    raise
                finally:
                    if inside is not None:
                        _inside.reset(inside)
                    if token is not None:
                        _context.detach(token)
                    op.end(span, started, error)

            return cast(F, coroutine)

        @functools.wraps(fn)
        def function(self: Any, *args: Any, **kwargs: Any) -> Any:
            if nests and _inside.get():
                return fn(self, *args, **kwargs)
            started = time.perf_counter()
            span = op.start(self, args, kwargs)
            token = _attach(span)
            inside = _inside.set(True) if nests and token is not None else None
            error: BaseException | None = None
            try:
                return fn(self, *args, **kwargs)
            except Exception as caught:
                error = caught
                raise
            finally:
                if inside is not None:
                    _inside.reset(inside)
                if token is not None:
                    _context.detach(token)
                op.end(span, started, error)

        return cast(F, function)

    return decorate
