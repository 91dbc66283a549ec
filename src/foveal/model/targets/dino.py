"""model.target = dino: the next frame's encoder patch features.

The reference study ended with "cross-attention might work with DINO patches (higher spatial resolution, more
semantic features)". Here the target of frame t is the encoder's final features of frame t on the patch grid,
[C, S, S], read from the PatchCache the queries already use: no second encoder pass. The previous-frame input of
every head becomes frame t-1's features on the same grid, so the heads run unchanged. Options (`model.dino_target`):
append the CLS feature to every position's channels, and reduce the channels to k principal components fitted on
training clips (DINO-Foresight reduces its features with a PCA too), which keeps the flat MLP head tractable.

Targets are detached: they are a fixed thing to predict, and a trainable encoder must not be able to move them
towards whatever is easy to predict. The PCA is fitted once, on the encoder as built (a frozen encoder by default).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from foveal.config import ConfigError, RunConfig, positive
from foveal.data.frames import encoder_input
from foveal.model.targets.base import TARGETS, Target

log = logging.getLogger(__name__)


@TARGETS.register("dino")
class FeatureTarget(Target):
    """Final encoder features [N, P, D] of N = B*T frames -> targets [B, T, C, S, S]."""

    def __init__(self, cfg: RunConfig, encoder_width: int, patch_size: int):
        super().__init__(cfg, encoder_width, patch_size)
        spec = cfg.model.dino_target
        self.grid, self.cls, self.pca, self.fit_clips = self.shape[1], spec.cls, spec.pca, spec.fit_clips
        self.full_channels = encoder_width * (2 if spec.cls else 1)
        if self.pca > self.full_channels:
            raise ConfigError(f"model.dino_target.pca: {self.pca} exceeds the {self.full_channels} feature channels")
        self.channels = self.shape[0]
        if self.pca:  # y = (x - mean) @ basis; buffers, so checkpoints carry the fitted reduction
            self.register_buffer("mean", torch.zeros(self.full_channels))
            self.register_buffer("basis", torch.zeros(self.full_channels, self.pca))
            self.register_buffer("explained", torch.zeros(self.pca))  # share of the variance each component keeps
            self.register_buffer("fitted", torch.tensor(False))
            self._checked = False

    @staticmethod
    def shape_for(cfg: RunConfig, encoder_width: int, patch_size: int) -> tuple[int, int, int]:
        spec, grid = cfg.model.dino_target, cfg.model.frame_size // patch_size
        return (spec.pca or encoder_width * (2 if spec.cls else 1), grid, grid)

    @staticmethod
    def check_config(cfg: RunConfig) -> None:
        m = cfg.model
        channels = m.dino.hidden_size * (2 if m.dino_target.cls else 1)
        if m.dino.source == "random" and m.dino_target.pca > channels:
            raise ConfigError(f"model.dino_target.pca: {m.dino_target.pca} exceeds the {channels} feature channels")
        positive("model.dino_target.pca", m.dino_target.pca, 0)
        positive("model.dino_target.fit_clips", m.dino_target.fit_clips, 0)

    def grid_features(self, features: torch.Tensor) -> torch.Tensor:
        """[N, P, D] -> [N, S*S, D'] per-position feature vectors, detached, before any reduction."""
        x = features.detach()
        patches = x[:, -self.grid * self.grid :]  # CLS (and any register tokens) come before the patches
        if self.cls:
            patches = torch.cat([patches, x[:, :1].expand_as(patches)], dim=-1)
        return patches

    def forward(self, batch, cache) -> torch.Tensor:
        b, t = batch.frames.shape[:2]
        x = self.grid_features(cache.features)  # [B*T, S*S, D']
        if self.pca:
            if not self._checked:  # once: an unfitted reduction would silently train on zeros
                if not bool(self.fitted):
                    raise RuntimeError("the dino target's PCA is not fitted: call prepare() (train() does)")
                self._checked = True
            with torch.autocast(x.device.type, enabled=False):  # bf16 would round the targets
                x = (x.float() - self.mean) @ self.basis  # [B*T, S*S, k]
        return x.transpose(1, 2).reshape(b, t, self.channels, self.grid, self.grid)

    def prepare(self, model, datasets: list, *, main: bool = True, barrier=None, out=None, fresh: bool = True) -> dict:
        """Fit the PCA on the training clips when one is asked for (a resumed run has it from its checkpoint) and
        save it in the run folder."""
        if not (self.pca and fresh):
            return {}
        t0 = time.time()
        info = fit_pca(self, model, datasets[0], self.fit_clips)
        if main and out is not None:
            save_file(
                {k: getattr(self, k).contiguous() for k in ("mean", "basis", "explained")},
                str(Path(out) / "target_pca.safetensors"),
            )  # the checkpoints carry it too
        log.info(
            f"dino target: PCA to {self.pca} channels fitted on {info['fit_clips']} training clips in "
            f"{time.time() - t0:.1f} s; keeps {100 * info['explained_variance']:.1f}% of the variance"
        )
        return info

    def info(self, clips: int | None = None) -> dict:
        info = {"channels": self.channels, "pca": self.pca, "cls": self.cls}
        if self.pca:
            info["explained_variance"] = float(self.explained.sum())
            if clips is not None:
                info["fit_clips"] = clips
        return info


@torch.no_grad()
def fit_pca(target: FeatureTarget, model, dataset, clips: int = 0, batch_size: int = 8) -> dict:
    """Fit the PCA on every frame of the first `clips` clips of dataset (0: all): the mean and the top-k eigenvectors
    of the covariance of the per-position feature vectors. Returns what the run records."""
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
    return target.info(n)
