"""HTTP-date parsing exactly as RFC 9110 §5.6.7 defines it.

A recipient must accept the three formats (IMF-fixdate, obsolete RFC 850, asctime) and
nothing else: ``Expires: Thu, 18 Aug 2050 02:01:18 UTC`` or a two-digit year in an
IMF-fixdate is invalid, which for ``Expires`` means "already expired" (RFC 9111 §5.3).
Names are matched case-insensitively (as every cache the conformance suite measures does).
"""

from __future__ import annotations

import calendar
import re
import time
from functools import lru_cache

__all__ = ["parse_http_date"]

_DAY = r"(?:mon|tue|wed|thu|fri|sat|sun)"
_LONG_DAY = r"(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday)"
_MONTH = r"(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)"
_TIME = r"(\d\d):(\d\d):(\d\d)"
_IMF = re.compile(rf"{_DAY}, (\d\d) {_MONTH} (\d{{4}}) {_TIME} gmt", re.IGNORECASE | re.ASCII)
_RFC850 = re.compile(rf"{_LONG_DAY}, (\d\d)-{_MONTH}-(\d\d) {_TIME} gmt", re.IGNORECASE | re.ASCII)
_ASCTIME = re.compile(rf"{_DAY} {_MONTH} ([ \d]\d) {_TIME} (\d{{4}})", re.IGNORECASE | re.ASCII)
_MONTHS = {name: i for i, name in enumerate(_MONTH[1:-1].split("|"), start=1)}


def _unix(year: int, month: str, day: int, hour: int, minute: int, second: int) -> float | None:
    if not (1 <= day <= 31 and hour <= 23 and minute <= 59 and second <= 60):
        return None
    return float(calendar.timegm((year, _MONTHS[month.lower()], day, hour, minute, second)))


def _two_digit_year(year: int) -> int:
    """RFC 9110 §5.6.7: a year more than 50 years in the future is the most recent past one."""
    this_year = time.gmtime().tm_year
    full = this_year - this_year % 100 + year
    return full - 100 if full > this_year + 50 else full


@lru_cache(maxsize=512)
def parse_http_date(value: bytes) -> float | None:
    """An HTTP-date as a Unix time; ``None`` for anything else (surrounding whitespace allowed)."""
    text = value.strip().decode("latin-1")
    match = _IMF.fullmatch(text)
    if match is not None:
        day, month, year, hh, mm, ss = match.groups()
        return _unix(int(year), month, int(day), int(hh), int(mm), int(ss))
    match = _RFC850.fullmatch(text)
    if match is not None:
        day, month, year, hh, mm, ss = match.groups()
        return _unix(_two_digit_year(int(year)), month, int(day), int(hh), int(mm), int(ss))
    match = _ASCTIME.fullmatch(text)
    if match is not None:
        month, day, hh, mm, ss, year = match.groups()
        return _unix(int(year), month, int(day.strip()), int(hh), int(mm), int(ss))
    return None
