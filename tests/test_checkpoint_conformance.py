"""LangGraph's own conformance suite (langgraph-checkpoint-conformance) judges the saver, on every
server kind and on a Redis Cluster, through its asyncio methods and through its sync ones."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import redis.asyncio.cluster
import redis.cluster
from conftest import VERSIONED
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import ChannelVersions, Checkpoint, CheckpointMetadata
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.report import CapabilityReport

from pyhistory import testing
from pyhistory.checkpoint import RedisSaver

# Every capability LangGraph defines, base and extended.
IMPLEMENTED = {
    "put",
    "put_writes",
    "get_tuple",
    "list",
    "delete_thread",
    "copy_thread",
    "prune",
    "delete_for_runs",
}


class SyncDrivenSaver(RedisSaver):
    """The same saver, its a* methods answered by its sync ones (in a worker thread, off the
    event loop): the suite then judges those."""

    async def aget_tuple(self, config: RunnableConfig) -> Any:
        return await asyncio.to_thread(self.get_tuple, config)

    async def alist(  # type: ignore[override]
        self, config: RunnableConfig | None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        for item in await asyncio.to_thread(lambda: list(self.list(config, **kwargs))):
            yield item

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return await asyncio.to_thread(self.put, config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await asyncio.to_thread(self.put_writes, config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        await asyncio.to_thread(self.delete_thread, thread_id)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await asyncio.to_thread(self.copy_thread, source_thread_id, target_thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await asyncio.to_thread(self.delete_for_runs, run_ids)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await asyncio.to_thread(self.prune, thread_ids, strategy=strategy)


def assert_full(report: CapabilityReport) -> None:
    detected = {name for name, result in report.results.items() if result.detected}
    failures = [f for result in report.results.values() for f in result.failures]
    assert not failures, failures
    assert detected == IMPLEMENTED
    assert report.passed_all_base()
    assert report.conformance_level() == "FULL"


async def run_suite(name: str, make: Any) -> CapabilityReport:
    @checkpointer_test(name=name)
    async def factory() -> AsyncIterator[RedisSaver]:
        yield make()

    return await validate(factory)


async def test_conformance_asyncio(url: str) -> None:
    assert_full(await run_suite("RedisSaver", lambda: RedisSaver(url)))


async def test_conformance_sync(url: str) -> None:
    assert_full(await run_suite("RedisSaver (sync)", lambda: SyncDrivenSaver(url)))


async def test_conformance_with_a_ttl(url: str) -> None:
    assert_full(await run_suite("RedisSaver (ttl)", lambda: RedisSaver(url, ttl=600)))


@pytest.mark.cluster
async def test_conformance_on_a_cluster(cluster: testing.LocalCluster) -> None:
    cluster.wait_healthy()
    host, port = cluster.startup_nodes[0]
    client = redis.asyncio.cluster.RedisCluster(host=host, port=port, **VERSIONED)
    try:
        assert_full(
            await run_suite("RedisSaver (cluster)", lambda: RedisSaver(async_redis_client=client))
        )
    finally:
        await client.aclose()


@pytest.mark.cluster
async def test_conformance_on_a_cluster_sync(
    cluster_client: redis.cluster.RedisCluster,
) -> None:
    assert_full(
        await run_suite(
            "RedisSaver (cluster, sync)", lambda: SyncDrivenSaver(redis_client=cluster_client)
        )
    )
