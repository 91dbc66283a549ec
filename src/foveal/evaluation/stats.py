"""Statistics for held-out numbers: paired BCa bootstraps over clips (scipy.stats.bootstrap), Student-t intervals
across seeds, and the typed estimate every table cell is made of."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

NAN = float("nan")


@dataclass
class Estimate:
    """A number with its 95% interval and what it is over: "clips" (a paired bootstrap over held-out clips),
    "seeds" (a t-interval over per-seed values) or "" (no interval)."""

    value: float
    low: float = NAN
    high: float = NAN
    over: str = ""
    n: int = 0  # clips or seeds behind it
    values: list[float] | None = None  # the per-seed values, over seeds

    def as_dict(self) -> dict:
        d = {"value": self.value, "ci": [self.low, self.high], "over": self.over, "n": self.n}
        return d | ({"values": self.values} if self.values is not None else {})

    @classmethod
    def from_dict(cls, d: dict) -> Estimate:
        low, high = d.get("ci", [NAN, NAN])
        return cls(d["value"], low, high, d.get("over", ""), d.get("n", 0), d.get("values"))

    @property
    def has_interval(self) -> bool:
        return not math.isnan(self.low)


def _bootstrap(data: tuple[np.ndarray, ...], statistic, n_boot: int, seed: int, level: float) -> tuple[float, float]:
    """BCa interval of statistic over clips resampled as pairs; the percentile interval where BCa is undefined (all
    resamples equal, e.g. two identical paths)."""
    kwargs = dict(paired=True, vectorized=True, n_resamples=n_boot, confidence_level=level)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate data: BCa returns nan, handled below
        ci = stats.bootstrap(data, statistic, method="BCa", rng=np.random.default_rng(seed), **kwargs)
        lo, hi = ci.confidence_interval
        if not (np.isfinite(lo) and np.isfinite(hi)):
            ci = stats.bootstrap(data, statistic, method="percentile", rng=np.random.default_rng(seed), **kwargs)
            lo, hi = ci.confidence_interval
    return float(lo), float(hi)


def paired_bootstrap_ratio(
    coarse: np.ndarray, fine: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """Ratio mean(coarse)/mean(fine) over clips, with a BCa interval from resampling clips (the same resampled clips
    for both paths: the pairing is what makes the interval tight when both paths move together)."""
    coarse, fine = np.asarray(coarse, np.float64), np.asarray(fine, np.float64)
    ratio = float(coarse.mean() / fine.mean())
    if len(coarse) < 2:
        return ratio, NAN, NAN
    lo, hi = _bootstrap((coarse, fine), lambda c, f, axis=-1: c.mean(axis) / f.mean(axis), n_boot, seed, level)
    return ratio, lo, hi


def paired_bootstrap_diff(
    a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """mean(a) - mean(b) over clips with a paired BCa interval (e.g. the loss with h zeroed minus the normal loss,
    or the fine query's attention mass on the target minus the coarse one's)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    diff = float((a - b).mean())
    if len(a) < 2:
        return diff, NAN, NAN
    lo, hi = _bootstrap((a, b), lambda x, y, axis=-1: (x - y).mean(axis), n_boot, seed, level)
    return diff, lo, hi


def ratio_estimate(coarse, fine, seed: int = 0) -> Estimate:
    value, lo, hi = paired_bootstrap_ratio(coarse, fine, seed=seed)
    return Estimate(value, lo, hi, "clips", len(coarse))


def diff_estimate(a, b, seed: int = 0) -> Estimate:
    value, lo, hi = paired_bootstrap_diff(a, b, seed=seed)
    return Estimate(value, lo, hi, "clips", len(a))


def mean_interval(values, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t interval of independent values (e.g. one final ratio per seed)."""
    v = np.asarray(values, np.float64)
    if len(v) < 2:
        return float(v.mean()), NAN, NAN
    half = stats.t.ppf((1 + level) / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


def seeds_estimate(values: list[float]) -> Estimate:
    value, lo, hi = mean_interval(values)
    return Estimate(value, lo, hi, "seeds", len(values), list(values))
