"""The `pyhistory` command against real servers (and one real cluster), called in-process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import any_kind
from langchain_core.messages import (
    AIMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    message_to_dict,
)

from pyhistory import RedisChatMessageHistory, _core, testing
from pyhistory.cli import main, redact

Run = Callable[..., tuple[int, str, str]]

OLD = "pyhistory_v0"
OLD_SOURCE = _core.library_source().replace(_core.LIBRARY, OLD)  # its functions: pyhistory_v0_*
PATCHED_SOURCE = _core.library_source() + "\n-- patched by hand\n"  # same name, other code


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Run:
    """Run ``pyhistory ARGS...`` in-process: (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def cmd(client: redis.Redis, *args: object) -> Any:
    return client.execute_command(*args)  # type: ignore[no-untyped-call,unused-ignore]


def stored(client: redis.Redis, key: str, stop: int = -1) -> list[str]:
    """The entries of a session as stored, oldest first."""
    return [entry.decode() for entry in reversed(cmd(client, "LRANGE", key, 0, stop))]


def libraries(client: redis.Redis) -> set[str]:
    """The pyhistory libraries on one server (redis-py returns maps or flat lists by version)."""
    reply = cmd(client, "FUNCTION", "LIST", "LIBRARYNAME", "pyhistory_*")
    fields = [
        item if isinstance(item, dict) else dict(zip(item[::2], item[1::2], strict=True))
        for item in reply
    ]
    return {f[b"library_name"].decode() for f in fields}


def load_source(client: redis.Redis, source: str) -> None:
    cmd(client, "FUNCTION", "LOAD", "REPLACE", source)


def assert_one_line(err: str) -> None:
    assert err.startswith("pyhistory: error: ")
    assert err.count("\n") == 1
    assert "Traceback" not in err


# --- load / status ----------------------------------------------------------------------------


def test_status_before_load_says_missing(cli: Run, url: str) -> None:
    code, out, err = cli("--url", url, "status")
    assert code == 1, out + err
    assert "missing" in out
    assert "NOT READY" in out
    assert f"0/{len(_core.FUNCTIONS)}" in out


def test_load_then_status_says_current(cli: Run, url: str, client: redis.Redis) -> None:
    code, out, err = cli("--url", url, "load")
    assert code == 0, out + err
    assert out.startswith(f"{_core.LIBRARY}: loaded")
    assert "identical to this package's code" in out
    assert libraries(client) == {_core.LIBRARY}

    code, out, err = cli("--url", url, "status")
    assert code == 0, out + err
    assert "current" in out
    assert f"{len(_core.FUNCTIONS)}/{len(_core.FUNCTIONS)}" in out
    assert "OK:" in out

    code, out, _ = cli("--url", url, "status", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["ok"] is True
    assert report["mode"] == "standalone"
    (node,) = report["nodes"]
    assert node["role"] == "primary"
    assert node["library"] == "current"
    assert node["functions_missing"] == []
    assert node["server"] in ("redis", "valkey")
    assert node["version"][0].isdigit()


def test_different_code_under_the_same_name(cli: Run, url: str, client: redis.Redis) -> None:
    load_source(client, PATCHED_SOURCE)
    code, out, _ = cli("--url", url, "status")
    assert code == 1
    assert "DIFFERENT CODE" in out
    assert json.loads(cli("--url", url, "status", "--json")[1])["nodes"][0]["library"] == (
        "different_code"
    )

    assert cli("--url", url, "load")[0] == 0
    code, out, _ = cli("--url", url, "status")
    assert code == 0
    assert "current" in out


def test_url_from_the_environment_and_options_after_the_command(
    cli: Run, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", url)
    assert cli("load")[0] == 0
    assert cli("status")[0] == 0
    closed = f"redis://127.0.0.1:{testing.free_port()}/0"
    assert cli("--url", closed, "status")[0] == 1
    assert cli("status", "--url", url)[0] == 0  # after the subcommand, and it wins over $REDIS_URL


def test_load_without_permission_is_one_line(cli: Run, url: str, client: redis.Redis) -> None:
    cmd(client, "ACL", "SETUSER", "cli-app", "on", ">pw", "~*", "+@all", "-function")
    try:
        app_url = url.replace("redis://", "redis://cli-app:pw@", 1)
        code, _, err = cli("--url", app_url, "load")
        assert code == 1
        assert_one_line(err)
        assert "error: permission denied: this user may not load functions (" in err
        assert "no permissions to run the 'function|load' command" in err  # the server's NOPERM
        assert "as a user that may run FUNCTION LOAD" in err
        assert "pw@" not in err
    finally:
        cmd(client, "ACL", "DELUSER", "cli-app")


# --- versions / remove ------------------------------------------------------------------------


def test_versions_lists_every_pyhistory_library(cli: Run, url: str, client: redis.Redis) -> None:
    load_source(client, OLD_SOURCE)
    code, out, _ = cli("--url", url, "versions")
    assert code == 0
    (old_line,) = [line for line in out.splitlines() if line.startswith(OLD)]
    (new_line,) = [line for line in out.splitlines() if line.startswith(_core.LIBRARY)]
    assert "1/1" in old_line
    assert "this package" not in old_line
    assert "this package" in new_line
    assert "not loaded" in new_line

    cli("--url", url, "load")
    code, out, _ = cli("--url", url, "versions", "--json")
    assert code == 0
    versions = {v["library"]: v for v in json.loads(out)["versions"]}
    assert set(versions) == {OLD, _core.LIBRARY}
    assert versions[_core.LIBRARY]["this_package"] is True
    assert versions[_core.LIBRARY]["primaries"] == 1
    assert versions[OLD]["this_package"] is False


def test_remove_without_yes_deletes_nothing(cli: Run, url: str, client: redis.Redis) -> None:
    load_source(client, OLD_SOURCE)
    code, out, _ = cli("--url", url, "remove", OLD)
    assert code == 1
    assert "would delete" in out
    assert "--yes" in out
    assert libraries(client) == {OLD}


def test_remove_with_yes(cli: Run, url: str, client: redis.Redis) -> None:
    cli("--url", url, "load")
    load_source(client, OLD_SOURCE)
    code, out, err = cli("--url", url, "remove", OLD, "--yes")
    assert code == 0, out + err
    assert f"deleted {OLD}" in out
    assert libraries(client) == {_core.LIBRARY}
    code, out, _ = cli("--url", url, "remove", OLD, "--yes")  # again: nothing left to do
    assert code == 0
    assert "nothing to remove" in out


def test_remove_refuses_the_current_library_without_force(
    cli: Run, url: str, client: redis.Redis
) -> None:
    cli("--url", url, "load")
    code, _, err = cli("--url", url, "remove", _core.LIBRARY, "--yes")
    assert code == 1
    assert_one_line(err)
    assert "--force" in err
    assert libraries(client) == {_core.LIBRARY}

    code, _, _ = cli("--url", url, "remove", _core.LIBRARY, "--yes", "--force")
    assert code == 0
    assert libraries(client) == set()


# --- show -------------------------------------------------------------------------------------

CONVERSATION = [
    SystemMessage("You are terse."),
    HumanMessage("weather in Paris?\nand in Rome?"),
    AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "c1"}]),
    ToolMessage("sunny", tool_call_id="c1"),
    AIMessage("Paris is sunny. " * 20),
]


@pytest.fixture
def session(url: str, client: redis.Redis) -> str:
    """A session written by the history class; its TTL is then set to 1000 s (not the 600 s the
    history would set), so that a refresh by `show` would be visible."""
    RedisChatMessageHistory("s-1", url=url, ttl=600).add_messages(CONVERSATION)
    client.expire("message_store:s-1", 1000)
    return "s-1"


def test_show_prints_the_session_and_leaves_its_ttl(
    cli: Run, url: str, client: redis.Redis, session: str
) -> None:
    time.sleep(0.01)
    before = client.pttl("message_store:s-1")
    assert before < 1_000_000  # so a refresh to 600 s or to 1000 s by `show` would be seen
    code, out, err = cli("--url", url, "show", session)
    assert code == 0, out + err
    assert 990_000 < client.pttl("message_store:s-1") <= before
    lines = out.splitlines()
    assert lines[:3] == ["key     message_store:s-1", "type    list", "length  5"]
    assert re.fullmatch(r"ttl     (999|1000) s", lines[3])
    assert re.fullmatch(r"memory  \d+ B", lines[4])
    assert int(lines[4].split()[1]) > sum(map(len, stored(client, "message_store:s-1")))
    # the exactly-once companion key, with the TTL the history gave it
    assert re.fullmatch(
        r"batches pyhistory:batches:\{message_store:s-1\}  exists, ttl \d+ s", lines[5]
    )
    assert lines[6] == "messages (all 5, oldest first):"
    body = lines[7:]
    assert len(body) == 5
    assert body[0] == "  1  system You are terse."
    assert body[1] == "  2  human  weather in Paris?\\nand in Rome?"
    assert body[2] == '  3  ai     [tool calls: get_weather({"city": "Paris"})]'
    assert body[3] == "  4  tool   sunny [result of c1]"
    assert body[4].startswith("  5  ai     Paris is sunny. Paris")
    assert body[4].endswith("... (320 chars)")
    assert len(body[4]) < 130


def test_show_keeps_a_session_without_ttl_persistent(
    cli: Run, url: str, client: redis.Redis
) -> None:
    RedisChatMessageHistory("s-2", url=url).add_messages(CONVERSATION[:2])
    code, out, _ = cli("--url", url, "show", "s-2")
    assert code == 0
    assert "ttl     none" in out
    assert "batches pyhistory:batches:{message_store:s-2}  exists" in out
    assert client.ttl("message_store:s-2") == -1


def test_show_limit_raw_and_key_prefix(cli: Run, url: str, client: redis.Redis) -> None:
    history = RedisChatMessageHistory("s-3", url=url, key_prefix="app:chat:")
    history.add_messages(CONVERSATION)
    code, out, _ = cli("--url", url, "show", "s-3", "--key-prefix", "app:chat:", "--limit", "3")
    assert code == 0
    assert "messages (newest 3 of 5, oldest first):" in out
    assert "  3  ai     [tool calls: get_weather" in out
    assert "  4  tool   sunny" in out
    assert "system" not in out
    assert "not shown" not in out

    # a window that starts with a tool result: the history drops it, and show says so
    code, out, _ = cli("--url", url, "show", "s-3", "--key-prefix", "app:chat:", "--limit", "2")
    assert code == 0
    assert "messages (newest 1 of 5, oldest first):" in out
    assert "tool   sunny" not in out
    assert "(1 older tool result(s) in the window" in out

    code, out, _ = cli("--url", url, "show", "s-3", "--key-prefix", "app:chat:", "--raw")
    assert code == 0
    body = out.split("stored entries (all 5, oldest first):\n")[1].splitlines()
    assert [line.split("  ", 2)[2] for line in body] == stored(client, "app:chat:s-3")


def test_show_json(cli: Run, url: str, client: redis.Redis, session: str) -> None:
    code, out, _ = cli("--url", url, "show", session, "--json")
    assert code == 0
    data = json.loads(out)
    assert data["key"] == "message_store:s-1"
    assert data["type"] == "list"
    assert data["exists"] is True
    assert data["length"] == 5
    assert 990 <= data["ttl"] <= 1000
    assert data["memory_bytes"] > 0
    assert data["batches_key"] == _core.batches_key("message_store:s-1")
    assert data["batches_exists"] is True
    assert data["messages"] == [message_to_dict(m) for m in CONVERSATION]
    # --samples 0: MEMORY USAGE counts every element
    data = json.loads(cli("--url", url, "show", session, "--json", "--samples", "0")[1])
    assert data["memory_bytes"] > 0

    code, out, _ = cli("--url", url, "show", session, "--json", "--raw", "--limit", "3")
    assert code == 0
    entries = json.loads(out)["entries"]
    assert entries == stored(client, "message_store:s-1", 2)


def test_show_a_missing_session(cli: Run, url: str) -> None:
    code, out, _ = cli("--url", url, "show", "nobody")
    assert code == 0
    assert "type    none" in out
    assert "ttl     missing" in out
    assert "no such session" in out
    data = json.loads(cli("--url", url, "show", "nobody", "--json")[1])
    assert data == {
        "key": "message_store:nobody",
        "type": "none",
        "exists": False,
        "length": 0,
        "ttl": None,
        "memory_bytes": None,
        "batches_key": "pyhistory:batches:{message_store:nobody}",
        "batches_exists": False,
        "batches_ttl": None,
        "messages": [],
    }


def test_show_a_wrong_type_key(cli: Run, url: str, client: redis.Redis) -> None:
    client.set("message_store:s-4", "not a list")
    code, out, err = cli("--url", url, "show", "s-4")
    assert code == 1
    assert out == ""
    assert_one_line(err)
    assert "WrongTypeError" in err
    assert "message_store:s-4 holds a string" in err


def test_show_a_corrupt_entry(cli: Run, url: str, client: redis.Redis) -> None:
    client.rpush("message_store:s-5", "{not json")
    code, _, err = cli("--url", url, "show", "s-5")
    assert code == 1
    assert_one_line(err)
    assert "CorruptEntryError" in err
    assert "--raw" in err
    code, out, _ = cli("--url", url, "show", "s-5", "--raw")
    assert code == 0
    assert "  1  {not json" in out


# --- errors and the command line --------------------------------------------------------------


# --- thread -----------------------------------------------------------------------------------


def saver(**kwargs: Any) -> Any:
    """The real LangGraph saver (the checkpoint extra; skipped without it)."""
    checkpoint = pytest.importorskip("pyhistory.checkpoint")
    return checkpoint.RedisSaver(**kwargs)


def write_thread(
    saver: Any, thread_id: str, ns: str = "", steps: int = 3, writes: int = 2
) -> list[str]:
    """``steps`` checkpoints, each child of the previous, then ``writes`` pending writes on the
    newest (an interrupted step): the ids, oldest first."""
    from langgraph.checkpoint.base import empty_checkpoint

    config: Any = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns}}
    ids = []
    for step in range(1, steps + 1):
        checkpoint = {
            **empty_checkpoint(),
            "channel_values": {"messages": ["é" * 100] * step},
            "channel_versions": {"messages": step},
        }
        config = saver.put(config, checkpoint, {"step": step}, {"messages": step})
        ids.append(checkpoint["id"])
    if writes:
        saver.put_writes(config, [(f"ch{i}", i) for i in range(writes)], task_id="task-1")
    return ids


def test_thread_counts_checkpoints_writes_bytes_and_ttl(
    cli: Run, url: str, client: redis.Redis
) -> None:
    from pyhistory.checkpoint import _calls

    thread = "t-{1}%"  # braces and % in the id: the hash tag encodes them
    written = saver(url=url, key_prefix="app:ckpt:", ttl=600)
    root = write_thread(written, thread)
    sub = write_thread(written, thread, ns="child:1", steps=2, writes=0)
    data_key, index_key = _calls.keys("app:ckpt:", thread)
    for key in (data_key, index_key):
        client.expire(key, 1000)  # so a refresh (to 600 s, or to 1000 s) would be seen
    time.sleep(0.01)
    before = client.pttl(data_key)
    assert before < 1_000_000

    code, out, err = cli("--url", url, "thread", thread, "--key-prefix", "app:ckpt:", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["thread_id"] == thread
    assert data["exists"] is True
    assert [(k["key"], k["type"]) for k in data["keys"]] == [
        (data_key, "hash"),
        (index_key, "zset"),
    ]
    assert data["keys"][0]["length"] == client.hlen(data_key)
    assert data["keys"][1]["length"] == client.zcard(index_key)
    assert all(990 <= k["ttl"] <= 1000 for k in data["keys"])
    assert all(k["memory_bytes"] > 0 for k in data["keys"])
    assert data["memory_bytes"] == sum(k["memory_bytes"] for k in data["keys"])
    assert data["memory_bytes"] > 600  # the values alone: 6 x 100 two-byte characters
    assert (data["checkpoints"], data["writes"], data["pinned"]) == (5, 2, 1)
    assert data["owner_epoch"] is None
    assert data["namespaces"] == [
        {
            "namespace": "",
            "checkpoints": 3,
            "newest": root[-1],
            "newest_writes": 2,
            "writes": 2,
            "pinned": 1,
        },
        {
            "namespace": "child:1",
            "checkpoints": 2,
            "newest": sub[-1],
            "newest_writes": 0,
            "writes": 0,
            "pinned": 0,
        },
    ]
    assert data["namespaces_truncated"] is False
    assert client.pttl(data_key) <= before  # read-only: the TTL is left alone

    code, out, _ = cli("--url", url, "thread", thread, "--key-prefix", "app:ckpt:")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"thread       {thread}"
    assert re.fullmatch(
        rf"data         {re.escape(data_key)}  hash, \d+ fields, \d+ B, ttl (999|1000) s", lines[1]
    )
    assert re.fullmatch(
        rf"index        {re.escape(index_key)}  zset, \d+ members, \d+ B, ttl (999|1000) s",
        lines[2],
    )
    assert re.fullmatch(r"memory       \d+ B", lines[3])
    assert lines[4] == "checkpoints  5"
    assert lines[5].startswith("writes       2 stored; 1 checkpoint(s) with writes")
    assert lines[6] == "owner epoch  none (not fenced)"
    assert lines[7] == "namespaces (2):"
    header = ["NAMESPACE", "CHECKPOINTS", "NEWEST", "PENDING", "WRITES", "PINNED"]
    assert lines[8].split() == header
    assert lines[9].split() == ['""', "3", root[-1], "2", "2", "1"]
    assert lines[10].split() == ['"child:1"', "2", sub[-1], "0", "0", "0"]

    code, out, _ = cli(
        "--url", url, "thread", thread, "--key-prefix", "app:ckpt:", "--namespaces", "1"
    )
    assert code == 0
    assert "namespaces (first 1, more not shown):" in out
    assert "child:1" not in out

    # the default key prefix is the saver's: the thread is not under it
    code, out, _ = cli("--url", url, "thread", thread)
    assert code == 0
    assert "(no such thread)" in out


def test_thread_fenced_and_missing(cli: Run, url: str, client: redis.Redis) -> None:
    written = saver(url=url)
    write_thread(written, "t-2", steps=1, writes=0)
    epoch = written.claim_write_ownership("t-2")
    data = json.loads(cli("--url", url, "thread", "t-2", "--json")[1])
    assert data["owner_epoch"] == str(epoch)
    assert [k["ttl"] for k in data["keys"]] == [None, None]

    code, out, _ = cli("--url", url, "thread", "nobody")
    assert code == 0
    assert "data         checkpoint:{t:nobody}:data  missing" in out
    assert "(no such thread)" in out
    data = json.loads(cli("--url", url, "thread", "nobody", "--json")[1])
    assert data["exists"] is False
    assert (data["checkpoints"], data["namespaces"]) == (0, [])
    assert all(k["type"] == "none" and k["ttl"] is None for k in data["keys"])


def test_thread_a_wrong_type_key(cli: Run, url: str, client: redis.Redis) -> None:
    client.set("checkpoint:{t:t-3}:index", "not a zset")
    code, out, err = cli("--url", url, "thread", "t-3")
    assert code == 1
    assert out == ""
    assert_one_line(err)
    assert "WrongTypeError" in err
    assert "checkpoint:{t:t-3}:index holds a string" in err


def test_thread_and_show_without_memory_permission(cli: Run, url: str, client: redis.Redis) -> None:
    """A user whose ACL refuses MEMORY sees the bytes as unknown and the rest as usual."""
    write_thread(saver(url=url), "t-4", steps=2, writes=1)
    RedisChatMessageHistory("s-6", url=url).add_user_message("hi")
    cmd(client, "ACL", "SETUSER", "cli-ro", "on", ">pw", "~*", "+@all", "-memory")
    try:
        ro_url = url.replace("redis://", "redis://cli-ro:pw@", 1)
        code, out, err = cli("--url", ro_url, "thread", "t-4")
        assert code == 0, err
        assert "memory       unknown (MEMORY USAGE refused)" in out
        assert "checkpoints  2" in out
        data = json.loads(cli("--url", ro_url, "thread", "t-4", "--json")[1])
        assert data["memory_bytes"] is None
        assert [k["memory_bytes"] for k in data["keys"]] == [None, None]
        code, out, err = cli("--url", ro_url, "show", "s-6")
        assert code == 0, err
        assert "memory  unknown (MEMORY USAGE refused)" in out
        assert "  1  human  hi" in out
    finally:
        cmd(client, "ACL", "DELUSER", "cli-ro")


@pytest.mark.parametrize(
    "command",
    [
        ["load"],
        ["status"],
        ["versions"],
        ["remove", OLD, "--yes"],
        ["show", "s"],
        ["thread", "t"],
    ],
    ids=lambda c: c[0],
)
def test_connection_refused_is_one_line(cli: Run, command: list[str]) -> None:
    closed = f"redis://user:secret@127.0.0.1:{testing.free_port()}/0"
    for extra in ([], ["--cluster"]):
        code, out, err = cli("--url", closed, *extra, *command)
        assert code == 1
        assert out == ""
        assert_one_line(err)
        port = closed.rsplit(":", 1)[1].split("/")[0]
        assert f"connecting to 127.0.0.1:{port}. Connection refused." in err
        assert "secret" not in err


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["status", "--bogus"],
        ["show"],
        ["show", "s", "--limit", "0"],
        ["show", "s", "--limit", "x"],
        ["thread"],
        ["thread", "t", "--namespaces", "0"],
        ["thread", "t", "--samples", "-1"],
        ["remove", "mylib", "--yes"],
        ["--url", "http://localhost:6379", "status"],
    ],
)
def test_usage_errors_exit_2(cli: Run, argv: list[str]) -> None:
    code, _, err = cli(*argv)
    assert code == 2
    assert "usage: pyhistory" in err
    assert "Traceback" not in err


def test_redact_hides_passwords() -> None:
    assert redact("redis://u:p%40ss@h:1/0") == "redis://u:***@h:1/0"
    assert (
        redact("rediss://:pw@h:1/0?ssl_cert_reqs=none") == "rediss://:***@h:1/0?ssl_cert_reqs=none"
    )
    assert "hunter2" not in redact("redis://h:1/0?password=hunter2")
    assert redact("redis://h:1/0") == "redis://h:1/0"


def test_console_script_and_module() -> None:
    """The installed entry points work (a packaging check: one server is enough)."""
    with testing.start_server() as server:
        env = {**os.environ, "REDIS_URL": server.url}
        script = Path(sys.executable).with_name("pyhistory")
        load = [str(script)] if script.exists() else [sys.executable, "-m", "pyhistory.cli"]
        done = subprocess.run([*load, "load"], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert f"{_core.LIBRARY}: loaded" in done.stdout
        status = [sys.executable, "-m", "pyhistory.cli", "status", "--json"]
        done = subprocess.run(status, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["ok"] is True
        with server.client() as client:
            client.function_flush()
        done = subprocess.run(status, env=env, capture_output=True, text=True)
        assert done.returncode == 1
        assert done.stderr == ""


def test_tls_url_with_options_as_query_parameters(cli: Run, tmp_path: Path) -> None:
    kind = any_kind()  # a server that is not installed: skipped (failed on CI), as in conftest
    binary = testing.server_binary(kind)
    assert binary is not None
    if not testing.binary_supports_tls(binary):
        pytest.skip(f"{kind} ({binary}) was built without TLS support")
    tls = testing.make_tls_files(str(tmp_path))
    with testing.start_server(kind, tls=tls) as server:  # a failure to start fails the test
        url = f"rediss://127.0.0.1:{server.port}/0?ssl_ca_certs={tls.ca_cert}"
        url += f"&ssl_certfile={tls.cert}&ssl_keyfile={tls.key}"
        assert cli("--url", url, "load")[0] == 0
        assert cli("--url", url, "status")[0] == 0
        code, _, err = cli("--url", url.split("?")[0], "status")  # no CA: not trusted
        assert code == 1
        assert_one_line(err)
        assert "certificate" in err


# --- a cluster --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[testing.LocalCluster]:
    started = testing.start_cluster()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def cluster_url(cluster: testing.LocalCluster) -> str:
    """The cluster, emptied: no keys, no functions, on any node."""
    for node in cluster.primaries():
        with node.client() as c:
            c.flushall()
            c.function_flush()
            c.execute_command("WAIT", 1, 2000)
    return cluster.url


def primary_libraries(cluster: testing.LocalCluster) -> list[set[str]]:
    result = []
    for node in cluster.primaries():
        with node.client() as c:
            result.append(libraries(c))
    return result


@pytest.mark.cluster
def test_cluster_load_status_versions_remove(
    cli: Run, cluster: testing.LocalCluster, cluster_url: str
) -> None:
    code, out, _ = cli("--url", cluster_url, "status", "--json")
    assert code == 1
    assert [n["library"] for n in json.loads(out)["nodes"]] == ["missing"] * 6

    code, out, err = cli("--url", cluster_url, "load")
    assert code == 0, out + err
    assert out.count("identical to this package's code; replicated to 1/1 replicas") == 3
    assert primary_libraries(cluster) == [{_core.LIBRARY}] * 3

    for flag in ([], ["--cluster"]):  # detected from INFO cluster, or asked for
        code, out, _ = cli("--url", cluster_url, *flag, "status", "--json")
        assert code == 0
        report = json.loads(out)
        assert report["mode"] == "cluster"
        assert report["ok"] is True
        nodes = report["nodes"]
        assert len(nodes) == 6
        assert sorted(n["role"] for n in nodes) == ["primary"] * 3 + ["replica"] * 3
        assert {n["address"] for n in nodes} == {f"127.0.0.1:{n.port}" for n in cluster.nodes}
        assert all(n["library"] == "current" for n in nodes)
    code, out, _ = cli("--url", cluster_url, "status")
    assert code == 0
    assert out.count("current") == 6
    assert "on 3/3 primaries" in out

    with cluster.client() as c:
        c.execute_command("FUNCTION", "LOAD", OLD_SOURCE)  # redis-py sends it to every primary
    code, out, _ = cli("--url", cluster_url, "versions")
    assert code == 0
    assert any(line.startswith(OLD) and "3/3" in line for line in out.splitlines())

    assert cli("--url", cluster_url, "remove", OLD)[0] == 1
    assert primary_libraries(cluster) == [{_core.LIBRARY, OLD}] * 3
    code, out, _ = cli("--url", cluster_url, "remove", OLD, "--yes")
    assert code == 0
    assert out.count(f"deleted {OLD}") == 3
    assert primary_libraries(cluster) == [{_core.LIBRARY}] * 3
    for node in cluster.replicas():
        with node.client() as c:
            assert libraries(c) == {_core.LIBRARY}


@pytest.mark.cluster
def test_cluster_status_fails_when_one_primary_lacks_the_library(
    cli: Run, cluster: testing.LocalCluster, cluster_url: str
) -> None:
    assert cli("--url", cluster_url, "load")[0] == 0
    victim = cluster.primaries()[1]
    with victim.client() as c:
        c.function_flush()
    code, out, _ = cli("--url", cluster_url, "status", "--json")
    assert code == 1
    states = {n["address"]: n["library"] for n in json.loads(out)["nodes"]}
    assert states[f"127.0.0.1:{victim.port}"] == "missing"
    assert cli("--url", cluster_url, "load")[0] == 0
    assert cli("--url", cluster_url, "status")[0] == 0


@pytest.mark.cluster
def test_cluster_show_routes_by_key(
    cli: Run, cluster: testing.LocalCluster, cluster_url: str
) -> None:
    with cluster.client() as c:
        for n in range(6):  # sessions in different slots, so on different primaries
            RedisChatMessageHistory(f"u{n}", redis_client=c, ttl=500).add_messages(
                [HumanMessage(f"hi {n}"), AIMessage(f"hello {n}")]
            )
    for n in range(6):
        code, out, err = cli("--url", cluster_url, "show", f"u{n}")
        assert code == 0, err
        assert f"  1  human  hi {n}" in out
        assert f"  2  ai     hello {n}" in out


@pytest.mark.cluster
def test_cluster_thread_routes_by_key(
    cli: Run, cluster: testing.LocalCluster, cluster_url: str
) -> None:
    threads = [f"thread-{n}" for n in range(6)]  # in different slots, so on different primaries
    written = saver(url=cluster_url, ttl=300)
    newest = [write_thread(written, thread, steps=2, writes=1)[-1] for thread in threads]
    for thread, last in zip(threads, newest, strict=True):
        code, out, err = cli("--url", cluster_url, "thread", thread, "--json")
        assert code == 0, err
        data = json.loads(out)
        assert (data["checkpoints"], data["writes"], data["pinned"]) == (2, 1, 1)
        assert data["namespaces"][0]["newest"] == last
        assert all(k["memory_bytes"] > 0 and 290 <= k["ttl"] <= 300 for k in data["keys"])
    with cluster.client() as c:
        RedisChatMessageHistory("u", redis_client=c, ttl=500).add_messages([HumanMessage("hi")])
    data = json.loads(cli("--url", cluster_url, "show", "u", "--json")[1])
    assert data["memory_bytes"] > 0
    assert data["batches_exists"] is True


@pytest.mark.sentinel
def test_sentinel_thread_and_show(cli: Run, sentinel_set: testing.LocalSentinelSet) -> None:
    """Through a redis+sentinel:// URL: the primary the sentinels name."""
    sentinel_set.wait_ready()
    url = sentinel_set.url
    thread = f"t-sentinel-{time.time_ns()}"
    written = saver(url=url, ttl=300)
    newest = write_thread(written, thread, steps=2, writes=1)[-1]
    history = RedisChatMessageHistory(thread, url=url, ttl=300)
    history.add_user_message("hi")
    try:
        code, out, err = cli("--url", url, "thread", thread, "--json")
        assert code == 0, err
        data = json.loads(out)
        assert (data["checkpoints"], data["writes"]) == (2, 1)
        assert data["namespaces"][0]["newest"] == newest
        code, out, err = cli("--url", url, "show", thread)
        assert code == 0, err
        assert "length  1" in out
        assert "  1  human  hi" in out
    finally:
        written.delete_thread(thread)
        history.clear()


def test_load_checkpoint_loads_the_checkpointer_library_too(
    cli: Run, url: str, client: redis.Redis
) -> None:
    from pyhistory._library import Library

    checkpoint = Library.from_file("pyhistory_checkpoint.lua")
    code, out, err = cli("--url", url, "load", "--checkpoint")
    assert code == 0, out + err
    assert f"{checkpoint.name}: loaded" in out
    assert libraries(client) == {_core.LIBRARY, checkpoint.name}
    code, out, _ = cli("--url", url, "versions")
    assert checkpoint.name in out


@pytest.mark.cluster
def test_load_and_status_check_both_libraries_on_every_primary(cli: Run) -> None:
    """A primary without slots (just added, not given any yet) is one that redis-py's cluster
    client does not route to: `load --checkpoint` must load the checkpointer's library there too,
    and `status --checkpoint` must fail while a primary lacks it (`status` alone reports it)."""
    from pyhistory._library import Library

    checkpoint = Library.from_file("pyhistory_checkpoint.lua")
    owner = testing.start_server(cluster=True)
    empty = testing.start_server(cluster=True)
    try:
        with owner.client() as c:
            cmd(c, "CLUSTER", "ADDSLOTSRANGE", 0, 16383)
            cmd(c, "CLUSTER", "MEET", "127.0.0.1", empty.port)
            deadline = time.monotonic() + 30
            while not (
                c.info("cluster").get("cluster_enabled") == 1
                and cmd(c, "CLUSTER", "INFO").startswith(b"cluster_state:ok")
                and len([n for n in c.cluster("NODES").values() if "handshake" not in n["flags"]])
                == 2
            ):
                assert time.monotonic() < deadline, "the two nodes never met"
                time.sleep(0.05)
        url = owner.url

        code, out, err = cli("--url", url, "load", "--checkpoint")
        assert code == 0, out + err
        for node in (owner, empty):
            with node.client() as c:
                assert libraries(c) == {_core.LIBRARY, checkpoint.name}, node
        assert out.count("both libraries loaded, identical to this package's code") == 2, out
        code, out, _ = cli("--url", url, "status", "--checkpoint", "--json")
        assert code == 0, out
        assert json.loads(out)["checked"] == [_core.LIBRARY, checkpoint.name]

        with empty.client() as c:
            cmd(c, "FUNCTION", "DELETE", checkpoint.name)
        code, out, _ = cli("--url", url, "status", "--json")  # the history's library only
        assert code == 0, out
        states = {n["address"]: n["checkpoint_library"] for n in json.loads(out)["nodes"]}
        assert states == {
            f"127.0.0.1:{owner.port}": "current",
            f"127.0.0.1:{empty.port}": "missing",
        }
        code, out, _ = cli("--url", url, "status")
        assert code == 0, out
        assert f"{checkpoint.name} (LangGraph's checkpointer) has this package's code on 1/2" in out
        code, out, _ = cli("--url", url, "status", "--checkpoint")
        assert code == 1, out
        assert f"OK: {_core.LIBRARY}" in out
        assert f"NOT READY: {checkpoint.name} is current on 1/2 primaries" in out
        assert f"127.0.0.1:{empty.port} missing" in out
        assert "run `pyhistory load --checkpoint`" in out
    finally:
        owner.stop()
        empty.stop()
