"""One paragraph that reads a run's or a comparison's held-out intervals the way the README asks them to be read:
each learned look against the static look, beside the positive control (the oracle-look model: can this pipeline
see a planted effect at this budget?) and the h-control (does the head use which clip's state it gets?).

Mechanical on purpose: an interval above 1, below 1, or containing it; nothing is tuned or hidden.
"""

from __future__ import annotations

import math


def side(ci) -> str:
    """'above' / 'below' 1, or 'straddles' it (also for a missing interval)."""
    if not ci or any(v is None or math.isnan(v) for v in ci):
        return "straddles"
    return "above" if ci[0] > 1 else "below" if ci[1] < 1 else "straddles"


def _show(ratio: float, ci) -> str:
    return f"{ratio:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]"


LOOK_READING = {
    "above": "looking where the model chose beats the static look",
    "below": "the learned looks do worse than the static look",
    "straddles": "no effect of looking is detected",
}


def _learned(name: str, r: dict) -> str:
    kind = r.get("ratio_kind", "recon")
    held = r.get("heldout", {}).get(kind, {})
    if "ratio" not in held or math.isnan(held["ratio"]):
        return f"{name} is a control without a fine pass."
    text = f"{name}: {kind} ratio {_show(held['ratio'], held['ratio_ci'])}, {LOOK_READING[side(held['ratio_ci'])]}"
    other = r.get("heldout", {}).get("controls", {}).get("fine", {}).get("h_other_minus_loss")
    if other and not math.isnan(other["ci"][0]) and other["ci"][0] <= 0:
        text += "; another clip's h does not raise its loss (interval reaches 0), so its head may ignore the video"
    return text + "."


def _control(oracles: dict[str, dict]) -> str:
    if not oracles:
        return (
            "No oracle-look model was trained (compare --controls reference or all trains one): without a positive "
            "control a ratio of 1 cannot tell 'looking does not help' from 'this setup cannot show it'."
        )
    parts = []
    for name, r in oracles.items():
        held = r.get("heldout", {}).get(r.get("ratio_kind", "recon"), {})
        ci = held.get("ratio_ci")
        seen = side(ci) == "above"
        parts.append(
            f"The positive control {name} (trained to read at the target) reaches {_show(held['ratio'], ci)}: "
            + (
                "the pipeline detects a planted effect here, so the readings above are informative."
                if seen
                else "it does not clear 1, so at this budget and data there is no headroom and a null above says "
                "nothing about looking."
            )
        )
    return " ".join(parts)


def verdict(results: dict[str, dict], looks: dict[str, str]) -> str:
    """results: run name -> results.json; looks: run name -> its model.look (learned | oracle)."""
    oracles = {n: r for n, r in results.items() if looks.get(n) == "oracle"}
    learned = [_learned(n, r) for n, r in results.items() if n not in oracles]
    head = "Held-out clips, steered frames t>=2, 95 % intervals. "
    return head + " ".join(learned) + " " + _control(oracles)
