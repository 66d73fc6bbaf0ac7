"""Usage charts: GPU-hours per account per day, in the terminal or as a file.

Input is a series of points {"day": "YYYY-MM-DD", "account": str, <metric>: number};
several points for the same day and account add up, and a None value counts as 0.

`terminal` draws one stacked horizontal bar per day with block characters (colors on a
terminal when rich is installed). `write` makes an .svg by hand (no dependency) or a
.png with matplotlib when it is installed. Both import nothing heavy until called.
"""
from __future__ import annotations

import math

EMPTY = "no usage in this window"
METRIC_LABELS = {"gpu_hours": "GPU-hours", "cpu_hours": "CPU-hours", "billing": "billing"}
CHART_TYPES = (".svg", ".png")

# Plain glyphs tell accounts apart without color; past the last one, accounts fold
# into "other" (a legend of 20 look-alike glyphs would not help anyone).
GLYPHS = "█▓▒░#=+:"
TTY_COLORS = ("cyan", "magenta", "green", "yellow", "blue", "red", "bright_black",
              "bright_green")
# Tableau's 10 colors; further accounts get hues spread by the golden ratio.
SVG_COLORS = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
              "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac")


class ChartError(ValueError):
    """A chart could not be made or written; the message says why and what to do."""


# -- data -------------------------------------------------------------------------

def _grid(series, metric: str = "gpu_hours"):
    """(days, accounts, values): days in order with the gaps between them filled,
    accounts with usage by total (largest first), values[(day, account)] summed."""
    values: dict[tuple[str, str], float] = {}
    for point in series:
        key = (str(point["day"]), str(point["account"]))
        # Usage is never negative; a negative correction would draw a bar backwards.
        values[key] = values.get(key, 0.0) + max(0.0, float(point.get(metric) or 0))
    by_account: dict[str, float] = {}
    for (_, account), v in values.items():
        by_account[account] = by_account.get(account, 0.0) + v
    # An account without usage has no bar, so it gets no color or legend entry either.
    accounts = sorted((a for a, v in by_account.items() if v > 0),
                      key=lambda a: (-by_account[a], a))
    return _days({d for d, _ in values}), accounts, values


def _days(seen: set[str]) -> list[str]:
    """Every day from the first to the last: a day without usage is a line, not a gap
    that hides itself. Days that are not ISO dates are kept as they are, sorted."""
    import datetime
    try:
        dates = sorted(datetime.date.fromisoformat(d) for d in seen)
    except ValueError:
        return sorted(seen)
    if not dates:
        return []
    span = (dates[-1] - dates[0]).days
    return [(dates[0] + datetime.timedelta(days=i)).isoformat() for i in range(span + 1)]


def _fold(accounts: list[str], values: dict, limit: int):
    """Keep the `limit - 1` largest accounts and add the rest up as "other"."""
    if len(accounts) <= limit:
        return accounts, values
    keep, rest = accounts[:limit - 1], set(accounts[limit - 1:])
    other = f"other ({len(rest)} accounts)"
    folded: dict[tuple[str, str], float] = {}
    for (day, account), v in values.items():
        key = (day, other if account in rest else account)
        folded[key] = folded.get(key, 0.0) + v
    return keep + [other], folded


def _label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


# -- terminal ---------------------------------------------------------------------

def _segments(parts: list[float], top: float, width: int) -> list[int]:
    """Character counts for stacked parts: cumulative rounding keeps the bar's length
    proportional to its total; a day with any usage shows at least one character."""
    counts, done, running = [], 0, 0.0
    for v in parts:
        running += v
        end = round(running / top * width) if top > 0 else 0
        counts.append(end - done)
        done = end
    if done == 0 and sum(parts) > 0:
        counts[max(range(len(parts)), key=parts.__getitem__)] = 1
    return counts


def terminal(series, *, width: int = 60, metric: str = "gpu_hours",
             stream_is_tty: bool | None = None) -> str:
    """One stacked bar per day, `width` characters for the busiest day, then a legend.

    Colors (one block per account) when `stream_is_tty` (default: is stdout a terminal)
    and rich is installed; otherwise one glyph per account, which survives pipes and
    email. No trailing newline.
    """
    days, accounts, values = _grid(series, metric)
    totals = {d: sum(values.get((d, a), 0.0) for a in accounts) for d in days}
    top = max(totals.values(), default=0.0)
    if top <= 0:
        return EMPTY
    if stream_is_tty is None:
        import sys
        stream_is_tty = sys.stdout.isatty()
    color = bool(stream_is_tty) and _have_rich()
    glyphs = "█" * len(TTY_COLORS) if color else GLYPHS
    accounts, values = _fold(accounts, values, len(glyphs))
    width = max(10, int(width))
    unit = _label(metric)
    # A line is a list of (text, account index or None): plain text joins the texts,
    # the colored version styles each account's text.
    lines = [[(f"{unit} per day by account (each block is {_number(top / width)} {unit};"
               f" busiest day {_number(top)})", None)]]
    for day in days:
        counts = _segments([values.get((day, a), 0.0) for a in accounts], top, width)
        bar = [(glyphs[i] * n, i) for i, n in enumerate(counts) if n > 0]
        pad = " " * (width - sum(counts))
        lines.append([(f"{day} ", None)] + bar + [(f"{pad} {totals[day]:,.1f}", None)])
    lines += _legend(accounts, glyphs, width + 12)
    return _paint(lines) if color else "\n".join(_text(line) for line in lines)


def _legend(accounts: list[str], glyphs: str, width: int) -> list[list]:
    """Legend entries `<glyph> name`, wrapped to `width` characters a line."""
    lines, line, used = [[]], [], 0
    for i, account in enumerate(accounts):
        size = len(account) + 5
        if line and used + size > width:
            lines.append(line)
            line, used = [], 0
        line += [(glyphs[i], i), (f" {account}   ", None)]
        used += size
    return lines + [line]


def _text(line: list) -> str:
    return "".join(text for text, _ in line).rstrip()


def _paint(lines: list[list]) -> str:
    import io

    from rich.console import Console
    from rich.text import Text

    out = io.StringIO()
    widest = max(len(_text(line)) for line in lines)
    console = Console(file=out, force_terminal=True, highlight=False, width=widest + 1)
    for line in lines:
        text = Text(no_wrap=True)
        for part, index in line:
            text.append(part, style=None if index is None else TTY_COLORS[index])
        text.rstrip()
        console.print(text)
    return out.getvalue().rstrip("\n")


def _have_rich() -> bool:
    import importlib.util
    return importlib.util.find_spec("rich") is not None


def _number(v: float) -> str:
    """Short scale labels: 1,234 / 12.5 / 0.25."""
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2g}" if v < 1 else f"{v:.2f}".rstrip("0").rstrip(".")


# -- files ------------------------------------------------------------------------

def write(series, path: str, *, metric: str = "gpu_hours", title: str | None = None) -> None:
    """Write a chart of `series` to `path`; the extension picks the kind (.svg, .png).

    ChartError (a ValueError) for another extension, for .png without matplotlib, and
    when the file cannot be written (with the system's reason).
    """
    import os
    ext = os.path.splitext(str(path))[1].lower()
    if ext not in CHART_TYPES:
        raise ChartError(f"cannot make a chart of type {ext or '(no extension)'} ({path}):"
                         f" use a name ending in {' or '.join(CHART_TYPES)}")
    title = title or f"{_label(metric)} per day by account"
    if ext == ".svg":
        text = svg(series, metric=metric, title=title)
        _writing(path, lambda: _write_text(path, text))
    else:
        _png(series, path, metric, title)


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _writing(path: str, action) -> None:
    try:
        action()
    except OSError as exc:
        raise ChartError(f"cannot write {path}: {exc.strerror or exc}") from None


def _color(i: int) -> str:
    """A fill for the i-th account: hex, which every SVG reader and matplotlib take."""
    if i < len(SVG_COLORS):
        return SVG_COLORS[i]
    import colorsys
    rgb = colorsys.hls_to_rgb((i * 0.381966) % 1.0, 0.5, 0.55)
    return "#" + "".join(f"{round(c * 255):02x}" for c in rgb)


def _ticks(top: float, count: int = 5) -> list[float]:
    """Round scale values (1, 2 or 5 times a power of ten) from 0 past `top`."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    return [i * step for i in range(math.ceil(top / step - 1e-9) + 1)]


def _tick_label(tick: float) -> str:
    # Steps are 1, 2 or 5 times a power of ten: whole ticks read 1,000, others 0.25.
    return f"{tick:,.0f}" if tick == int(tick) else f"{tick:.6g}"


def svg(series, *, metric: str = "gpu_hours", title: str | None = None) -> str:
    """The chart as an SVG document. Bars are the only <rect> elements: one per
    (day, account) with usage, each with a <title> tooltip."""
    title = title or f"{_label(metric)} per day by account"
    from xml.sax.saxutils import escape

    days, accounts, values = _grid(series, metric)
    totals = [sum(values.get((d, a), 0.0) for a in accounts) for d in days]
    ticks = _ticks(max(totals, default=0.0))
    slot = max(8.0, min(40.0, 720.0 / max(1, len(days))))
    left, top, plot_h = 70.0, 40.0, 300.0
    plot_w = max(200.0, slot * len(days))
    slot = plot_w / len(days) if days else slot
    legend_x = left + plot_w + 30
    name_w = max((len(a) for a in accounts), default=0) * 7 + 30
    width = max(legend_x + name_w, left + len(title) * 9 + 20)
    height = max(top + plot_h + 90, top + 20 * len(accounts) + 20)
    scale = plot_h / ticks[-1]
    bar_w = min(slot * 0.8, 48.0)     # a lone day's bar stays a bar, not a wall
    base = top + plot_h
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}"'
           f' viewBox="0 0 {width:.0f} {height:.0f}" font-family="sans-serif" font-size="11"'
           ' style="background:#fff">',
           f'<text x="{left}" y="22" font-size="15" font-weight="bold">{escape(title)}</text>']
    for tick in ticks:
        y = base - tick * scale
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}"'
                   f' stroke="#ddd"/><text x="{left - 6}" y="{y + 4:.1f}"'
                   f' text-anchor="end">{_tick_label(tick)}</text>')
    out.append(f'<text x="14" y="{top + plot_h / 2}" text-anchor="middle" transform='
               f'"rotate(-90 14 {top + plot_h / 2})">{escape(_label(metric))}</text>')
    every = math.ceil(len(days) / 30) or 1     # ~30 day labels at most stay readable
    for i, day in enumerate(days):
        x, y = left + i * slot, base
        for j, account in enumerate(accounts):
            v = values.get((day, account), 0.0)
            if v <= 0:
                continue
            h = v * scale
            y -= h
            tip = escape(f"{day} {account}: {v:,.1f}")
            out.append(f'<rect class="bar" x="{x + (slot - bar_w) / 2:.1f}" y="{y:.1f}"'
                       f' width="{bar_w:.1f}" height="{h:.1f}"'
                       f' fill="{_color(j)}"><title>{tip}</title></rect>')
        if i % every == 0:
            cx = x + slot / 2
            out.append(f'<text x="{cx:.1f}" y="{base + 12}" text-anchor="end"'
                       f' transform="rotate(-45 {cx:.1f} {base + 12})">{escape(day)}</text>')
    out.append(f'<line x1="{left}" y1="{base}" x2="{left + plot_w}" y2="{base}" stroke="#333"/>')
    if not accounts:
        out.append(f'<text x="{left + plot_w / 2}" y="{top + plot_h / 2}"'
                   f' text-anchor="middle">{EMPTY}</text>')
    for j, account in enumerate(accounts):
        y = top + 10 + 20 * j
        out.append(f'<circle cx="{legend_x + 6}" cy="{y - 4}" r="6" fill="{_color(j)}"/>'
                   f'<text x="{legend_x + 18}" y="{y}">{escape(account)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _png(series, path: str, metric: str, title: str) -> None:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ChartError("PNG charts need matplotlib (pip install matplotlib);"
                         " .svg works without it") from None
    days, accounts, values = _grid(series, metric)
    # Figure without pyplot: no global state and no GUI backend, safe on a login node.
    fig = Figure(figsize=(max(6.0, 0.25 * len(days) + 3), 4.5), layout="constrained")
    ax = fig.subplots()
    bottoms = [0.0] * len(days)
    for j, account in enumerate(accounts):
        heights = [values.get((d, account), 0.0) for d in days]
        ax.bar(days, heights, bottom=bottoms, label=account, color=_color(j))
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    ax.set_title(title)
    ax.set_ylabel(_label(metric))
    ax.tick_params(axis="x", labelrotation=45)
    if accounts:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    else:
        ax.text(0.5, 0.5, EMPTY, ha="center", va="center", transform=ax.transAxes)
    _writing(path, lambda: fig.savefig(path, format="png", dpi=100))
