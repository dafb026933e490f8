"""The store's connections pack commands in C (hiredis), byte for byte as redis-py would."""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any

import pytest
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from asgi_perf import create_store
from asgi_perf.stores._redis import RedisStore
from asgi_perf.stores._redis_client import _timed

ARGS: list[tuple[Any, ...]] = [
    ("SET", "key", b"value", "PX", 5000),
    ("SET", "clé", "é€😀", "PX", 1),
    ("EVALSHA", b"0" * 40, b"1", "{k}c", "token", b"", "PUBLISH"),
    ("EVAL", "return 1", 0),
    ("ZADD", "z", 0.1, "m", 1e20, "n", -0.0, "o", float("inf"), "p", 2**70, "q", -5),
    ("SET", "k", bytearray(b"from a bytearray")),
    ("SET", "k", memoryview(b"from a memoryview")),
    ("SET", "k", b""),
    ("SET", "k", b"\r\n\0" * 4000),  # past redis-py's buffer cutoff
    ("SCRIPT LOAD", "return 1"),  # a command name with a space: two words
    (b"CLIENT SETNAME", b"asgi_perf"),
    ("DEL",),
]


def _connection(encoding: str = "utf-8") -> Any:
    return _timed(Connection)(encoding=encoding)


@pytest.mark.parametrize("args", ARGS, ids=lambda a: repr(a)[:40])
def test_a_command_packs_to_redis_pys_bytes(args: tuple[Any, ...]) -> None:
    assert b"".join(_connection().pack_command(*args)) == b"".join(Connection().pack_command(*args))


def test_a_batch_packs_to_redis_pys_bytes() -> None:
    assert b"".join(_connection().pack_commands(ARGS)) == b"".join(Connection().pack_commands(ARGS))


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (True, DataError),
        (None, DataError),
        (object(), DataError),
        (["a"], DataError),
        ("\udc80", UnicodeEncodeError),
    ],
)
def test_what_redis_py_refuses_is_refused_the_same_way(value: object, error: type) -> None:
    with pytest.raises(error):
        Connection().pack_command("SET", "k", value)
    with pytest.raises(error):
        _connection().pack_command("SET", "k", value)


def test_a_client_with_another_encoding_keeps_redis_pys_packer() -> None:
    connection = _connection("latin-1")
    packed = b"".join(connection.pack_command("SET", "k", "é"))
    assert packed == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n\xe9\r\n"
    assert b"".join(connection.pack_commands([("SET", "k", "é")])) == packed


def _calls(work: Any) -> int:
    events = 0

    def profile(frame: FrameType, event: str, arg: object) -> None:
        nonlocal events
        if event in ("call", "c_call"):
            events += 1

    sys.setprofile(profile)
    try:
        work()
    finally:
        sys.setprofile(None)
    return events


def test_packing_a_cache_fills_batch_costs_a_few_calls() -> None:
    """redis-py's asyncio connections pack in Python: 680 calls for the seven commands of a
    cache fill on Redis (52 µs on the development machine), 18 in C."""
    fill = [
        ("SET", "asgi_perf:cache:e:{h/items/1|?", b"x" * 300, "PX", 300000),
        *[("EVAL", "-- index", 1, f"i{n}", "member", "1767225600000", 0, 0) for n in range(5)],
        ("EVAL", "-- release script", 1, "{claim}", "token", "channel", "PUBLISH"),
    ]
    connection = _connection()
    connection.pack_commands(fill)  # warm
    assert _calls(lambda: connection.pack_commands(fill)) <= 18


@pytest.mark.redis
async def test_values_round_trip_through_redis(redis_url: str, key_prefix: str) -> None:
    store = create_store(redis_url, prefix=key_prefix, timeout=2.0)
    assert isinstance(store, RedisStore)
    try:
        values = [b"\r\n\0" * 3000, "é€😀".encode(), b""]
        for n, value in enumerate(values):
            await store.set(f"v{n}", value, ttl=30)
        assert [await store.get(f"v{n}") for n in range(len(values))] == values
        pool = store.client.connection_pool
        assert pool.connection_class.pack_command is not Connection.pack_command
    finally:
        await store.clear()
        await store.close()
