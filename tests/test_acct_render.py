"""rsacct report's presentation layer: report rows rendered in every format, budget
warnings, tenant statements, and usage charts (terminal, SVG, PNG)."""
from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from rmsbatch.acct import chart, render
from rmsbatch.acct.render import columns, statement, sum_rows

ANSI = re.compile(r"\x1b\[[0-9;]*m")
SVG = "{http://www.w3.org/2000/svg}"

ROWS = [
    {"tenant": "nlp/nlp-translation", "user": "ana", "jobs": 1200, "gpu_hours": 12345.678,
     "cpu_hours": 100.25, "billing": 15000.5, "wait_mean_s": 725, "wait_p95_s": 93784,
     "gpu_eff": 0.73, "idle_gpu_hours": 12.3},
    {"account": "vision", "user": "bo", "jobs": 3, "gpu_hours": 850.0, "cpu_hours": None,
     "billing": 900.125, "wait_mean_s": 60, "wait_p95_s": None, "gpu_eff": 0.5,
     "idle_gpu_hours": 0.0},
    {"account": "vision", "user": "cy", "jobs": 7, "gpu_hours": 0.4, "cpu_hours": 3.0,
     "billing": 1.0, "wait_mean_s": None, "wait_p95_s": 5, "gpu_eff": None,
     "idle_gpu_hours": None},
]


def budget(used: float, limit: float = 1000.0, unit: str = "gpu_hours") -> dict:
    return {"limit": limit, "used": used, "unit": unit, "period": "2026-12", "warn": 0.8}


def with_budget(used: float, **kw) -> list[dict]:
    return [dict(ROWS[1], budget=budget(used, **kw))]


# -- columns and values -----------------------------------------------------------

def test_default_columns_are_group_keys_then_measures():
    assert [c.header for c in columns(["tenant", "user", "gpu_type", "day"])] == [
        "Account", "User", "GPUType", "Day", "Jobs", "GPUHours", "CPUHours", "Billing",
        "WaitMean", "WaitP95", "GPUEff", "IdleGPUHours"]
    assert [c.key for c in columns(["qos"])][:2] == ["qos", "jobs"]


def test_values_read_like_slurm_for_people():
    text = render.render(ROWS[:1], ["account"], "markdown")
    for cell in ("nlp/nlp-translation", "1,200", "12,345.7", "100.2", "12:05",
                 "1-02:03:04", "73%"):
        assert cell in text
    assert render.human(None, "hours") == ""
    assert render.human(12.34, "hours", grouping=False) == "12.3"


def test_unknown_format_and_group_key_are_value_errors():
    with pytest.raises(ValueError, match="unknown report format 'xml'.*csv"):
        render.render(ROWS, ["account"], "xml")
    with pytest.raises(ValueError, match="unknown group key 'colour'.*gpu_type"):
        render.render(ROWS, ["account", "colour"], "plain")
    with pytest.raises(ValueError, match="twice"):
        columns(["account", "tenant"])


# -- totals -----------------------------------------------------------------------

def test_totals_are_sums_of_the_rows():
    sums = sum_rows(ROWS)
    assert sums["jobs"] == 1210
    assert sums["gpu_hours"] == pytest.approx(12345.678 + 850.0 + 0.4)
    assert sums["cpu_hours"] == pytest.approx(103.25)        # None is not a zero
    assert sums["billing"] == pytest.approx(15901.625)
    assert sums["idle_gpu_hours"] == pytest.approx(12.3)
    # Mean wait weighted by jobs over the rows that know it; p95 does not add up.
    assert sums["wait_mean_s"] == pytest.approx((1200 * 725 + 3 * 60) / 1203)
    assert sums["wait_p95_s"] is None
    assert sums["gpu_eff"] == pytest.approx((0.73 * 12345.678 + 0.5 * 850) / 13195.678)


def test_plain_total_row_shows_the_sums():
    text = render.render(ROWS, ["account", "user"], "plain")
    total = next(line for line in text.splitlines() if line.startswith("TOTAL"))
    assert total.split() == ["TOTAL", "1210", "13196.1", "103.2", "15901.6", "12:03",
                             "72%", "12.3"]
    assert "TOTAL" not in render.render(ROWS, ["account"], "plain", totals=False)


# -- formats ----------------------------------------------------------------------

def test_csv_round_trips_to_the_same_numbers():
    text = render.render(ROWS, ["account", "user"], "csv")
    got = list(csv.DictReader(io.StringIO(text)))
    assert list(got[0]) == ["account", "user", "jobs", "gpu_hours", "cpu_hours", "billing",
                            "wait_mean_s", "wait_p95_s", "gpu_eff", "idle_gpu_hours"]
    assert len(got) == len(ROWS)                         # no totals row
    for row, source in zip(got, ROWS):
        assert row["account"] == source.get("account", source.get("tenant"))
        assert int(row["jobs"]) == source["jobs"]
        for key in ("gpu_hours", "cpu_hours", "billing", "wait_mean_s", "wait_p95_s",
                    "gpu_eff", "idle_gpu_hours"):
            expected = source[key]
            assert (row[key] == "") if expected is None else (
                float(row[key]) == pytest.approx(round(expected, 3)))
    assert got[0]["gpu_hours"] == "12345.678" and got[0]["gpu_eff"] == "0.73"


def test_json_has_rows_and_totals_with_raw_values():
    doc = json.loads(render.render(ROWS, ["tenant", "user"], "json"))
    assert doc["group_by"] == ["account", "user"]
    assert [r["account"] for r in doc["rows"]] == ["nlp/nlp-translation", "vision", "vision"]
    assert doc["rows"][0]["wait_p95_s"] == 93784 and doc["rows"][0]["gpu_eff"] == 0.73
    assert doc["totals"]["jobs"] == 1210
    assert doc["totals"]["gpu_hours"] == pytest.approx(13196.078)


def test_markdown_has_a_header_separator_line():
    lines = render.render(ROWS, ["account"], "markdown", title="December").splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| Account"))
    assert re.fullmatch(r"\|(:?-+:?\|)+", lines[header + 1])
    assert any(line.startswith("| TOTAL") for line in lines)


def test_markdown_escapes_pipes_in_names():
    rows = [dict(ROWS[1], account="a|b")]
    assert "a\\|b" in render.render(rows, ["account"], "markdown")


def test_html_is_a_table_with_escaped_names():
    rows = [dict(ROWS[1], account="a<b&c")]
    text = render.render(rows, ["account"], "html")
    assert "<table>" in text and "</table>" in text
    assert "a&lt;b&amp;c" in text and "a<b&c" not in text


def test_markdown_without_tabulate_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tabulate", None)
    with pytest.raises(ValueError, match="pip install tabulate"):
        render.render(ROWS, ["account"], "markdown")


def test_plain_columns_align():
    lines = render.render(ROWS, ["account", "user"], "plain").splitlines()
    assert len({len(line) for line in lines}) == 1
    header, dashes = lines[0], lines[1]
    # Each header sits over its dashes: blanks in the dashes line are column gaps.
    gaps = [i for i, ch in enumerate(dashes) if ch == " "]
    assert set(dashes.replace(" ", "")) == {"-"}
    for line in lines[2:]:
        assert all(line[i] == " " for i in gaps), line
    assert header.split() == [c.header for c in columns(["account", "user"])]


def test_table_off_a_terminal_is_plain():
    plain = render.render(ROWS, ["account"], "plain")
    assert render.render(ROWS, ["account"], "table", stream_is_tty=False) == plain


def test_table_on_a_terminal_is_a_rich_table():
    text = render.render(ROWS, ["account", "user"], "table", stream_is_tty=True, width=160)
    assert ANSI.search(text), "expected terminal styling"
    clean = ANSI.sub("", text)
    for cell in ("nlp/nlp-translation", "vision", "TOTAL", "1,210", "13,196.1"):
        assert cell in clean
    assert clean != render.render(ROWS, ["account", "user"], "plain")


def test_table_on_a_terminal_without_rich_is_plain(monkeypatch):
    monkeypatch.setitem(sys.modules, "rich", None)
    plain = render.render(ROWS, ["account"], "plain")
    assert render.render(ROWS, ["account"], "table", stream_is_tty=True) == plain


def test_rich_does_not_read_names_as_markup():
    rows = [dict(ROWS[1], account="[bold]lab[/bold]")]
    text = render.render(rows, ["account"], "table", stream_is_tty=True, width=160)
    assert "[bold]lab[/bold]" in ANSI.sub("", text)


def test_importing_the_renderers_loads_no_optional_module():
    code = ("import sys, rmsbatch.acct.render, rmsbatch.acct.chart; "
            "print([m for m in ('rich', 'tabulate', 'matplotlib', 'json', 'csv') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


# -- budgets ----------------------------------------------------------------------

def test_budget_column_and_warning_at_85_percent():
    text = render.render(with_budget(850.0), ["account"], "plain")
    assert "Budget" in text.splitlines()[0]
    assert "850/1,000 GPU-h (85%)" in text
    assert text.splitlines()[-1] == ("warning: account vision has used 85% of its GPU-hour"
                                     " budget for 2026-12 (850.0 of 1000.0)")


def test_no_budget_warning_at_50_percent():
    text = render.render(with_budget(500.0), ["account"], "plain")
    assert "500/1,000 GPU-h (50%)" in text
    assert "warning" not in text


def test_over_budget_at_120_percent():
    for fmt in ("plain", "table"):
        text = render.render(with_budget(1200.0, unit="billing"), ["account"], fmt,
                             stream_is_tty=True, width=200)
        assert "warning: account vision is over budget: used 120% of its billing budget" \
            in ANSI.sub("", text)


def test_one_warning_per_account():
    rows = [dict(ROWS[1], budget=budget(900.0)), dict(ROWS[2], budget=budget(900.0))]
    assert len(render.budget_warnings(rows)) == 1


def test_budget_flattens_into_csv_and_stays_nested_in_json():
    rows = with_budget(850.0)
    got = next(csv.DictReader(io.StringIO(render.render(rows, ["account"], "csv"))))
    assert float(got["budget_used"]) == 850.0 and got["budget_period"] == "2026-12"
    doc = json.loads(render.render(rows, ["account"], "json"))
    assert doc["rows"][0]["budget"]["limit"] == 1000.0


# -- statements -------------------------------------------------------------------

def test_statement_has_account_period_users_and_totals():
    users = [{"user": "ana", "jobs": 10, "gpu_hours": 1234.5, "cpu_hours": 20.0,
              "billing": 1500.0},
             {"user": "bo", "jobs": 2, "gpu_hours": 65.5, "cpu_hours": 1.0, "billing": 70.0}]
    text = statement("nlp/nlp-translation", "2026-12", users, sum_rows(users),
                     budget=budget(1300.0, limit=1500.0), cluster="gpu-east",
                     generated="2027-01-01 06:00",
                     rows_by_gpu_type=[{"gpu_type": "h100", "jobs": 12, "gpu_hours": 1300.0}])
    for needle in ("nlp/nlp-translation", "2026-12", "gpu-east", "2027-01-01 06:00",
                   "| ana", "| bo", "h100", "1,300.0", "1,570.0"):
        assert needle in text
    total = next(line for line in text.splitlines() if line.startswith("| TOTAL"))
    assert [c.strip() for c in total.strip("|").split("|")] == [
        "TOTAL", "12", "1,300.0", "21.0", "1,570.0"]
    assert "1,300/1,500 GPU-h (86%)" in text
    assert "warning: account nlp/nlp-translation has used 86%" in text


# -- charts -----------------------------------------------------------------------

def bar(text: str, day: str) -> str:
    """The first account's blocks on a day's line."""
    line = next(line for line in text.splitlines() if line.startswith(day))
    return "".join(ch for ch in line if ch == chart.GLYPHS[0])


def test_terminal_bars_are_proportional():
    series = [{"day": "2026-12-01", "account": "vision", "gpu_hours": 100.0},
              {"day": "2026-12-02", "account": "vision", "gpu_hours": 50.0},
              {"day": "2026-12-02", "account": "nlp", "gpu_hours": 0.0}]
    text = chart.terminal(series, width=60, stream_is_tty=False)
    assert len(bar(text, "2026-12-01")) == 60
    assert len(bar(text, "2026-12-02")) == 30
    assert "vision" in text and "nlp" not in text        # no usage, no legend entry


def test_terminal_stacks_accounts_with_their_own_glyphs():
    series = [{"day": "2026-12-01", "account": "big", "gpu_hours": 30.0},
              {"day": "2026-12-01", "account": "small", "gpu_hours": 10.0},
              {"day": "2026-12-03", "account": "small", "gpu_hours": 20.0}]
    lines = chart.terminal(series, width=40, stream_is_tty=False).splitlines()
    assert lines[1].startswith("2026-12-01 " + "█" * 30 + "▓" * 10)
    assert lines[2].startswith("2026-12-02") and "0.0" in lines[2]   # a gap day shows
    assert lines[3].startswith("2026-12-03 " + "▓" * 20 + " ")
    assert "█ big" in lines[-1] and "▓ small" in lines[-1]


def test_terminal_empty_and_zero_series():
    assert chart.terminal([], stream_is_tty=False) == "no usage in this window"
    zeros = [{"day": "2026-12-01", "account": "a", "gpu_hours": 0},
             {"day": "2026-12-02", "account": "b", "gpu_hours": None}]
    assert chart.terminal(zeros, stream_is_tty=False) == "no usage in this window"


def test_terminal_one_day_and_sixty_days_with_many_accounts():
    one = chart.terminal([{"day": "2026-12-01", "account": "a", "gpu_hours": 2.0}],
                         stream_is_tty=False)
    assert len([line for line in one.splitlines() if line.startswith("2026-")]) == 1
    series = [{"day": f"2026-{10 + d // 31}-{d % 31 + 1:02d}", "account": f"acct{a:02d}",
               "gpu_hours": float(a + 1)} for d in range(60) for a in range(15)]
    text = chart.terminal(series, width=50, stream_is_tty=False)
    days = [line for line in text.splitlines() if line.startswith("2026-")]
    assert len(days) == 60
    assert "acct14" in text and "other (8 accounts)" in text


def test_terminal_colors_on_a_tty():
    series = [{"day": "2026-12-01", "account": "vision", "gpu_hours": 4.0}]
    text = chart.terminal(series, width=20, stream_is_tty=True)
    assert ANSI.search(text)
    assert "vision" in ANSI.sub("", text)


SERIES = [
    {"day": "2026-12-01", "account": "vision", "gpu_hours": 120.0},
    {"day": "2026-12-01", "account": "a<b&c", "gpu_hours": 30.5},
    {"day": "2026-12-02", "account": "vision", "gpu_hours": 0.0},
    {"day": "2026-12-02", "account": "a<b&c", "gpu_hours": 12.0},
    {"day": "2026-12-04", "account": "vision", "gpu_hours": 60.0},
]


def test_svg_is_xml_with_one_bar_per_day_and_account(tmp_path):
    path = tmp_path / "usage.svg"
    chart.write(SERIES, str(path), title="December & more")
    root = ET.parse(path).getroot()
    assert root.tag == SVG + "svg"
    assert len(list(root.iter(SVG + "rect"))) == 4        # the zero value has no bar
    texts = [t.text for t in root.iter(SVG + "text")]
    assert "a<b&c" in texts and "December & more" in texts
    assert {"2026-12-01", "2026-12-03", "2026-12-04"} <= set(texts)   # gaps have labels
    assert "a&lt;b&amp;c" in path.read_text()


def test_svg_bars_scale_with_values(tmp_path):
    path = tmp_path / "usage.svg"
    chart.write([{"day": "2026-12-01", "account": "x", "gpu_hours": 100.0},
                 {"day": "2026-12-02", "account": "x", "gpu_hours": 25.0}], str(path))
    heights = [float(r.get("height")) for r in ET.parse(path).getroot().iter(SVG + "rect")]
    assert heights[0] == pytest.approx(4 * heights[1])


def test_svg_of_an_empty_series_says_so(tmp_path):
    path = tmp_path / "empty.svg"
    chart.write([], str(path))
    root = ET.parse(path).getroot()
    assert not list(root.iter(SVG + "rect"))
    assert "no usage in this window" in [t.text for t in root.iter(SVG + "text")]


def test_png_without_matplotlib_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    path = tmp_path / "usage.png"
    with pytest.raises(chart.ChartError, match=r"pip install matplotlib.*\.svg works"):
        chart.write(SERIES, str(path))
    assert not path.exists()
    assert issubclass(chart.ChartError, ValueError)


def test_png_with_matplotlib(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "usage.png"
    chart.write(SERIES, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_chart_type_names_the_accepted_ones(tmp_path):
    with pytest.raises(chart.ChartError, match=r"\.pdf.*\.svg or \.png"):
        chart.write(SERIES, str(tmp_path / "usage.pdf"))


def test_unwritable_chart_path_is_a_chart_error(tmp_path):
    with pytest.raises(chart.ChartError, match="No such file or directory"):
        chart.write(SERIES, str(tmp_path / "missing" / "usage.svg"))
