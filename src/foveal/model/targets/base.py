"""The Target component: one signature for every prediction target.

A target knows its shape (from the config, before anything is built: the heads need it), how to get ready for a
dataset (VAE latents encoded into the cache, a PCA fitted, ...), how to make a batch's targets from the batch and
the encoder's patch cache, and its losses. Copying the previous frame's target is every target's baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from foveal.config import Registry, RunConfig

TARGETS = Registry("model.target")


@dataclass
class FrameLosses:
    """Per-frame numbers of a prediction, each [...] (one value per frame)."""

    loss: torch.Tensor  # the configured loss (model.target_loss)
    mse: torch.Tensor
    cosine: torch.Tensor  # of the C-channel vectors at each position, mean over positions


def frame_losses(pred: torch.Tensor, target: torch.Tensor, kind: str = "mse") -> FrameLosses:
    """[..., C, S, S] pairs -> FrameLosses; the loss is MSE, smooth-L1 or 1 - cosine."""
    pred, target = pred.float(), target.float()
    mse = (pred - target).pow(2).flatten(-3).mean(-1)
    cos = F.cosine_similarity(pred, target, dim=-3).flatten(-2).mean(-1)
    if kind == "mse":
        return FrameLosses(mse, mse, cos)
    if kind == "smooth_l1":
        return FrameLosses(F.smooth_l1_loss(pred, target, reduction="none").flatten(-3).mean(-1), mse, cos)
    if kind == "cosine":
        return FrameLosses(1 - cos, mse, cos)
    raise ValueError(f"model.target_loss: {kind!r}; choose mse, smooth_l1 or cosine")


class Target(nn.Module):
    """Subclasses set `shape_for` and `forward`; `prepare` when they need work before training."""

    name = "target"

    def __init__(self, cfg: RunConfig, encoder_width: int, patch_size: int):
        super().__init__()
        self.shape = self.shape_for(cfg, encoder_width, patch_size)  # (C, S, S)
        self.loss_kind = cfg.model.target_loss

    @staticmethod
    def shape_for(cfg: RunConfig, encoder_width: int, patch_size: int) -> tuple[int, int, int]:
        raise NotImplementedError

    def prepare(self, model, datasets: list, *, main: bool = True, barrier=None, out=None, fresh: bool = True) -> dict:
        """Before training or evaluating on `datasets` (train first): whatever the target needs. main: this process
        writes shared files (under torchrun the others wait at barrier()); fresh: not resumed from a checkpoint.
        Returns what the run records."""
        return {}

    def forward(self, batch, cache) -> torch.Tensor:  # Batch, PatchCache -> [B, T, C, S, S], detached
        raise NotImplementedError

    def flush(self) -> None:
        """After training or evaluating: write out what was computed on the way (lazily encoded latents)."""

    def losses(self, pred: torch.Tensor, target: torch.Tensor) -> FrameLosses:
        return frame_losses(pred, target, self.loss_kind)

    def copy_last(self, targets: torch.Tensor) -> FrameLosses:
        """[B, T, C, S, S] -> FrameLosses [B, T-1]: frame t predicted as frame t-1 (frame 0 has no previous)."""
        return self.losses(targets[:, :-1], targets[:, 1:])

    def info(self) -> dict:
        """What results.json records about the target."""
        return {}
