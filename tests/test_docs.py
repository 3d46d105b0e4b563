"""Every code block of the README and of the documentation site runs as written, or says why not.

A block's marker is an HTML comment on the line before its opening fence (blank lines between
are allowed); GitHub and the site do not show it:

- no marker, on a ``python`` block: the block is run as a program in a fresh interpreter, with
  ``REDIS_URL`` naming a throwaway server that the test started;
- ``<!-- run -->`` on a ``sh`` block: run by bash (``set -e``) the same way, in the checkout's
  root (``python examples/...`` works) with ``.venv``'s ``bin`` first on ``PATH`` (so
  ``python`` and ``pyhistory`` are this checkout's);
- ``<!-- output -->`` on a ``text`` block: exactly what the block run before it printed;
- ``<!-- not run: REASON -->``: not run, on purpose, for the reason given (required).

Any other block without a marker fails here. Each program starts on an empty server (no keys, no
Functions library) and must leave no key behind: a snippet removes what it stored, so running it
against a server of your own leaves nothing. A runnable snippet names no ``localhost:6379``
except as the fallback of ``REDIS_URL``.

Generated pages (``docs/bench``, ``docs/loadtest-http``) and the checkpoint library's contract
pages (``docs/checkpoint``, kept with that library) are outside this rule.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from conftest import EXTERNAL_URL, any_kind

from pyhistory import testing

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
OUTSIDE = ("bench", "loadtest-http", "checkpoint")  # folders of docs/ outside the rule
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+|~~~+)\s*(?P<lang>[\w+-]*)")
MARKER = re.compile(r"^\s*<!--\s*(?P<kind>run|output|not run)\s*(?::\s*(?P<why>.*?))?\s*-->\s*$")
RUNNABLE = {"python", "sh"}


@dataclass
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    marker: str | None  # "run", "output", "not run" or None
    why: str
    code: str
    expected: str | None = None  # the output block that follows, if any
    attached: bool = False  # an output block that belongs to a run block before it

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def runs(self) -> bool:
        return (self.lang == "python" and self.marker is None) or (
            self.lang == "sh" and self.marker == "run"
        )


def documents() -> list[Path]:
    pages = sorted(
        path
        for path in DOCS.rglob("*.md")
        if path.relative_to(DOCS).parts[0] not in OUTSIDE or len(path.relative_to(DOCS).parts) == 1
    )
    return [ROOT / "README.md", *pages]


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, with their markers, outputs tied to their runs."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            j += 1
        body = [
            line[len(indent) :] if line.startswith(indent) else line for line in lines[i + 1 : j]
        ]
        k = i - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        marker = MARKER.match(lines[k]) if k >= 0 else None
        block = Block(
            path,
            i + 1,
            opening["lang"],
            marker["kind"] if marker else None,
            (marker["why"] or "") if marker else "",
            "\n".join(body) + "\n",
        )
        if block.marker == "output":
            runs = [b for b in found if b.runs]
            if runs and runs[-1].expected is None:
                runs[-1].expected = block.code
                block.attached = True
        found.append(block)
        i = j + 1
    return found


ALL = [block for path in documents() for block in blocks(path)]
RUNS = [block for block in ALL if block.runs]


def test_every_block_runs_or_says_why_not() -> None:
    unmarked = [
        f"{b.where} ({b.lang or 'no language'})"
        for b in ALL
        if not b.runs and b.marker not in ("output", "not run")
    ]
    assert not unmarked, "mark these blocks (see this module's docstring): " + ", ".join(unmarked)
    no_reason = [b.where for b in ALL if b.marker == "not run" and not b.why]
    assert not no_reason, "say why these blocks are not run: " + ", ".join(no_reason)
    orphans = [b.where for b in ALL if b.marker == "output" and not b.attached]
    assert not orphans, "output blocks with no run block before them: " + ", ".join(orphans)
    assert len(RUNS) >= 20  # the README's and the guide's snippets were found


def test_runnable_snippets_name_no_fixed_server() -> None:
    fixed = [
        b.where
        for b in RUNS
        for line in b.code.splitlines()
        if "localhost:6379" in line and "REDIS_URL" not in line
    ]
    assert not fixed, "use REDIS_URL (as the other snippets do) in: " + ", ".join(fixed)


@pytest.fixture(scope="module")
def docs_url() -> Iterator[str]:
    """One server for every snippet (the snippets are about the library, not the server kind)."""
    if EXTERNAL_URL:
        yield EXTERNAL_URL
        return
    server = testing.start_server(any_kind())
    try:
        yield server.url
    finally:
        server.stop()


def run(block: Block, url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.endswith("_API_KEY")  # offline: the snippets' fake models
    }
    env.pop("EXAMPLE_MODEL", None)
    env["REDIS_URL"] = url
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    command = [sys.executable, "-c", block.code]
    if block.lang == "sh":
        command, cwd = ["bash", "-e", "-c", block.code], ROOT
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize("block", RUNS, ids=[b.where for b in RUNS])
def test_snippet_runs(block: Block, docs_url: str, tmp_path: Path) -> None:
    with redis.Redis.from_url(docs_url) as client:
        client.flushall()
        client.function_flush()
        done = run(block, docs_url, tmp_path)
        assert done.returncode == 0, f"{block.where} failed:\n{done.stdout}\n{done.stderr}"
        if block.expected is not None:
            printed = [line.rstrip() for line in done.stdout.strip().splitlines()]
            assert printed == [line.rstrip() for line in block.expected.strip().splitlines()]
        assert client.keys("*") == [], f"{block.where} left keys behind"


def test_the_changelog_names_the_libraries_this_release_calls() -> None:
    from pyhistory import LIBRARY
    from pyhistory.checkpoint import LIBRARY as CHECKPOINT_LIBRARY

    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "## Unreleased" in changelog
    for library in (LIBRARY, CHECKPOINT_LIBRARY.name):
        assert f"`{library}`" in changelog, (
            f"CHANGELOG.md does not say which release loads {library}"
        )


def test_the_functions_page_names_the_libraries_this_release_loads() -> None:
    from pyhistory import LIBRARY
    from pyhistory.checkpoint import LIBRARY as CHECKPOINT_LIBRARY

    page = (ROOT / "docs" / "functions.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`(pyhistory(?:_checkpoint)?_v\d+)", page))
    assert {LIBRARY, CHECKPOINT_LIBRARY.name} <= named, f"docs/functions.md names {named}"
    assert {n for n in named if "checkpoint" in n} == {CHECKPOINT_LIBRARY.name}, named
