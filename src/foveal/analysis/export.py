"""What foveal writes for other tools to read: strict JSON, where a missing number (NaN, inf) is null, so browsers,
jq and pandas read it (Python's json writes bare NaN, which is not JSON), and CSV tables."""

from __future__ import annotations

import csv
import json
import math


def finite(obj):
    """obj with every non-finite float replaced by None (dicts, lists and tuples walked)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def strict_json(obj, indent: int | None = 1) -> str:
    return json.dumps(finite(obj), indent=indent, allow_nan=False)


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
