"""Glimpse location (model.glimpse = position): a frame token also says where its query looked.

One attended token is nearly translation-invariant: a random frozen encoder's position embeddings are small next to
patch content (rms 0.2 vs 4.4), and linear probes recover no target position from any token (R^2 <= 0.04). Since
the recurrent attention model (Mnih et al. 2014) foveated models feed the glimpse's location with its content. Here
the location is the last encoder layer's head-averaged attention over the patches, summarised by its centre and
spread on the patch grid, Fourier-encoded and mapped to a token added to the frame token at the same RMS. It is a
differentiable function of the attention, so the recon loss can reach the query through it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

FREQUENCIES = (1, 2, 4, 8)  # cycles per frame side: the coarsest resolves halves, the finest ~1/16 of the frame


class GlimpseLocation(nn.Module):
    def __init__(self, grid: int, hidden: int):
        super().__init__()
        centres = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid  # patch centres as shares of the side
        yy, xx = torch.meshgrid(centres, centres, indexing="ij")  # row-major, as the encoder orders patches
        self.register_buffer("xy", torch.stack([xx.flatten(), yy.flatten()], -1), persistent=False)  # [G*G, 2]
        self.register_buffer("freqs", torch.tensor(FREQUENCIES, dtype=torch.float32), persistent=False)
        self.proj = nn.Linear(4 * 2 * len(FREQUENCIES), hidden)

    def where(self, weights: torch.Tensor) -> torch.Tensor:
        """weights [N, P] over CLS + patches -> [N, 4]: centre (x, y) and spread (std x, std y), shares of the side."""
        m = weights[:, 1:].float()  # the CLS token has no place
        m = m / m.sum(-1, keepdim=True).clamp_min(1e-8)  # [N, G*G]
        centre = m @ self.xy  # [N, 2]
        spread = (m @ self.xy.pow(2) - centre.pow(2)).clamp_min(1e-8).sqrt()  # [N, 2]
        return torch.cat([centre, spread], -1)

    def forward(self, weights: torch.Tensor) -> torch.Tensor:
        """weights [N, P] -> location token [N, H] (unnormalised)."""
        angles = 2 * math.pi * self.where(weights)[..., None] * self.freqs  # [N, 4, F]
        features = torch.cat([angles.sin(), angles.cos()], -1).flatten(1)  # [N, 8F]
        return self.proj(features.to(self.proj.weight.dtype))
