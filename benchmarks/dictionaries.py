"""The compression dictionary scenarios (RFC 9842): a 12 KB JSON document polled in successive
versions, each about 2% different from the one before (a score and a timestamp change in one
item in five; ~270 of ~12,400 bytes by ``difflib``).

Every request is a client that holds the previous version: ``Available-Dictionary`` names
version ``n - 1`` and the app answers version ``n`` (``n`` is the request counter, cycling
through ``count`` versions). Measured against plain zstd of the same versions, same level:

- ``dict-poll-new``: 256 versions, more than a worker keeps prepared (64): every request
  prepares the dictionary it uses (one client polling a resource nobody else reads), and
  offers, hashes and stores its own version.
- ``dict-poll-shared``: 16 versions: dictionaries stay prepared (many clients polling the
  same resource): the hash of the body offered and the compression with the dictionary.

The checked request of each variant is version 1 (with version 0 as dictionary), so the
``bytes`` column compares the two codings of the same version.
"""

from __future__ import annotations

import base64
import hashlib
from functools import cache
from typing import Any

import orjson

from .apps import json_payload
from .driver import Request, Response
from .scenarios import Check, Scenario, Variant, ours

__all__ = ["dictionary_scenarios", "poll_versions"]

_CHANGED = 0.2  # share of items changed in each version (pairwise: about 2% of the bytes)
_ACCEPT = "gzip, deflate, br, zstd, dcb, dcz"


@cache
def poll_versions(count: int) -> tuple[bytes, ...]:
    """``count`` versions of the 12 KB JSON document, deterministic."""
    base = orjson.dumps(json_payload(12 * 1024))
    out = []
    for k in range(count):
        doc = orjson.loads(base)
        doc["version"] = k
        for item in doc["results"]:
            h = hashlib.blake2b(b"%d:%d" % (k, item["id"]), digest_size=4).digest()
            if int.from_bytes(h, "big") < _CHANGED * 2**32:
                item["score"] = round(int.from_bytes(h, "big") % 100_000 / 7, 3)
                month, day, hour, minute = 1 + h[0] % 12, 1 + h[1] % 28, h[2] % 24, h[3] % 60
                item["created"] = f"2026-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:00Z"
        out.append(orjson.dumps(doc))
    return tuple(out)


def _poll_app(count: int) -> Any:
    """Answers version ``n % count`` for the request counter ``n`` in the query (``n=<n>``)."""
    versions = poll_versions(count)
    starts = [
        [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
            (b"cache-control", b"max-age=60"),
        ]
        for body in versions
    ]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        k = int(scope["query_string"].rpartition(b"=")[2]) % count
        headers = list(starts[k])  # a fresh list per response, as a framework builds
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": versions[k]})

    return app


def _poll_request(count: int) -> Request:
    hashes = [
        (b"available-dictionary", b":" + base64.b64encode(hashlib.sha256(v).digest()) + b":")
        for v in poll_versions(count)
    ]
    return Request(
        unique=True,
        headers=(("accept-encoding", _ACCEPT),),
        headers_for=lambda n: [hashes[(n - 1) % count]],
    )


def _decoded(count: int, coding: str) -> Check:
    """The response is ``coding`` and decodes (independently) to the version it says it is."""
    import zstandard

    versions = poll_versions(count)

    def check(r: Response) -> str | None:
        got = r.header("content-encoding")
        if r.status != 200 or got != coding:
            return f"status {r.status}, Content-Encoding {got!r}, expected {coding!r}"
        body = r.body
        options: dict[str, Any] = {}
        if coding == "dcz":
            dictionary = next(
                (v for v in versions if hashlib.sha256(v).digest() == body[8:40]), None
            )
            if dictionary is None:
                return "dcz header names no version"
            raw = zstandard.ZstdCompressionDict(
                dictionary, dict_type=zstandard.DICT_TYPE_RAWCONTENT
            )
            options["dict_data"] = raw
            body = body[40:]
        decoded = zstandard.ZstdDecompressor(**options).decompressobj().decompress(body)
        if decoded != versions[orjson.loads(decoded)["version"]]:
            return "decoded body differs from the app's body"
        return None

    return check


def dictionary_scenarios() -> list[Scenario]:
    scenarios = []
    for sid, count, label in (
        ("dict-poll-new", 256, "every dictionary new to the worker (one client)"),
        ("dict-poll-shared", 16, "dictionaries shared by many clients"),
    ):

        def app(ctx: Any, count: int = count) -> Any:
            return _poll_app(count)

        zstd = ours("compression", "CompressionMiddleware", app, encodings=("zstd",))
        dcz = ours(
            "compression", "CompressionMiddleware", app, encodings=("zstd",), dictionaries="/r"
        )
        scenarios.append(
            Scenario(
                sid,
                f"dictionaries, 12 KB JSON polled, versions ~2% apart, {label}: dcz vs zstd 3",
                _poll_request(count),
                [
                    Variant("bare app", "bare", app),
                    Variant("asgi_perf zstd", "ours", zstd, _decoded(count, "zstd"), prime=1),
                    Variant("asgi_perf dcz", "ours", dcz, _decoded(count, "dcz"), prime=1),
                ],
            )
        )
    return scenarios


async def _pair_ratios(count: int) -> list[float]:
    """dcz bytes / zstd bytes for every version after the first, each with its predecessor as
    the dictionary (the timed scenarios report one such pair: version 1 against version 0)."""
    from asgi_perf.compression import CompressionMiddleware

    from .driver import one

    app, request = _poll_app(count), _poll_request(count)
    dcz = CompressionMiddleware(app, encodings=("zstd",), dictionaries="/r")
    zstd = CompressionMiddleware(app, encodings=("zstd",))
    await one(dcz, request, 0)  # offers version 0
    ratios = []
    for n in range(1, count):
        a, b = await one(dcz, request, n), await one(zstd, request, n)
        if a.header("content-encoding") != "dcz":
            raise AssertionError(f"version {n} was not sent as dcz")
        ratios.append(len(a.body) / len(b.body))
    return ratios


if __name__ == "__main__":  # python -m benchmarks.dictionaries: the byte ratio over all versions
    import asyncio
    import statistics

    found = asyncio.run(_pair_ratios(256))
    print(
        f"dcz / zstd bytes over {len(found)} versions: mean {statistics.mean(found):.3f}, "
        f"median {statistics.median(found):.3f}, min {min(found):.3f}, max {max(found):.3f}"
    )
