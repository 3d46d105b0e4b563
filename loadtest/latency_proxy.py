"""A TCP proxy on loopback that delays each direction by a fixed time, to emulate network latency
(netem is not available here) and to count round trips.

Each chunk is delayed from the moment it was read, not from when the previous chunk left, so
pipelined traffic is not serialised by the delay; bytes keep their order on each connection.

In-process (the proxy runs its own event loop in a background thread)::

    with LatencyProxy(target_port=6379, delay_ms=1.0) as proxy:
        client = redis.Redis(port=proxy.port)
        proxy.stats.reset()
        ...
        print(proxy.stats.snapshot())   # connections, round trips, bytes, chunks

As a command::

    python loadtest/latency_proxy.py --listen-port 7000 --target-port 6379 --delay-ms 1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import threading
from dataclasses import dataclass
from types import TracebackType

__all__ = ["LatencyProxy", "ProxyStats", "StatsSnapshot", "main", "serve"]


@dataclass(frozen=True)
class StatsSnapshot:
    """Counters since the last reset.

    ``round_trips``: requests that waited for an answer, counted per connection as the client's
    chunks that follow a server chunk (or open the connection). A MULTI/EXEC pipeline sent in one
    write is one; a command sent after the previous reply is another. ``connections``: TCP
    connections opened (each adds a handshake round trip of its own, not in ``round_trips``).
    """

    connections: int
    round_trips: int
    chunks_up: int
    chunks_down: int
    bytes_up: int
    bytes_down: int


class ProxyStats:
    """Counters updated by the proxy's event loop; read and reset from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(StatsSnapshot.__dataclass_fields__, 0)

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._values[name] += amount

    def reset(self) -> None:
        with self._lock:
            for name in self._values:
                self._values[name] = 0

    def snapshot(self) -> StatsSnapshot:
        with self._lock:
            return StatsSnapshot(**self._values)


_READ_SIZE = 1 << 16


class _Connection:
    """One proxied client connection: two pumps, each delaying its chunks by ``delay`` seconds."""

    def __init__(self, delay: float, stats: ProxyStats) -> None:
        self.delay = delay
        self.stats = stats
        self.last_was_down = True  # the first client chunk opens a round trip

    async def pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool
    ) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        deliver = asyncio.create_task(self._deliver(queue, writer))
        try:
            while True:
                data = await reader.read(_READ_SIZE)
                if not data:
                    break
                self._count(upstream, len(data))
                if self.delay <= 0:
                    writer.write(data)
                else:
                    queue.put_nowait((loop.time() + self.delay, data))
        except (ConnectionError, OSError):
            pass
        finally:
            queue.put_nowait(None)
            with contextlib.suppress(ConnectionError, OSError):
                await deliver

    def _count(self, upstream: bool, size: int) -> None:
        if upstream:
            if self.last_was_down:
                self.stats.add("round_trips")
            self.last_was_down = False
            self.stats.add("chunks_up")
            self.stats.add("bytes_up", size)
        else:
            self.last_was_down = True
            self.stats.add("chunks_down")
            self.stats.add("bytes_down", size)

    @staticmethod
    async def _deliver(
        queue: asyncio.Queue[tuple[float, bytes] | None], writer: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                item = await queue.get()
                if item is None:
                    break
                due, data = item
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                if writer.transport.get_write_buffer_size() > _READ_SIZE * 4:
                    await writer.drain()
        finally:
            writer.close()


async def serve(
    target_host: str,
    target_port: int,
    delay_ms: float,
    *,
    listen_host: str = "127.0.0.1",
    listen_port: int = 0,
    stats: ProxyStats | None = None,
) -> asyncio.Server:
    """Start proxying ``listen_host:listen_port`` to ``target_host:target_port`` on the running
    loop; returns the listening server (its port is ``server.sockets[0].getsockname()[1]``)."""
    delay = max(0.0, delay_ms / 1000.0)
    counters = stats if stats is not None else ProxyStats()

    async def handle(
        client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(target_host, target_port)
        except OSError:
            client_writer.close()
            return
        for writer in (client_writer, server_writer):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        counters.add("connections")
        connection = _Connection(delay, counters)
        try:
            await asyncio.gather(
                connection.pump(client_reader, server_writer, upstream=True),
                connection.pump(server_reader, client_writer, upstream=False),
            )
        except asyncio.CancelledError:  # the proxy is stopping
            client_writer.close()
            server_writer.close()

    return await asyncio.start_server(handle, listen_host, listen_port, backlog=1024)


class LatencyProxy:
    """The proxy on its own event loop in a daemon thread. ``start()`` returns once it listens."""

    def __init__(
        self,
        target_port: int,
        delay_ms: float = 1.0,
        *,
        target_host: str = "127.0.0.1",
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.delay_ms = delay_ms
        self.listen_host = listen_host
        self.port = listen_port
        self.stats = ProxyStats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None

    def __repr__(self) -> str:
        return (
            f"LatencyProxy({self.listen_host}:{self.port} -> {self.target_host}:"
            f"{self.target_port}, {self.delay_ms} ms each way)"
        )

    @property
    def url(self) -> str:
        return f"redis://{self.listen_host}:{self.port}/0"

    def start(self) -> LatencyProxy:
        if self._thread is not None:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []

        async def run() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            try:
                server = await serve(
                    self.target_host,
                    self.target_port,
                    self.delay_ms,
                    listen_host=self.listen_host,
                    listen_port=self.port,
                    stats=self.stats,
                )
            except BaseException as error:
                failure.append(error)
                ready.set()
                raise
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            async with server:
                await self._stop.wait()
                server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        def main() -> None:
            with contextlib.suppress(BaseException):
                asyncio.run(run())

        self._thread = threading.Thread(target=main, name=f"latency-proxy-{id(self)}", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("latency proxy did not start within 10 s")
        if failure:
            self._thread.join(1)
            self._thread = None
            raise RuntimeError(f"latency proxy failed to start: {failure[0]}") from failure[0]
        return self

    def stop(self) -> None:
        thread, loop, stop = self._thread, self._loop, self._stop
        self._thread = None
        if thread is None or loop is None or stop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop may already be closed
            loop.call_soon_threadsafe(stop.set)
        thread.join(5)

    def __enter__(self) -> LatencyProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--listen-host", default="127.0.0.1")
    parser.add_argument("--listen-port", type=int, default=0, help="0: any free port")
    parser.add_argument("--target-host", default="127.0.0.1")
    parser.add_argument("--target-port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=1.0, help="added to each direction")
    args = parser.parse_args(argv)

    async def run() -> None:
        server = await serve(
            args.target_host,
            args.target_port,
            args.delay_ms,
            listen_host=args.listen_host,
            listen_port=args.listen_port,
        )
        port = server.sockets[0].getsockname()[1]
        print(
            f"proxying {args.listen_host}:{port} -> {args.target_host}:{args.target_port}, "
            f"+{args.delay_ms} ms each way",
            flush=True,
        )
        async with server:
            await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()
