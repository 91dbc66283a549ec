"""CSV tables for spreadsheets and pandas (strict JSON: foveal/jsonio.py)."""

from __future__ import annotations

import csv
import math


def metric_columns(rows: list[dict]) -> list[str]:
    """Every metric any row has, in first-seen order, as <name>, <name>_lo, <name>_hi."""
    names = dict.fromkeys(name for r in rows for name in r["metrics"])
    return [f"{n}{suffix}" for n in names for suffix in ("", "_lo", "_hi")]


def write_csv(rows: list[dict], path, description: tuple[str, ...]) -> None:
    """One line per row: its description fields, then every metric's value and 95 % interval (empty where a row
    lacks it or the number is missing), for spreadsheets and pandas."""
    columns = [*description, *metric_columns(rows)]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        for r in rows:
            line = {k: r.get(k, "") for k in description}
            for name, m in r["metrics"].items():
                line |= {name: m["value"], f"{name}_lo": m["ci"][0], f"{name}_hi": m["ci"][1]}
            writer.writerow({k: "" if isinstance(v, float) and not math.isfinite(v) else v for k, v in line.items()})
