"""The per-slot caption diagnostic: each path's held-out cross-entropy at every caption position against chance.

A slot is a token position of the caption; in the synthetic templates ("the small red triangle moves left ...")
each is one attribute of the target. Chance at a slot is the entropy (nats) of its tokens over the held-out clips:
the CE of the best predictor that never sees the clip (nor the words before). A slot below chance is one the model
predicts; another clip's video (the *_video_other paths) says how much of that comes from the video rather than the
caption's own words. A slot with one token (a template word, chance 0) is listed but flagged as fixed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import stats

from foveal.evaluation.stats import mean_estimate

MIN_SHARE = 0.5  # a slot is listed where at least this share of the held-out clips has a token there
PREFIX = "caption_tokens_"


def token_paths(arrays: dict[str, np.ndarray]) -> list[str]:
    """The paths with per-token caption CE: coarse, fine, and every control that re-scores the caption."""
    return [k.removeprefix(PREFIX) for k in arrays if k.startswith(PREFIX)]


def slot_tokens(ids: np.ndarray) -> tuple[int, int, float]:
    """One slot's token ids over clips [n] -> (the commonest id, how many distinct ids, their entropy in nats)."""
    values, counts = np.unique(ids, return_counts=True)
    return int(values[counts.argmax()]), len(values), float(stats.entropy(counts))


def caption_slots(arrays: dict[str, np.ndarray], seed: int = 0, word: Callable[[int], str] | None = None) -> list[dict]:
    """One entry per slot where at least MIN_SHARE of the clips have a token: its commonest token (and word, with
    `word`: id -> text), distinct tokens, chance, whether it is fixed, and each path's mean CE over the clips that
    have a token there, with its 95% bootstrap interval over those clips."""
    ids = arrays["caption_ids"]  # [N, L+1], NaN past each caption's eos
    present = np.isfinite(ids)  # [N, L+1]
    out = []
    for j in np.flatnonzero(present.mean(0) >= MIN_SHARE):
        here = present[:, j]
        token, distinct, chance = slot_tokens(ids[here, j].astype(np.int64))
        ce = {p: mean_estimate(arrays[PREFIX + p][here, j], seed=seed).as_dict() for p in token_paths(arrays)}
        out.append(
            {
                "slot": int(j),
                "token": token,
                "word": word(token) if word else str(token),
                "distinct": distinct,
                "chance": chance,
                "fixed": distinct == 1,
                "clips": int(here.sum()),
                "ce": ce,
            }
        )
    return out
