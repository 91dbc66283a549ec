"""model.target = pixels: the next frame itself, average-pooled onto the latent grid, [3, S, S] in [-1, 1].

No weights: with random VAE weights (offline), a latent is not a picture anyone can judge, and a colour change of
one object spreads non-locally through it; pooled pixels are both readable and local.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from foveal.config import RunConfig
from foveal.data.frames import IMAGENET_MEAN, IMAGENET_STD
from foveal.model.backbones import vae_downsample
from foveal.model.targets.base import TARGETS, Target


@TARGETS.register("pixels")
class PixelsTarget(Target):
    @staticmethod
    def shape_for(cfg: RunConfig, encoder_width: int, patch_size: int) -> tuple[int, int, int]:
        side = cfg.model.frame_size // vae_downsample(cfg.model.vae)  # the grid the VAE latent would have
        return (3, side, side)

    def forward(self, batch, cache) -> torch.Tensor:
        b, t = batch.frames.shape[:2]
        frames = batch.frames.flatten(0, 1).float()  # [B*T, 3, H, W] ImageNet-normalised
        mean = torch.tensor(IMAGENET_MEAN, device=frames.device).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=frames.device).view(3, 1, 1)
        pixels = (frames * std + mean) * 2 - 1  # [-1, 1], as a VAE reads them
        return F.adaptive_avg_pool2d(pixels, self.shape[1]).view(b, t, *self.shape).detach()
