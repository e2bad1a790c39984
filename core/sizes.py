"""Byte sizes in settings: ``"50G"``, ``"512M"``, ``"1.5TiB"`` or a plain count (binary units)."""

from __future__ import annotations

import re

from .errors import ConfigError

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)?\s*$", re.IGNORECASE)


def parse_size(text: str, *, name: str) -> int:
    """Parse ``"50G"``, ``"512M"``, ``"1.5TiB"`` or a plain byte count (binary units).

    Raises:
        ConfigError: the text is not a size; the message names the variable.
    """
    m = _SIZE_RE.match(text)
    if not m:
        raise ConfigError(f"{name}={text!r} is not a size (use e.g. 50G, 512M or a byte count)")
    number, unit = float(m.group(1)), m.group(2).lower()
    scale = 1024 ** ("kmgtp".index(unit) + 1) if unit else 1
    return int(number * scale)
