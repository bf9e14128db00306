"""Sizes as people write them: ``1048576``, ``500M``, ``10GiB``, ``none``."""

from __future__ import annotations

import re

_UNITS = {
    "": 1, "b": 1,
    "k": 1 << 10, "kib": 1 << 10, "kb": 1000,
    "m": 1 << 20, "mib": 1 << 20, "mb": 1000**2,
    "g": 1 << 30, "gib": 1 << 30, "gb": 1000**3,
    "t": 1 << 40, "tib": 1 << 40, "tb": 1000**4,
    "p": 1 << 50, "pib": 1 << 50, "pb": 1000**5,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")
_MAX = (1 << 63) - 1


def parse_size(text: str) -> int:
    """Parse a byte count.  Single letters and ``*iB`` are binary, ``kB``/``MB``/…
    decimal.  Raises ValueError with a message fit for the user."""
    m = _SIZE.fullmatch(text)
    if m is None:
        raise ValueError(f"not a size: {text!r} (use e.g. 1048576, 500M or 10GiB)")
    number, unit = m.groups()
    factor = _UNITS.get(unit.lower())
    if factor is None:
        raise ValueError(f"unknown size unit {unit!r} in {text!r}")
    if "." in number:
        value = int(float(number) * factor)
    else:
        value = int(number) * factor
    if value > _MAX:
        raise ValueError(f"size too large: {text!r}")
    return value


def parse_limit(text: str) -> int | None:
    """A limit: a size, or ``none``/``unlimited`` for no limit at this level."""
    if text.strip().lower() in ("none", "unlimited", "null"):
        return None
    return parse_size(text)


def parse_count(text: str) -> int | None:
    """An object count limit: a plain non-negative integer or ``none``."""
    t = text.strip()
    if t.lower() in ("none", "unlimited", "null"):
        return None
    if not t.isdigit() or int(t) > _MAX:
        raise ValueError(f"not a count: {text!r}")
    return int(t)


def format_size(n: int | None) -> str:
    """``4.2 GiB`` style, for logs and tables."""
    if n is None:
        return "none"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
