"""Locust load test: chat-turn users against the real history classes.

Each simulated user is a chat backend worker serving its own sessions. One turn on a session:

1. ``fetch``: read the window the model would get (``contender.fetch``), and check it;
2. ``add_user``: append the user's message;
3. think time: the model "generates" (a sleep, ``--think-time``);
4. ``add_ai``: append the model's answer.

Every operation is reported to locust's request statistics (request type ``redis``, or
``redis-asyncio`` in async mode) under the names ``fetch``, ``add_user``, ``add_ai`` (and
``prefill`` when ``--prefill`` is set). The response length is a number of messages (returned by a
fetch, written by an append), not bytes. An exception is a failure, and so is a fetch that fails
its check:

- it returns a ``list`` of ``BaseMessage`` no longer than the window (langchain_community's
  contenders excepted: that class cannot window, so their fetch returns the whole session; a
  contender is held to the window when it has a ``window`` attribute);
- it ends with the newest messages this user wrote to that session (up to the window, and up to
  ``max_messages``), in order, with the same types and contents; a session the user has not
  written to yet must be empty. This is valid because every session is owned by exactly one user:
  session ids carry a per-process run token, the user's number and the session's number. (A
  session expiring between two turns would fail the check: keep ``--ttl`` above the time a user
  takes to come back to a session.) After a failed write, or a failed check, the user no longer
  knows what is stored, so the next fetch on that session checks only the list and its length;
  the next successful write makes its messages the known newest again.

The contenders (``loadtest/contenders.py``): ``pyhistory`` (the product), ``lc-per-turn``
(langchain_community's class built per turn, as the seed uses it), ``lc-reused`` (one instance per
session), ``pipeline`` (a hand-written redis-py MULTI/EXEC pipeline). One contender object per
process serves all its users, as one backend process would.

Options: ``_OPTIONS`` below (each ``--name`` on the command line, or ``LOADTEST_<NAME>`` in the
environment), and ``--no-cleanup`` (keep this run's sessions, ``message_store:<run token>:*``,
which are otherwise deleted when the test stops) and ``--latency-file`` (exact per-operation
latencies, p50 to p99.9, as JSON at exit: locust's own are whole milliseconds, too coarse for
operations that take a fraction of one). The Redis URL: ``--host``, else ``REDIS_URL``.

Run it with ``loadtest/run.py`` (headless, throwaway server, CSV + HTML), or directly::

    locust -f loadtest/locustfile.py --headless -u 20 -r 20 -t 60s --host redis://127.0.0.1:6379/0

The asyncio mode (``--mode async``)
-----------------------------------
Only for the contenders with a native asyncio client: ``pyhistory`` and ``pipeline``.
langchain_community's ``aget_messages`` / ``aadd_messages`` run its sync client in a thread pool
(``run_in_executor``); in this gevent-patched process those would be native threads driving
gevent sockets and gevent locks, one gevent hub per thread: it can be made to run, but it would
measure gevent, not what an asyncio application sees. Use ``loadtest/bench.py``'s asyncio scenario
(no gevent) for them.

Locust runs users as gevent greenlets in one OS thread, with the standard library monkey-patched,
so an asyncio user needs care. asyncio tracks the running loop per OS thread: greenlets cannot
each run a loop (a second ``run_until_complete`` while the first is suspended raises). What this
file does:

- one asyncio loop per process in its own *native* thread (the unpatched
  ``_thread.start_new_thread``), with an unpatched epoll selector (the patched ``selectors`` would
  give asyncio gevent's selector, driving a second hub) and a default executor that runs inline (a
  standard ``ThreadPoolExecutor`` starts patched "threads", greenlets of a hub that never runs:
  ``getaddrinfo`` for a host name hung there, and the process at exit);
- a user's greenlet hands each operation to that loop with ``loop.call_soon_threadsafe`` and waits
  on a ``gevent.event.AsyncResult`` that the loop thread resolves through gevent's thread-safe
  ``hub.loop.run_callback_threadsafe``. No lock, future or queue is shared between the threads
  (a ``concurrent.futures.Future`` would be: its patched condition variable is a gevent lock);
- the response time is measured inside the loop, around the ``await``, so it excludes the
  hand-off between threads; events are fired from the greenlet, in locust's thread;
- when locust kills a user in the middle of an operation, its asyncio task is cancelled.

Caveats, which the numbers carry: both threads share the GIL, so the loop sometimes waits for
locust's thread (greenlets firing events: short, but visible in tail latencies at high request
rates); and every operation pays a hand-off between threads that is not in its response time but
lowers the request rate a user can reach. So compare async runs with async runs (``run.py
--compare --mode async``), and sync with sync. Checked: with locust's thread idle, latencies
measured on this loop matched a plain ``asyncio.run`` program's; and the alternative without a
second thread, one loop driven by a greenlet on gevent's selector, was slower, with longer tails.
"""

from __future__ import annotations

# First, as under `locust -f`: importing locust monkey-patches the standard library with gevent,
# which must happen before anything imports socket or ssl.
import locust  # noqa: F401

# isort: split
import asyncio
import concurrent.futures
import itertools
import json
import logging
import os
import random
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import gevent
import gevent.event
import gevent.lock
import gevent.monkey
import redis
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from locust import User, events, task
from locust.env import Environment

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import contenders
import harness

T = TypeVar("T")
log = logging.getLogger("loadtest")

_token: tuple[int, str] = (0, "")
_user_numbers = itertools.count()


def run_token() -> str:
    """A random token per process, in every session id: ids never collide across runs, processes
    or locust workers (``--processes`` forks after this file is imported: hence the pid)."""
    global _token, _user_numbers
    if _token[0] != os.getpid():
        _token = (os.getpid(), f"lt-{uuid.uuid4().hex[:10]}")
        _user_numbers = itertools.count()
    return _token[1]


# Contenders whose asyncio methods are native (redis.asyncio), not a thread-pool wrapper.
ASYNC_CONTENDERS = ("pyhistory", "pipeline")


# --------------------------------------------------------------------------- options


# Each also from the environment, LOADTEST_<NAME>.
_OPTIONS: tuple[harness.Option, ...] = (
    ("contender", "pyhistory", list(contenders.NAMES), "implementation under test"),
    ("mode", "sync", ["sync", "async"], "sync clients in greenlets, or asyncio on one loop thread"),
    ("window", 20, None, "messages per fetch"),
    ("ttl", 3600, None, "session TTL, s; 0: none"),
    ("max-messages", 0, None, "messages kept per session; 0: unbounded"),
    ("sessions-per-user", 10, None, "sessions each user owns"),
    ("session-pick", "random", ["random", "round-robin"], "how a user picks its next session"),
    ("think-time", "0", None, "model latency in s between add_user and add_ai: 0, 1.5 or 0.5-2"),
    ("turn-wait", "0", None, "wait in s between two turns of a user: 0, 1.5 or 0.5-2"),
    ("message-chars", 200, None, "characters of content per message"),
    ("prefill", 0, None, "messages written to each session (one batch) before its first turn"),
    ("no-cleanup", False, None, "keep this run's sessions when the test stops"),
    ("latency-file", "", None, "write exact per-operation latency percentiles (JSON) here at exit"),
)
harness.add_locust_options(events, _OPTIONS, "LOADTEST_", hidden=["latency-file"])


def _flag(value: object) -> bool:
    """A boolean option, also when the web UI hands it over as a string."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


@dataclass(frozen=True)
class Settings:
    url: str
    contender: str
    mode: str
    window: int
    ttl: int | None
    max_messages: int | None
    sessions_per_user: int
    session_pick: str
    think_time: harness.Range
    turn_wait: harness.Range
    message_chars: int
    prefill: int

    @classmethod
    def from_environment(cls, environment: Environment) -> Settings:
        # Values set in the web UI arrive as strings: convert everything.
        opts = environment.parsed_options
        url = environment.host or os.environ.get("REDIS_URL") or ""
        if not url:
            raise ValueError("no Redis URL: pass --host redis://HOST:PORT/DB or set REDIS_URL")
        settings = cls(
            url=url,
            contender=str(getattr(opts, "contender", "pyhistory")),
            mode=str(getattr(opts, "mode", "sync")),
            window=int(getattr(opts, "window", 20)),
            ttl=int(getattr(opts, "ttl", 3600)) or None,
            max_messages=int(getattr(opts, "max_messages", 0)) or None,
            sessions_per_user=int(getattr(opts, "sessions_per_user", 10)),
            session_pick=str(getattr(opts, "session_pick", "random")),
            think_time=harness.Range.parse(getattr(opts, "think_time", "0")),
            turn_wait=harness.Range.parse(getattr(opts, "turn_wait", "0")),
            message_chars=int(getattr(opts, "message_chars", 200)),
            prefill=int(getattr(opts, "prefill", 0)),
        )
        if settings.contender not in contenders.NAMES:
            raise ValueError(f"--contender must be one of {contenders.NAMES}")
        if settings.mode not in ("sync", "async"):
            raise ValueError("--mode must be sync or async")
        if settings.mode == "async" and settings.contender not in ASYNC_CONTENDERS:
            raise ValueError(
                f"--mode async runs only contenders with a native asyncio client "
                f"({', '.join(ASYNC_CONTENDERS)}); {settings.contender}'s async methods run its "
                f"sync client in a thread pool, which this gevent-patched process cannot "
                f"reproduce faithfully (see the module docstring)"
            )
        if settings.session_pick not in ("random", "round-robin"):
            raise ValueError("--session-pick must be random or round-robin")
        for name in ("window", "sessions_per_user"):
            if getattr(settings, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("ttl", "max_messages", "message_chars", "prefill"):
            if (getattr(settings, name) or 0) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must not be negative")
        return settings

    @property
    def kept(self) -> int:
        """How many of a session's newest messages a fetch can show: window and max_messages."""
        return min(self.window, self.max_messages or self.window)


# --------------------------------------------------------------------------- asyncio thread

_start_native_thread = gevent.monkey.get_original("_thread", "start_new_thread")
_NativeEpollSelector = gevent.monkey.get_original("selectors", "EpollSelector")


class _InlineExecutor(concurrent.futures.ThreadPoolExecutor):
    """Runs what the loop hands to its default executor (getaddrinfo) inline, in the loop thread.

    asyncio insists on a ThreadPoolExecutor; a real one would start gevent-patched threads.
    """

    def submit(
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


class AsyncioThread:
    """One asyncio event loop in a native thread, serving every async user of this process."""

    def __init__(self) -> None:
        self._hub = gevent.get_hub()
        self._stopped = gevent.event.Event()
        self.loop = asyncio.SelectorEventLoop(_NativeEpollSelector())
        self.loop.set_default_executor(_InlineExecutor())
        _start_native_thread(self._main, ())

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
            tasks = asyncio.all_tasks(self.loop)
            for pending in tasks:
                pending.cancel()
            self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()
            self._hub.loop.run_callback_threadsafe(self._stopped.set)

    def _deliver(self, result: gevent.event.AsyncResult, value: Any) -> None:
        self._hub.loop.run_callback_threadsafe(result.set, value)

    def call(self, fn: Callable[[], T]) -> T:
        """Run a plain function in the loop thread (e.g. to build asyncio objects there)."""
        result = gevent.event.AsyncResult()

        def run() -> None:
            try:
                self._deliver(result, (True, fn()))
            except BaseException as exc:
                self._deliver(result, (False, exc))

        self.loop.call_soon_threadsafe(run)
        ok, value = result.get()
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    def timed(
        self, factory: Callable[[], Awaitable[T]]
    ) -> tuple[T | None, float, Exception | None]:
        """Await ``factory()`` on the loop; (result, seconds measured in the loop, exception).

        Blocks only the calling greenlet. If it is killed meanwhile, the task is cancelled.
        """
        result = gevent.event.AsyncResult()
        holder: list[asyncio.Task[None]] = []

        async def run() -> None:
            start = time.perf_counter()
            try:
                value = await factory()
            except Exception as exc:
                self._deliver(result, (None, time.perf_counter() - start, exc))
            else:
                self._deliver(result, (value, time.perf_counter() - start, None))

        self.loop.call_soon_threadsafe(lambda: holder.append(self.loop.create_task(run())))
        try:
            return result.get()  # type: ignore[no-any-return]
        except BaseException:  # GreenletExit when locust stops the user
            self.loop.call_soon_threadsafe(lambda: [t.cancel() for t in holder])
            raise

    def stop(self, timeout: float = 5.0) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._stopped.wait(timeout)


# --------------------------------------------------------------------------- shared state

_lock = gevent.lock.RLock()
# Per process, per test: "settings", "contender"; and the asyncio "loop" thread (per process).
_shared: dict[str, Any] = {}


def _settings(environment: Environment) -> Settings:
    with _lock:
        if "settings" not in _shared:
            _shared["settings"] = Settings.from_environment(environment)
        return _shared["settings"]  # type: ignore[no-any-return]


def _loop_thread() -> AsyncioThread:
    with _lock:
        if "loop" not in _shared:
            _shared["loop"] = AsyncioThread()
        return _shared["loop"]  # type: ignore[no-any-return]


def _contender(settings: Settings) -> Any:
    """One contender per process (sync or async), built on first use, as one backend has."""
    with _lock:
        if "contender" not in _shared:
            name, url, window = settings.contender, settings.url, settings.window
            ttl, max_messages = settings.ttl, settings.max_messages
            if settings.mode == "async":
                _shared["contender"] = _loop_thread().call(
                    lambda: contenders.make_async_contender(
                        name, url, window=window, ttl=ttl, max_messages=max_messages
                    )
                )
            else:
                _shared["contender"] = contenders.make_contender(
                    name, url, window=window, ttl=ttl, max_messages=max_messages
                )
        return _shared["contender"]


def _close_contender() -> None:
    with _lock:
        contender = _shared.pop("contender", None)
        loop = _shared.get("loop")
    if contender is None:
        return
    if loop is not None and _shared["settings"].mode == "async":
        _, _, error = loop.timed(lambda: contenders.aclose_contender(contender))
    else:
        try:
            contenders.close_contender(contender)
            error = None
        except Exception as exc:
            error = exc
    if error is not None:
        log.warning("loadtest: closing the contender failed: %r", error)


def _delete_sessions(url: str) -> None:
    """Delete this process's sessions (their ids carry its run token)."""
    pattern = f"{contenders.KEY_PREFIX}{run_token()}:*"
    try:
        with redis.Redis.from_url(url) as client:
            batch: list[Any] = []
            for key in client.scan_iter(match=pattern, count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    client.unlink(*batch)
                    batch.clear()
            if batch:
                client.unlink(*batch)
    except redis.RedisError as exc:
        log.warning("loadtest: could not delete this run's sessions (%s): %s", pattern, exc)


# --------------------------------------------------------------------------- exact latencies


def _write_latency(requests: harness.RequestLog, path: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(requests.summary(), fh, indent=2)


_requests = harness.RequestLog()
_requests.install(
    events, lambda env: getattr(env.parsed_options, "latency_file", "") or "", _write_latency
)


# --------------------------------------------------------------------------- events


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_: Any) -> None:
    with _lock:  # a new test (web UI) reads its settings again
        _shared.pop("settings", None)
        _requests.clear()
    harness.freeze_collected()  # a full collection would stall every user at once
    try:
        _settings(environment)
    except ValueError as exc:
        log.error("loadtest: %s", exc)
        environment.process_exit_code = 2
        if environment.runner is not None:
            gevent.spawn(environment.runner.quit)


@events.test_stop.add_listener
def _on_test_stop(environment: Environment, **_: Any) -> None:
    """Users are stopped by now: close the contender and delete this run's sessions."""
    settings: Settings | None = _shared.get("settings")
    if settings is None:
        return
    _close_contender()
    if not _flag(getattr(environment.parsed_options, "no_cleanup", False)):
        _delete_sessions(settings.url)


@events.quitting.add_listener
def _on_quitting(environment: Environment, **_: Any) -> None:
    with _lock:
        loop = _shared.pop("loop", None)
    if loop is not None:
        loop.stop()


# --------------------------------------------------------------------------- the user


class FetchCheckError(AssertionError):
    """A fetch returned something other than the window this user expects."""


@dataclass
class SessionState:
    session_id: str
    turns: int = 0
    # The newest messages known to be stored, oldest first (at most `kept`); None: unknown.
    known: list[BaseMessage] | None = None


_FILLER = (
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor "
    "incididunt ut labore et dolore magna aliqua. "
) * 64


def _content(tag: str, chars: int) -> str:
    """A unique content of about `chars` characters (never shorter than its tag)."""
    return tag + _FILLER[: max(0, chars - len(tag))]


def check_window(
    fetched: object,
    window: int,
    kept: int,
    known: list[BaseMessage] | None,
    *,
    windowed: bool = True,
) -> str | None:
    """Why a fetch result is wrong, or None when it is right (see the module docstring).

    ``kept``: how many of the newest messages can show (window and max_messages);
    ``known``: the newest messages this user wrote, oldest first (None: unknown, [] : none);
    ``windowed``: False for contenders that return the whole history (langchain_community).
    """
    if not isinstance(fetched, list):
        return f"fetch returned {type(fetched).__name__}, not a list"
    if windowed and len(fetched) > window:
        return f"fetch returned {len(fetched)} messages, more than the window of {window}"
    for message in fetched:
        if not isinstance(message, BaseMessage):
            return f"fetch returned a {type(message).__name__}, not a BaseMessage"
    if known is None:
        return None
    if not known and fetched:
        return f"a session this user never wrote to holds {len(fetched)} messages"
    want = known[-kept:]
    got = fetched[len(fetched) - len(want) :] if len(fetched) >= len(want) else None
    if got is None or any(
        type(g) is not type(w) or g.content != w.content for g, w in zip(got, want, strict=True)
    ):

        def show(ms: Sequence[BaseMessage]) -> list[str]:
            return [f"{m.type}:{str(m.content)[:40]}" for m in ms]

        return (
            f"fetch does not end with this user's last {len(want)} messages: "
            f"expected ...{show(want)}, got {show(fetched[-len(want) :])} "
            f"({len(fetched)} messages)"
        )
    return None


class ChatTurnUser(User):
    """A chat backend worker: turns (fetch, add_user, think, add_ai) on sessions it owns."""

    def wait_time(self) -> float:
        return self.settings.turn_wait.sample()

    def on_start(self) -> None:
        self.settings = _settings(self.environment)
        self.contender = _contender(self.settings)
        # langchain_community's class cannot window: its fetch returns the whole history, and
        # its contenders have no `window`. The others must return at most `window` messages.
        self.windowed = getattr(self.contender, "window", None) is not None
        self.is_async = self.settings.mode == "async"
        self.loop = _loop_thread() if self.is_async else None
        self.request_type = "redis-asyncio" if self.is_async else "redis"
        token = run_token()
        self.number = next(_user_numbers)
        self.sessions = [
            SessionState(f"{token}:u{self.number}:s{i}", known=[])
            for i in range(self.settings.sessions_per_user)
        ]
        self._round_robin = itertools.cycle(self.sessions)
        if self.settings.prefill:
            for state in self.sessions:
                self._prefill(state)

    # ---- one operation

    def _run(self, call: Callable[[], Any]) -> tuple[Any, float, Exception | None]:
        """Do one contender call: (result, response time in ms, exception)."""
        if self.loop is not None:
            value, seconds, error = self.loop.timed(call)
            return value, seconds * 1000.0, error
        start = time.perf_counter()
        try:
            value = call()
        except Exception as exc:
            return None, (time.perf_counter() - start) * 1000.0, exc
        return value, (time.perf_counter() - start) * 1000.0, None

    def _fire(self, name: str, ms: float, length: int, error: BaseException | None) -> None:
        self.environment.events.request.fire(
            request_type=self.request_type,
            name=name,
            response_time=ms,
            response_length=length,
            exception=error,
            context={"contender": self.settings.contender},
        )

    def _add(self, name: str, state: SessionState, messages: list[BaseMessage]) -> bool:
        _, ms, error = self._run(lambda: self.contender.add(state.session_id, messages))
        self._fire(name, ms, len(messages), error)
        if error is not None:
            state.known = None  # stored or not: this user no longer knows
            return False
        # Sessions are this user's alone: after a write, its messages are the newest stored.
        state.known = ((state.known or []) + messages)[-self.settings.kept :]
        return True

    def _message(self, cls: type[BaseMessage], state: SessionState, role: str) -> BaseMessage:
        tag = f"[{state.session_id} t{state.turns} {role}] "
        return cls(content=_content(tag, self.settings.message_chars))

    def _prefill(self, state: SessionState) -> None:
        batch = [
            self._message(HumanMessage if i % 2 == 0 else AIMessage, state, f"prefill{i}")
            for i in range(self.settings.prefill)
        ]
        self._add("prefill", state, batch)

    # ---- one turn

    def _pick(self) -> SessionState:
        if self.settings.session_pick == "round-robin":
            return next(self._round_robin)
        return random.choice(self.sessions)

    @task
    def turn(self) -> None:
        state = self._pick()
        sid = state.session_id
        fetched, ms, error = self._run(lambda: self.contender.fetch(sid))
        if error is None:
            problem = check_window(
                fetched,
                self.settings.window,
                self.settings.kept,
                state.known,
                windowed=self.windowed,
            )
            if problem is not None:
                error = FetchCheckError(problem)
        size = len(fetched) if isinstance(fetched, list) else 0
        self._fire("fetch", ms, size, error)
        if isinstance(error, FetchCheckError):
            state.known = None  # report it once; the next write tells what is newest again
        elif error is not None:
            return
        state.turns += 1
        if not self._add("add_user", state, [self._message(HumanMessage, state, "human")]):
            return
        think = self.settings.think_time.sample()
        if think:
            gevent.sleep(think)
        self._add("add_ai", state, [self._message(AIMessage, state, "ai")])
