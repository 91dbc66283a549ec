"""Strict JSON: a missing number (NaN, inf) is written as null, so browsers, jq and pandas read foveal's files
(Python's json writes bare NaN, which is not JSON). `load_numbers` reads such a file back with null as NaN, so
the numbers a reader computes with stay floats."""

from __future__ import annotations

import json
import math
from pathlib import Path


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


def _nan_for_null(obj):
    if obj is None:
        return math.nan
    if isinstance(obj, dict):
        return {k: _nan_for_null(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_for_null(v) for v in obj]
    return obj


def loads_numbers(text: str):
    """JSON foveal wrote with strict_json whose nulls all stand for missing numbers (results.json, a metrics.jsonl
    line): null -> NaN (files written before null was used hold bare NaN, which json reads too)."""
    return _nan_for_null(json.loads(text))


def load_numbers(path: str | Path):
    return loads_numbers(Path(path).read_text())
