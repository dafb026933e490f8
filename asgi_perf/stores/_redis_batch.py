"""Several commands in one round trip on one pooled connection of a single-node client
(``redis://``, ``rediss://``, ``unix://``).

redis-py's ``Pipeline.execute`` wraps every batch in machinery this store never uses (WATCH
bookkeeping, script preloading, HIMPORT preparation, operation metrics, a retry closure, and
a ``shield``-ed task to give the connection back): about 60 µs of client CPU per batch on the
development machine, more than the round trip itself (a one-command pipeline took 132 µs where
the same command alone took 74 µs; three ``EVALSHA`` took 188 µs by pipeline and 123 µs
here). The stack sends one or two batches per request on Redis.

:class:`Batch` keeps what a non-transactional pipeline means: the commands are packed into one
write and their replies read in order; a command Redis refuses gives its error as its reply
(``raise_on_error=False``) or raises the first one; a connection error drops the connection and
the batch is sent once more on a fresh one, as the client's retry policy does for a single
command; its replies are read under one deadline, the read timeout in force, where redis-py
starts a timer per reply; a batch cut short (a timeout, a cancellation) leaves no reply on its
connection for the next caller (the connection drops itself); a ``health_check_interval`` on
the URL applies to a batch as to any command. Replies are Redis's own, without redis-py's
response callbacks: the store reads script replies raw and only tests the others for errors.
redis-py's per-operation metrics (its opt-in observability) do not see these batches.

A cluster client keeps redis-py's pipeline (it splits a batch by node), and so does a Sentinel
one (its pool finds the master; not measured nor tested with batches).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import sys
from typing import Any

from asgi_perf.stores._redis_client import READ_TIMEOUT

__all__ = ["Batch", "one"]


class Batch:
    """The commands the store queues on a pipeline (``set``, ``eval``, ``evalsha``,
    ``delete``, ``zrem``), sent together by :meth:`execute`."""

    __slots__ = ("client", "commands")

    def __init__(self, client: Any) -> None:
        self.client = client
        self.commands: list[tuple[Any, ...]] = []

    def set(self, name: str, value: bytes | str, px: int | None = None) -> None:
        self.commands.append(("SET", name, value) if px is None else ("SET", name, value, "PX", px))

    def eval(self, script: str, numkeys: int, *keys_and_args: Any) -> None:
        self.commands.append(("EVAL", script, numkeys, *keys_and_args))

    def evalsha(self, sha: Any, numkeys: Any, *keys_and_args: Any) -> None:
        self.commands.append(("EVALSHA", sha, numkeys, *keys_and_args))

    def delete(self, *names: Any) -> None:
        self.commands.append(("DEL", *names))

    def zrem(self, name: str, *values: Any) -> None:
        self.commands.append(("ZREM", name, *values))

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        """Every command's reply, in order (an error reply as the exception)."""
        if not self.commands:
            return []
        try:
            replies = await self._send()
        except _errors()[0]:  # a pooled connection Redis closed: once more, anew
            replies = await self._send()
        if raise_on_error:
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        return replies

    async def _send(self) -> list[Any]:
        refused = _errors()[1]
        pool = self.client.connection_pool
        connection = await pool.get_connection()
        try:
            # A health check (PING first when the connection idled past the URL's
            # ``health_check_interval``) as redis-py's own commands make, and no coroutine
            # for it when no interval is set (the default).
            await connection.send_packed_command(
                connection.pack_commands(self.commands), connection.health_check_interval > 0
            )
            replies: list[Any] = []
            deadline = _deadline(connection)
            timeout = None if deadline is None else math.inf  # inf: no timer of redis-py's
            try:
                async with deadline or _NO_DEADLINE:
                    for _ in self.commands:
                        try:
                            replies.append(await connection.read_response(timeout=timeout))
                        except refused as exc:
                            replies.append(exc)
            except TimeoutError as exc:  # the deadline's (redis-py's own is another class)
                where = _host(connection)
                raise _errors()[2](f"Timeout reading a batch's replies from {where}") from exc
        finally:
            # a write or read that failed or was cancelled has dropped the connection itself
            # (redis-py's, and the loop pass of ``_redis_client._timed``): no reply stays on it
            await _give_back(pool, connection)
        return replies


async def one(client: Any, *command: Any) -> Any:
    """One command's reply (an error reply raised), sent as a batch of one: without redis-py's
    command machinery around it (a retry closure, event dispatch, reply callbacks: about 30
    Python calls), which a single node's store does not need."""
    batch = Batch(client)
    batch.commands.append(command)
    return (await batch.execute())[0]


_NO_DEADLINE = contextlib.nullcontext()


def _deadline(connection: Any) -> Any:
    """One timer for a batch's replies: the read timeout in force bounds them all, where
    redis-py would start and cancel one per reply (about 5 µs each: a cache fill's batch has
    seven). A reply it cuts short drops the connection, as one cut by redis-py's own timer
    does. ``None`` (a timer per reply, as before): no read timeout, or Python 3.10."""
    timeout = READ_TIMEOUT.get()
    if timeout is None:
        timeout = connection.socket_timeout
    if timeout is None or sys.version_info < (3, 11):
        return None
    return asyncio.timeout(timeout)


@functools.cache
def _errors() -> tuple[type[Exception], type[Exception], type[Exception]]:
    """redis-py's ``ConnectionError``, ``ResponseError`` and ``TimeoutError``, imported once
    (redis is an optional extra; an import statement per batch cost 0.6 µs each)."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import ResponseError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return RedisConnectionError, ResponseError, RedisTimeoutError


def _host(connection: Any) -> str:
    """Where ``connection`` goes, as redis-py names it in its own errors."""
    describe = getattr(connection, "_host_error", None)
    return str(describe()) if callable(describe) else "Redis"


async def _give_back(pool: Any, connection: Any) -> None:
    """Return ``connection`` to ``pool``; shielded from a cancellation only when the release
    may wait (the pool's lock is taken), as a cancelled release would lose the connection."""
    lock = getattr(pool, "_lock", None)
    if lock is not None and lock.locked():
        await asyncio.shield(pool.release(connection))
    else:
        await pool.release(connection)
