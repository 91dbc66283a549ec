"""Held-out evaluation: per-clip, per-frame losses of each path, the controls, and the statistics a reviewer asks for.

Controls (recon), so that a ratio can be read at all:
  copy-last   each frame predicted as the previous frame's target: the loss of knowing nothing about motion;
  h-ablation  the trained head fed zeros, or another clip's states, instead of h: if the loss does not rise, h
              carries no information and coarse/fine (which differ only in h) cannot differ in any useful way;
  other video (caption) each caption scored after another clip's frames: if its loss does not rise, the caption
              ignores the video and a caption ratio says nothing about where the model looked;
  attention   the entropy of each query's attention (1 = uniform: the query cannot look anywhere) and, where the
              dataset has ground truth (synthetic), the mass each query puts on the target's patches.
The coarse-only control is a separately trained model (train.fine_iterations=0); `compare` pairs it with these arrays.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from .data.dataset import encoder_input
from .model import Batch, FoveatedVLM, PassOutput, frame_losses
from .stats import paired_bootstrap_diff, paired_bootstrap_ratio


def make_batch(raw: dict, targets: torch.Tensor | None, device, caption: bool) -> Batch:
    """Collated dict (+ targets of the same clips) -> model Batch on device."""
    return Batch(
        frames=encoder_input(raw["frames"].to(device)),
        targets=None if targets is None else targets.to(device),
        caption_ids=raw["caption_ids"].to(device) if caption else None,
        caption_mask=raw["caption_mask"].to(device) if caption else None,
        index=raw["index"],
    )


def copy_last_error(targets: torch.Tensor, loss: str = "mse") -> torch.Tensor:
    """[B, T, C, S, S] -> [B, T-1]: the loss of predicting frame t as frame t-1 (frame 0 has no previous frame)."""
    return frame_losses(targets[:, :-1], targets[:, 1:], loss)[0]


def target_mass(weights: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """Attention [B*T, 1, L, heads, P] (CLS first) and target patches [B, T, P-1] -> [B, T, L]: the mass the query
    put on the target's patches, per encoder layer, averaged over heads."""
    b, t = patches.shape[:2]
    on_target = torch.cat([torch.zeros_like(patches[..., :1]), patches], dim=-1).flatten(0, 1)  # [B*T, P]
    mass = (weights[:, 0].float() * on_target[:, None, None].float()).sum(-1).mean(-1)  # [B*T, L]
    return mass.view(b, t, -1)


def attention_entropy(weights: torch.Tensor, frames: int) -> torch.Tensor:
    """Attention [B*T, 1, L, heads, P] -> [B, T]: entropy over the P tokens / ln P, mean over layers and heads."""
    w = weights[:, 0].float()
    ent = -(w * w.clamp_min(1e-12).log()).sum(-1) / math.log(w.shape[-1])  # [B*T, L, heads]
    return ent.mean((1, 2)).view(-1, frames)


@torch.no_grad()
def evaluate(
    model: FoveatedVLM,
    dataset,
    targets: torch.Tensor | None,
    collator,
    *,
    recon: bool,
    caption: bool,
    fine_iterations: int = 1,
    batch_size: int = 8,
    autoregressive: bool = False,
    device=None,
    autocast=None,
) -> dict[str, np.ndarray]:
    """Per-clip arrays over the whole dataset. Paths: coarse, fine (the final fine iteration; absent for a
    coarse-only model), autoregressive when asked.
      recon_<path> [N, T], caption_<path> [N] (mean token CE)
      recon_copy_last [N, T-1]; recon_<path>_h_zero, recon_<path>_h_other [N, T] (h of the previous held-out clip)
      caption_<path>_video_other [N] (the caption after the previous held-out clip's frames)
      attention_<path>_entropy [N, T]; if the data has ground truth: attention_<path> [N, T, L] target mass,
      attention_chance [N, T] (a uniform look's)
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    ground_truth = hasattr(dataset, "target_patches")
    patch = model.encoder.patch_size
    out: dict[str, list] = {}
    add = lambda key, x: out.setdefault(key, []).append(x.float().cpu())  # noqa: E731
    last_h: dict[str, torch.Tensor] = {}  # each path's h of the previous batch's last clip
    last_frames = None  # and its frames
    for start in range(0, len(dataset), batch_size):
        idx = list(range(start, min(start + batch_size, len(dataset))))
        raw = collator([dataset[i] for i in idx])
        batch = make_batch(raw, None if targets is None else targets[idx], device, caption)
        with autocast or torch.autocast(device.type, enabled=False):
            res = model(batch, recon=recon, caption=caption, fine_iterations=fine_iterations, return_attention=True)
            paths = {"coarse": res.coarse} | ({"fine": res.fine[-1]} if res.fine else {})
            if recon and batch.targets is not None:
                for name, p in paths.items():
                    for kind, err in h_ablation(model, p, batch.targets, last_h.get(name)).items():
                        add(f"recon_{name}_{kind}", err)
                    last_h[name] = p.hidden[-1:, : batch.targets.shape[1]]
                add("recon_copy_last", copy_last_error(batch.targets, model.target_loss))
            if caption and batch.caption_ids is not None:  # the same captions after the previous clip's frames
                first = batch.frames[-1:] if last_frames is None else last_frames
                swapped = Batch(torch.cat([first, batch.frames[:-1]]), None, batch.caption_ids, batch.caption_mask)
                other = model(swapped, recon=False, caption=True, fine_iterations=fine_iterations)
                for name, p in {"coarse": other.coarse, "fine": other.fine[-1] if other.fine else None}.items():
                    if p is not None:
                        add(f"caption_{name}_video_other", p.caption_sum / p.caption_count)
                last_frames = batch.frames[-1:]
            if autoregressive and res.fine:
                paths["autoregressive"] = model.forward_autoregressive(batch, recon=recon, caption=caption)
        for name, p in paths.items():
            if p.recon is not None:
                add(f"recon_{name}", p.recon)
                add(f"mse_{name}", p.mse)
                add(f"cosine_{name}", p.cosine)
            if p.caption_sum is not None:
                add(f"caption_{name}", p.caption_sum / p.caption_count)
        on_target = None
        if ground_truth:
            on_target = torch.stack([dataset.target_patches(i, patch) for i in idx]).to(device)  # [B, T, G*G]
            add("attention_chance", on_target.float().sum(-1) / (on_target.shape[-1] + 1))  # +1: CLS
        for name in ("coarse", "fine"):
            if name in paths:
                weights = paths[name].attention.weights
                add(f"attention_{name}_entropy", attention_entropy(weights, batch.frames.shape[1]))
                if on_target is not None:
                    add(f"attention_{name}", target_mass(weights, on_target))
    model.train(was_training)
    return {k: torch.cat(v).numpy() for k, v in out.items()}


def h_ablation(model: FoveatedVLM, p: PassOutput, targets: torch.Tensor, previous_h=None) -> dict[str, torch.Tensor]:
    """The head's per-frame loss [B, T] with h replaced and everything else (head weights, previous latents, targets)
    as in the pass: h_zero = zeros; h_other = the previous clip's h (the batch rolled by one clip, the first clip
    taking the previous batch's last; with a one-clip first batch it is its own)."""
    h = p.hidden[:, : targets.shape[1]]  # [B, T, H]
    first = h[-1:] if previous_h is None else previous_h
    other = torch.cat([first, h[:-1]])
    return {
        "h_zero": model.predict_next(torch.zeros_like(h), targets)[1][0],
        "h_other": model.predict_next(other, targets)[1][0],
    }


def _ci(fn, a, b, seed):
    value, lo, hi = fn(a, b, seed=seed)
    return {"value": value, "ci": [lo, hi]}


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


# ---------------------------------------------------------------------------------------------------------------------
# dino target control: copy-last. Predict frame t's features by frame t-1's, with no learning. In the reference's
# patch study it beat every learned predictor at a 1 s gap (MSE 2.16 vs 3.55; reference-system.md section 6), so
# every table on this target shows it.


@torch.no_grad()
def copy_last_features(model: FoveatedVLM, dataset, loss: str = "mse", batch_size: int = 8) -> dict[str, np.ndarray]:
    """Per-clip, per-frame arrays [N, T-1] (frames 1..T-1) of loss / mse / cosine when frame t-1's target is the
    prediction of frame t, in the model's own target space (same grid, CLS and PCA choices as the heads)."""
    device = next(model.parameters()).device
    out: dict[str, list] = {"loss": [], "mse": [], "cosine": []}
    for start in range(0, len(dataset), batch_size):
        frames = torch.stack([dataset[i]["frames"] for i in range(start, min(start + batch_size, len(dataset)))])
        b, t = frames.shape[:2]
        cache = model.encode(encoder_input(frames.to(device)))
        x = model.target(cache.features, b, t)  # [B, T, C, S, S]
        for key, values in zip(out, frame_losses(x[:, :-1], x[:, 1:], loss)):
            out[key].append(values.cpu())
    return {k: torch.cat(v).numpy() for k, v in out.items()}


def summarize_copy_last(copy: dict[str, np.ndarray], arrays: dict[str, np.ndarray], seed: int = 0) -> dict:
    """Copy-last's held-out means, and copy MSE / head MSE on frames 1..T-1 (> 1: the head beats copying) with a
    paired-bootstrap CI over clips, for the coarse and fine paths."""
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
