"""Host lists: `gpu[001-004,007]` <-> ["gpu001", ..., "gpu007"].

The ClusterShell/Slurm notation, parsed once at the edge:

    expand("gpu[001-003,007]")  -> ["gpu001", "gpu002", "gpu003", "gpu007"]
    expand("a[1-2]b[3-4]")      -> ["a1b3", "a1b4", "a2b3", "a2b4"]   (cartesian)
    expand("n1,n[3-4]")         -> ["n1", "n3", "n4"]
    compress(["gpu001", "gpu002", "gpu003", "gpu007"]) -> "gpu[001-003,007]"

Zero padding is part of a name: `[001-003]` gives three-digit numbers, and
compress keeps the width it was given. `expand` keeps the order of the text
and drops repeated names; `compress` sorts naturally (`n2` before `n10`).

Standard library only: every command imports this.
"""
from __future__ import annotations

from itertools import product

MAX_NAMES = 100_000


class HostlistError(ValueError):
    """The text is not a valid host list; str() says what and where."""


# -- expand -------------------------------------------------------------------

def _split_top(text: str) -> list[str]:
    """Split on commas outside brackets; check the brackets balance."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            if depth:
                raise HostlistError(f"nested '[' at position {i + 1} in host list {text!r}")
            depth = 1
        elif ch == "]":
            if not depth:
                raise HostlistError(f"unbalanced ']' at position {i + 1} in host list {text!r}")
            depth = 0
        elif ch == "," and not depth:
            items.append(text[start:i])
            start = i + 1
    if depth:
        raise HostlistError(f"unbalanced '[' in host list {text!r}: missing ']'")
    items.append(text[start:])
    return items


def _parse_range(part: str, item: str) -> list[str]:
    """`001-003` -> ["001", "002", "003"]; `7` -> ["7"]."""
    lo, sep, hi = part.strip().partition("-")
    if not lo.isdigit() or (sep and not hi.isdigit()):
        raise HostlistError(
            f"bad range {part!r} in {item!r}: use numbers such as [1-4] or [01,03]")
    if not sep:
        return [lo]
    start, end = int(lo), int(hi)
    if start > end:
        raise HostlistError(f"bad range {part!r} in {item!r}: {start} is greater than {end}")
    if end - start >= MAX_NAMES:
        raise HostlistError(f"range {part!r} in {item!r} has more than {MAX_NAMES:,} names")
    width = len(lo) if len(lo) > 1 and lo[0] == "0" else 0
    if width:
        return [str(n).zfill(width) for n in range(start, end + 1)]
    return [str(n) for n in range(start, end + 1)]


def _expand_item(item: str) -> list[list[str]]:
    """One comma-free item -> the lists whose cartesian product it denotes."""
    pieces: list[list[str]] = []
    pos = 0
    while True:
        open_at = item.find("[", pos)
        if open_at < 0:
            if pos < len(item):
                pieces.append([item[pos:]])
            return pieces
        if open_at > pos:
            pieces.append([item[pos:open_at]])
        close_at = item.index("]", open_at)        # balanced: checked by _split_top
        body = item[open_at + 1:close_at]
        if not body.strip():
            raise HostlistError(f"empty brackets in {item!r}")
        values: list[str] = []
        for part in body.split(","):
            values.extend(_parse_range(part, item))
        pieces.append(values)
        pos = close_at + 1


def expand(text: str) -> list[str]:
    """Expand a host list into names, in order, without repeats.

    Raises HostlistError for bad ranges (`gpu[3-1]`), unbalanced brackets,
    and lists of more than MAX_NAMES names.
    """
    if text is None:
        return []
    names: list[str] = []
    seen: set[str] = set()
    for raw in _split_top(text):
        item = raw.strip()
        if not item:
            continue
        if any(ch.isspace() for ch in item):
            raise HostlistError(f"space inside host name {item!r}")
        pieces = _expand_item(item)
        count = 1
        for values in pieces:
            count *= len(values)
        if count + len(names) > MAX_NAMES:
            raise HostlistError(
                f"host list {text!r} has more than {MAX_NAMES:,} names")
        if len(pieces) == 1:
            expanded = pieces[0]
        else:
            expanded = ["".join(combo) for combo in product(*pieces)]
        for name in expanded:
            if name not in seen:
                seen.add(name)
                names.append(name)
    return names


# -- compress -----------------------------------------------------------------

def _tokens(name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split a name into its text parts and its digit runs.

    "a1b03" -> (("a", "b", ""), ("1", "03")): texts interleave with digits,
    one more text than digit runs.
    """
    texts, digits = [], []
    buf, in_digits = [], False
    for ch in name:
        is_digit = "0" <= ch <= "9"
        if is_digit != in_digits:
            (digits if in_digits else texts).append("".join(buf))
            buf, in_digits = [], is_digit
        buf.append(ch)
    (digits if in_digits else texts).append("".join(buf))
    if in_digits:
        texts.append("")
    return tuple(texts), tuple(digits)


def natural_key(name: str) -> tuple:
    """Sort key putting `n2` before `n10` (and `n02` before `n10`)."""
    texts, digits = _tokens(name)
    key: list = []
    for i, digit_run in enumerate(digits):
        key.append((texts[i], int(digit_run), len(digit_run)))
    key.append((texts[-1], -1, 0))
    return tuple(key)


def _pad(run: str) -> int:
    return len(run) if len(run) > 1 and run[0] == "0" else 0


def _ranges(values: list[int], width: int) -> str:
    """Sorted distinct ints -> "1-3,7" (zero-padded to width)."""
    out = []
    start = prev = values[0]
    for v in values[1:] + [None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        if start == prev:
            out.append(str(start).zfill(width))
        else:
            out.append(f"{str(start).zfill(width)}-{str(prev).zfill(width)}")
        if v is not None:
            start = prev = v
    return ",".join(out)


def _fold(points: list[tuple[int, ...]]) -> list[list[list[int]]]:
    """Cover a set of integer tuples with boxes (one sorted value list per axis).

    The last axis is folded first; prefixes sharing the same set of last
    values are then folded along the axes before it, so a full cartesian
    product comes back as a single box.
    """
    if len(points[0]) == 1:
        return [[sorted({p[0] for p in points})]]
    by_prefix: dict[tuple[int, ...], set[int]] = {}
    for p in points:
        by_prefix.setdefault(p[:-1], set()).add(p[-1])
    by_tail: dict[frozenset, list[tuple[int, ...]]] = {}
    for prefix, tail in by_prefix.items():
        by_tail.setdefault(frozenset(tail), []).append(prefix)
    boxes = []
    for tail, prefixes in by_tail.items():
        for box in _fold(prefixes):
            boxes.append(box + [sorted(tail)])
    return boxes


def compress(names) -> str:
    """Fold names into the shortest usual host list, sorted naturally.

    ["gpu001", "gpu002", "gpu003", "gpu007"] -> "gpu[001-003,007]".
    """
    # Group by the text between the numbers; numbers without leading zeros
    # join a zero-padded group of the same width (gpu098, gpu099, gpu100).
    groups: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
    plain: set[str] = set()
    for name in names:
        if not name:
            continue
        texts, digits = _tokens(name)
        if not digits:
            plain.add(name)
            continue
        groups.setdefault(texts, []).append(digits)

    parts: list[tuple[tuple, str]] = [(natural_key(n), n) for n in plain]
    for texts, runs in groups.items():
        axes = len(texts) - 1
        padded = [{_pad(r[axis]) for r in runs} - {0} for axis in range(axes)]
        by_widths: dict[tuple[int, ...], set[tuple[int, ...]]] = {}
        for r in runs:
            widths = tuple(
                _pad(run) or (len(run) if len(run) in padded[axis] else 0)
                for axis, run in enumerate(r))
            by_widths.setdefault(widths, set()).add(tuple(int(run) for run in r))
        for widths, points in by_widths.items():
            for box in _fold(sorted(points)):
                text = []
                for axis, values in enumerate(box):
                    text.append(texts[axis])
                    if len(values) == 1:
                        text.append(str(values[0]).zfill(widths[axis]))
                    else:
                        text.append(f"[{_ranges(values, widths[axis])}]")
                text.append(texts[-1])
                first = "".join(
                    texts[axis] + str(values[0]).zfill(widths[axis])
                    for axis, values in enumerate(box)) + texts[-1]
                parts.append((natural_key(first), "".join(text)))
    parts.sort()
    return ",".join(text for _, text in parts)


class Hostlist:
    """A set of host names that renders as a compressed host list.

    >>> h = Hostlist("gpu[001-002],gpu004")
    >>> len(h), "gpu002" in h, str(h)
    (3, True, 'gpu[001-002,004]')
    """

    __slots__ = ("_names", "_set")

    def __init__(self, text_or_names=""):
        names = expand(text_or_names) if isinstance(text_or_names, str) else set(text_or_names)
        self._names = sorted(names, key=natural_key)
        self._set = frozenset(self._names)

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._set

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Hostlist):
            return self._set == other._set
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._set)

    def __str__(self) -> str:
        return compress(self._names)

    def __repr__(self) -> str:
        return f"Hostlist({str(self)!r})"

    @property
    def names(self) -> list[str]:
        return list(self._names)
