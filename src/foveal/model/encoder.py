"""Foveated encoder: a DINOv2 model encodes every frame once; a query vector then reads one token out of it.

encode(): all N = B*T frames in one batched pass, keeping each layer's key/value of the patch tokens (CLS + patches).
attend(): deep (default) runs the query token through every layer with that layer's own weights, attending to the
cached patch keys/values only; the patches never see the query, so one encode serves every query pass (coarse, fine,
autoregressive). Shallow is the ablation: one attention of the projected query over the final features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from foveal.model import fused


@dataclass
class PatchCache:
    """Per-layer keys/values and final features of N encoded frames."""

    keys: torch.Tensor  # [L, N, heads, P, hd]  P = 1 + patches (CLS first)
    values: torch.Tensor  # [L, N, heads, P, hd]
    features: torch.Tensor  # [N, P, D]  after the final layernorm

    def index(self, idx) -> PatchCache:
        """Frames idx (a slice, index tensor or int list) of the cache."""
        return PatchCache(self.keys[:, idx], self.values[:, idx], self.features[idx])

    def detach(self) -> PatchCache:
        return PatchCache(self.keys.detach(), self.values.detach(), self.features.detach())

    @property
    def num_frames(self) -> int:
        return self.features.shape[0]


@dataclass
class Attention:
    """What the query looked at: softmax weights over the P tokens (CLS first), per layer and head."""

    weights: torch.Tensor  # [N, K, L, heads, P]  (shallow: L = heads = 1)


def self_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(hd)) v over the patches: SDPA's fused kernels, except on CPU, where the written-out
    softmax is faster than SDPA's flash kernel at P = 325 (full-preset step, 1 thread: frozen encoder -9% CPU time,
    trainable -15%; `foveal bench --compare-naive`, rows "materialised attention" / "SDPA encoder")."""
    if q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v)
    w = torch.softmax((q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2), dim=-1)  # [N, heads, P, P]
    return w.to(v.dtype) @ v


class FoveatedEncoder(nn.Module):
    def __init__(self, dino: nn.Module, query_dim: int, deep: bool = True):
        super().__init__()
        self.dino = dino
        width = dino.config.hidden_size
        self.num_heads = dino.config.num_attention_heads
        self.head_dim = width // self.num_heads
        self.patch_size = dino.config.patch_size
        self.deep = deep
        self.query_input_proj = nn.Linear(query_dim, width, bias=False)  # a bias would swamp small queries (BUG-002)
        self.query_output_proj = nn.Linear(width, width)

    @property
    def width(self) -> int:
        return self.dino.config.hidden_size

    def grid(self, frame_size: int) -> int:
        return frame_size // self.patch_size

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # [N, S, D] -> [N, heads, S, hd]
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:  # [N, heads, S, hd] -> [N, S, D]
        return x.transpose(1, 2).flatten(2)

    def encode(self, frames: torch.Tensor) -> PatchCache:
        """frames [N, 3, H, W] (ImageNet-normalised) -> PatchCache. The layers are the HF layers' own modules; the
        forward is written out so each layer's K/V is computed once and kept, not recomputed for the cache."""
        h = self.dino.embeddings(frames)  # [N, P, D]
        keys, values = [], []
        for layer in self.dino.encoder.layer:
            attn = layer.attention
            x = layer.norm1(h)
            q, k, v = (self._split(part) for part in self._qkv(attn, x))
            a = self_attention(q, k, v)  # [N, heads, P, hd]
            h = h + layer.layer_scale1(fused.linear(self._merge(a), attn.o_proj))
            h = h + layer.layer_scale2(self._mlp(layer.mlp, layer.norm2(h)))
            keys.append(k)
            values.append(v)
        return PatchCache(torch.stack(keys), torch.stack(values), self.dino.layernorm(h))

    def _qkv(self, attn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """[N, P, D] -> q, k, v [N, P, D]; without gradient on CPU as one fused product (model/fused.py)."""
        if fused.fusable(x):
            return fused.linear(x, attn.q_proj, attn.k_proj, attn.v_proj).chunk(3, dim=-1)
        return attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)

    def _mlp(self, mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The layer's MLP; without gradient on CPU its bias and GELU run inside the matmuls (model/fused.py)."""
        if self.dino.config.hidden_act != "gelu" or not hasattr(mlp, "fc1") or not fused.fusable(x):  # SwiGLU: its own
            return mlp(x)
        return fused.linear(fused.linear(x, mlp.fc1, gelu=True), mlp.fc2)

    def attend(
        self,
        queries: torch.Tensor,
        cache: PatchCache,
        return_attention: bool = False,
        bias: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Attention | None]:
        """queries [N, Q] or [N, K, Q] (K independent queries per frame) -> tokens [N, D] or [N, K, D].
        bias [N, P] or [N, K, P] (CLS first) is added to the query's attention logits in every layer: e.g. the
        oracle look (`look_mask`), a large negative value outside the patches the query may read."""
        squeeze = queries.dim() == 2
        x = self.query_input_proj(queries[:, None] if squeeze else queries)  # [N, K, D]
        if bias is not None and bias.dim() == 2:
            bias = bias[:, None]  # [N, 1, P]: the same for every query of a frame
        if self.deep:
            x, weights = self._attend_deep(x, cache, return_attention, bias)
        else:
            x, weights = self._attend_shallow(x, cache, return_attention, bias)
        z = self.query_output_proj(x)  # [N, K, D]
        attention = Attention(weights) if return_attention else None
        return (z[:, 0] if squeeze else z), attention

    def _attend_deep(self, x, cache: PatchCache, return_attention: bool, bias=None):
        maps = []
        bias = None if bias is None else bias[:, None].to(x.dtype)  # [N, 1, K|1, P], broadcast over heads
        for layer, k, v in zip(self.dino.encoder.layer, cache.keys, cache.values):
            attn = layer.attention
            q = self._split(attn.q_proj(layer.norm1(x)))  # [N, heads, K, hd]; no key of its own: patches only
            # written out, not SDPA: the K x P weights are small, and on CPU this runs ~5x (forward) and ~20x
            # (backward, bf16) faster than SDPA's flash kernel, which also computes the unused patch K/V gradients
            logits = (q @ k.transpose(-1, -2)) * self.head_dim**-0.5  # [N, heads, K, P]
            w = torch.softmax(logits if bias is None else logits + bias, dim=-1)
            a = w @ v
            if return_attention:
                maps.append(w.transpose(1, 2))  # [N, K, heads, P]
            x = x + layer.layer_scale1(attn.o_proj(self._merge(a)))
            x = x + layer.layer_scale2(layer.mlp(layer.norm2(x)))
        weights = torch.stack(maps, dim=2) if return_attention else None  # [N, K, L, heads, P]
        return self.dino.layernorm(x), weights

    def _attend_shallow(self, x, cache: PatchCache, return_attention: bool, bias=None):
        f = cache.features  # [N, P, D]
        logits = (x @ f.transpose(-1, -2)) * self.width**-0.5  # [N, K, P]
        w = torch.softmax(logits if bias is None else logits + bias.to(x.dtype), dim=-1)
        weights = w[:, :, None, None] if return_attention else None  # [N, K, 1, 1, P]
        return w @ f, weights


LOOK_OUTSIDE = -1e4  # additive logit outside the allowed patches: exp(-1e4) underflows to 0 in fp32 and bf16


def look_mask(patches: torch.Tensor, outside: float = LOOK_OUTSIDE) -> torch.Tensor:
    """Allowed patches [..., G*G] bool (row-major, as the encoder orders them) -> additive attention bias
    [..., 1+G*G] (CLS first, and always outside): 0 on the allowed patches, LOOK_OUTSIDE elsewhere. A frame where
    no patch is allowed (the target covers none) gets no mask at all: all zeros, the query's own look.
    A milder `outside` (e.g. -2) only leans the query's own look towards the target (train.oracle_curriculum)."""
    allowed = torch.cat([torch.zeros_like(patches[..., :1]), patches.bool()], dim=-1)  # [..., P]
    bias = torch.where(allowed, 0.0, outside)
    return bias.masked_fill(~allowed.any(-1, keepdim=True), 0.0)
