"""What a Redis Functions library is to the loader: its versioned name, its Lua source and the
functions it registers, read from the file shipped in the package; and one call to send. No I/O
beyond reading the package's own files, and nothing specific to any one library."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

# What a redis-py cluster client sends besides the calls, and an ACL must allow: the slot map and
# the command table when it starts, READONLY on replicas' connections (read from replicas),
# ASKING during a slot migration.
CLUSTER_CLIENT_COMMANDS: tuple[str, ...] = ("cluster|slots", "command", "readonly", "asking")


def acl_glob(text: str) -> str:
    """``text`` with the characters an ACL key pattern treats as glob syntax escaped."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


@dataclass(frozen=True)
class Library:
    """A Functions library: ``name`` (``#!lua name=...``, carrying the contract version) and its
    Lua ``source``. Function names are global on a server, so each one starts with the library's
    name: two releases with different names live side by side without replacing each other."""

    name: str
    source: str = field(repr=False)

    @classmethod
    def from_file(cls, filename: str) -> Library:
        """The library in ``lua/<filename>``: shipped inside the package, or in a source tree."""
        shipped = resources.files("pyhistory").joinpath("lua").joinpath(filename)
        if shipped.is_file():
            source = shipped.read_text(encoding="utf-8")
        else:
            checkout = Path(__file__).resolve().parent.parent / "lua" / filename
            source = checkout.read_text(encoding="utf-8")
        match = re.match(r"#!lua name=(\w+)\n", source)
        if match is None:
            raise RuntimeError(f"lua/{filename} does not start with '#!lua name=...'")
        return cls(match.group(1), source)

    def function(self, short: str) -> str:
        """The full name of one of the library's functions: ``<library>_<short>``."""
        return f"{self.name}_{short}"

    @property
    def functions(self) -> tuple[str, ...]:
        """The names the library registers, in the order the file registers them."""
        return tuple(re.findall(r"function_name\s*=\s*'(\w+)'", self.source))

    @property
    def commands(self) -> tuple[str, ...]:
        """The Redis commands its functions run (lower case, sorted): what an ACL must allow."""
        return tuple(sorted({c.lower() for c in re.findall(r"redis\.call\('(\w+)'", self.source)}))

    def acl_rule(
        self,
        key_prefix: str,
        client_commands: tuple[str, ...],
        other_keys: tuple[str, ...] = (),
    ) -> str:
        """The least-privilege ACL rules for a runtime user of this library: the keys under
        ``key_prefix`` only (glob characters in it escaped) and the ``other_keys`` patterns,
        ``client_commands`` (what the Python side sends itself: FCALL, DEL, ...), the commands the
        functions run and what a redis-py cluster client sends to find its way, nothing else (no
        FUNCTION, no KEYS/SCAN, no channels)."""
        every = (*client_commands, *self.commands, *CLUSTER_CLIENT_COMMANDS)
        commands = " ".join(f"+{c}" for c in dict.fromkeys(every))
        keys = " ".join(f"~{pattern}" for pattern in (f"{acl_glob(key_prefix)}*", *other_keys))
        return f"resetkeys {keys} resetchannels -@all {commands}"

    def constant(self, name: str) -> int:
        """An integer constant the file defines as ``local NAME = <digits>``."""
        match = re.search(rf"^local {name} = (\d+)", self.source, re.MULTILINE)
        if match is None:
            raise RuntimeError(f"the {self.name} library does not define {name}")
        return int(match.group(1))


@dataclass(frozen=True)
class Call:
    """One command to send: its name, its arguments, the key it touches (for cluster routing),
    the library whose function it calls, which is loaded again if the server lost it, and the
    plain commands, if any, that go with it in one MULTI/EXEC."""

    command: str
    args: tuple[Any, ...]
    key: str
    library: Library | None = None
    # Plain commands sent ahead of the call in one MULTI/EXEC (on the call's slot): large values
    # written beside a function that only checks and indexes them. Empty: the call alone.
    before: tuple[tuple[Any, ...], ...] = ()
    # What to send in place of this transaction when it may have been applied already (a
    # connection failed after it was written): the same work, done once however often it is
    # sent. None: this transaction is that already.
    again: Call | None = None
