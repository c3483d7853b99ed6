"""How numbers are rounded and tabulated, for evaluate.py's printed table and report.py's files alike."""

from __future__ import annotations

import csv
import io
import math

DECIMALS = 4  # reported percentages: float32 noise (98.33333587) is not a result


def rounded(value, key: str | None = None):
    """Percentages to DECIMALS places, p-values to 4 significant digits (a tiny p is not 0), NaN to None."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return float(f"{value:.4g}") if key == "mcnemar_p" else round(value, DECIMALS)
    if isinstance(value, (list, tuple)):
        return [rounded(v, key) for v in value]
    if isinstance(value, dict):
        return {k: rounded(v, k) for k, v in value.items()}
    return value


def format_number(value: float | None, suffix: str = "%") -> str:
    """A rounded percentage (or another number with `suffix`) for tables; `n/a` when undefined."""
    return "n/a" if value is None else f"{value:.1f}{suffix}"


def format_interval(bounds: list | None) -> str:
    return "n/a" if bounds is None else f"[{bounds[0]:.1f}, {bounds[1]:.1f}]"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def csv_table(header: list[str], rows: list[list]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()
