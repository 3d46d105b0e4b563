"""Locks that a forked child process gets anew.

gunicorn, celery and multiprocessing fork processes that already used pyhistory, often while
other threads of the parent work. A ``threading.Lock`` that one of those threads held at the
fork stays held in the child forever (the thread that would release it does not exist there), so
the child's first cache update would wait for good. Every lock that guards a process-wide or a
per-client cache is made with :func:`lock`, and a child replaces each one with a free lock
before it runs anything else (``os.register_at_fork``). What the lock guarded may be half
changed in the child, which is harmless for these: caches whose entries are replaced whole, never
changed in place. tests/test_clients.py forks with each of them held.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

# Each owner of such locks (an object or a module) and the names of its attributes holding one.
_owners: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()


def lock(owner: Any, attribute: str) -> threading.Lock:
    """A new lock, to be stored as ``owner.<attribute>``; a forked child finds a free lock
    there."""
    _owners.setdefault(owner, set()).add(attribute)
    return threading.Lock()


def _renew_in_child() -> None:
    for owner, attributes in list(_owners.items()):
        for attribute in attributes:
            setattr(owner, attribute, threading.Lock())


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_renew_in_child)
