"""The intervals behind every held-out number: they must cover the truth and narrow with more clips."""

import numpy as np

from foveal.evaluation.stats import mean_interval, paired_bootstrap_diff, paired_bootstrap_ratio


def paired_losses(rng, n: int, ratio: float):
    """Per-clip losses with E[coarse] / E[fine] = ratio exactly: clips vary a lot (shared difficulty), the paths a
    little (independent noise of mean 1)."""
    difficulty = rng.gamma(2.0, 0.5, size=n)
    fine = difficulty * rng.uniform(0.8, 1.2, size=n)
    coarse = ratio * difficulty * rng.uniform(0.8, 1.2, size=n)
    return coarse, fine


TRIALS = 400
MC_ERROR = 3 * np.sqrt(0.95 * 0.05 / TRIALS)  # three Monte-Carlo standard errors of a 95% coverage estimate: 0.033


def test_bootstrap_ratio_ci_covers_the_true_ratio_at_the_nominal_rate():
    rng, true = np.random.default_rng(0), 1.1
    covered = []
    for trial in range(TRIALS):
        coarse, fine = paired_losses(rng, 60, true)
        _, lo, hi = paired_bootstrap_ratio(coarse, fine, n_boot=1000, seed=trial)
        covered.append(lo <= true <= hi)
    assert abs(np.mean(covered) - 0.95) <= MC_ERROR


def test_bootstrap_ratio_ci_narrows_with_more_clips():
    rng = np.random.default_rng(1)
    widths = {}
    for n in (25, 400):
        coarse, fine = paired_losses(rng, n, 1.05)
        _, lo, hi = paired_bootstrap_ratio(coarse, fine)
        widths[n] = hi - lo
    assert widths[400] < 0.5 * widths[25]  # ~ 1/sqrt(n): 4x narrower expected


def test_pairing_makes_the_interval_tight():
    """Both paths share each clip's difficulty: resampled as pairs, the 10% gain is resolved; the same numbers with
    the pairing broken (fine shuffled across clips) give the same ratio and a much wider interval."""
    rng = np.random.default_rng(2)
    coarse, fine = paired_losses(rng, 64, 1.1)
    r, lo, hi = paired_bootstrap_ratio(coarse, fine)
    r_shuffled, lo_s, hi_s = paired_bootstrap_ratio(coarse, rng.permutation(fine))
    assert lo > 1.0
    assert np.isclose(r, r_shuffled)
    assert hi_s - lo_s > 2 * (hi - lo)


def test_bootstrap_diff_covers_the_true_difference_at_the_nominal_rate():
    rng, covered = np.random.default_rng(3), []
    for trial in range(TRIALS):
        base = rng.gamma(2.0, 0.5, size=50)
        a = base + 0.05 + rng.normal(0, 0.1, size=50)  # E[a - b] = 0.05
        _, lo, hi = paired_bootstrap_diff(a, base, n_boot=1000, seed=trial)
        covered.append(lo <= 0.05 <= hi)
    assert abs(np.mean(covered) - 0.95) <= MC_ERROR


def test_identical_paths_give_a_point_interval_not_nan():
    """Two paths that agree on every clip (BCa is undefined there): the interval is the ratio itself."""
    x = np.random.default_rng(4).gamma(2.0, 0.5, size=20)
    assert paired_bootstrap_ratio(x, x) == (1.0, 1.0, 1.0)


def test_mean_interval_is_student_t():
    mean, lo, hi = mean_interval([1.0, 1.2, 1.1])
    assert np.isclose(mean, 1.1)
    assert np.isclose(hi - mean, 4.302653 * 0.1 / np.sqrt(3), rtol=1e-5)  # t(0.975, df=2) = 4.3027
    assert np.isnan(mean_interval([1.0])[1])
