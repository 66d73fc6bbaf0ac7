"""Time limits and memory sizes in Slurm's notation, parsed and formatted.

Parsing is for what users type (`--time=1-12:00:00`, `--mem=16G`); formatting is for what
commands print (`rq`, `rsacct`). Seconds and megabytes are the units everywhere inside.

Standard library only, and not even `re`: `rsub` imports this on every call.
"""
from __future__ import annotations

__all__ = [
    "UnitError",
    "parse_time",
    "parse_memory",
    "format_time",
    "format_memory",
    "format_kb",
]


class UnitError(ValueError):
    """A time or size could not be read; the message shows the accepted forms."""


_TIME_FORMS = "use minutes, M:S, H:M:S, D-H, D-H:M or D-H:M:S"
_SIZE_FORMS = "use a number with an optional K, M, G or T suffix, e.g. 512M or 4G"
_UNLIMITED = frozenset({"unlimited", "infinite"})

# Longer numbers are typos, not limits; the bound also keeps int() away from huge strings.
_MAX_DIGITS = 12

# Factor to megabytes as (numerator, denominator), binary units as in Slurm: 1G = 1024M.
_MB_FACTORS = {
    "K": (1, 1024),
    "M": (1, 1),
    "G": (1024, 1),
    "T": (1024 * 1024, 1),
}

_MINUTE = 60
_HOUR = 60 * _MINUTE
_DAY = 24 * _HOUR


def _is_digits(text: str) -> bool:
    # str.isdigit() alone accepts '²' and other non-ASCII digits that int() rejects.
    return text.isascii() and text.isdigit() and len(text) <= _MAX_DIGITS


# -- time ------------------------------------------------------------------
def parse_time(text: str) -> int:
    """Seconds for a Slurm time limit; 0 means unlimited (`UNLIMITED`, `infinite`, `0`).

    `M`, `M:S`, `H:M:S`, `D-H`, `D-H:M`, `D-H:M:S`. A lone number is minutes, so `3:00`
    is three minutes. Fields are not range-checked (`11:0:0`, `90:00`, `0-36` are all
    fine), as in Slurm.
    """
    stripped = text.strip()
    if stripped.lower() in _UNLIMITED:
        return 0
    if stripped[:1] == "-" and stripped[1:2].isdigit():
        raise UnitError(f"invalid time {text!r} (must not be negative)")
    day_part, dash, clock = stripped.rpartition("-") if "-" in stripped else ("", "", stripped)
    fields = clock.split(":")
    if dash:
        days = _time_field(day_part, text)
        if len(fields) > 3:
            raise _bad_time(text)
        hours, minutes, seconds = (_time_fields(fields, text) + [0, 0])[:3]
        return days * _DAY + hours * _HOUR + minutes * _MINUTE + seconds
    values = _time_fields(fields, text)
    if len(values) == 1:
        return values[0] * _MINUTE
    if len(values) == 2:
        return values[0] * _MINUTE + values[1]
    if len(values) == 3:
        return values[0] * _HOUR + values[1] * _MINUTE + values[2]
    raise _bad_time(text)


def _time_fields(fields: list[str], text: str) -> list[int]:
    return [_time_field(f, text) for f in fields]


def _time_field(field: str, text: str) -> int:
    if not _is_digits(field):
        raise _bad_time(text)
    return int(field)


def _bad_time(text: str) -> UnitError:
    return UnitError(f"invalid time {text!r} ({_TIME_FORMS})")


def format_time(seconds: int, *, limit: bool = False) -> str:
    """squeue's style: `0:05`, `12:34`, `1:02:03`, `1-02:03:04`.

    With `limit=True`, 0 is a time limit and reads `UNLIMITED`.
    """
    seconds = int(seconds)
    if seconds < 0:
        raise UnitError(f"cannot format a negative time ({seconds} s)")
    if limit and seconds == 0:
        return "UNLIMITED"
    days, rest = divmod(seconds, _DAY)
    hours, rest = divmod(rest, _HOUR)
    minutes, secs = divmod(rest, _MINUTE)
    if days:
        return f"{days}-{hours:02d}:{minutes:02d}:{secs:02d}"
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}"


# -- memory ----------------------------------------------------------------
def parse_memory(text: str) -> int:
    """Megabytes for a Slurm size: `512`, `512M`, `4G`, `4gb`, `1.5G`, `100K`, `2T`.

    No unit means megabytes; sizes round up to whole megabytes; 0 is allowed (with `--mem`
    it asks for all of a node's memory).
    """
    stripped = text.strip()
    end = _number_end(stripped)
    number, unit = stripped[:end], stripped[end:].strip()
    if not _is_number(number) or (unit and not unit.isalpha()):
        reason = "must not be negative" if stripped[:1] == "-" and stripped[1:2].isdigit() \
            else _SIZE_FORMS
        raise UnitError(f"invalid size {text!r} ({reason})")
    factor = _MB_FACTORS.get(_unit_letter(unit)) if unit else _MB_FACTORS["M"]
    if factor is None:
        raise UnitError(f"unknown unit {unit!r} (use K, M, G or T)")
    whole, _, fraction = number.partition(".")
    scale = 10 ** len(fraction)
    numerator = int(whole + fraction) * factor[0]
    denominator = scale * factor[1]
    return -(-numerator // denominator)  # round up: 100K still needs a whole megabyte


def _number_end(text: str) -> int:
    end = 0
    while end < len(text) and (text[end].isdigit() or text[end] == "."):
        end += 1
    return end


def _is_number(text: str) -> bool:
    whole, dot, fraction = text.partition(".")
    if not whole or not _is_digits(whole):
        return False
    return not dot or _is_digits(fraction)


def _unit_letter(unit: str) -> str | None:
    """'G', 'g', 'GB', 'GiB' -> 'G'; anything else -> None."""
    upper = unit.upper()
    for suffix in ("IB", "B"):
        if len(upper) > len(suffix) and upper.endswith(suffix):
            upper = upper[: -len(suffix)]
            break
    return upper if upper in _MB_FACTORS else None


def format_memory(mb: int) -> str:
    """`512M`, `4G`, `1536M`, `2T`: the largest unit that divides exactly; 0 reads `0`."""
    mb = int(mb)
    if mb < 0:
        raise UnitError(f"cannot format a negative size ({mb} MB)")
    if mb == 0:
        return "0"
    for letter, per in (("T", 1024 * 1024), ("G", 1024)):
        if mb % per == 0:
            return f"{mb // per}{letter}"
    return f"{mb}M"


def format_kb(kb: int) -> str:
    """Kilobytes as sacct shows MaxRSS: `1234K`."""
    kb = int(kb)
    if kb < 0:
        raise UnitError(f"cannot format a negative size ({kb} KB)")
    return f"{kb}K"
