"""Whether a Docker engine can run a test image, asked through the Docker SDK.

The ``docker`` package (testcontainers' own dependency) is imported only when an engine may be
there, so a machine without one answers False at once, and never waits longer than the timeout.
"""

from __future__ import annotations

import os
import urllib.parse

__all__ = ["docker_image_available"]

DEFAULT_SOCKET = "/var/run/docker.sock"


def _no_engine_here() -> bool:
    """True when ``DOCKER_HOST`` names a unix socket (or is unset) and that socket is absent."""
    host = os.environ.get("DOCKER_HOST") or f"unix://{DEFAULT_SOCKET}"
    parsed = urllib.parse.urlparse(host)
    return parsed.scheme == "unix" and not os.path.exists(parsed.path)


def docker_image_available(image: str, timeout: float = 2.0) -> bool:
    """True only if a Docker engine answers within ``timeout`` and has ``image`` locally.

    Honours ``DOCKER_HOST`` and the other variables ``docker.from_env`` reads. Never raises:
    no engine, no ``docker`` package, a hung engine or a missing image all give False.
    """
    if _no_engine_here():
        return False
    try:
        import docker  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=timeout)
    except Exception:  # no engine answers (DockerException), or a malformed DOCKER_HOST
        return False
    try:
        client.images.get(image)
    except Exception:  # ImageNotFound, APIError, a timeout
        return False
    finally:
        client.close()
    return True
