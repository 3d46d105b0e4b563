"""pyhistory's version, from its installed metadata, read once when pyhistory is imported (never
on an event loop: importlib.metadata reads the file system)."""

from __future__ import annotations

from importlib import metadata

try:
    VERSION: str = metadata.version("pyhistory")
except metadata.PackageNotFoundError:  # pragma: no cover - run from a checkout, not installed
    VERSION = "0+unknown"
