"""The second prediction target: the next frame's encoder patch features (`model.target: dino`).

The seed ended with "cross-attention might work with DINO patches (higher spatial resolution, more semantic
features)". Here the target of frame t is the encoder's final features of frame t on the patch grid, [C, S, S], read
from the PatchCache the queries already use: no second encoder pass. The previous-frame input of every head becomes
frame t-1's features on the same grid, so the heads run unchanged. Options (`model.dino_target`): append the CLS
feature to every position's channels, and reduce the channels to k principal components fitted on training clips
(DINO-Foresight reduces its features with a PCA too), which keeps the flat MLP head tractable.

Targets are detached: they are a fixed thing to predict, and a trainable encoder must not be able to move them
towards whatever is easy to predict. The PCA is fitted once, on the encoder as built (a frozen encoder by default).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from .config import RunConfig


class FeatureTarget(nn.Module):
    """Final encoder features [N, P, D] of N = B*T frames -> targets [B, T, C, S, S]."""

    def __init__(self, width: int, grid: int, cls: bool = False, pca: int = 0):
        super().__init__()
        self.grid, self.cls = grid, cls
        self.full_channels = width * (2 if cls else 1)
        if pca > self.full_channels:
            raise ValueError(f"model.dino_target.pca: {pca} exceeds the {self.full_channels} feature channels")
        self.channels = pca or self.full_channels
        self.pca = pca
        if pca:  # y = (x - mean) @ basis; buffers, so checkpoints carry the fitted reduction
            self.register_buffer("mean", torch.zeros(self.full_channels))
            self.register_buffer("basis", torch.zeros(self.full_channels, pca))
            self.register_buffer("explained", torch.zeros(pca))  # share of the variance each component keeps
            self.register_buffer("fitted", torch.tensor(False))
            self._checked = False

    def grid_features(self, features: torch.Tensor) -> torch.Tensor:
        """[N, P, D] -> [N, S*S, D'] per-position feature vectors, detached, before any reduction."""
        x = features.detach()
        patches = x[:, -self.grid * self.grid :]  # CLS (and any register tokens) come before the patches
        if self.cls:
            patches = torch.cat([patches, x[:, :1].expand_as(patches)], dim=-1)
        return patches

    def forward(self, features: torch.Tensor, b: int, t: int) -> torch.Tensor:
        x = self.grid_features(features)  # [B*T, S*S, D']
        if self.pca:
            if not self._checked:  # once: an unfitted reduction would silently train on zeros
                if not bool(self.fitted):
                    raise RuntimeError("the dino target's PCA is not fitted: call fit_pca (train() does)")
                self._checked = True
            with torch.autocast(x.device.type, enabled=False):  # bf16 would round the targets
                x = (x.float() - self.mean) @ self.basis  # [B*T, S*S, k]
        return x.transpose(1, 2).reshape(b, t, self.channels, self.grid, self.grid)


@torch.no_grad()
def fit_pca(model, dataset, clips: int = 0, batch_size: int = 8) -> dict:
    """Fit model.target's PCA on every frame of the first `clips` clips of dataset (0: all): the mean and the top-k
    eigenvectors of the covariance of the per-position feature vectors. Returns what the run records."""
    from .data.dataset import encoder_input

    target: FeatureTarget = model.target
    device = next(model.parameters()).device
    n = len(dataset) if clips == 0 else min(clips, len(dataset))
    d = target.full_channels
    total, outer, count = torch.zeros(d, dtype=torch.float64), torch.zeros(d, d, dtype=torch.float64), 0
    for start in range(0, n, batch_size):
        frames = torch.stack([dataset[i]["frames"] for i in range(start, min(n, start + batch_size))])
        cache = model.encode(encoder_input(frames.to(device)))  # one batched pass over B*T frames
        x = target.grid_features(cache.features).flatten(0, 1).double().cpu()  # [B*T*S*S, D']
        total += x.sum(0)
        outer += x.T @ x
        count += len(x)
    mean = total / count
    cov = outer / count - torch.outer(mean, mean)
    values, vectors = torch.linalg.eigh(cov)  # ascending
    values, vectors = values.flip(0).clamp(min=0), vectors.flip(1)
    k = target.pca
    basis = vectors[:, :k]
    basis *= torch.sign(basis[basis.abs().argmax(0), torch.arange(k)])  # deterministic sign: largest entry > 0
    target.mean.copy_(mean.float())
    target.basis.copy_(basis.float())
    target.explained.copy_((values[:k] / values.sum()).float())
    target.fitted.fill_(True)
    return reduction_info(target, n)


def reduction_info(target: FeatureTarget, clips: int | None = None) -> dict:
    info = {"channels": target.channels, "pca": target.pca, "cls": target.cls}
    if target.pca:
        info["explained_variance"] = float(target.explained.sum())
        if clips is not None:
            info["fit_clips"] = clips
    return info


def save_reduction(target: FeatureTarget, path) -> None:
    """The fitted PCA as a small safetensors file in the run folder (the checkpoints carry it too)."""
    from safetensors.torch import save_file

    save_file({k: getattr(target, k).contiguous() for k in ("mean", "basis", "explained")}, str(path))


def frame_gap(cfg: RunConfig) -> dict:
    """How far apart consecutive frames are, recorded with every result: in frames where they are rendered or
    counted, in seconds where the frame rate is known."""
    d = cfg.data
    if d.source == "synthetic":  # rendered: no frame rate; objects move speed x gap frame sides per gap
        return {"frames": d.frame_gap, "seconds": None, "motion": d.synthetic.speed * d.frame_gap}
    kind, _, value = d.window.partition(":")
    if kind == "fps":
        return {"frames": None, "seconds": 1 / float(value)}
    if kind == "first":  # T frames spread evenly over the first `value` seconds
        return {"frames": None, "seconds": float(value) / (d.num_frames - 1)}
    return {"frames": None, "seconds": None, "note": "window 'clip': the gap varies with each clip's length"}


def prepare(model, cfg: RunConfig, train_set, out, fit: bool, main: bool, quiet: bool) -> None:
    """Before training on the dino target: fit the PCA when one is asked for (a resumed run gets it from its
    checkpoint instead) and save it in the run folder."""
    spec = cfg.model.dino_target
    if not (spec.pca and fit):
        return
    t0 = time.time()
    info = fit_pca(model, train_set, spec.fit_clips)
    if main:
        save_reduction(model.target, Path(out) / "target_pca.safetensors")
        if not quiet:
            print(
                f"dino target: PCA to {spec.pca} channels fitted on {info['fit_clips']} training clips in "
                f"{time.time() - t0:.1f} s; keeps {100 * info['explained_variance']:.1f}% of the variance"
            )
