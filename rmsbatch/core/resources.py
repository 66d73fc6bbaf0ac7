"""Counted resources a job asks for by name: generic resources (GRES) and licenses.

Slurm writes them `name[:type][:count]`, comma-joined (`gpu:a100:4,nvme:1`,
`matlab:2,ansys`); a GRES count may carry K, M, G or T, multiples of 1024
(`gpumem:20g`), because some GRES count bytes. Shared by rsub (its option values),
the configuration (what nodes and the cluster have) and admission.

Standard library only: `rsub` imports this on every call.
"""
from __future__ import annotations

MAX_GRES_COUNT = 1 << 50        # counts of bytes (gpumem:80G) are large
_FACTORS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_count(text: str, *, suffixes: bool = True) -> int:
    """`4`, `20g`, `1T` -> a whole count (K/M/G/T are multiples of 1024)."""
    word = text.strip()
    factor = 1
    if suffixes and word[-1:].upper() in _FACTORS:
        factor = _FACTORS[word[-1].upper()]
        word = word[:-1]
    if not word.isascii() or not word.isdigit() or len(word) > 15:
        unit = " with an optional K, M, G or T" if suffixes else ""
        raise ValueError(f"invalid count {text.strip()!r} (a whole number{unit})")
    count = int(word) * factor
    if count > MAX_GRES_COUNT:
        raise ValueError(f"count {text.strip()!r} is too large")
    return count


def check_name(name: str, what: str, extra: str = "") -> str:
    if not name or len(name) > 64 or not all(c.isalnum() or c in "_-." + extra for c in name):
        allowed = "letters, digits, '_', '-', '.'" + (f", '{extra}'" if extra else "")
        raise ValueError(f"invalid {what} name {name!r} ({allowed})")
    return name


def parse_licenses(text: str) -> dict[str, int]:
    """`matlab:2,ansys` -> {"matlab": 2, "ansys": 1}; `name*2` as Slurm also accepts."""
    found: dict[str, int] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            raise ValueError("expected NAME[:COUNT],... e.g. matlab:2")
        sep = ":" if ":" in item else "*"
        name, _, count = item.partition(sep)
        check_name(name.strip(), "license", "@")    # remote licenses: name@server
        found[name.strip()] = found.get(name.strip(), 0) + (
            parse_count(count, suffixes=False) if count.strip() else 1)
    return found


def parse_gres(text: str) -> tuple[tuple[int, str | None] | None, dict[str, int]]:
    """`gpu:a100:4,nvme:1,gpumem:20g` -> ((4, "a100"), {"nvme": 1, "gpumem": 20 GiB}).

    The first part is the GPU request per node, None when no `gpu` item is given;
    `none` asks for nothing. GPU types are checked by the caller.
    """
    if text.strip().lower() == "none":
        return (0, None), {}
    gpu = None
    other: dict[str, int] = {}
    for item in text.split(","):
        parts = [p.strip() for p in item.strip().split(":")]
        name = parts[0]
        if name.lower() == "gpu":
            if gpu is not None:
                raise ValueError("gpu is listed twice")
            if len(parts) == 1:
                gpu = (1, None)
            elif len(parts) == 2:
                gpu = (_gpus(parts[1]), None) if parts[1].isdigit() else (1, parts[1])
            elif len(parts) == 3:
                gpu = (_gpus(parts[2]), parts[1])
            else:
                raise ValueError("expected gpu, gpu:N or gpu:TYPE:N")
            continue
        check_name(name, "GRES")
        if name in other:
            raise ValueError(f"{name} is listed twice")
        if len(parts) == 1:
            other[name] = 1
        elif len(parts) == 2:
            other[name] = parse_count(parts[1])
        else:
            # `nvme:local:1`: a typed non-GPU GRES; types of those are not tracked
            raise ValueError(f"{item.strip()!r}: expected {name} or {name}:COUNT")
    return gpu, other


def _gpus(text: str) -> int:
    count = parse_count(text, suffixes=False)
    if count > 1_000_000:
        raise ValueError(f"invalid GPU count {text!r}")
    return count
