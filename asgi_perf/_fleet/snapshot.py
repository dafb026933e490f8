"""What one process publishes: who it is, when, and the mergeable state of its statistics.

The document is JSON (orjson) compressed with zlib: a route's latency sketch is a few hundred
bucket counts, mostly small and many zero, which compress several times over.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
import zlib
from dataclasses import dataclass
from typing import Any

import orjson

from asgi_perf._core.stats import states

__all__ = ["FORMAT", "Instance", "decode", "encode", "this_instance"]

FORMAT = 1


@dataclass(frozen=True, slots=True)
class Instance:
    """One process of the fleet: a fresh ``id`` per process, so a reused pid is a new one."""

    id: str
    host: str
    pid: int
    started: float

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "host": self.host, "pid": self.pid, "started": self.started}


_instance: Instance | None = None


def this_instance() -> Instance:
    """This process (made again after a fork: the child is another instance)."""
    global _instance
    pid = os.getpid()
    if _instance is None or _instance.pid != pid:
        host = socket.gethostname()
        _instance = Instance(f"{host}-{pid}-{uuid.uuid4().hex[:8]}", host, pid, time.time())
    return _instance


def encode(instance: Instance, published: float) -> bytes:
    """This process's statistics now, ready to publish."""
    document = {
        "format": FORMAT,
        "instance": instance.describe(),
        "published": published,
        "stats": states(),
    }
    return zlib.compress(orjson.dumps(document, default=str, option=orjson.OPT_NON_STR_KEYS), 1)


def decode(blob: bytes) -> dict[str, Any]:
    """A published document (``ValueError`` when it is not one of this format)."""
    try:
        document = orjson.loads(zlib.decompress(blob))
    except (zlib.error, orjson.JSONDecodeError) as exc:
        raise ValueError(f"not a statistics snapshot: {exc}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError("not a statistics snapshot of this version")
    return document
