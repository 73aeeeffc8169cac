"""Output as kubectl prints it: aligned columns under upper-case headers, or JSON / YAML."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Sequence
from typing import Any

import yaml

FORMATS = ("table", "wide", "json", "yaml")


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns three spaces apart, as ``kubectl get`` prints them; an empty cell is ``-``."""
    cells = [[str(c) if c not in (None, "") else "-" for c in row] for row in rows]
    widths = [max([_width(h), *(_width(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = []
    for row in [list(headers), *cells]:
        padded = [c + " " * (widths[i] - _width(c)) for i, c in enumerate(row)]
        lines.append("   ".join(padded).rstrip())
    return "\n".join(lines)


def structured(data: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2, sort_keys=False)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip()


def fields(pairs: Sequence[tuple[str, Any]]) -> str:
    """``Key:   value`` lines, as ``kubectl describe`` prints them; empty values are left out."""
    shown = [(k, v) for k, v in pairs if v not in (None, "", [])]
    width = max((len(k) for k, _ in shown), default=0) + 1
    out = []
    for key, value in shown:
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        out.append(f"{key + ':':<{width}}  {value}")
    return "\n".join(out)
