"""Load the Functions library onto a server (or every primary of a cluster) and run calls on it,
loading it again once when the server says it lost it (restart without persistence, FUNCTION FLUSH,
a new or failed-over node)."""

from __future__ import annotations

from typing import Any, Union

import redis
import redis.asyncio
from redis.exceptions import NoPermissionError, ResponseError

from pyhistory import _core
from pyhistory.errors import FunctionsNotLoadedError, translate

SyncClient = Union["redis.Redis", "redis.cluster.RedisCluster"]
AsyncClient = Union["redis.asyncio.Redis", "redis.asyncio.cluster.RedisCluster"]

_MISSING = "Function not found"

_LOAD_HINT = (
    "the server does not have the pyhistory functions ({library}) and this client may not load "
    "them ({error}). Load them once with a user that may run FUNCTION LOAD, at deploy time: "
    "`pyhistory load --url redis://admin@host:port` or pyhistory.load_functions(admin_client)."
)


def _is_missing(error: ResponseError) -> bool:
    return str(error).startswith(_MISSING)


def _load_failed(error: Exception) -> FunctionsNotLoadedError:
    failure = FunctionsNotLoadedError(_LOAD_HINT.format(library=_core.LIBRARY, error=error))
    failure.__cause__ = error
    return failure


def load_functions(client: SyncClient) -> str:
    """Load (or replace with identical code) the library; on a cluster, on every primary.

    Call it at application start-up or deploy time; the history also loads it lazily. Returns the
    library's name, e.g. ``"pyhistory_v1"``.
    """
    try:
        client.execute_command("FUNCTION LOAD", "REPLACE", _core.library_source())
    except NoPermissionError as error:
        raise _load_failed(error) from error
    return _core.LIBRARY


async def aload_functions(client: AsyncClient) -> str:
    """The asyncio twin of :func:`load_functions`."""
    try:
        await client.execute_command("FUNCTION LOAD", "REPLACE", _core.library_source())
    except NoPermissionError as error:
        raise _load_failed(error) from error
    return _core.LIBRARY


def _raise_typed(error: ResponseError) -> None:
    translated = translate(error)
    if translated is not error:
        raise translated from error


def run(client: SyncClient, call: _core.Call) -> Any:
    """Send one call; load the library and resend once if the server lacks it."""
    try:
        return client.execute_command(call.command, *call.args)
    except ResponseError as error:
        if not _is_missing(error):
            _raise_typed(error)
            raise
    load_functions(client)
    try:
        return client.execute_command(call.command, *call.args)
    except ResponseError as error:
        _raise_typed(error)
        raise


async def arun(client: AsyncClient, call: _core.Call) -> Any:
    """The asyncio twin of :func:`run`."""
    try:
        return await client.execute_command(call.command, *call.args)
    except ResponseError as error:
        if not _is_missing(error):
            _raise_typed(error)
            raise
    await aload_functions(client)
    try:
        return await client.execute_command(call.command, *call.args)
    except ResponseError as error:
        _raise_typed(error)
        raise
