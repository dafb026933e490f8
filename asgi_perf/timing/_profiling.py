"""Request profiling in the timing layer: on demand and sampled (pyinstrument, ``[profiling]``).

Off by default (``profiling=False``, ``ASGI_PERF_PROFILING_ENABLED``), and then free:
``TimingMiddleware`` does not insert this layer, pyinstrument and ``tracemalloc`` are never
imported, and a request makes exactly the calls it made before profiling existed. When on,
``TimingMiddleware`` calls its app through :class:`ProfilingLayer`, which profiles:

- **on demand**: a request carrying ``X-Asgi-Perf-Profile: 1`` from a client allowed to see
  Server-Timing (``expose_server_timing``: trusted IPs, a callable, or everyone). The client
  gets the app's own response plus ``X-Asgi-Perf-Profile-Id: <id>``; the id is the profile's
  in ``<report>/profiles/<id>``. From a client not allowed, the header is ignored (counted).
- **sampled**: ``profile_sample_rate`` (``ASGI_PERF_PROFILING_SAMPLE_RATE``) of all requests;
  per route the slowest are kept (:mod:`asgi_perf.timing._profiles`).

The profiler is pyinstrument's statistical sampler in its ``strict`` async mode: it follows
``await`` (time spent awaiting shows as ``[await]`` under the awaiting line) and keeps the
request's own async context apart. Its ``enabled`` mode was measured to charge a request with
the work of other requests that ran while it waited for the event loop; ``strict`` shows that
time as ``[out-of-context]`` instead.

With ``memory_profiling`` (``ASGI_PERF_MEMORY_PROFILING_ENABLED``) a profiled request also
records its peak traced memory and top allocation sites (:mod:`asgi_perf.timing._memory`).

Bounds: at most ``MAX_CONCURRENT`` requests are profiled at once (more run unprofiled,
counted as ``busy``); kept profiles are bounded by count per route and by bytes. While one
profile runs, pyinstrument's C hook sees every call of the thread: requests running alongside
a profiled one pay a little too (the benchmark measures the whole).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from random import random
from typing import TYPE_CHECKING, Any

from asgi_perf._core.asgi import ASGIApp, Message, Receive, Scope, Send
from asgi_perf._core.config import (
    ConfigError,
    EnvVar,
    install_hint,
    to_bool,
    to_duration,
    to_int,
    to_size,
)
from asgi_perf._core.routes import method_label, template_of
from asgi_perf._core.stats import register
from asgi_perf.timing._profiles import ProfileArchive, ProfileRecord, pack_session

if TYPE_CHECKING:
    from asgi_perf.timing._memory import MemoryTrace, MemoryTracer

__all__ = ["PROFILING_ENV_VARS", "ProfileOptions", "ProfilingLayer", "to_fraction"]

logger = logging.getLogger("asgi_perf.timing")

MAX_CONCURRENT = 4
PROFILE_HEADER = b"x-asgi-perf-profile"
PROFILE_ID_HEADER = b"x-asgi-perf-profile-id"
_ASKED = frozenset({b"1", b"true", b"yes", b"on"})


def to_fraction(value: object, name: str) -> float:
    """A number from 0 to 1 (``0.01``) or a percentage (``1%``)."""
    accepted = "a fraction from 0 to 1 (0.01) or a percentage (1%)"
    text = value.strip() if isinstance(value, str) else value
    scale = 1.0
    if isinstance(text, str) and text.endswith("%"):
        text, scale = text[:-1], 0.01
    if isinstance(text, bool) or not isinstance(text, int | float | str):
        raise ConfigError(name, value, accepted)
    try:
        number = float(text) * scale
    except ValueError:
        raise ConfigError(name, value, accepted) from None
    if not 0.0 <= number <= 1.0:
        raise ConfigError(name, value, accepted)
    return number


PROFILING_ENV_VARS = (
    EnvVar("ASGI_PERF_PROFILING_ENABLED", "profiling", to_bool),
    EnvVar("ASGI_PERF_PROFILING_SAMPLE_RATE", "profile_sample_rate", to_fraction),
    EnvVar("ASGI_PERF_MEMORY_PROFILING_ENABLED", "memory_profiling", to_bool),
    EnvVar("ASGI_PERF_PROFILING_KEEP", "profile_keep", lambda v, n: to_int(v, n, minimum=1)),
    EnvVar("ASGI_PERF_PROFILING_MAX_BYTES", "profile_max_bytes", to_size),
    EnvVar("ASGI_PERF_PROFILING_INTERVAL", "profile_interval", to_duration),
)


@dataclass(frozen=True, slots=True)
class ProfileOptions:
    """Validated profiling options of one ``TimingMiddleware``."""

    enabled: bool = False
    sample_rate: float = 0.0
    memory: bool = False
    keep: int = 5
    max_bytes: int = 8 * 1024 * 1024
    interval: float = 0.001

    @classmethod
    def build(
        cls,
        profiling: object,
        profile_sample_rate: object,
        memory_profiling: object,
        profile_keep: object,
        profile_max_bytes: object,
        profile_interval: object,
    ) -> ProfileOptions:
        interval = to_duration(profile_interval, "profile_interval")
        if not 0.0001 <= interval <= 1.0:
            raise ConfigError("profile_interval", profile_interval, "from 100us (0.0001) to 1s")
        max_bytes = to_size(profile_max_bytes, "profile_max_bytes")
        if max_bytes < 64 * 1024:
            raise ConfigError("profile_max_bytes", profile_max_bytes, "at least 64KiB")
        return cls(
            enabled=to_bool(profiling, "profiling"),
            sample_rate=to_fraction(profile_sample_rate, "profile_sample_rate"),
            memory=to_bool(memory_profiling, "memory_profiling"),
            keep=to_int(profile_keep, "profile_keep", minimum=1),
            max_bytes=max_bytes,
            interval=interval,
        )


def _profiler_class() -> Any:
    try:
        from pyinstrument import Profiler
    except ImportError:
        raise ConfigError(
            "profiling",
            True,
            "False, or pyinstrument installed: " + install_hint("profiling"),
        ) from None
    return Profiler


class _Run:
    """The ``send`` of one profiled request: status, end time, the profile id header."""

    __slots__ = ("clock", "end", "profile_id", "send_next", "status")

    def __init__(self, send: Send, profile_id: bytes | None, clock: Callable[[], float]) -> None:
        self.send_next = send
        self.profile_id = profile_id
        self.clock = clock
        self.status = 0
        self.end: float | None = None

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
            if self.profile_id is not None:
                message["headers"] = [
                    *message.get("headers", ()),
                    (PROFILE_ID_HEADER, self.profile_id),
                ]
        await self.send_next(message)
        if self.end is None and (
            kind == "http.response.pathsend"
            or (kind == "http.response.body" and not message.get("more_body", False))
        ):
            self.end = self.clock()


class ProfilingLayer:
    """Between ``TimingMiddleware`` and its app when profiling is on (see the module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        options: ProfileOptions,
        *,
        allowed: bool | Callable[[Scope], bool],
        route_from_scope: bool,
        clock: Callable[[], float],
    ) -> None:
        self.app = app
        self.options = options
        self._profiler = _profiler_class()
        self._allowed = allowed
        self._route_from_scope = route_from_scope
        self._clock = clock
        self.archive = ProfileArchive(options.keep, options.max_bytes)
        self._memory: MemoryTracer | None = None
        if options.memory:
            from asgi_perf.timing._memory import MemoryTracer

            self._memory = MemoryTracer()
        self.active = 0
        self.counts = dict.fromkeys(
            ("demand", "sampled", "refused", "busy", "nested", "discarded", "failures"), 0
        )
        if allowed is True:
            logger.warning(
                "on-demand profiling is open to every client (expose_server_timing=True): "
                "restrict it with ASGI_PERF_SERVER_TIMING_TRUSTED outside development"
            )
        register("profiling", self)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        kind = self._kind(scope)
        if kind is None:
            await self.app(scope, receive, send)
            return
        await self._profile(kind, scope, receive, send)

    def _kind(self, scope: Scope) -> str | None:
        """``"demand"``, ``"sampled"`` or ``None`` (not profiled) for this request."""
        kind = None
        for name, value in scope.get("headers") or ():
            if name.lower() == PROFILE_HEADER:
                if value.strip().lower() in _ASKED:
                    allowed = self._allowed
                    if allowed is True or (allowed is not False and allowed(scope)):
                        kind = "demand"
                    else:
                        self.counts["refused"] += 1
                break
        rate = self.options.sample_rate
        if kind is None and rate and random() < rate:
            kind = "sampled"
        if kind is not None and self.active >= MAX_CONCURRENT:
            self.counts["busy"] += 1
            return None
        return kind

    async def _profile(self, kind: str, scope: Scope, receive: Receive, send: Send) -> None:
        profile_id = secrets.token_hex(8)
        run = _Run(send, profile_id.encode("ascii") if kind == "demand" else None, self._clock)
        profiler = self._profiler(interval=self.options.interval, async_mode="strict")
        try:
            profiler.start(target_description=f"{scope.get('method')} {scope.get('path')}")
        except Exception as exc:  # RuntimeError: a profiler runs in this context (nested layers)
            self.counts["nested" if isinstance(exc, RuntimeError) else "failures"] += 1
            await self.app(scope, receive, send)
            return
        trace: MemoryTrace | str | None = None  # or why there is none
        if self._memory is not None:
            try:
                trace = self._memory.begin()
            except Exception:
                self._failed("starting tracemalloc")
        self.active += 1
        started_at = time.time()
        start = self._clock()
        cancelled = False
        try:
            await self.app(scope, receive, run.send)
        except BaseException as exc:
            cancelled = isinstance(exc, asyncio.CancelledError)
            raise
        finally:
            self.active -= 1
            duration = (run.end if run.end is not None else self._clock()) - start
            status = run.status or (499 if cancelled else 500)
            try:  # the response is gone: a profile must not fail the request
                memory = None
                try:
                    session = profiler.stop()
                finally:
                    if isinstance(trace, str):
                        memory = {"note": trace}
                    elif trace is not None:
                        memory = trace.end()
                self._keep(kind, profile_id, scope, status, duration, started_at, session, memory)
            except Exception:
                self._failed("keeping a profile")

    def _failed(self, what: str) -> None:
        self.counts["failures"] += 1
        if self.counts["failures"] == 1:
            logger.exception("%s failed (logged once, then counted)", what)

    def _keep(
        self,
        kind: str,
        profile_id: str,
        scope: Scope,
        status: int,
        duration: float,
        started_at: float,
        session: Any,
        memory: dict[str, Any] | None,
    ) -> None:
        self.counts[kind] += 1
        method = method_label(scope.get("method") or "GET")
        route = template_of(scope, status, self._route_from_scope)
        if not self.archive.wants(kind, method, route, duration):
            self.counts["discarded"] += 1
            return
        data, samples = pack_session(session.to_json())
        record = ProfileRecord(
            profile_id, kind, method, route, status, duration, started_at, samples, data, memory
        )
        if not self.archive.add(record):
            logger.warning(
                "profile %s of %s %s is larger than profile_max_bytes: dropped",
                profile_id,
                method,
                route,
            )

    def stats(self) -> dict[str, Any]:
        return {**self.counts, "in_progress": self.active, **self.archive.stats()}
