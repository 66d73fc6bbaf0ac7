"""Slurm-style times and sizes: what users type in --time and --mem, and what commands print."""
import pytest

from rmsbatch.core.units import (
    UnitError,
    format_kb,
    format_memory,
    format_time,
    parse_memory,
    parse_time,
)

MIN = 60
HOUR = 3600
DAY = 86400


# -- parse_time --------------------------------------------------------------
@pytest.mark.parametrize(
    "text, seconds",
    [
        ("30", 30 * MIN),                         # M: a lone number is minutes
        ("0", 0),                                 # 0 means no limit
        ("90", 90 * MIN),
        ("3:00", 3 * MIN),                        # M:S, three minutes, not three hours
        ("1:30", MIN + 30),
        ("90:00", 90 * MIN),                      # minutes may exceed 59 in M:S
        ("1:00:00", HOUR),                        # H:M:S
        ("11:0:0", 11 * HOUR),                    # unpadded
        ("48:00:00", 48 * HOUR),                  # hours may exceed 24
        ("01:02:03", HOUR + 2 * MIN + 3),
        ("2-0", 2 * DAY),                         # D-H
        ("1-12", DAY + 12 * HOUR),
        ("1-12:30", DAY + 12 * HOUR + 30 * MIN),  # D-H:M
        ("1-02:03:04", DAY + 2 * HOUR + 3 * MIN + 4),  # D-H:M:S
        ("0-36:00:00", 36 * HOUR),
        (" 10 ", 10 * MIN),                       # surrounding blanks
    ],
)
def test_parse_time_formats(text, seconds):
    assert parse_time(text) == seconds


@pytest.mark.parametrize("text", ["UNLIMITED", "unlimited", "Infinite", "INFINITE"])
def test_parse_time_unlimited_is_zero(text):
    assert parse_time(text) == 0


@pytest.mark.parametrize(
    "text", ["abc", "", "1:2:3:4", "1-2:3:4:5", "1:", ":30", "1.5", "1h", "1--2", "2-", "-", "１０"]
)
def test_parse_time_rejects_garbage_with_the_accepted_forms(text):
    with pytest.raises(UnitError) as info:
        parse_time(text)
    assert f"invalid time {text!r}" in str(info.value)
    assert "(use minutes, M:S, H:M:S, D-H, D-H:M or D-H:M:S)" in str(info.value)


def test_parse_time_message_shape():
    with pytest.raises(UnitError, match=r"^invalid time 'abc' \(use minutes, M:S, H:M:S, D-H, "
                                        r"D-H:M or D-H:M:S\)$"):
        parse_time("abc")


@pytest.mark.parametrize("text", ["-5", "-1:00", "-1-00:00:00"])
def test_parse_time_rejects_negative(text):
    with pytest.raises(UnitError, match="negative"):
        parse_time(text)


def test_parse_time_rejects_absurdly_long_numbers():
    with pytest.raises(UnitError):
        parse_time("9" * 5000)


def test_unit_error_is_a_value_error():
    assert issubclass(UnitError, ValueError)


# -- parse_memory ------------------------------------------------------------
@pytest.mark.parametrize(
    "text, mb",
    [
        ("512", 512),            # no unit: megabytes
        ("512M", 512),
        ("512m", 512),
        ("512MB", 512),
        ("512mb", 512),
        ("4G", 4096),
        ("4g", 4096),
        ("4GB", 4096),
        ("4gB", 4096),
        ("4GiB", 4096),
        ("2T", 2 * 1024 * 1024),
        ("2tb", 2 * 1024 * 1024),
        ("2048K", 2),
        ("2048kb", 2),
        ("100K", 1),             # K rounds up to a whole megabyte
        ("1025K", 2),
        ("1.5G", 1536),
        ("0", 0),                # --mem=0: the whole node
        ("0G", 0),
        (" 8G ", 8192),
    ],
)
def test_parse_memory_units(text, mb):
    assert parse_memory(text) == mb


@pytest.mark.parametrize("text, unit", [("12Q", "Q"), ("12q", "q"), ("4GX", "GX"), ("1B", "B"),
                                        ("3 PB", "PB")])
def test_parse_memory_unknown_unit(text, unit):
    with pytest.raises(UnitError) as info:
        parse_memory(text)
    assert str(info.value) == f"unknown unit {unit!r} (use K, M, G or T)"


@pytest.mark.parametrize("text", ["abc", "", "G", "-1G", ".5G", "5.G", "1,5G", "9" * 5000])
def test_parse_memory_invalid_size(text):
    with pytest.raises(UnitError) as info:
        parse_memory(text)
    assert str(info.value).startswith(f"invalid size {text!r} (")


def test_parse_memory_negative_says_so():
    with pytest.raises(UnitError, match="negative"):
        parse_memory("-4G")


# -- formatting --------------------------------------------------------------
@pytest.mark.parametrize(
    "seconds, text",
    [
        (0, "0:00"),
        (5, "0:05"),
        (65, "1:05"),
        (59 * MIN + 59, "59:59"),
        (HOUR, "1:00:00"),
        (HOUR + 2 * MIN + 3, "1:02:03"),
        (23 * HOUR, "23:00:00"),
        (DAY, "1-00:00:00"),
        (DAY + 2 * HOUR + 3 * MIN + 4, "1-02:03:04"),
        (12 * DAY, "12-00:00:00"),
    ],
)
def test_format_time_like_squeue(seconds, text):
    assert format_time(seconds) == text


def test_format_time_zero_limit_is_unlimited():
    assert format_time(0, limit=True) == "UNLIMITED"
    assert format_time(3600, limit=True) == "1:00:00"


@pytest.mark.parametrize("text", ["5", "3:00", "1:02:03", "1-02:03:04", "2-0", "11:0:0"])
def test_format_time_round_trips_through_parse_time(text):
    seconds = parse_time(text)
    # format_time writes M:SS under an hour, which parse_time reads back as M:S.
    assert parse_time(format_time(seconds)) == seconds


def test_format_time_rejects_negative():
    with pytest.raises(UnitError):
        format_time(-1)


@pytest.mark.parametrize(
    "mb, text",
    [(512, "512M"), (1024, "1G"), (4096, "4G"), (1536, "1536M"), (1024 * 1024, "1T"),
     (3 * 1024 * 1024, "3T"), (1, "1M"), (0, "0")],
)
def test_format_memory_whole_units(mb, text):
    assert format_memory(mb) == text


@pytest.mark.parametrize("mb", [1, 512, 1536, 4096, 1024 * 1024, 0])
def test_format_memory_round_trips(mb):
    assert parse_memory(format_memory(mb)) == mb


def test_format_kb():
    assert format_kb(1234) == "1234K"
    assert format_kb(0) == "0K"
    with pytest.raises(UnitError):
        format_kb(-1)
