"""Shared fixtures: Redis (REDIS_URL → own redis-server → skip; fail under CI), Redis Cluster,
a unique key prefix per test, and store URLs for parametrized contract suites."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support import (
    RedisCluster,
    RedisServer,
    ping,
    redis_server_available,
    skip_or_fail,
    unique_prefix,
)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A reachable Redis: ``REDIS_URL``, else a redis-server of our own on a free port."""
    url = os.environ.get("REDIS_URL")
    if url:
        if not ping(url):
            skip_or_fail(f"REDIS_URL={url} does not answer PING")
        yield url
        return
    if not redis_server_available():
        skip_or_fail("no REDIS_URL and no redis-server on PATH to start one")
    server = RedisServer().start()
    try:
        yield server.url
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """A three-master Redis Cluster on free loopback ports, started for this session."""
    if not redis_server_available():
        skip_or_fail("no redis-server on PATH to start a Redis Cluster")
    cluster = RedisCluster()
    try:
        cluster.start()
    except Exception as exc:  # pragma: no cover - environment problem
        cluster.cleanup()
        skip_or_fail(f"could not start a Redis Cluster: {exc}")
    try:
        yield cluster.url
    finally:
        cluster.cleanup()


@pytest.fixture
def key_prefix(request: pytest.FixtureRequest) -> str:
    """A key prefix no other test (or test run sharing this Redis) uses."""
    return unique_prefix(request.node.name[:20].replace("[", "-").replace("]", ""))


@pytest.fixture(params=["memory", "redis", "cluster"])
def store_url(request: pytest.FixtureRequest) -> str:
    """Parametrizes a test over the embedded store, Redis and Redis Cluster."""
    if request.param == "memory":
        return "memory://"
    if request.param == "redis":
        return str(request.getfixturevalue("redis_url"))
    return str(request.getfixturevalue("redis_cluster_url"))
