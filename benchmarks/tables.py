"""The in-process scenarios, one table per middleware (composed by ``build_scenarios``).

Each function returns one component's scenarios for one store: ``peers`` adds the peer
variants, ``redis`` the Redis-backed scenarios instead of the in-memory ones. The building
blocks (apps, checks, peers) are in :mod:`benchmarks.scenarios`.
"""

from __future__ import annotations

from . import apps
from .apps import BODIES
from .driver import Request
from .scenarios import (
    ACCEPT_ALL,
    ALL_CODINGS,
    CACHEABLE,
    HUGE,
    NO_STORE,
    STACK,
    Builder,
    Otel,
    Scenario,
    Variant,
    asgi_ratelimit,
    asgi_ratelimit_in_starlette,
    brotli_asgi,
    codec_alone,
    encoded,
    fastapi_cache,
    floor,
    full_stack,
    has_header,
    header_absent,
    header_is,
    identity,
    in_starlette,
    ours,
    ours_in_starlette,
    peer,
    ping,
    raw,
    slowapi_in_starlette,
    span_recorded,
    starlette_compress,
    starlette_gzip,
    status,
    stream,
)

GET = Request()
UNIQUE = Request(unique=True)
B200 = BODIES["200B"]


def bare(app: Builder) -> Variant:
    return Variant("bare app", "bare", app)


def floor_variant(app: Builder, body: bytes = B200) -> Variant:
    return Variant("floor middleware", "floor", floor(app), identity(body))


def ping_variant() -> Variant:
    return Variant("Redis PING floor", "ping", ping(raw()), status(200), round_trips=True)


def floor_scenario() -> list[Scenario]:
    title = "floor: trivial 200 B app vs the send-forwarding floor middleware"
    return [Scenario("floor", title, GET, [bare(raw()), floor_variant(raw())])]


# -- compression ----------------------------------------------------------------------------------
#: id, title, coding, app, the body the app sends
COMPRESSED = (
    ("compress-12k-gzip", "compression, 12 KB JSON, gzip level 6", "gzip", "12KB"),
    ("compress-12k-zstd", "compression, 12 KB JSON, zstd level 3", "zstd", "12KB"),
    ("compress-12k-br", "compression, 12 KB JSON, brotli quality 4", "br", "12KB"),
    ("compress-1m-gzip", "compression, 1 MB JSON, gzip level 6", "gzip", "1MB"),
    ("compress-stream-gzip", "compression, streaming NDJSON (16 x 4 KB), gzip 6", "gzip", "stream"),
)
LEVELS = {"gzip": ("gzip_level", 6), "br": ("brotli_quality", 4), "zstd": ("zstd_level", 3)}


def _compressed(sid: str, title: str, coding: str, body: str, peers: bool) -> Scenario:
    app = stream() if body == "stream" else raw(body)
    data = b"".join(apps.STREAM_CHUNKS) if body == "stream" else BODIES[body]
    option, level = LEVELS[coding]
    check = encoded(coding, data)
    options = {"encodings": (coding,), "minimum_size": 500, option: level}
    variants = [
        bare(app),
        Variant(
            f"asgi_perf {coding}",
            "ours",
            ours("compression", "CompressionMiddleware", app, **options),
            check,
        ),
    ]
    if body == "12KB":  # the codec's own call on the same bytes, for "time beyond the codec"
        alone = codec_alone(coding, {option: level})
        variants.append(Variant(f"{coding} codec alone", "reference", alone, check))
    if peers and coding == "gzip":
        variants.append(Variant("Starlette GZipMiddleware(6)", "peer", starlette_gzip(app), check))
    if peers:
        compress = starlette_compress(app, coding, level)
        variants.append(Variant(f"starlette-compress {coding}", "peer", compress, check))
    if peers and coding == "br":
        variants.append(Variant("brotli-asgi", "peer", brotli_asgi(app, level), check))
    return Scenario(sid, title, Request(headers=(("accept-encoding", coding),)), variants)


#: id, title, body, request: compression that must not happen
SKIPPED = (
    (
        "compress-skip-tiny",
        "compression not applied: 200 B body (Accept-Encoding: all)",
        "200B",
        Request(headers=(("accept-encoding", ALL_CODINGS),)),
    ),
    ("compress-skip-noae", "compression not applied: 12 KB JSON, no Accept-Encoding", "12KB", GET),
)


def _skipped(sid: str, title: str, body: str, request: Request, peers: bool) -> Scenario:
    app, same = raw(body), identity(BODIES[body])
    variants = [
        bare(app),
        floor_variant(app, BODIES[body]),
        Variant(
            "asgi_perf compression", "ours", ours("compression", "CompressionMiddleware", app), same
        ),
    ]
    if peers:
        variants += [
            Variant("Starlette GZipMiddleware(6)", "peer", starlette_gzip(app), same),
            Variant("starlette-compress", "peer", starlette_compress(app, "all", 0), same),
        ]
    return Scenario(sid, title, request, variants)


def compression_scenarios(peers: bool) -> list[Scenario]:
    return [_compressed(*row, peers) for row in COMPRESSED] + [
        _skipped(*row, peers) for row in SKIPPED
    ]


# -- rate limiting --------------------------------------------------------------------------------
# On a one-route Starlette app (slowapi needs one), fixed window like the peers.
def _limited(
    sid: str, title: str, limit: str, per_hour: int, refuse: bool, redis: bool, peers: bool
) -> Scenario:
    check = status(429) if refuse else status(200)
    prime = 1 if refuse else 0
    store = "redis" if redis else "memory://"
    plain = in_starlette(lambda ctx, app: None)
    variants = [bare(plain)]
    if redis:
        variants.append(
            Variant("Redis PING floor", "ping", ping(plain), status(200), round_trips=True)
        )
    strategies = ("fixed-window",) if refuse else ("fixed-window", "gcra")
    for strategy in strategies:
        mw = ours_in_starlette(
            "ratelimit", "RateLimitMiddleware", limit=limit, strategy=strategy, storage=store
        )
        variants.append(
            Variant(
                f"asgi_perf {strategy}", "ours", in_starlette(mw), check, prime, round_trips=redis
            )
        )
    if peers:
        theirs = peer(in_starlette(asgi_ratelimit_in_starlette(per_hour, redis)), "asgi-ratelimit")
        variants.append(Variant("asgi-ratelimit", "peer", theirs, check, prime, round_trips=redis))
        slowapi = peer(in_starlette(slowapi_in_starlette(limit, redis)), "slowapi")
        variants.append(Variant("slowapi (ASGI middleware)", "peer", slowapi, check, prime))
    return Scenario(sid, title, GET, variants, needs_redis=redis)


def _limited_raw(peers: bool) -> Scenario:
    limiter = ours("ratelimit", "RateLimitMiddleware", raw(), limit=HUGE, strategy="fixed-window")
    variants = [
        bare(raw()),
        floor_variant(raw()),
        Variant("asgi_perf fixed-window", "ours", limiter, status(200)),
    ]
    if peers:
        variants.append(
            Variant("asgi-ratelimit", "peer", asgi_ratelimit(raw(), 10**9), status(200))
        )
    title = "rate limit, allowed, memory store (bare ASGI app: no framework noise)"
    return Scenario("ratelimit-allow-raw", title, GET, variants)


def ratelimit_scenarios(peers: bool, redis: bool) -> list[Scenario]:
    store = "Redis" if redis else "memory"
    tag = store.lower()
    allow = _limited(
        f"ratelimit-allow-{tag}",
        f"rate limit, allowed, {store} store (Starlette route)",
        HUGE,
        10**9,
        False,
        redis,
        peers,
    )
    refuse = _limited(
        f"ratelimit-refuse-{tag}",
        f"rate limit, refused (429), {store} store (Starlette route)",
        "1/hour",
        1,
        True,
        redis,
        peers,
    )
    return [allow, refuse] if redis else [allow, _limited_raw(peers), refuse]


# -- caching --------------------------------------------------------------------------------------
def _cache_variant(what: str, app: Builder, redis: bool) -> Variant:
    """``asgi_perf cache hit`` (primed once) or ``asgi_perf cache miss``."""
    hit = what == "hit"
    storage = {"storage": "redis"} if redis else {}
    return Variant(
        f"asgi_perf cache {what}",
        "ours",
        ours("cache", "CacheMiddleware", app, default_ttl=300, **storage),
        header_is("x-cache", "HIT" if hit else "MISS"),
        prime=1 if hit else 0,
        round_trips=redis,
    )


def cache_scenarios(peers: bool, redis: bool) -> list[Scenario]:
    store = "Redis" if redis else "memory"
    tag = "redis" if redis else "memory"
    reference = ping_variant() if redis else floor_variant(raw())
    fastapi: Builder = lambda ctx: apps.fastapi_app()  # noqa: E731
    routed = [bare(fastapi), _cache_variant("hit", fastapi, redis)]
    if peers:
        backend = "RedisBackend" if redis else "InMemoryBackend"
        theirs = peer(lambda ctx: fastapi_cache(ctx, redis), "fastapi-cache2")
        routed.append(
            Variant(
                f"fastapi-cache2 hit ({backend})",
                "peer",
                theirs,
                status(200),
                prime=1,
                round_trips=redis,
            )
        )
    return [
        Scenario(
            f"cache-hit-{tag}",
            f"cache hit, {store} store, trivial app",
            GET,
            [bare(raw()), reference, _cache_variant("hit", raw(), redis)],
            needs_redis=redis,
        ),
        Scenario(
            "cache-hit-redis-fastapi" if redis else "cache-hit-fastapi",
            f"cache hit, {store} store, FastAPI route",
            GET,
            routed,
            needs_redis=redis,
        ),
        Scenario(
            f"cache-miss-{tag}",
            f"cache miss (then store), {store} store, 200 B",
            UNIQUE,
            [
                bare(raw()),
                *([ping_variant()] if redis else []),
                _cache_variant("miss", raw(), redis),
            ],
            needs_redis=redis,
        ),
    ]


# -- dedup, timing, queries -----------------------------------------------------------------------
def dedup_scenarios(redis: bool) -> list[Scenario]:
    store = "Redis" if redis else "memory"
    storage = {"storage": "redis"} if redis else {}
    dedup = ours("dedup", "DedupMiddleware", raw(), window=5.0, **storage)
    return [
        Scenario(
            f"dedup-{store.lower()}",
            f"dedup, non-duplicate request, {store} store",
            UNIQUE,
            [
                bare(raw()),
                ping_variant() if redis else floor_variant(raw()),
                Variant(
                    "asgi_perf dedup", "ours", dedup, header_absent("x-dedup"), round_trips=redis
                ),
            ],
            needs_redis=redis,
        )
    ]


def timing_scenarios(peers: bool) -> list[Scenario]:
    otel = Otel()
    timing = ours("timing", "TimingMiddleware", raw(), otel="off")
    traced = [
        bare(raw()),
        Variant(
            "asgi_perf timing + OTel SDK",
            "ours",
            otel.ours(raw()),
            span_recorded(otel.spans, "ours"),
        ),
    ]
    traced.append(
        Variant(
            "OpenTelemetry SDK calls alone",
            "reference",
            otel.sdk_alone(raw()),
            span_recorded(otel.spans, "reference"),
        )
    )
    if peers:
        theirs = otel.theirs(raw())
        check = span_recorded(otel.spans, "theirs")
        traced.append(Variant("opentelemetry-instrumentation-asgi", "peer", theirs, check))
    return [
        Scenario(
            "timing",
            "timing, OpenTelemetry off",
            GET,
            [
                bare(raw()),
                floor_variant(raw()),
                Variant("asgi_perf timing", "ours", timing, has_header("server-timing")),
            ],
        ),
        Scenario("timing-otel", "timing with the OpenTelemetry SDK (spans + metrics)", GET, traced),
    ]


def queries_scenarios() -> list[Scenario]:
    queries = ours("queries", "QueryMiddleware", raw())
    variants = [
        bare(raw()),
        floor_variant(raw()),
        Variant("asgi_perf queries", "ours", queries, status(200)),
    ]
    return [Scenario("queries", "query middleware, request with no queries", GET, variants)]


# -- the full stack -------------------------------------------------------------------------------
STACK_TITLE = "full stack (from_env, all enabled), {store} store, {what}"
NEW_PATHS = Request(path="/items", unique_path=True, headers=ACCEPT_ALL)


def stack_scenarios(redis: bool) -> list[Scenario]:
    """A never-repeated no-store request in both shapes: a new query string each time, and a
    new path id each time (a REST /items/{id}); caches treat them differently. On Redis, the
    path shape and a cacheable response repeated."""
    app = raw(extra=NO_STORE)
    if not redis:
        shapes = (
            ("stack-memory", "new query each time", Request(unique=True, headers=ACCEPT_ALL)),
            ("stack-memory-paths", "new path id each time", NEW_PATHS),
        )
        return [
            Scenario(
                sid,
                STACK_TITLE.format(store="memory", what=f"no-store, {what}"),
                request,
                [
                    bare(app),
                    floor_variant(app),
                    Variant(STACK, "ours", full_stack(app), status(200)),
                ],
            )
            for sid, what, request in shapes
        ]
    cacheable = raw(extra=CACHEABLE)
    return [
        Scenario(
            "stack-redis",
            STACK_TITLE.format(store="Redis", what="no-store, new path id each time"),
            NEW_PATHS,
            [
                bare(app),
                Variant(STACK, "ours", full_stack(app, "redis"), status(200), round_trips=True),
            ],
            needs_redis=True,
        ),
        Scenario(
            "stack-redis-hit",
            STACK_TITLE.format(store="Redis", what="a cacheable response repeated"),
            Request(headers=ACCEPT_ALL),
            [
                bare(cacheable),
                Variant(
                    STACK,
                    "ours",
                    full_stack(cacheable, "redis"),
                    status(200),
                    prime=1,
                    round_trips=True,
                ),
            ],
            needs_redis=True,
        ),
    ]
