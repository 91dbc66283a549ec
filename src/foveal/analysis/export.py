"""What foveal writes for other tools to read: strict JSON, where a missing number (NaN, inf) is null, so browsers,
jq and pandas read it (Python's json writes bare NaN, which is not JSON)."""

from __future__ import annotations

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
