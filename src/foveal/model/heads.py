"""Prediction heads: from the LLM state h_t and the previous frame's target grid, predict the next frame's grid.

Every head has one signature, forward(h [*P, ..., H], prev [..., C, S, S]) -> [*P, ..., C, S, S], and is registered
by name; the model never knows which one it holds. The P leading dims of h (the coarse and fine passes) share one
previous frame: what a head computes from the previous frame alone (its conv encoder, the cross-attention's keys and
values, the MLP's first layer on it) is computed once for all of them, not once per pass. Parameter counts at H=576,
C=4, S=32 match the reference study (film 1,300,612; mlp 22,167,552; cross_attention 1,325,572). spatial_film and
spatial_transformer were only proposed there; their sizes here are our choice.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from foveal.config import Registry

HEADS = Registry("model.head")
register = HEADS.register


def build_head(name: str, h_dim: int, channels: int, size: int) -> Head:
    return HEADS.get_class(name)(h_dim, channels, size)


def conv_stack(channels: list[int]) -> nn.Sequential:
    """3x3 convolutions, same padding, GELU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (cin, cout) in enumerate(zip(channels, channels[1:])):
        if i:
            layers.append(nn.GELU())
        layers.append(nn.Conv2d(cin, cout, 3, padding=1))
    return nn.Sequential(*layers)


class Head(nn.Module):
    name = "head"

    def __init__(self, h_dim: int, channels: int, size: int):
        super().__init__()
        self.h_dim, self.channels, self.size = h_dim, channels, size

    def forward(self, h: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        lead = prev.shape[:-3]  # e.g. [B, T]
        passes = h.shape[: h.dim() - 1 - len(lead)]  # e.g. [2] (coarse, fine), or none
        out = self.predict(h.reshape(math.prod(passes), -1, h.shape[-1]), prev.reshape(-1, *prev.shape[-3:]))
        return out.view(*passes, *lead, *out.shape[2:])

    def predict(self, h: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        """h [P, N, H] (P passes), prev [N, C, S, S] -> [P, N, C, S, S]."""
        raise NotImplementedError


def split_linear(layer: nn.Linear, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """layer(concat(a, b)) without building the concat: each half is computed on its own rows and the two broadcast
    against each other (h per pass and sample against one vector per position: [P, N, 1, *] + [1, S*S, *])."""
    wa, wb = layer.weight.split([a.shape[-1], b.shape[-1]], dim=1)
    return F.linear(a, wa) + F.linear(b, wb, layer.bias)


@register("film")
class FiLMHead(Head):
    """gamma, beta from h, shared over every position: feat = gamma * conv(prev) + beta, then a conv decoder."""

    def __init__(self, h_dim, channels, size, width=256):
        super().__init__(h_dim, channels, size)
        self.h_to_film = nn.Sequential(nn.Linear(h_dim, 512), nn.GELU(), nn.Linear(512, 2 * width))
        self.encoder = conv_stack([channels, 64, 128, width])
        self.decoder = conv_stack([width, 128, 64, channels])

    def predict(self, h, prev):
        feat = self.encoder(prev)  # [N, W, S, S], once for every pass
        gamma, beta = self.h_to_film(h)[..., None, None].chunk(2, dim=2)  # [P, N, W, 1, 1] each
        return self.decoder((gamma * feat + beta).flatten(0, 1)).unflatten(0, h.shape[:2])


@register("mlp")
class MLPHead(Head):
    """No spatial structure: everything must pass through concat(h, flatten(prev))."""

    def __init__(self, h_dim, channels, size, width=2048):
        super().__init__(h_dim, channels, size)
        out = channels * size * size
        self.net = nn.Sequential(
            nn.Linear(h_dim + out, width),
            nn.GELU(),
            nn.LayerNorm(width),
            nn.Linear(width, width),
            nn.GELU(),
            nn.LayerNorm(width),
            nn.Linear(width, out),
        )

    def predict(self, h, prev):
        x = split_linear(self.net[0], h, prev.flatten(1))  # = net[0](concat(h, prev)): [P, N, width]
        return self.net[1:](x).view(*h.shape[:2], *prev.shape[1:])


@register("cross_attention")
class CrossAttentionHead(Head):
    """Per-position queries from (h, position) attend over the previous frame's tokens."""

    def __init__(self, h_dim, channels, size, width=256, heads=4):
        super().__init__(h_dim, channels, size)
        self.heads = heads
        self.latent_encoder = conv_stack([channels, 64, width])
        self.pos_embed = nn.Parameter(torch.randn(1, size * size, width) * 0.02)
        self.h_ctx = nn.Linear(h_dim, width)
        self.query_in = nn.Linear(2 * width, width)  # on concat(h_ctx, pos)
        self.query_out = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)
        self.decoder = conv_stack([width, 128, 64, channels])

    def predict(self, h, prev):
        (p, n), s = h.shape[:2], self.size
        tokens = self.latent_encoder(prev).flatten(2).transpose(1, 2) + self.pos_embed  # [N, S*S, W]
        ctx = self.h_ctx(h)[:, :, None]  # [P, N, 1, W]
        q = self.query_out(F.gelu(split_linear(self.query_in, ctx, self.pos_embed)))  # [P, N, S*S, W]
        q = q.transpose(0, 1).flatten(1, 2)  # [N, P*S*S, W]: the passes' queries over the same keys and values
        split = lambda x: x.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # noqa: E731  [N, heads, L, hd]
        a = F.scaled_dot_product_attention(split(q), split(self.key(tokens)), split(self.value(tokens)))
        out = self.out_proj(a.transpose(1, 2).flatten(2)).unflatten(1, (p, s * s)).transpose(0, 1)  # [P, N, S*S, W]
        return self.decoder(out.flatten(0, 1).transpose(1, 2).reshape(p * n, -1, s, s)).unflatten(0, (p, n))


@register("spatial_film")
class SpatialFiLMHead(Head):
    """FiLM whose gamma, beta vary over positions: a per-position MLP of concat(h, learned position embedding)."""

    def __init__(self, h_dim, channels, size, width=256, pos_dim=64, hidden=128):
        super().__init__(h_dim, channels, size)
        self.pos_embed = nn.Parameter(torch.randn(1, size * size, pos_dim) * 0.02)
        self.film_in = nn.Linear(h_dim + pos_dim, hidden)
        self.film_out = nn.Linear(hidden, 2 * width)
        self.encoder = conv_stack([channels, 64, 128, width])
        self.decoder = conv_stack([width, 128, 64, channels])

    def predict(self, h, prev):
        s = self.size
        film = self.film_out(F.gelu(split_linear(self.film_in, h[:, :, None], self.pos_embed)))  # [P, N, S*S, 2W]
        gamma, beta = film.transpose(-1, -2).unflatten(-1, (s, s)).chunk(2, dim=2)  # [P, N, W, S, S] each
        return self.decoder((gamma * self.encoder(prev) + beta).flatten(0, 1)).unflatten(0, h.shape[:2])


@register("spatial_transformer")
class SpatialTransformerHead(Head):
    """Pre-norm transformer decoder layers: self-attention over the previous frame's tokens, cross-attention to a
    few context tokens made from h (one token would make cross-attention a constant), then a conv decoder."""

    def __init__(self, h_dim, channels, size, width=128, layers=2, heads=4, context=4):
        super().__init__(h_dim, channels, size)
        self.patch = 2 if size % 2 == 0 and size >= 16 else 1  # 2x2 tokens keep the sequence short
        grid = size // self.patch
        self.context = context
        self.embed = nn.Sequential(
            nn.Conv2d(channels, 64, 3, padding=1), nn.GELU(), nn.Conv2d(64, width, self.patch, stride=self.patch)
        )
        self.pos_embed = nn.Parameter(torch.randn(1, grid * grid, width) * 0.02)
        self.h_to_context = nn.Linear(h_dim, context * width)
        self.blocks = nn.ModuleList(
            nn.TransformerDecoderLayer(
                width, heads, 4 * width, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
            )
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(width)
        self.unembed = nn.ConvTranspose2d(width, 64, self.patch, stride=self.patch)
        self.decoder = conv_stack([64, 64, channels])

    def predict(self, h, prev):
        (p, n), grid = h.shape[:2], self.size // self.patch
        x = self.embed(prev).flatten(2).transpose(1, 2) + self.pos_embed  # [N, G*G, W], once for every pass
        x = x.expand(p, -1, -1, -1).flatten(0, 1)  # [P*N, G*G, W]
        ctx = self.h_to_context(h).view(p * n, self.context, -1)  # [P*N, context, W]
        for block in self.blocks:
            x = block(x, ctx)
        x = self.norm(x).transpose(1, 2).reshape(p * n, -1, grid, grid)  # [P*N, W, G, G]
        return self.decoder(F.gelu(self.unembed(x))).unflatten(0, (p, n))
