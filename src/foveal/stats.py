"""Statistics for held-out numbers: paired bootstraps over clips (ratio, difference), across-seed intervals."""

from __future__ import annotations

import numpy as np


def paired_bootstrap_ratio(
    coarse: np.ndarray, fine: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """Ratio mean(coarse)/mean(fine) over clips, with a percentile CI from resampling clips (the same resampled
    clips for both paths: the pairing is what makes the interval tight when both paths move together)."""
    coarse, fine = np.asarray(coarse, np.float64), np.asarray(fine, np.float64)
    ratio = coarse.mean() / fine.mean()
    if len(coarse) < 2:
        return float(ratio), float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, len(coarse), size=(n_boot, len(coarse)))
    ratios = coarse[idx].mean(1) / fine[idx].mean(1)
    lo, hi = np.quantile(ratios, [(1 - level) / 2, (1 + level) / 2])
    return float(ratio), float(lo), float(hi)


def paired_bootstrap_diff(
    a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """mean(a) - mean(b) over clips with a paired percentile CI (e.g. the loss with h zeroed minus the normal loss,
    or the fine query's attention mass on the target minus the coarse one's)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    diff = a - b
    if len(diff) < 2:
        return float(diff.mean()), float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, len(diff), size=(n_boot, len(diff)))
    lo, hi = np.quantile(diff[idx].mean(1), [(1 - level) / 2, (1 + level) / 2])
    return float(diff.mean()), float(lo), float(hi)


def mean_interval(values, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t interval of independent values (e.g. one final ratio per seed)."""
    from scipy import stats as st  # noqa: PLC0415

    v = np.asarray(values, np.float64)
    if len(v) < 2:
        return float(v.mean()), float("nan"), float("nan")
    half = st.t.ppf((1 + level) / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half)
