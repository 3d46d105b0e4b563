"""A TCP proxy on loopback that loses replies: it passes every request to the server, lets the
server apply it, and for the appends it picks, cuts the client's connection when the reply comes
back instead of passing the reply on. The client sees what a network blip, a failover or a read
timeout shows it: a write whose outcome it cannot know.

    with FaultProxy(target_port=6379, cut=lambda batch_id, attempt: attempt == 1) as proxy:
        client = redis.Redis(port=proxy.port)
        ...
        proxy.cuts  # replies of applied appends that never reached the client

``cut(batch_id, attempt)`` decides for each append request (FCALL of the history's append, found
by its function name, or a plain append's transaction, found by the batch id it records) from
its batch id and how many times the proxy has seen that batch id
(1 for the first attempt, 2 for its first retry, ...). ``mark`` recognises other writes the same
way: an FCALL it names is one request; any other command it names is queued in a MULTI/EXEC,
whose EXEC applies it. The proxy runs its own event loop in a background thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections import Counter
from collections.abc import Callable
from types import TracebackType

import hiredis

from pyhistory import _core

Decide = Callable[[bytes, int], bool]
Mark = Callable[[list[bytes]], bytes | None]

_APPEND = _core.APPEND.encode()
_IDS = _core.BATCHES_PREFIX.encode()


def batch_id(request: list[bytes]) -> bytes | None:
    """The batch id a request carries, when it is an append's: the library's (FCALL append 2 key
    ids max_messages ttl id ...) or the batch id a plain append records (APPEND ids id, inside
    the MULTI/EXEC of pyhistory._core.plain_append)."""
    command = request[0].upper()
    if command == b"FCALL" and len(request) > 7 and request[1] == _APPEND:
        return request[7]
    if command == b"APPEND" and len(request) == 3 and request[1].startswith(_IDS):
        return request[2]
    return None


class FaultProxy:
    """Loopback TCP proxy to ``target_port`` that cuts connections after chosen appends."""

    def __init__(
        self,
        target_port: int,
        cut: Decide,
        target_host: str = "127.0.0.1",
        mark: Mark = batch_id,
    ) -> None:
        self.target = (target_host, target_port)
        self.decide = cut
        self.mark = mark
        self.port = 0
        self.cuts = 0  # appends whose reply was withheld (the server applied the doomed one)
        self.seen: Counter[bytes] = Counter()  # batch id -> attempts that reached the proxy
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        doomed = asyncio.Event()  # the next reply on this connection is not passed on

        # Requests passed on (whether each is an append), and replies passed back: an append
        # whose reply is lost when the connection is cut is counted as cut (a flight may carry
        # several appends: an asyncio client writes commands issued together in one flight).
        requests, replies = hiredis.Reader(), hiredis.Reader()
        appends: list[bool] = []
        answered = 0

        async def upstream() -> None:
            plain: bytes | None = None  # the batch id of the plain append being queued
            while data := await reader.read(1 << 16):
                requests.feed(data)
                while (request := requests.gets()) is not False:
                    batch = self.mark(request)
                    # a plain append is applied by its EXEC: that reply is the append's
                    appends.append(batch is not None and request[0].upper() == b"FCALL")
                    if batch is None:
                        if request[0].upper() == b"EXEC" and plain is not None:
                            appends[-1], batch = True, plain
                        else:
                            continue
                    elif request[0].upper() != b"FCALL":
                        plain = batch
                        continue
                    plain = None
                    with self._lock:
                        self.seen[batch] += 1
                        attempt = self.seen[batch]
                    if self.decide(batch, attempt):
                        doomed.set()
                up_writer.write(data)
                await up_writer.drain()

        async def downstream() -> None:
            nonlocal answered
            while data := await up_reader.read(1 << 16):
                if doomed.is_set():  # the server applied it and answered: lose the answer
                    with self._lock:
                        self.cuts += sum(appends[answered:])
                    return
                replies.feed(data)
                while replies.gets() is not False:
                    answered += 1
                writer.write(data)
                await writer.drain()

        tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for task in tasks:
                task.cancel()
            for w in (writer, up_writer):
                self._writers.discard(w)
                with contextlib.suppress(Exception):
                    w.transport.abort()

    def start(self) -> FaultProxy:
        ready = threading.Event()

        def main() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
            self._server = loop.run_until_complete(asyncio.start_server(self._handle, sock=sock))
            ready.set()
            loop.run_forever()
            for w in list(self._writers):
                w.transport.abort()
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.close()

        self._thread = threading.Thread(target=main, name="fault-proxy", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is None or server is None:
            return
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()
