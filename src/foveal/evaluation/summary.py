"""Held-out arrays (evaluate.py) -> the statistics every table shows: ratios with paired 95% intervals, the share
of clips on which fine beats coarse, per-frame means, the controls and the attention on the target."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np

from foveal.evaluation.slots import caption_slots
from foveal.evaluation.stats import Estimate, paired_bootstrap_diff, paired_bootstrap_ratio
from foveal.model.foveated import FIRST_STEERED


def _ci(fn, a, b, seed):
    value, lo, hi = fn(a, b, seed=seed)
    return Estimate(value, lo, hi, "clips", len(a)).as_dict()


def steered(x: np.ndarray) -> np.ndarray:
    """[N, T] per-frame values -> [N]: the mean over the steered frames t >= FIRST_STEERED, the only frames whose
    prediction comes from a state that saw an LLM-chosen look."""
    return x[:, FIRST_STEERED:].mean(1)


def per_frame_ratios(coarse: np.ndarray, fine: np.ndarray, seed: int) -> list[list[float]]:
    """[value, lo, hi] of the coarse / fine ratio at each frame t (paired bootstrap over clips)."""
    return [list(paired_bootstrap_ratio(coarse[:, t], fine[:, t], seed=seed)) for t in range(coarse.shape[1])]


def recon_summary(arrays: dict[str, np.ndarray], s: dict, seed: int) -> None:
    """The per-frame recon numbers: the headline over the steered frames, all frames as a secondary figure, the
    ratio per frame, and each path's MSE / cosine."""
    coarse, fine = arrays["recon_coarse"], arrays.get("recon_fine")
    s["steered_from"] = FIRST_STEERED
    s["per_frame_coarse"] = coarse.mean(0).tolist()
    if fine is not None:
        s["per_frame_fine"] = fine.mean(0).tolist()
        s["per_frame_ratio"] = per_frame_ratios(coarse, fine, seed)
        r, lo, hi = paired_bootstrap_ratio(coarse.mean(1), fine.mean(1), seed=seed)
        s["ratio_all_frames"], s["ratio_all_frames_ci"] = r, [lo, hi]
    for (metric, short), path in itertools.product((("mse", "mse"), ("cosine", "cos")), ("coarse", "fine")):
        if f"{metric}_{path}" in arrays:
            values = arrays[f"{metric}_{path}"]  # [N, T]
            s[f"{short}_{path}"] = float(values.mean())
            s[f"{short}_{path}_steered"] = float(steered(values).mean())  # comparable with copy-last on t>=2


def summarize(arrays: dict[str, np.ndarray], seed: int = 0, word: Callable[[int], str] | None = None) -> dict:
    """Held-out ratios with paired-bootstrap 95% CIs, share of clips where fine beats coarse, per-frame means, the
    controls, the target attention mass and, with captions, each path's CE per caption slot against chance (slots.py;
    `word` turns a token id into its text). Recon numbers are over the steered frames t >= 2 (frame 0 is predicted
    from the learned blank, frame 1 from a state that saw only statically read frames); all frames stay as
    ratio_all_frames."""
    summary: dict = {"clips": int(len(next(iter(arrays.values())))) if arrays else 0}
    for kind in ("recon", "caption"):
        coarse, fine = arrays.get(f"{kind}_coarse"), arrays.get(f"{kind}_fine")
        if coarse is None:
            continue
        per_clip = (lambda x: steered(x)) if coarse.ndim == 2 else (lambda x: x)  # noqa: E731
        s = {"loss_coarse": float(per_clip(coarse).mean())}
        if fine is not None:
            ratio, lo, hi = paired_bootstrap_ratio(per_clip(coarse), per_clip(fine), seed=seed)
            s |= {
                "loss_fine": float(per_clip(fine).mean()),
                "ratio": ratio,
                "ratio_ci": [lo, hi],
                "fine_better_share": float((per_clip(fine) < per_clip(coarse)).mean()),
            }
            ar = arrays.get(f"{kind}_autoregressive")
            if ar is not None:
                s["loss_autoregressive"] = float(per_clip(ar).mean())
                s["train_inference_gap"] = float(per_clip(ar).mean() / per_clip(fine).mean() - 1)  # AR vs c->f
        if kind == "recon":
            recon_summary(arrays, s, seed)
        s |= look_controls(arrays, kind, per_clip, seed)
        summary[kind] = s
    if "recon_copy_last" in arrays:
        summary["controls"] = controls(arrays, seed)
    for path in ("coarse", "fine"):
        if f"caption_{path}_video_other" in arrays:
            other, own = arrays[f"caption_{path}_video_other"], arrays[f"caption_{path}"]
            summary["caption"][f"video_other_minus_{path}"] = _ci(paired_bootstrap_diff, other, own, seed)
    if "attention_coarse_entropy" in arrays:
        summary["attention"] = attention_summary(arrays, seed)
    if "copy_last_mse" in arrays:
        summary["copy_last"] = summarize_copy_last(arrays, seed)
    if "truth_centre" in arrays and "tokens_coarse" in arrays:
        summary["probes"] = probes(arrays)
    if "caption_ids" in arrays:
        summary["caption_slots"] = caption_slots(arrays, seed, word)
    return summary


def ridge_fit_predict(x_train, y_train, x_test, alpha: float = 1.0) -> np.ndarray:
    """Ridge regression on standardised features (with a bias); returns the test predictions."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    a, b = (x_train - mean) / std, (x_test - mean) / std
    a, b = np.hstack([a, np.ones((len(a), 1))]), np.hstack([b, np.ones((len(b), 1))])
    w = np.linalg.solve(a.T @ a + alpha * np.eye(a.shape[1]), a.T @ y_train)
    return b @ w


def probes(arrays: dict[str, np.ndarray]) -> dict:
    """Linear probes of the target's position (R^2 of its box centre) and colour (accuracy of a one-hot ridge
    classifier; chance = the commonest colour's share) from each path's frame tokens, frames t >= 1 (those read with
    an LLM query); fitted on the first half of the held-out clips, scored on the second half."""
    n = len(arrays["truth_centre"])
    half = n // 2
    centre = arrays["truth_centre"][:, 1:].reshape(-1, 2)
    colour = arrays["truth_colour"][:, 1:].reshape(-1).astype(int)
    train = np.arange(len(centre)) < half * (arrays["truth_centre"].shape[1] - 1)
    known = colour >= 0
    counts = np.bincount(colour[train & known], minlength=8)
    out: dict = {"clips_fit": half, "clips_scored": n - half, "colour_chance": float(counts.max() / counts.sum())}
    onehot = np.eye(8)[np.where(known, colour, 0)]
    for path in ("coarse", "fine", "oracle_eval"):
        if f"tokens_{path}" not in arrays:
            continue
        x = arrays[f"tokens_{path}"][:, 1:].reshape(len(centre), -1).astype(np.float64)
        pos = ridge_fit_predict(x[train], centre[train], x[~train])
        sse, sst = ((pos - centre[~train]) ** 2).sum(0), ((centre[~train] - centre[~train].mean(0)) ** 2).sum(0)
        fit = train & known
        guess = ridge_fit_predict(x[fit], onehot[fit], x[~train & known]).argmax(1)
        out[path] = {
            "position_r2": float((1 - sse / sst).mean()),
            "colour_accuracy": float((guess == colour[~train & known]).mean()),
        }
    return out


def look_controls(arrays: dict[str, np.ndarray], kind: str, per_clip, seed: int) -> dict:
    """The same model with other looks: coarse / loss with the oracle look at evaluation and with another clip's
    queries (shuffled), steered frames; and, with ground truth, each path's MSE on the target's region."""
    out = {}
    coarse = per_clip(arrays[f"{kind}_coarse"])
    for look in ("oracle_eval", "shuffled"):
        if f"{kind}_{look}" in arrays:
            other = per_clip(arrays[f"{kind}_{look}"])
            out[f"loss_{look}"] = float(other.mean())
            out[f"ratio_{look}"] = _ci(paired_bootstrap_ratio, coarse, other, seed)
    if kind == "recon":
        region = {p: float(np.nanmean(arrays[f"region_{p}"][:, FIRST_STEERED:])) for p in REGION_PATHS
                  if f"region_{p}" in arrays}  # fmt: skip
        if region:
            out["region_mse"] = region
    return out


REGION_PATHS = ("coarse", "fine", "oracle_eval", "shuffled")


def controls(arrays: dict[str, np.ndarray], seed: int = 0) -> dict:
    """Steered frames, per clip: copy-last and h-ablation losses against each path's own loss."""
    after = lambda key: steered(arrays[key])  # noqa: E731  [N]
    copy_last = arrays["recon_copy_last"][:, FIRST_STEERED - 1 :].mean(1)  # copy-last starts at frame 1
    c = {"copy_last": float(copy_last.mean())}
    for path in ("coarse", "fine"):
        if f"recon_{path}" not in arrays:
            continue
        own = after(f"recon_{path}")
        c[path] = {
            "loss": float(own.mean()),
            "copy_last_over_loss": _ci(paired_bootstrap_ratio, copy_last, own, seed),  # > 1: beats copying
            "h_zero_minus_loss": _ci(paired_bootstrap_diff, after(f"recon_{path}_h_zero"), own, seed),
            "h_other_minus_loss": _ci(paired_bootstrap_diff, after(f"recon_{path}_h_other"), own, seed),
        }
    return c


def attention_summary(arrays: dict[str, np.ndarray], seed: int = 0) -> dict:
    """Frames 1..T-1 (where the fine query is the LLM's): each query's attention entropy (/ ln P) and, with ground
    truth, its target mass per layer, mean, and the paired fine-minus-coarse difference per clip."""
    a: dict = {}
    if "attention_chance" in arrays:
        a["chance"] = float(arrays["attention_chance"][:, 1:].mean())
    per_clip = {}
    for path in ("coarse", "fine"):
        if f"attention_{path}_entropy" not in arrays:
            continue
        a[path] = {"entropy": float(arrays[f"attention_{path}_entropy"][:, 1:].mean())}
        if f"attention_{path}" in arrays:
            mass = arrays[f"attention_{path}"][:, 1:]  # [N, T-1, L]
            a[path] |= {"per_layer": mass.mean((0, 1)).tolist(), "mean": float(mass.mean())}
            per_clip[path] = mass.mean((1, 2))
    if len(per_clip) == 2:
        a["fine_minus_coarse"] = _ci(paired_bootstrap_diff, per_clip["fine"], per_clip["coarse"], seed)
    return a


def summarize_copy_last(arrays: dict[str, np.ndarray], seed: int = 0) -> dict:
    """Copy-last's held-out means, and copy MSE / head MSE on the steered frames (> 1: the head beats copying) with
    a paired-bootstrap CI over clips, for the coarse and fine paths."""
    per_frame = [None, *arrays["copy_last_mse"].mean(0).tolist()]  # frame 0 has no previous frame
    copy = {k: arrays[f"copy_last_{k}"][:, FIRST_STEERED - 1 :] for k in ("loss", "mse", "cosine")}  # steered
    s = {
        "clips": int(len(copy["mse"])),
        "loss": float(copy["loss"].mean()),
        "mse": float(copy["mse"].mean()),
        "cos": float(copy["cosine"].mean()),
        "per_frame_mse": per_frame,
    }
    for path in ("coarse", "fine"):
        head = arrays.get(f"mse_{path}")
        if head is not None:
            r, lo, hi = paired_bootstrap_ratio(copy["mse"].mean(1), steered(head), seed=seed)
            s[f"mse_copy_over_{path}"], s[f"mse_copy_over_{path}_ci"] = r, [lo, hi]
    return s
