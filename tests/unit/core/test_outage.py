"""The circuit breaker of :class:`asgi_perf._core.outage.Outage`, driven by tables of events on
a fake clock: what a single failure does (nothing to the next call), what a run does (opens),
how soon probes get through while open, what closes it, and what is counted and logged."""

from __future__ import annotations

import logging

import pytest

from asgi_perf._core.outage import Outage

LOGGER = logging.getLogger("tests.outage")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, **options: float) -> Outage:
    settings = {"threshold": 5, "probe_every": 20, "probe_interval": 0.05, "probe_timeout": 5.0}
    settings.update(options)
    return Outage(LOGGER, "test store", clock=clock, **settings)  # type: ignore[arg-type]


def play(outage: Outage, clock: Clock, script: str) -> str:
    """Run ``script`` and return what :meth:`Outage.allow` answered at each ``a``.

    ``a``: ask (answers ``Y``/``n``); ``f``: a call failed; ``s``: a call succeeded;
    ``t``: 10 ms pass; ``T``: 1 s passes; spaces are ignored.
    """
    answers = []
    for step in script.replace(" ", ""):
        if step == "a":
            answers.append("Y" if outage.allow() else "n")
        elif step == "f":
            outage.failed(TimeoutError("slow"))
        elif step == "s":
            outage.ok() if outage.down else None
        elif step == "t":
            clock.now += 0.01
        elif step == "T":
            clock.now += 1.0
        else:  # pragma: no cover - a typo in a table
            raise ValueError(step)
    return "".join(answers)


@pytest.mark.parametrize(
    ("script", "answers", "is_open"),
    [
        # one failure is that call's problem: the next call goes to the store
        ("af a", "YY", False),
        # failures with successes between them never open it, however many
        ("af af af af as " * 10 + "a", "Y" * 51, False),
        # four in a row (threshold 5) do not open it
        ("af af af af a", "YYYYY", False),
        # a run of five opens it: the next calls are skipped
        ("af af af af af aaa", "YYYYYnnn", True),
        # while open, the 20th call is a probe (no time passes) …
        ("af af af af af " + "a" * 20, "YYYYY" + "n" * 19 + "Y", True),
        # … or the first call 50 ms after opening, when traffic is light
        ("af af af af af a ttttt a", "YYYYYnY", True),
        # a probe that fails keeps it open; the next probe comes again within 20 calls
        ("af af af af af ttttt af " + "a" * 20, "YYYYY" + "Y" + "n" * 19 + "Y", True),
        # a probe that succeeds closes it: every call goes to the store again
        ("af af af af af ttttt as aaaa", "YYYYY" + "Y" + "YYYY", False),
        # a success ends the run: four more failures do not reopen it
        ("af af af af af ttttt as af af af af a", "YYYYY" + "Y" + "YYYY" + "Y", False),
        # one probe at a time: while one is in flight (no report yet) none other goes
        ("af af af af af ttttt a " + "a" * 40 + " ttttt a", "YYYYY" + "Y" + "n" * 40 + "n", True),
        # … and when it reports a failure, the next due call probes at once
        ("af af af af af ttttt a" + "a" * 25 + "f a", "YYYYY" + "Y" + "n" * 25 + "Y", True),
        # a probe whose task vanished (cancelled, never reported) frees the slot after 5 s
        ("af af af af af ttttt a TTTT" + "a" * 20 + "T a", "YYYYY" + "Y" + "n" * 20 + "Y", True),
    ],
)
def test_breaker_table(script: str, answers: str, is_open: bool) -> None:
    clock = Clock()
    outage = breaker(clock)
    assert play(outage, clock, script) == answers
    assert outage.open is is_open


def test_a_store_that_answers_again_is_used_within_milliseconds() -> None:
    """Light traffic (one request every 10 ms) after the store came back: the first request
    50 ms after the last failed call probes, succeeds, and closes the circuit."""
    clock = Clock()
    outage = breaker(clock)
    play(outage, clock, "af " * 5)
    waited = 0
    while not outage.allow():
        clock.now += 0.01
        waited += 1
    outage.ok()
    assert waited == 5 and not outage.open and outage.allow()


def test_counters_and_one_warning_per_incident(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    outage = breaker(clock)
    with caplog.at_level(logging.INFO, LOGGER.name):
        play(outage, clock, "af as")  # an isolated failure: one incident, recovered
        # a trip, 19 skipped calls, a failed probe, then a probe that succeeds closes it
        play(outage, clock, "af af af af af " + "a" * 19 + "af ttttt as")
    assert outage.stats() == {
        "down": False,
        "open": False,
        "failures": 1 + 5 + 19 + 1,  # failed calls and skipped ones: requests that degraded
        "skipped": 19,
        "incidents": 2,
        "trips": 1,
        "probes": 2,
    }
    levels = [(r.levelno, r.getMessage().split(" (")[0]) for r in caplog.records]
    assert levels == [
        (logging.WARNING, "test store unavailable"),
        (logging.INFO, "test store recovered after 1 failed calls"),
        (logging.WARNING, "test store unavailable"),
        (logging.INFO, "test store recovered after 25 failed calls"),
    ]


def test_a_success_while_healthy_costs_nothing() -> None:
    """Callers report ``ok`` only while ``down``; ``allow`` on a closed circuit reads no clock."""

    def no_clock() -> float:
        raise AssertionError("the clock was read on the healthy path")

    outage = Outage(LOGGER, "test store", clock=no_clock)
    assert all(outage.allow() for _ in range(100))
    assert not outage.down
