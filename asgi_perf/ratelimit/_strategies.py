"""Rate-limit strategies x storages behind one small interface: ``await limiter.hit(...)``.

A *check* takes one identity, one rule and that rule's windows (``(amount, seconds)`` pairs)
and admits the request only if **every** window has room; then, and only then, it counts the
request in every window (a refused request counts nowhere, so a client hammering a full
window does not push its own reset further away). It answers, per window, how many requests
remain and in how many seconds ``t`` the answer changes — what ``RateLimit``/``Retry-After``
need — so headers cost no second look-up.

Strategies (same semantics on both storages):

- ``fixed-window``: a counter that starts with the first request and expires ``seconds`` later
  (``limits``' fixed window: no clock alignment, so clients do not all reset at once).
  ``t`` = time until that window ends.
- ``moving-window``: the timestamps of the admitted requests of the last ``seconds``; exactly
  ``amount`` in any window of that length. ``t`` = time until the oldest one leaves.
- ``sliding-window``: ``limits``' sliding-window counter — a clock-aligned current and
  previous counter, the previous one weighted by how much of it still overlaps the window.
  O(1) memory; ``t`` = end of the current window, or on a refusal the time until the
  weighted count has room again.
- ``gcra``: the generic cell rate algorithm (one timestamp per key, smooth refill of one
  request every ``seconds / amount``, a burst of at most ``amount``). ``t`` = time until the
  bucket is full again, or on a refusal the time until the next request is admitted.

Storages:

- :class:`MemoryLimiter` for one process (with N worker processes each counts alone: a client
  gets up to N x the limit; use Redis for several workers): plain Python with no ``await``
  inside a check, so a check is atomic among the tasks of the event loop without a lock;
  bounded by ``max_entries`` keys (expired keys are swept first, then the oldest dropped).
  Measured 7-12x faster than ``limits``' ``MemoryStorage`` doing ``hit`` +
  ``get_window_stats`` (fixed / moving window), which is why it is our own.
- :class:`RedisLimiter` on :class:`~asgi_perf.stores._redis.RedisStore` (Redis, Sentinel,
  Cluster): **one** ``EVALSHA`` per check. Our own Lua, not ``limits``' storages, because
  ``limits`` needs ``hit`` plus ``get_window_stats`` (2-3 round trips), checks and counts
  several windows separately (a request refused by one window still counts in the others) and
  stamps moving/sliding windows with the *app server's* ``time.time()``; our script reads
  Redis ``TIME`` so app-server clock skew does not matter. All keys of one check share the
  ``{identity}`` hash tag, so the script runs on one Redis Cluster node.
- any other store: :class:`~asgi_perf.ratelimit._storage.StoreLimiter` (the memory strategies
  over the store's records); :func:`~asgi_perf.ratelimit._storage.create_limiter` picks one.

Just over 500 lines because each strategy's in-process check and its Lua twin stand side by
side: they must give the same answers (tested against each other).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from asgi_perf._core.identity import hash_secret
from asgi_perf.stores._prefetch import PrefetchOp

__all__ = [
    "MEMORY_STRATEGIES",
    "STRATEGIES",
    "Decision",
    "Limiter",
    "MemoryLimiter",
    "RedisLimiter",
    "Window",
    "evaluate",
    "hash_tag",
    "lua_source",
    "sliding_retry",
    "to_strategy",
]

STRATEGIES = ("fixed-window", "moving-window", "sliding-window", "gcra")

Window = tuple[int, float]  # (amount, seconds)
_EPSILON = 1e-9


class Decision:
    """The answer of one check: admitted or not, and per window ``remaining`` and ``t``."""

    __slots__ = ("allowed", "remaining", "resets")

    def __init__(self, allowed: bool, remaining: list[int], resets: list[float]) -> None:
        self.allowed = allowed
        self.remaining = remaining  # after this request, if it was admitted
        self.resets = resets  # seconds until ``remaining`` changes (on a refusal: until room)

    def tightest(self) -> int:
        """Index of the window to report: the latest-to-clear refusing one, else the fullest."""
        remaining = self.remaining
        if len(remaining) == 1:
            return 0
        resets = self.resets
        best = -1
        for i, left in enumerate(remaining):
            if self.allowed:
                better = best < 0 or (left, -resets[i]) < (remaining[best], -resets[best])
            else:
                better = left < 0 and (best < 0 or resets[i] > resets[best])
            if better:
                best = i
        return best

    def __repr__(self) -> str:
        return f"Decision({self.allowed}, {self.remaining}, {self.resets})"


class Limiter:
    """One storage with one strategy. ``remaining == -1`` marks a window that refused."""

    kind = "abstract"
    prefetchable = False  # hit_op describes the check (one script on a store that prefetches)

    def __init__(self, strategy: str) -> None:
        self.strategy = to_strategy(strategy)

    async def hit(self, identity: str, rule: str, windows: Sequence[Window]) -> Decision:
        raise NotImplementedError

    def hit_op(self, identity: str, rule: str, windows: Sequence[Window]) -> PrefetchOp | None:
        """:meth:`hit` to send ahead with other layers' calls, on a store that can
        (:mod:`asgi_perf.stores._prefetch`); ``None``: it cannot."""
        return None

    def stats(self) -> dict[str, Any]:
        return {"kind": self.kind, "strategy": self.strategy}

    async def close(self) -> None:
        pass


def to_strategy(value: object, name: str = "strategy") -> str:
    from asgi_perf._core.config import to_choice

    return to_choice(value, name, STRATEGIES)


# -- memory ---------------------------------------------------------------------------------
# Each strategy: check(state, now, amount, seconds) -> (ok, remaining, t) and
# admit(state, now, amount, seconds) -> (new state, expires at). ``state`` is None when absent.


def _fixed_check(state: Any, now: float, amount: int, seconds: float) -> tuple[bool, int, float]:
    if state is None or state[1] <= now:
        return amount > 0, amount - 1, seconds
    count, end = state
    if count < amount:
        return True, amount - count - 1, end - now
    return False, -1, end - now


def _fixed_admit(state: Any, now: float, amount: int, seconds: float) -> tuple[Any, float]:
    if state is None or state[1] <= now:
        return [1, now + seconds], now + seconds
    state[0] += 1
    return state, state[1]


def _moving_check(state: Any, now: float, amount: int, seconds: float) -> tuple[bool, int, float]:
    if state is None:
        return True, amount - 1, seconds
    horizon = now - seconds
    while state and state[0] <= horizon:
        state.popleft()
    count = len(state)
    if count < amount:
        return True, amount - count - 1, (state[0] if state else now) + seconds - now
    return False, -1, state[count - amount] + seconds - now


def _moving_admit(state: Any, now: float, amount: int, seconds: float) -> tuple[Any, float]:
    if state is None:
        state = deque(maxlen=amount)
    state.append(now)
    return state, now + seconds


def _sliding_roll(state: Any, now: float, seconds: float) -> tuple[int, int, int]:
    index = int(now // seconds)
    if state is None:
        return index, 0, 0
    last, current, previous = state
    if index == last:
        return index, current, previous
    if index == last + 1:
        return index, 0, current
    return index, 0, 0


def sliding_retry(
    current: int, previous: int, elapsed: float, amount: int, seconds: float
) -> float:
    """Seconds until ``floor(previous * overlap) + current < amount`` (limits' weighting)."""
    if current >= amount:  # nothing frees before this window ends; then ``current`` decays
        wait = seconds - elapsed + seconds * (1 - amount / current)
    else:
        wait = seconds - (amount - current) * seconds / previous - elapsed
    return wait + 0.001  # the bound itself is still full: one millisecond past it


def _sliding_check(state: Any, now: float, amount: int, seconds: float) -> tuple[bool, int, float]:
    index, current, previous = _sliding_roll(state, now, seconds)
    elapsed = now - index * seconds
    weighted = int(previous * (seconds - elapsed) / seconds) + current
    if weighted < amount:
        return True, amount - weighted - 1, seconds - elapsed
    return False, -1, sliding_retry(current, previous, elapsed, amount, seconds)


def _sliding_admit(state: Any, now: float, amount: int, seconds: float) -> tuple[Any, float]:
    index, current, previous = _sliding_roll(state, now, seconds)
    return (index, current + 1, previous), (index + 2) * seconds


def _gcra_check(state: Any, now: float, amount: int, seconds: float) -> tuple[bool, int, float]:
    interval = seconds / amount
    tat = now if state is None or state < now else state
    new_tat = tat + interval
    allow_at = new_tat - seconds
    if now + _EPSILON * seconds >= allow_at:
        return True, int((now + seconds - new_tat) / interval + _EPSILON), new_tat - now
    return False, -1, allow_at - now


def _gcra_admit(state: Any, now: float, amount: int, seconds: float) -> tuple[Any, float]:
    tat = now if state is None or state < now else state
    new_tat = tat + seconds / amount
    return new_tat, new_tat


Check = Callable[[Any, float, int, float], tuple[bool, int, float]]
Admit = Callable[[Any, float, int, float], tuple[Any, float]]
MEMORY_STRATEGIES: dict[str, tuple[Check, Admit]] = {
    "fixed-window": (_fixed_check, _fixed_admit),
    "moving-window": (_moving_check, _moving_admit),
    "sliding-window": (_sliding_check, _sliding_admit),
    "gcra": (_gcra_check, _gcra_admit),
}


def evaluate(
    check: Check, admit: Admit, states: Sequence[Any], now: float, windows: Sequence[Window]
) -> tuple[Decision, list[tuple[Any, float]] | None]:
    """Check every window (``states``: each one's state or ``None``); admit into all only if
    all have room. The decision, and when admitted each window's new ``(state, expires)``."""
    remaining: list[int] = []
    resets: list[float] = []
    allowed = True
    for state, (amount, seconds) in zip(states, windows, strict=True):
        ok, left, reset = check(state, now, amount, seconds)
        allowed = allowed and ok
        remaining.append(left)
        resets.append(reset)
    if not allowed:
        return Decision(False, [left if left < 0 else 0 for left in remaining], resets), None
    admitted = [
        admit(state, now, amount, seconds)
        for state, (amount, seconds) in zip(states, windows, strict=True)
    ]
    return Decision(True, remaining, resets), admitted


class MemoryLimiter(Limiter):
    """One process. ``check`` is synchronous (the middleware calls it without a coroutine)."""

    kind = "memory"

    def __init__(
        self,
        strategy: str = "moving-window",
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(strategy)
        self._check, self._admit = MEMORY_STRATEGIES[self.strategy]
        if self.strategy == "fixed-window":
            self.check_one = self._check_one_fixed  # type: ignore[method-assign]
        self.max_entries = max_entries
        self.clock = clock
        self._data: dict[tuple[str, str, int], tuple[Any, float]] = {}
        self.evictions = 0

    def check(self, identity: str, rule: str, windows: Sequence[Window]) -> Decision:
        now = self.clock()
        data = self._data
        check = self._check
        if len(windows) == 1:  # the common case, without the lists of the general one
            amount, seconds = windows[0]
            key = (identity, rule, 0)
            entry = data.get(key)
            state = None if entry is None or entry[1] <= now else entry[0]
            ok, left, reset = check(state, now, amount, seconds)
            if ok:
                data[key] = self._admit(state, now, amount, seconds)
                if len(data) > self.max_entries:
                    self._shrink(now)
            return Decision(ok, [left], [reset])
        keys = [(identity, rule, i) for i in range(len(windows))]
        states = []
        for key in keys:
            entry = data.get(key)
            states.append(None if entry is None or entry[1] <= now else entry[0])
        decision, admitted = evaluate(self._check, self._admit, states, now, windows)
        if admitted is not None:
            data.update(zip(keys, admitted, strict=True))
            if len(data) > self.max_entries:
                self._shrink(now)
        return decision

    def check_one(
        self, identity: str, rule: str, amount: int, seconds: float
    ) -> tuple[bool, int, float]:
        """:meth:`check` for a policy of one window (the usual case), without the lists and the
        :class:`Decision`: ``(allowed, remaining, reset)``."""
        now = self.clock()
        data = self._data
        key = (identity, rule, 0)
        state = None
        if key in data:
            entry = data[key]
            if entry[1] > now:
                state = entry[0]
        ok, left, reset = self._check(state, now, amount, seconds)
        if ok:
            data[key] = self._admit(state, now, amount, seconds)
            if state is None and len(data) > self.max_entries:
                self._shrink(now)
        return ok, left, reset

    def _check_one_fixed(
        self, identity: str, rule: str, amount: int, seconds: float
    ) -> tuple[bool, int, float]:
        """:meth:`check_one` of the fixed window, its two steps written out: an open
        window's count goes up in place (the stored pair stays), so an admitted request
        makes no tuple and calls no function but the clock. ``_fixed_check`` and
        ``_fixed_admit`` remain the rule; a test holds this to them."""
        now = self.clock()
        data = self._data
        key = (identity, rule, 0)
        if key in data:
            state, end = data[key]
            if end > now:  # the window is open: state is [count, end]
                count = state[0]
                if count < amount:
                    state[0] = count + 1
                    return True, amount - count - 1, end - now
                return False, -1, end - now
        end = now + seconds  # a new window (quotas are at least 1: to_rates)
        data[key] = ([1, end], end)
        if len(data) > self.max_entries:
            self._shrink(now)
        return True, amount - 1, seconds

    async def hit(self, identity: str, rule: str, windows: Sequence[Window]) -> Decision:
        return self.check(identity, rule, windows)

    def _shrink(self, now: float) -> None:
        """Drop expired keys; if that is not enough, the oldest-created ones (to 90%)."""
        data = self._data
        for key in [k for k, (_, expires) in data.items() if expires <= now]:
            del data[key]
        excess = len(data) - self.max_entries * 9 // 10
        if excess > 0:
            for key in list(data)[:excess]:
                del data[key]
            self.evictions += excess

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "keys": len(self._data), "evictions": self.evictions}


# -- Redis ----------------------------------------------------------------------------------
# One script per strategy: a shared frame (check every window, admit only if all have room)
# around a strategy's ``check`` and ``admit``; the clock is Redis ``TIME`` (the fixed window
# needs none: ``PTTL`` is its clock). Times in milliseconds; the reply is
# {allowed, remaining_1, t_ms_1, remaining_2, t_ms_2, ...}.

_FRAME = """
%s
local allowed = 1
local reply = {0}
local states = {}
for i = 1, #KEYS do
  local amount = tonumber(ARGV[2 * i - 1])
  local ms = tonumber(ARGV[2 * i])
  local ok, left, reset, state = check(KEYS[i], amount, ms)
  if not ok then allowed = 0 end
  states[i] = state
  reply[2 * i] = left
  reply[2 * i + 1] = math.ceil(reset)
end
if allowed == 1 then
  for i = 1, #KEYS do
    admit(KEYS[i], tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i]), states[i])
  end
else
  for i = 1, #KEYS do
    if reply[2 * i] > 0 then reply[2 * i] = 0 end
  end
end
reply[1] = allowed
return reply
"""

_LUA: dict[str, str] = {
    "fixed-window": """
local function check(key, amount, ms)
  local count = tonumber(redis.call('GET', key) or '0')
  local ttl = redis.call('PTTL', key)
  if count == 0 or ttl < 0 then return true, amount - 1, ms, 0 end
  if count < amount then return true, amount - count - 1, ttl, count end
  return false, -1, ttl, count
end
local function admit(key, amount, ms, count)
  if count == 0 then redis.call('SET', key, 1, 'PX', ms) else redis.call('INCR', key) end
end
""",
    "moving-window": """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local function check(key, amount, ms)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - ms)
  local count = redis.call('ZCARD', key)
  if count < amount then
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2]
    return true, amount - count - 1, (tonumber(oldest) or now) + ms - now, count
  end
  local edge = redis.call('ZRANGE', key, count - amount, count - amount, 'WITHSCORES')[2]
  return false, -1, tonumber(edge) + ms - now, count
end
local function admit(key, amount, ms, count)
  redis.call('ZADD', key, now, t[1] .. '.' .. t[2] .. ':' .. count)
  redis.call('PEXPIRE', key, math.ceil(ms))
end
""",
    "sliding-window": """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local function roll(key, ms)
  local index = math.floor(now / ms)
  local h = redis.call('HMGET', key, 'i', 'c', 'p')
  local last = tonumber(h[1])
  if last == index then return index, tonumber(h[2]), tonumber(h[3]) end
  if last == index - 1 then return index, 0, tonumber(h[2]) end
  return index, 0, 0
end
local function check(key, amount, ms)
  local index, current, previous = roll(key, ms)
  local elapsed = now - index * ms
  local weighted = math.floor(previous * (ms - elapsed) / ms) + current
  local state = {index, current, previous}
  if weighted < amount then return true, amount - weighted - 1, ms - elapsed, state end
  if current >= amount then
    return false, -1, ms - elapsed + ms * (1 - amount / current) + 1, state
  end
  return false, -1, ms - (amount - current) * ms / previous - elapsed + 1, state
end
local function admit(key, amount, ms, state)
  redis.call('HSET', key, 'i', state[1], 'c', state[2] + 1, 'p', state[3])
  redis.call('PEXPIREAT', key, math.ceil((state[1] + 2) * ms))
end
""",
    "gcra": """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local function check(key, amount, ms)
  local interval = ms / amount
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  local new_tat = tat + interval
  local allow_at = new_tat - ms
  if now + 1e-9 * ms >= allow_at then
    return true, math.floor((now + ms - new_tat) / interval + 1e-9), new_tat - now, new_tat
  end
  return false, -1, allow_at - now, new_tat
end
local function admit(key, amount, ms, new_tat)
  redis.call('SET', key, new_tat, 'PX', math.ceil(new_tat - now))
end
""",
}


def lua_source(strategy: str) -> str:
    """The whole script of ``strategy`` (one round trip per check)."""
    return _FRAME % _LUA[strategy]


def hash_tag(identity: str) -> str:
    """``{identity}``, hashed if braces inside would change which part Redis Cluster hashes."""
    if "{" in identity or "}" in identity:
        identity = "h:" + hash_secret(identity)
    return "{" + identity + "}"


def _args(windows: Sequence[Window]) -> list[bytes]:
    """The script's arguments: amount and window in milliseconds, per window, as the bytes
    redis-py sends (made once per rule: an int argument costs it a conversion per call)."""
    args: list[bytes] = []
    for amount, seconds in windows:
        args.append(b"%d" % amount)
        args.append(b"%d" % int(seconds * 1000))
    return args


def _decision(reply: Any) -> Decision:
    return Decision(
        reply[0] == 1, [int(v) for v in reply[1::2]], [int(v) / 1000 for v in reply[2::2]]
    )


class RedisLimiter(Limiter):
    """Redis, Sentinel or Cluster through a :class:`RedisStore`: one ``EVALSHA`` per check."""

    kind = "redis"
    prefetchable = True

    def __init__(self, store: Any, strategy: str = "moving-window") -> None:
        super().__init__(strategy)
        self.store = store
        self.source = lua_source(self.strategy)
        self._code = {"fixed-window": "f", "moving-window": "m", "sliding-window": "s"}.get(
            self.strategy, "g"
        )
        self._args: dict[tuple[Window, ...], list[bytes]] = {}  # per rule's windows

    def keys(self, identity: str, rule: str, windows: Sequence[Window]) -> list[str]:
        """The keys of one check: one per window, all under the identity's hash tag."""
        head = self.store.key(hash_tag(identity) + ":" + rule + ":" + self._code)
        return [f"{head}{seconds:g}" for _, seconds in windows]

    def hit_op(self, identity: str, rule: str, windows: Sequence[Window]) -> PrefetchOp:
        keys = self.keys(identity, rule, windows)
        if type(windows) is not tuple:  # a caller's list, not a rule's: not kept
            args = _args(windows)
        elif windows in self._args:
            args = self._args[windows]
        else:
            args = self._args[windows] = _args(windows)
        return PrefetchOp(
            ("ratelimit", self, *keys), self.store, self.source, keys, args, _decision
        )

    async def hit(self, identity: str, rule: str, windows: Sequence[Window]) -> Decision:
        decision: Decision = await self.store.run(self.hit_op(identity, rule, windows))
        return decision

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "store": self.store.stats()}

    async def close(self) -> None:
        await self.store.close()
