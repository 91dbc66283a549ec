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


def mean_estimate(x, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> Estimate:
    """The mean over clips with a BCa interval from resampling clips (e.g. one path's caption CE at one slot)."""
    x = np.asarray(x, np.float64)
    if len(x) < 2:
        return Estimate(float(x.mean()), NAN, NAN, "clips", len(x))
    lo, hi = _bootstrap((x,), lambda v, axis=-1: v.mean(axis), n_boot, seed, level)
    return Estimate(float(x.mean()), lo, hi, "clips", len(x))


def ratio_estimate(coarse, fine, seed: int = 0) -> Estimate:
    value, lo, hi = paired_bootstrap_ratio(coarse, fine, seed=seed)
    return Estimate(value, lo, hi, "clips", len(coarse))


def diff_estimate(a, b, seed: int = 0) -> Estimate:
    value, lo, hi = paired_bootstrap_diff(a, b, seed=seed)
    return Estimate(value, lo, hi, "clips", len(a))


def gain_captured(
    coarse, fine, oracle, oracle_coarse=None, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> Estimate:
    """(L_coarse - L_fine) / (L_coarse' - L_oracle) over clips (means of each), with a paired BCa interval: the
    share of the gain a perfect look buys that the learned looks realise (1: all of it, 0: none, < 0: worse than
    the static look). L_coarse' = oracle_coarse where the oracle's gain is another model's (the reference head's
    headroom), else L_coarse. Only meaningful where that gain is clearly > 0 (see `oracle_headroom`)."""
    c, f, o = (np.asarray(x, np.float64) for x in (coarse, fine, oracle))
    r = c if oracle_coarse is None else np.asarray(oracle_coarse, np.float64)

    def stat(c, f, o, r, axis=-1):
        return (c.mean(axis) - f.mean(axis)) / (r.mean(axis) - o.mean(axis))

    value = float(stat(c, f, o, r))
    if len(c) < 2:
        return Estimate(value, NAN, NAN, "clips", len(c))
    lo, hi = _bootstrap((c, f, o, r), stat, n_boot, seed, level)
    return Estimate(value, lo, hi, "clips", len(c))


def oracle_headroom(coarse, oracle, seed: int = 0) -> bool:
    """True where the oracle's gain over the static look, mean(coarse - oracle), has a 95% interval above 0."""
    return diff_estimate(coarse, oracle, seed).low > 0


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
