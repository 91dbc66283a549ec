"""Held-out arrays (evaluate.py) -> the statistics every table shows: ratios with paired 95% intervals, the share
of clips on which fine beats coarse, per-frame means, the controls and the attention on the target."""

from __future__ import annotations

import itertools

import numpy as np

from foveal.evaluation.stats import Estimate, paired_bootstrap_diff, paired_bootstrap_ratio


def _ci(fn, a, b, seed):
    value, lo, hi = fn(a, b, seed=seed)
    return Estimate(value, lo, hi, "clips", len(a)).as_dict()


def summarize(arrays: dict[str, np.ndarray], seed: int = 0) -> dict:
    """Held-out ratios with paired-bootstrap 95% CIs, share of clips where fine beats coarse, per-frame means, the
    controls and the target attention mass. Frame 0 is predicted from the learned blank and dominates the MSE, so
    the controls are over frames 1..T-1 (copy-last has no frame 0 anyway)."""
    summary: dict = {"clips": int(len(next(iter(arrays.values())))) if arrays else 0}
    for kind in ("recon", "caption"):
        coarse, fine = arrays.get(f"{kind}_coarse"), arrays.get(f"{kind}_fine")
        if coarse is None:
            continue
        per_clip_c = coarse.mean(1) if coarse.ndim == 2 else coarse
        s = {"loss_coarse": float(per_clip_c.mean())}
        if coarse.ndim == 2:
            s["per_frame_coarse"] = coarse.mean(0).tolist()
        if fine is not None:
            per_clip_f = fine.mean(1) if fine.ndim == 2 else fine
            ratio, lo, hi = paired_bootstrap_ratio(per_clip_c, per_clip_f, seed=seed)
            s |= {
                "loss_fine": float(per_clip_f.mean()),
                "ratio": ratio,
                "ratio_ci": [lo, hi],
                "fine_better_share": float((per_clip_f < per_clip_c).mean()),
            }
            if coarse.ndim == 2:  # frame 0 is predicted from the learned blank and dominates the MSE
                s["per_frame_fine"] = fine.mean(0).tolist()
                r1, lo1, hi1 = paired_bootstrap_ratio(coarse[:, 1:].mean(1), fine[:, 1:].mean(1), seed=seed)
                s["ratio_after_first"], s["ratio_after_first_ci"] = r1, [lo1, hi1]
                s["fine_better_share_after_first"] = float((fine[:, 1:].mean(1) < coarse[:, 1:].mean(1)).mean())
            ar = arrays.get(f"{kind}_autoregressive")
            if ar is not None:
                per_clip_a = ar.mean(1) if ar.ndim == 2 else ar
                s["loss_autoregressive"] = float(per_clip_a.mean())
                s["train_inference_gap"] = float(per_clip_a.mean() / per_clip_f.mean() - 1)  # AR vs coarse->fine
        if kind == "recon":  # whatever the loss: the prediction's MSE and cosine
            for (metric, short), path in itertools.product((("mse", "mse"), ("cosine", "cos")), ("coarse", "fine")):
                if f"{metric}_{path}" in arrays:
                    values = arrays[f"{metric}_{path}"]  # [N, T]
                    s[f"{short}_{path}"] = float(values.mean())
                    s[f"{short}_{path}_after_first"] = float(values[:, 1:].mean())  # comparable with copy-last
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
    return summary


def controls(arrays: dict[str, np.ndarray], seed: int = 0) -> dict:
    """Frames 1..T-1, per clip: copy-last and h-ablation losses against each path's own loss."""
    after = lambda key: arrays[key][:, 1:].mean(1)  # noqa: E731  [N]
    copy_last = arrays["recon_copy_last"].mean(1)
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
    """Copy-last's held-out means, and copy MSE / head MSE on frames 1..T-1 (> 1: the head beats copying) with a
    paired-bootstrap CI over clips, for the coarse and fine paths."""
    copy = {k: arrays[f"copy_last_{k}"] for k in ("loss", "mse", "cosine")}  # [N, T-1] each
    s = {
        "clips": int(len(copy["mse"])),
        "loss": float(copy["loss"].mean()),
        "mse": float(copy["mse"].mean()),
        "cos": float(copy["cosine"].mean()),
        "per_frame_mse": [None, *copy["mse"].mean(0).tolist()],  # frame 0 has no previous frame
    }
    for path in ("coarse", "fine"):
        head = arrays.get(f"mse_{path}")
        if head is not None:
            r, lo, hi = paired_bootstrap_ratio(copy["mse"].mean(1), head[:, 1:].mean(1), seed=seed)
            s[f"mse_copy_over_{path}"], s[f"mse_copy_over_{path}_ci"] = r, [lo, hi]
    return s
