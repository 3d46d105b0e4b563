"""``make release-check``: the package as a user gets it from an index, checked end to end.

1. Build the sdist, then the wheel from the sdist (``python -m build --no-isolation``: the build
   backend is the one installed in this environment, nothing is downloaded to build).
2. ``twine check --strict`` both, and look inside: the Lua libraries, ``py.typed`` and
   ``LICENSE`` in the wheel; ``LICENSE``, ``CHANGELOG.md`` and the Lua sources in the sdist; the
   license, classifiers and project URLs in the metadata.
3. Install the wheel, with no extras, into a fresh virtualenv (``.venv-release/``; its
   dependencies come from the package index as for any user, or pip's cache).
4. From outside the checkout, with that virtualenv's Python: the README's quick start against a
   throwaway server (its output compared with the README's), the ``pyhistory`` command, the
   installed Lua equal to the source, and the optional parts failing with a message that names
   their extra.

Exits non-zero, naming what failed, at the first problem.
"""

from __future__ import annotations

import email
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-release"


def step(title: str) -> None:
    print(f"== {title}", flush=True)


def run(*args: str | Path, cwd: Path = ROOT, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        sys.exit(f"release-check: {' '.join(map(str, args))} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def fail(message: str) -> None:
    sys.exit(f"release-check: {message}")


def readme_quick_start() -> tuple[str, str]:
    """The README's quick start and the output the README shows for it."""
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## Quick start", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    after = section.split("```python\n", 1)[1].split("```", 1)[1]
    expected = after.split("<!-- output -->", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    return code, expected


def check_wheel(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for needed in ("pyhistory/lua/pyhistory.lua", "pyhistory/lua/pyhistory_checkpoint.lua"):
            if archive.read(needed) != (ROOT / "lua" / Path(needed).name).read_bytes():
                fail(f"{needed} in the wheel differs from lua/{Path(needed).name}")
        if "pyhistory/py.typed" not in names:
            fail("py.typed is missing from the wheel")
        if not any(n.endswith(".dist-info/licenses/LICENSE") for n in names):
            fail(f"LICENSE is missing from the wheel: {sorted(names)}")
        metadata_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = email.message_from_bytes(archive.read(metadata_name))
    if metadata["License-Expression"] != "MIT":
        fail(f"License-Expression is {metadata['License-Expression']!r}")
    if not metadata.get_all("Classifier") or not metadata["Keywords"]:
        fail("classifiers or keywords are missing from the metadata")
    urls = metadata.get_all("Project-URL") or []
    if not any(url.startswith("Documentation") for url in urls):
        fail(f"no Documentation URL in the metadata: {urls}")
    if any(name.startswith("tests/") for name in names):
        fail("the tests are in the wheel")


def check_sdist(sdist: Path) -> None:
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for needed in ("LICENSE", "CHANGELOG.md", "README.md", "lua/pyhistory.lua", "pyproject.toml"):
        if needed not in names:
            fail(f"{needed} is missing from the sdist")


def main() -> None:
    python = Path(sys.executable)
    with tempfile.TemporaryDirectory(prefix="pyhistory-release-") as tmp:
        out = Path(tmp) / "dist"
        step("build the sdist, then the wheel from it (no build isolation)")
        run(python, "-m", "build", "--no-isolation", "--outdir", out, ROOT)
        (sdist,) = out.glob("*.tar.gz")
        (wheel,) = out.glob("*.whl")
        print(f"   {sdist.name}, {wheel.name}")

        step("twine check --strict, and the files inside")
        run(python, "-m", "twine", "check", "--strict", sdist, wheel)
        check_wheel(wheel)
        check_sdist(sdist)

        step(f"install the wheel alone (no extras) into a fresh {VENV.name}/")
        shutil.rmtree(VENV, ignore_errors=True)
        run(python, "-m", "venv", VENV)
        fresh = VENV / "bin" / "python"
        run(fresh, "-m", "pip", "install", "-q", "--upgrade", "pip")
        run(fresh, "-m", "pip", "install", "-q", wheel)

        step("from outside the checkout: the README's quick start on a throwaway server")
        from pyhistory import testing

        away = Path(tmp) / "elsewhere"
        away.mkdir()
        server = testing.start_server("auto")
        try:
            env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
            env["REDIS_URL"] = server.url
            where = run(
                fresh, "-c", "import pyhistory; print(pyhistory.__file__)", cwd=away, env=env
            )
            if not where.startswith(str(VENV)):
                fail(f"pyhistory was imported from {where.strip()}, not from {VENV}")
            code, expected = readme_quick_start()
            printed = run(fresh, "-c", code, cwd=away, env=env)
            if printed.strip() != expected.strip():
                fail(f"the quick start printed:\n{printed}\nthe README says:\n{expected}")
            print(printed.rstrip())
            status = run(VENV / "bin" / "pyhistory", "status", cwd=away, env=env)
            if "current" not in status:
                fail(f"pyhistory status did not find the library current:\n{status}")
            same = (
                "import importlib.resources as r, sys; "
                "sys.stdout.buffer.write(r.files('pyhistory').joinpath('lua/pyhistory.lua')"
                ".read_bytes())"
            )
            installed = subprocess.run(
                [fresh, "-c", same], cwd=away, env=env, capture_output=True, check=True
            ).stdout
            if installed != (ROOT / "lua" / "pyhistory.lua").read_bytes():
                fail("the installed lua/pyhistory.lua differs from the source")
            for module, extra in (("pyhistory.agents", "agents"), ("pyhistory.checkpoint", "")):
                probe = subprocess.run(
                    [fresh, "-c", f"import {module}"],
                    cwd=away,
                    env=env,
                    capture_output=True,
                    text=True,
                )
                if probe.returncode == 0:
                    fail(f"{module} imported without its extra")
                if extra and f"pyhistory[{extra}]" not in probe.stderr:
                    fail(f"import {module} without its extra does not name it:\n{probe.stderr}")
        finally:
            server.stop()
    step("release-check: ok")


if __name__ == "__main__":
    main()
