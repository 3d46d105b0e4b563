"""The Lua library through raw FCALL/FCALL_RO: its contract, its errors, and how it is loaded."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import redis
import redis.asyncio
from chat import assert_ttl, expires_at
from redis.exceptions import ResponseError

import pyhistory
from pyhistory import _core, errors, testing
from pyhistory.errors import SERVER_ERRORS, translate
from pyhistory.functions import run
from pyhistory.store import load_functions

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "lua" / "pyhistory.lua"

# Every released library version and the sha256 of its code. A change to lua/pyhistory.lua must
# ship under a new library name (pyhistory_v5, ...): two releases share one server during a
# rollout, and FUNCTION LOAD REPLACE of the same name with other code would flap between them.
RELEASED = {
    "pyhistory_v1": "854c3036afb9a4f0",
    "pyhistory_v2": "c44ca81acb7ceba5",
    "pyhistory_v3": "9dba9a98be1b3cc6",
    "pyhistory_v4": "ac53248f399e1e9f",
}


@pytest.fixture
def loaded(client: redis.Redis) -> redis.Redis:
    load_functions(client)
    return client


def fcall(client: redis.Redis, name: str, key: str, *args: object) -> object:
    return client.execute_command("FCALL", f"{_core.LIBRARY}_{name}", 1, key, *args)


def append(
    client: redis.Redis, key: str, max_messages: int, ttl: int, *entries: str, batch: bytes = b""
) -> object:
    """FCALL append with its batch ids' key; a new batch id unless ``batch`` names one."""
    ids = _core.batches_key(key)
    batch = batch or _core.new_batch_id()
    return client.execute_command(
        "FCALL", _core.APPEND, 2, key, ids, max_messages, ttl, batch, *entries
    )


def test_library_version_is_pinned_to_its_code() -> None:
    digest = hashlib.sha256(LUA.read_bytes()).hexdigest()[:16]
    assert _core.LIBRARY in RELEASED, f"add {_core.LIBRARY} to RELEASED"
    assert RELEASED[_core.LIBRARY] == digest, (
        f"lua/pyhistory.lua changed (now {digest}) but its library name is still "
        f"{_core.LIBRARY}: ship the change as a new version"
    )


def test_server_lists_exactly_the_functions_python_names(loaded: redis.Redis) -> None:
    """_core names every function of the library: the three the history calls (append, window,
    touch) and the FCALL_RO forms kept for other clients (window_ro, length)."""
    (library,) = loaded.function_list(library=_core.LIBRARY)
    info = dict(zip(library[::2], library[1::2], strict=True))
    assert info[b"library_name"].decode() == _core.LIBRARY
    listed = {}
    for fn in info[b"functions"]:
        fields = dict(zip(fn[::2], fn[1::2], strict=True))
        listed[fields[b"name"].decode()] = {f.decode() for f in fields[b"flags"]}
    assert set(listed) == set(_core.FUNCTIONS)
    assert listed[_core.WINDOW_RO] == {"no-writes"}
    assert listed[_core.LENGTH] == {"no-writes"}
    assert listed[_core.APPEND] == set()
    assert listed[_core.WINDOW] == listed[_core.TOUCH] == {"allow-oom"}


def test_limits_come_from_the_lua_file() -> None:
    text = LUA.read_text()
    assert f"local MAX_BATCH = {_core.MAX_BATCH} " in text
    assert f"local MAX_INT = {_core.MAX_INT} " in text
    assert pyhistory.MAX_BATCH == _core.MAX_BATCH


def test_every_error_code_in_the_lua_maps_to_one_exception() -> None:
    sent = set(re.findall(r"'(BAD[A-Z]+|TOOMANY|TOOLONG)'", LUA.read_text()))
    assert sent == {"BADARGS", "BADSIZE", "BADTTL", "TOOMANY", "TOOLONG"}
    assert sent <= set(errors.SERVER_ERRORS)
    classes = [errors.SERVER_ERRORS[code] for code in sorted(sent)]
    assert len(set(classes)) == len(classes)


# --- append -----------------------------------------------------------------------------------


def test_append_pushes_in_order_trims_and_returns_the_length(loaded: redis.Redis) -> None:
    assert append(loaded, "s", 0, 0, "a", "b") == 2
    assert append(loaded, "s", 3, 0, "c", "d") == 3
    assert loaded.lrange("s", 0, -1) == [b"d", b"c", b"b"]
    assert loaded.ttl("s") == -1


def test_append_larger_than_the_bound_keeps_the_newest(loaded: redis.Redis) -> None:
    assert append(loaded, "s", 2, 0, *"abcde") == 2
    assert loaded.lrange("s", 0, -1) == [b"e", b"d"]


def test_append_sets_and_refreshes_the_ttl(loaded: redis.Redis) -> None:
    append(loaded, "s", 0, 100, "a")
    assert_ttl(loaded, "s", 100)
    loaded.expire("s", 5)
    append(loaded, "s", 0, 100, "b")
    assert_ttl(loaded, "s", 100)


def test_append_without_ttl_leaves_an_existing_ttl(loaded: redis.Redis) -> None:
    append(loaded, "s", 0, 50, "a")
    append(loaded, "s", 0, 0, "b")
    assert 0 < loaded.ttl("s") <= 50


def test_append_of_a_whole_batch_beyond_lua_stack_limits(loaded: redis.Redis) -> None:
    entries = [str(i) for i in range(_core.MAX_BATCH)]
    assert append(loaded, "s", 0, 0, *entries) == _core.MAX_BATCH
    assert loaded.lindex("s", 0) == entries[-1].encode()
    assert loaded.lindex("s", -1) == b"0"


# --- window, touch, length --------------------------------------------------------------------


def test_window_returns_the_newest_and_slides_the_ttl(loaded: redis.Redis) -> None:
    append(loaded, "s", 0, 0, *"abcd")
    assert fcall(loaded, "window", "s", 2, 0) == [b"d", b"c"]
    assert fcall(loaded, "window", "s", 0, 0) == [b"d", b"c", b"b", b"a"]
    assert loaded.ttl("s") == -1
    assert fcall(loaded, "window", "s", 1, 70) == [b"d"]
    assert_ttl(loaded, "s", 70)


def test_window_of_a_missing_session_creates_nothing(loaded: redis.Redis) -> None:
    assert fcall(loaded, "window", "nope", 5, 60) == []
    assert loaded.exists("nope") == 0


def test_window_ro_runs_under_fcall_ro_and_window_does_not(loaded: redis.Redis) -> None:
    append(loaded, "s", 0, 0, "a", "b")
    assert loaded.execute_command("FCALL_RO", _core.WINDOW_RO, 1, "s", 1) == [b"b"]
    assert loaded.execute_command("FCALL_RO", _core.LENGTH, 1, "s") == 2
    with pytest.raises(ResponseError, match="write flag"):
        loaded.execute_command("FCALL_RO", _core.WINDOW, 1, "s", 1, 10)


def test_touch_and_length(loaded: redis.Redis) -> None:
    assert fcall(loaded, "touch", "s", 30) == 0
    assert fcall(loaded, "length", "s") == 0
    append(loaded, "s", 0, 0, "a", "b", "c")
    assert fcall(loaded, "touch", "s", 30) == 1
    assert_ttl(loaded, "s", 30)
    assert fcall(loaded, "length", "s") == 3


# --- errors: each code, and nothing changed ---------------------------------------------------

IDS = ["s", _core.batches_key("s")]
BATCH = b"0123456789ab"
BAD_CALLS = [
    # (function, numkeys/keys, args, code)
    ("append", IDS, [], "BADARGS"),
    ("append", IDS, [0, 0, BATCH], "BADARGS"),
    ("append", ["s"], [0, 0, BATCH, "x"], "BADARGS"),
    ("append", ["s", "t", "u", "v"], [0, 0, BATCH, "x"], "BADARGS"),
    ("append", [], [0, 0, BATCH, "x"], "BADARGS"),
    ("append", IDS, [0, 0, "short", "x"], "BADARGS"),
    ("append", IDS, [0, 0, BATCH + b"c", "x"], "BADARGS"),
    ("append", IDS, ["ten", 0, BATCH, "x"], "BADSIZE"),
    ("append", IDS, [-1, 0, BATCH, "x"], "BADSIZE"),
    ("append", IDS, [1.5, 0, BATCH, "x"], "BADSIZE"),
    ("append", IDS, [2**31, 0, BATCH, "x"], "BADSIZE"),
    ("append", IDS, [10**30, 0, BATCH, "x"], "BADSIZE"),
    ("append", IDS, [0, "soon", BATCH, "x"], "BADTTL"),
    ("append", IDS, [0, -5, BATCH, "x"], "BADTTL"),
    ("append", IDS, [0, "nan", BATCH, "x"], "BADTTL"),
    ("append", IDS, [0, "inf", BATCH, "x"], "BADTTL"),
    ("append", IDS, [0, 0, BATCH, *["x"] * (10_001)], "TOOMANY"),
    ("window", ["s"], [5], "BADARGS"),
    ("window", ["s"], [5, 0, 0], "BADARGS"),
    ("window", ["s"], ["all", 0], "BADSIZE"),
    ("window", ["s"], [5, "-1"], "BADTTL"),
    ("window_ro", ["s"], [], "BADARGS"),
    ("window_ro", ["s"], ["-3"], "BADSIZE"),
    ("touch", ["s"], [0], "BADTTL"),
    ("touch", ["s"], ["x"], "BADTTL"),
    ("touch", ["s"], [], "BADARGS"),
    ("length", ["s"], [1], "BADARGS"),
]


@pytest.mark.parametrize(("name", "keys", "args", "code"), BAD_CALLS)
def test_bad_arguments_get_their_code_and_change_nothing(
    loaded: redis.Redis, name: str, keys: list[str], args: list[object], code: str
) -> None:
    append(loaded, "s", 0, 40, "kept")
    before = (loaded.lrange("s", 0, -1), expires_at(loaded, "s"), loaded.dbsize())
    command = "FCALL_RO" if name in ("window_ro", "length") else "FCALL"
    with pytest.raises(ResponseError) as caught:
        loaded.execute_command(command, f"{_core.LIBRARY}_{name}", len(keys), *keys, *args)
    assert str(caught.value).split(" ", 1)[0] == code
    assert "script:" not in str(caught.value)  # the message is ours, exactly as written
    assert type(translate(caught.value)) is SERVER_ERRORS[code]  # what pyhistory raises for it
    assert (loaded.lrange("s", 0, -1), expires_at(loaded, "s"), loaded.dbsize()) == before


@pytest.mark.parametrize("name", ["append", "window", "window_ro", "length"])
def test_wrong_key_type_is_wrongtype_and_changes_nothing(loaded: redis.Redis, name: str) -> None:
    loaded.set("s", "a string", ex=100)
    keys = IDS if name == "append" else ["s"]
    args = {"append": [0, 10, BATCH, "x"], "window": [0, 10], "window_ro": [0], "length": []}
    command = "FCALL_RO" if name in ("window_ro", "length") else "FCALL"
    with pytest.raises(ResponseError, match=r"^WRONGTYPE") as caught:
        loaded.execute_command(command, f"{_core.LIBRARY}_{name}", len(keys), *keys, *args[name])
    assert type(translate(caught.value)) is pyhistory.WrongTypeError
    assert loaded.get("s") == b"a string"
    assert_ttl(loaded, "s", 100)


# --- loading ----------------------------------------------------------------------------------


def test_explicit_load_is_idempotent(client: redis.Redis) -> None:
    assert load_functions(client) == _core.LIBRARY
    assert load_functions(client) == _core.LIBRARY
    assert [lib[1] for lib in client.function_list()] == [_core.LIBRARY.encode()]


async def test_explicit_asyncio_load(aclient: redis.asyncio.Redis) -> None:
    assert await pyhistory.aload_functions(aclient) == _core.LIBRARY
    assert await pyhistory.aload_functions(aclient) == _core.LIBRARY
    assert [lib[1] for lib in await aclient.function_list()] == [_core.LIBRARY.encode()]


def test_first_call_loads_the_library_lazily(client: redis.Redis) -> None:
    assert client.function_list() == []
    assert run(client, _core.append("s", ["a"], 0, 0)) == 1
    assert [lib[1] for lib in client.function_list()] == [_core.LIBRARY.encode()]


def test_call_after_function_flush_reloads_and_retries_once(client: redis.Redis) -> None:
    run(client, _core.append("s", ["a"], 0, 0))
    client.function_flush()
    assert run(client, _core.append("s", ["b"], 0, 0)) == 2
    client.function_flush()
    assert run(client, _core.window("s", 0, 0)) == [b"b", b"a"]


async def test_async_call_after_function_flush_reloads(aclient: redis.asyncio.Redis) -> None:
    from pyhistory.functions import arun

    assert await arun(aclient, _core.append("s", ["a"], 0, 0)) == 1
    await aclient.function_flush()
    assert await arun(aclient, _core.window("s", 0, 0)) == [b"a"]


def test_call_after_server_restart_reloads(local_server: testing.LocalServer) -> None:
    with local_server.client() as client:
        load_functions(client)
        local_server.restart()  # no persistence: data and functions are gone
        assert run(client, _core.append("s", ["a"], 0, 0)) == 1
        assert run(client, _core.length("s")) == 1


def test_other_libraries_and_versions_are_left_alone(client: redis.Redis) -> None:
    other = _core.library_source().replace(_core.LIBRARY, "pyhistory_v0")
    client.function_load(other)
    load_functions(client)
    names = sorted(lib[1] for lib in client.function_list())
    assert names == [b"pyhistory_v0", _core.LIBRARY.encode()]
    # both versions answer, on the same data
    assert append(client, "s", 0, 0, "a") == 1
    assert client.execute_command("FCALL", "pyhistory_v0_window", 1, "s", 0, 0) == [b"a"]


# --- packaging --------------------------------------------------------------------------------


def test_wheel_ships_the_lua_file_byte_for_byte(tmp_path: Path) -> None:
    subprocess.run(
        # offline: the installed hatchling (test extra) builds it, no index is asked for one
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"),
            *("--no-index", "-q", "-w", str(tmp_path), str(ROOT)),
        ],
        check=True,
    )
    (wheel,) = tmp_path.glob("pyhistory-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("pyhistory/lua/pyhistory.lua") == LUA.read_bytes()
        assert "pyhistory/py.typed" in archive.namelist()


def test_a_library_lost_again_and_again_is_a_typed_error_within_the_window(
    client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A function the server never keeps (here one the library does not define): the call
    loads the library again for HEAL_WINDOW seconds, then raises FunctionsNotLoadedError."""
    from pyhistory import functions
    from pyhistory._library import Call

    monkeypatch.setattr(functions, "HEAL_WINDOW", 0.3)
    lost = Call("FCALL", (f"{_core.LIBRARY}_lost", 1, "s"), "s", _core.HISTORY)
    started = time.monotonic()
    with pytest.raises(errors.FunctionsNotLoadedError, match="again after each of"):
        run(client, lost)
    assert 0.3 <= time.monotonic() - started < 2
