"""--begin times, as sbatch reads them: `now+60`, `now+1hour`, `16:00`, `16:00:30`,
`2026-12-06`, `2026-12-06T08:00[:00]`, `12/06[/26]`, `today`, `tomorrow`, `midnight`,
`noon`, `elevenses`, `fika`, `teatime`. A time of day that has passed today means
tomorrow. Local time, as the submitter's clock shows it. Standard library only.
"""
from __future__ import annotations

import time

UNITS = {"": 1, "s": 1, "sec": 1, "second": 1, "seconds": 1,
         "m": 60, "min": 60, "minute": 60, "minutes": 60,
         "h": 3600, "hour": 3600, "hours": 3600,
         "d": 86400, "day": 86400, "days": 86400,
         "w": 604800, "week": 604800, "weeks": 604800}
NAMED = {"midnight": (0, 0), "noon": (12, 0), "elevenses": (11, 0), "fika": (15, 0),
         "teatime": (16, 0)}


class BeginTimeError(ValueError):
    """Not a time sbatch's --begin would take; the message gives examples."""


_HOW = ("use now+SECONDS, now+1hour, HH:MM[:SS], YYYY-MM-DD[THH:MM[:SS]], MM/DD[/YY], "
        "today, tomorrow, midnight or noon")


def parse(text: str, now: float | None = None) -> float:
    """Seconds since the epoch."""
    now = time.time() if now is None else now
    word = text.strip().lower()
    if not word:
        raise BeginTimeError(f"empty time: {_HOW}")
    if word == "now":
        return now
    if word.startswith("now+") or word.startswith("now +"):
        return now + _offset(word[3:].lstrip(" +"), text)
    today = time.localtime(now)
    if word == "today":
        return _at(today, 0, 0, 0)
    if word == "tomorrow":
        return _at(today, 0, 0, 0, days=1)
    if word in NAMED:
        hour, minute = NAMED[word]
        return _next(today, now, hour, minute, 0)
    if not any(c.isdigit() for c in word):
        raise BeginTimeError(f"invalid time {text!r}: {_HOW}")
    date_part, t, clock_part = word.partition("t")
    if ":" in word and not t:
        date_part, clock_part = "", word
    hms = _clock(clock_part, text) if clock_part else None
    if not date_part:
        if hms is None:
            raise BeginTimeError(f"invalid time {text!r}: {_HOW}")
        return _next(today, now, *hms)
    year, month, day = _date(date_part, today, text)
    hour, minute, second = hms or (0, 0, 0)
    try:
        return time.mktime((year, month, day, hour, minute, second, 0, 0, -1))
    except (OverflowError, ValueError):
        raise BeginTimeError(f"invalid time {text!r}: {_HOW}") from None


def _offset(rest: str, whole: str) -> float:
    digits = ""
    while rest[:1].isdigit():
        digits, rest = digits + rest[0], rest[1:]
    unit = rest.strip()
    if not digits or len(digits) > 9 or unit not in UNITS:
        raise BeginTimeError(f"invalid time {whole!r}: now+N takes seconds, or a unit: "
                             "now+60, now+10minutes, now+1hour, now+2days")
    return int(digits) * UNITS[unit]


def _clock(text: str, whole: str) -> tuple[int, int, int]:
    half = None
    for mark in ("am", "pm"):
        if text.endswith(mark):
            text, half = text[:-2].strip(), mark
    parts = text.split(":")
    if not 2 <= len(parts) <= 3 or not all(p.isdigit() and len(p) <= 2 for p in parts):
        raise BeginTimeError(f"invalid time of day in {whole!r}: use HH:MM or HH:MM:SS")
    hour, minute = int(parts[0]), int(parts[1])
    second = int(parts[2]) if len(parts) == 3 else 0
    if half is not None:
        if not 1 <= hour <= 12:
            raise BeginTimeError(f"invalid time of day in {whole!r}: 1-12 before AM or PM")
        hour = hour % 12 + (12 if half == "pm" else 0)
    if hour > 23 or minute > 59 or second > 59:
        raise BeginTimeError(f"invalid time of day in {whole!r}: use HH:MM or HH:MM:SS")
    return hour, minute, second


def _date(text: str, today, whole: str) -> tuple[int, int, int]:
    try:
        if "-" in text:
            year, month, day = (int(p) for p in text.split("-"))
        elif "/" in text or "." in text:
            parts = [int(p) for p in text.replace(".", "/").split("/")]
            month, day = parts[0], parts[1]
            year = parts[2] if len(parts) == 3 else today.tm_year
            if len(parts) > 3:
                raise ValueError
        elif text.isdigit() and len(text) in (4, 6):
            month, day = int(text[:2]), int(text[2:4])
            year = int(text[4:]) if len(text) == 6 else today.tm_year
        else:
            raise ValueError
    except ValueError:
        raise BeginTimeError(f"invalid date in {whole!r}: {_HOW}") from None
    if year < 100:
        year += 2000
    if not (1 <= month <= 12 and 1 <= day <= 31 and 1970 <= year <= 9999):
        raise BeginTimeError(f"invalid date in {whole!r}: {_HOW}")
    return year, month, day


def _at(day, hour: int, minute: int, second: int, days: int = 0) -> float:
    return time.mktime((day.tm_year, day.tm_mon, day.tm_mday + days, hour, minute, second,
                        0, 0, -1))


def _next(today, now: float, hour: int, minute: int, second: int) -> float:
    """That time of day today, or tomorrow if it has passed."""
    when = _at(today, hour, minute, second)
    return when if when > now else _at(today, hour, minute, second, days=1)
