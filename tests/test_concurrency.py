"""Many writers and readers on one session, against a real server.

Every append is one atomic Redis Function call, so the server serialises the batches into one
order S, and the stored list is always the newest ``max_messages`` entries of a prefix of S. The
tests below never learn S itself; they check everything that this implies and that the client
can observe:

- bound: no read and no LLEN poll ever sees more than ``max_messages`` entries;
- atomicity: every read holds each batch whole, in order, as one run, except the oldest batch of
  a full read, which the trim (or the window) may have cut: that one keeps its newest part;
- real-time order: a batch acknowledged before another batch was sent is older in S; so in any
  read the newer-looking batch never precedes it, a read never misses a batch acknowledged before
  the read was sent unless the read is full and that batch is older than all it holds, and each
  writer's messages appear as one run of consecutive sequence numbers;
- successive reads of one reader overlap as two windows of one growing sequence do;
- TTL: a watcher polling LLEN and TTL in MULTI never sees the key without a TTL.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import redis
import redis.asyncio
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from pyhistory import RedisChatMessageHistory

SESSION = "concurrent"
KEY = "message_store:" + SESSION
BOUND = 50  # max_messages
TTL = 300
WRITERS = 64
BATCHES = 24  # per writer: 64 * 24 = 1536 batches of 1-3 messages, ~3000 messages in all
READ_WINDOWS = (None, None, 7, 7)  # one reader per entry: whole list, or the newest 7
TIMEOUT = 45.0  # seconds any one wait may take before the test fails rather than hangs


# --- the messages: each encodes (writer, sequence number) and its batch ------------------------


@dataclass(frozen=True)
class Entry:
    """What a stored message says about itself."""

    writer: int
    seq: int  # the writer's own message counter, from 0
    batch: str  # "w<writer>-b<batch>", unique in the run
    index: int  # position in its batch, oldest first
    size: int  # messages in its batch


def make_batch(writer: int, batch: int, first_seq: int, size: int) -> list[BaseMessage]:
    batch_id = f"w{writer:02d}-b{batch:02d}"
    messages: list[BaseMessage] = []
    for index in range(size):
        seq = first_seq + index
        kwargs = {"batch": batch_id, "index": index, "size": size}
        content = f"w{writer:02d}:s{seq:03d}"
        kind = HumanMessage if seq % 2 == 0 else AIMessage
        messages.append(kind(content, additional_kwargs=kwargs))
    return messages


def entry_of(message: BaseMessage) -> Entry:
    writer, seq = str(message.content).split(":")
    kwargs = message.additional_kwargs
    return Entry(int(writer[1:]), int(seq[1:]), kwargs["batch"], kwargs["index"], kwargs["size"])


def plan(writers: int = WRITERS, batches: int = BATCHES) -> list[list[list[BaseMessage]]]:
    """For each writer, its batches (1-3 messages each), the same in every run."""
    plans = []
    for writer in range(writers):
        rng = random.Random(writer)
        seq = 0
        mine = []
        for batch in range(batches):
            size = rng.randint(1, 3)
            mine.append(make_batch(writer, batch, seq, size))
            seq += size
        plans.append(mine)
    return plans


def batch_id(messages: Sequence[BaseMessage]) -> str:
    return str(messages[0].additional_kwargs["batch"])


# --- what the run records -------------------------------------------------------------------


@dataclass
class Read:
    cap: int  # the most this read may return: BOUND, or the reader's window
    sent: int  # tick taken before the read was sent
    returned: int  # tick taken after it returned
    entries: list[Entry]  # oldest first


@dataclass
class Record:
    """Ticks of one global clock: when each batch was sent and acknowledged, what readers saw."""

    ticks: itertools.count[int] = field(default_factory=itertools.count)
    sent: dict[str, int] = field(default_factory=dict)
    acked: dict[str, int] = field(default_factory=dict)
    reads: list[list[Read]] = field(default_factory=list)  # per reader, in its order
    polls: list[tuple[int, int]] = field(default_factory=list)  # (LLEN, TTL) by the watcher

    def tick(self) -> int:
        return next(self.ticks)  # itertools.count is atomic under the GIL


# --- the checks -----------------------------------------------------------------------------


def runs(entries: Sequence[Entry]) -> list[list[Entry]]:
    """Maximal runs of consecutive entries from the same batch."""
    return [list(group) for _, group in itertools.groupby(entries, key=lambda e: e.batch)]


def check_batches_whole(entries: Sequence[Entry], cap: int, where: str) -> None:
    """Each batch appears as one run holding all of it in order; only the oldest run of a full read
    may lack the batch's oldest messages (cut by the trim or by the window), never its newest."""
    assert len(entries) <= cap, f"{where}: {len(entries)} entries, bound {cap}"
    seen: set[str] = set()
    for position, run in enumerate(runs(entries)):
        batch = run[0].batch
        assert batch not in seen, f"{where}: batch {batch} is split: {entries}"
        seen.add(batch)
        size = run[0].size
        first = run[0].index
        assert [e.index for e in run] == list(range(first, size)), (
            f"{where}: batch {batch} is partial or out of order: {run}"
        )
        if first:
            assert position == 0, f"{where}: batch {batch} lacks its oldest part mid-list: {run}"
            assert len(entries) == cap, (
                f"{where}: batch {batch} is cut although the read is not full "
                f"({len(entries)} < {cap}): {run}"
            )


def check_real_time_order(read: Read, record: Record, where: str) -> None:
    """What a read may hold given when batches were sent and acknowledged (ticks are unique)."""
    entries = read.entries
    order = [run[0].batch for run in runs(entries)]  # oldest first, each batch once
    for batch in order:
        assert record.sent[batch] < read.returned, f"{where}: {batch} seen before it was sent"
    # A batch acknowledged before another was sent is older in the server's order.
    for i, older in enumerate(order):
        for newer in order[i + 1 :]:
            assert not record.acked[newer] < record.sent[older], (
                f"{where}: {newer} (acked at {record.acked[newer]}) stored newer than {older} "
                f"(sent at {record.sent[older]})"
            )
    # A batch acknowledged before the read was sent is in it, or older than all it holds.
    present = set(order)
    missing = [b for b, t in record.acked.items() if t < read.sent and b not in present]
    if missing:
        assert len(entries) == read.cap, (
            f"{where}: {len(missing)} acknowledged batches missing from a read that is not full "
            f"({len(entries)} < {read.cap}), e.g. {missing[:3]}"
        )
        newest_missing_sent = max(record.sent[b] for b in missing)
        oldest_present_acked = min(record.acked[b] for b in order)
        assert newest_missing_sent < oldest_present_acked, (
            f"{where}: a batch acknowledged before the read is missing although a batch "
            "acknowledged before it was even sent is present"
        )
    # Each writer is sequential: its messages form one run of consecutive sequence numbers.
    by_writer: dict[int, list[int]] = {}
    for e in entries:
        by_writer.setdefault(e.writer, []).append(e.seq)
    for writer, seqs in by_writer.items():
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), (
            f"{where}: writer {writer}'s messages are not consecutive and in order: {seqs}"
        )


def check_successive_reads(reads: Sequence[Read], where: str) -> None:
    """Two reads are two windows of one growing sequence: what they share is a suffix of the
    earlier and a prefix of the later, in the same order."""
    for n, (before, after) in enumerate(itertools.pairwise(reads)):
        a = [(e.writer, e.seq) for e in before.entries]
        b = [(e.writer, e.seq) for e in after.entries]
        common = set(a) & set(b)
        shared = [x for x in a if x in common]
        assert shared == a[len(a) - len(common) :], f"{where} read {n}: lost a newer entry"
        assert shared == b[: len(common)], f"{where} reads {n}, {n + 1}: do not line up"


def check_polls(polls: Sequence[tuple[int, int]], where: str) -> None:
    assert polls, f"{where}: the watcher never polled"
    assert any(length for length, _ in polls), f"{where}: the watcher never saw the key"
    for length, ttl in polls:
        assert length <= BOUND, f"{where}: LLEN {length} > {BOUND}"
        assert ttl != -1, f"{where}: the key existed without a TTL (LLEN {length})"
        if length:
            assert 0 < ttl <= TTL, f"{where}: TTL {ttl} with LLEN {length}"
        else:
            assert ttl == -2, f"{where}: TTL {ttl} of an empty (missing) key"


def check_run(record: Record, final: Read, last_batch: Sequence[BaseMessage], where: str) -> None:
    check_polls(record.polls, where)
    for r, reads in enumerate(record.reads):
        assert len(reads) >= 3, f"{where}: reader {r} read only {len(reads)} times"
        for n, read in enumerate(reads):
            check_batches_whole(read.entries, read.cap, f"{where} reader {r} read {n}")
            check_real_time_order(read, record, f"{where} reader {r} read {n}")
        check_successive_reads(reads, f"{where} reader {r}")
    # The final list: full, whole batches, all acknowledged, the last batch newest.
    entries = final.entries
    assert len(entries) == BOUND
    check_batches_whole(entries, BOUND, f"{where} final")
    assert {e.batch for e in entries} <= set(record.acked), f"{where}: unacknowledged in final"
    check_real_time_order(final, record, f"{where} final")
    newest = entries[len(entries) - len(last_batch) :]
    assert newest == [entry_of(m) for m in last_batch], f"{where}: last batch is not the newest"
    assert len(record.acked) == WRITERS * BATCHES + 1


def entries_of(messages: Iterable[BaseMessage]) -> list[Entry]:
    return [entry_of(m) for m in messages]


def last_batch() -> list[BaseMessage]:
    return make_batch(WRITERS, 0, 0, 3)


def check_final_key(client: redis.Redis) -> None:
    assert client.llen(KEY) == BOUND
    assert 0 < client.ttl(KEY) <= TTL


def poll(client: redis.Redis, polls: list[tuple[int, int]], stop: threading.Event) -> None:
    """The watcher: LLEN and TTL of the key, read together (MULTI), until stopped, and once more
    after that."""
    while True:
        stopped = stop.is_set()
        with client.pipeline(transaction=True) as pipe:
            length, ttl = pipe.llen(KEY).ttl(KEY).execute()
        polls.append((length, ttl))
        if stopped:
            return


# --- threads --------------------------------------------------------------------------------


def history(url: str, window: int | None = None) -> RedisChatMessageHistory:
    return RedisChatMessageHistory(SESSION, url=url, ttl=TTL, max_messages=BOUND, window=window)


def test_threads_on_one_session(url: str, client: redis.Redis) -> None:
    record = Record()
    plans = plan()
    stop = threading.Event()
    barrier = threading.Barrier(WRITERS + len(READ_WINDOWS) + 1, timeout=TIMEOUT)

    def write(writer: int) -> None:
        barrier.wait()
        for batch in plans[writer]:
            bid = batch_id(batch)
            record.sent[bid] = record.tick()
            history(url).add_messages(batch)  # a new history per call, as per request
            record.acked[bid] = record.tick()

    def read(reader: int, window: int | None) -> None:
        mine = record.reads[reader]
        source = history(url, window)
        barrier.wait()
        while not stop.is_set() or len(mine) < 3:
            sent = record.tick()
            messages = source.messages
            mine.append(Read(window or BOUND, sent, record.tick(), entries_of(messages)))

    def watch() -> None:
        barrier.wait()
        poll(client, record.polls, stop)

    record.reads = [[] for _ in READ_WINDOWS]
    with ThreadPoolExecutor(max_workers=WRITERS + len(READ_WINDOWS) + 1) as pool:
        writers = [pool.submit(write, w) for w in range(WRITERS)]
        readers = [pool.submit(read, r, w) for r, w in enumerate(READ_WINDOWS)]
        watcher = pool.submit(watch)
        try:
            for future in writers:
                future.result(timeout=TIMEOUT)
        finally:
            stop.set()
        for future in [*readers, watcher]:
            future.result(timeout=TIMEOUT)

    final_batch = last_batch()  # single-threaded, after every writer returned
    record.sent[batch_id(final_batch)] = record.tick()
    history(url).add_messages(final_batch)
    record.acked[batch_id(final_batch)] = record.tick()
    sent = record.tick()
    final = Read(BOUND, sent, record.tick(), entries_of(history(url).messages))

    check_final_key(client)
    check_run(record, final, final_batch, "threads")


# --- asyncio --------------------------------------------------------------------------------


async def test_asyncio_tasks_on_one_session(url: str, client: redis.Redis) -> None:
    record = Record()
    plans = plan()
    go = asyncio.Event()
    done = asyncio.Event()

    async def write(writer: int) -> None:
        await go.wait()
        for batch in plans[writer]:
            bid = batch_id(batch)
            record.sent[bid] = record.tick()
            await history(url).aadd_messages(batch)
            record.acked[bid] = record.tick()

    async def read(reader: int, window: int | None) -> None:
        mine = record.reads[reader]
        source = history(url, window)
        await go.wait()
        while not done.is_set() or len(mine) < 3:
            sent = record.tick()
            messages = await source.aget_messages()
            mine.append(Read(window or BOUND, sent, record.tick(), entries_of(messages)))

    stop = threading.Event()  # the watcher polls from its own thread, whatever the loop does

    async def writers() -> None:
        try:
            await asyncio.gather(*(write(w) for w in range(WRITERS)))
        finally:
            done.set()
            stop.set()

    record.reads = [[] for _ in READ_WINDOWS]
    watcher = asyncio.create_task(asyncio.to_thread(poll, client, record.polls, stop))
    tasks = [
        asyncio.create_task(writers()),
        *(asyncio.create_task(read(r, w)) for r, w in enumerate(READ_WINDOWS)),
    ]
    await asyncio.sleep(0)  # let every task reach go.wait()
    go.set()
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
    finally:
        stop.set()
        await watcher

    final_batch = last_batch()
    record.sent[batch_id(final_batch)] = record.tick()
    await history(url).aadd_messages(final_batch)
    record.acked[batch_id(final_batch)] = record.tick()
    sent = record.tick()
    final = Read(BOUND, sent, record.tick(), entries_of(await history(url).aget_messages()))

    check_final_key(client)
    check_run(record, final, final_batch, "asyncio")


# --- clear() racing with appends ------------------------------------------------------------

RACE_BOUND = 10
RACE_ROUNDS = 40


def race_history(url: str) -> RedisChatMessageHistory:
    return RedisChatMessageHistory(SESSION, url=url, ttl=TTL, max_messages=RACE_BOUND)


def check_race_polls(polls: Sequence[tuple[int, int]], where: str) -> None:
    assert polls, f"{where}: the watcher never polled"
    assert any(length for length, _ in polls), f"{where}: the watcher never saw the key"
    for length, ttl in polls:
        assert length <= RACE_BOUND, f"{where}: LLEN {length} > {RACE_BOUND}"
        assert ttl != -1, f"{where}: the key existed without a TTL (LLEN {length})"
        assert (ttl == -2) == (length == 0), f"{where}: TTL {ttl} with LLEN {length}"


def check_race_end(client: redis.Redis) -> None:
    ttl = client.ttl(KEY)
    assert ttl == -2 or 0 < ttl <= TTL, ttl
    assert client.llen(KEY) <= RACE_BOUND


def test_clear_racing_with_appends_never_leaves_a_key_without_ttl(
    url: str, client: redis.Redis
) -> None:
    appenders, clearers, readers = 8, 3, 2
    plans = plan(appenders, RACE_ROUNDS)
    stop = threading.Event()
    polls: list[tuple[int, int]] = []
    reads: list[list[Entry]] = []
    barrier = threading.Barrier(appenders + clearers + readers + 1, timeout=TIMEOUT)

    def append(writer: int) -> None:
        barrier.wait()
        for batch in plans[writer]:
            race_history(url).add_messages(batch)

    def clear() -> None:
        barrier.wait()
        while not stop.is_set():
            race_history(url).clear()
            time.sleep(0.001)

    def read() -> None:
        source = race_history(url)
        barrier.wait()
        while not stop.is_set():
            reads.append(entries_of(source.messages))
            source.touch()

    def watch() -> None:
        barrier.wait()
        poll(client, polls, stop)

    with ThreadPoolExecutor(max_workers=appenders + clearers + readers + 1) as pool:
        writers = [pool.submit(append, w) for w in range(appenders)]
        others = [pool.submit(clear) for _ in range(clearers)]
        others += [pool.submit(read) for _ in range(readers)]
        others.append(pool.submit(watch))
        try:
            for future in writers:
                future.result(timeout=TIMEOUT)
        finally:
            stop.set()
        for future in others:
            future.result(timeout=TIMEOUT)

    check_race_polls(polls, "clear race")
    for n, entries in enumerate(reads):
        check_batches_whole(entries, RACE_BOUND, f"clear race read {n}")
    check_race_end(client)


async def test_aclear_racing_with_aadd_never_leaves_a_key_without_ttl(
    url: str, client: redis.Redis
) -> None:
    appenders, clearers, readers = 8, 3, 2
    plans = plan(appenders, RACE_ROUNDS)
    done = asyncio.Event()
    polls: list[tuple[int, int]] = []
    reads: list[list[Entry]] = []

    async def append(writer: int) -> None:
        for batch in plans[writer]:
            await race_history(url).aadd_messages(batch)

    async def appends() -> None:
        try:
            await asyncio.gather(*(append(w) for w in range(appenders)))
        finally:
            done.set()

    async def clear() -> None:
        while not done.is_set():
            await race_history(url).aclear()
            await asyncio.sleep(0.001)

    async def read() -> None:
        source = race_history(url)
        while not done.is_set():
            reads.append(entries_of(await source.aget_messages()))
            await source.atouch()

    stop = threading.Event()
    watcher = asyncio.create_task(asyncio.to_thread(poll, client, polls, stop))
    try:
        jobs = [appends(), *(clear() for _ in range(clearers)), *(read() for _ in range(readers))]
        await asyncio.wait_for(asyncio.gather(*jobs), TIMEOUT)
    finally:
        stop.set()
        await watcher

    check_race_polls(polls, "aclear race")
    for n, entries in enumerate(reads):
        check_batches_whole(entries, RACE_BOUND, f"aclear race read {n}")
    check_race_end(client)
