"""Encoder cache: with a frozen encoder, a clip's patch keys/values never change (not between passes, heads or
epochs), so each clip is encoded once and its PatchCache kept in memory, keyed by clip key, up to a byte budget.

Clips are kept first come, first kept: once the budget is full, the clips not held are encoded at every visit. Under
the per-epoch random order a fixed set of held clips gets the same hit rate as any eviction policy would, with no
churn. The entries are exactly what `model.encode` returned (same dtype: bf16 K/V under bf16 autocast), so a cached
step computes what an uncached one does. One cache per frozen encoder is shared by every run of the process
(shared_cache): compare's models encode each clip once between them. compare's workers (train.jobs > 1) share
one too: each encodes a part of the clips into shared memory before the models start (analysis/precompute.py),
and every worker's cache holds views of all the parts (install), so the clips are encoded and held once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from foveal.model.backbones import fingerprint
from foveal.model.encoder import PatchCache

MIB = 2**20
_SHARED: dict[str, EncoderCache] = {}  # fingerprint|precision -> the cache (shared_cache)


def clip_bytes(model, num_frames: int, frame_size: int, precision: str) -> int:
    """Bytes one clip's entry takes: per frame, L layers of K and V [heads, P, hd] plus the final features [P, D].
    Under bf16/fp16 autocast the K/V come out of the projections in half precision; the features (after a
    layernorm, which autocast runs in fp32) stay fp32."""
    dino = model.encoder.dino.config
    patches = 1 + (frame_size // dino.patch_size) ** 2  # CLS + grid
    kv_bytes = 4 if precision == "fp32" else 2
    per_frame = 2 * dino.num_hidden_layers * patches * dino.hidden_size * kv_bytes + patches * dino.hidden_size * 4
    return num_frames * per_frame


def cache_plan(model, cfg, num_clips: int) -> str:
    """The size estimate printed before the cache is used."""
    t = cfg.train
    per_clip = clip_bytes(model, cfg.data.num_frames, cfg.model.frame_size, t.precision)
    held = min(num_clips, (t.encoder_cache_mib * MIB) // per_clip)
    return (
        f"encoder cache: {per_clip / MIB:.1f} MiB per clip ({cfg.data.num_frames} frames, {t.precision}); "
        f"{num_clips} clips need {num_clips * per_clip / MIB:.0f} MiB, train.encoder_cache_mib={t.encoder_cache_mib} "
        f"holds {held} ({100 * held / max(num_clips, 1):.0f}%)"
    )


def shared_cache(dino, precision: str, budget_mib: int) -> EncoderCache:
    """The process's cache for this frozen encoder: keyed by its weights' fingerprint and the precision, so the models
    of one `compare` (or study, or notebook session) that share a frozen encoder encode each clip once between them.
    Only the newest encoder's cache is kept, so at most one budget is ever held."""
    return shared_cache_for(cache_key(dino, precision), budget_mib)


def shared_cache_for(key: str, budget_mib: int) -> EncoderCache:
    if key not in _SHARED:
        _SHARED.clear()
        _SHARED[key] = EncoderCache(budget_mib)
    return _SHARED[key]


def cache_key(dino, precision: str) -> str:
    return f"{fingerprint(dino)}|{precision}"


@dataclass
class Part:
    """Some clips' entries in shared memory (`share_memory_`): passed to another process, the tensors are mapped,
    not copied."""

    key: str  # cache_key: which encoder and precision made them
    clips: list[str]  # the clip keys, in order
    patches: PatchCache  # K and V [L, N*T, heads, P, hd], features [N*T, P, D]: clip j is frames j*T .. (j+1)*T-1


def shared_empty(like: PatchCache, frames: int) -> PatchCache:
    """An uninitialised PatchCache of `frames` frames, shaped and typed as `like`, in shared memory."""

    def empty(x: torch.Tensor, dim: int) -> torch.Tensor:
        return torch.empty((*x.shape[:dim], frames, *x.shape[dim + 1 :]), dtype=x.dtype).share_memory_()

    return PatchCache(empty(like.keys, 1), empty(like.values, 1), empty(like.features, 0))


def install(parts: list[Part], budget_mib: int) -> None:
    """In a worker: the process's cache for the parts' encoder holds every clip of the parts (views, no copy; up
    to the budget), unless it does already."""
    if not parts or any(p.key != parts[0].key for p in parts):
        return
    cache = shared_cache_for(parts[0].key, budget_mib)
    for part in parts:
        t = part.patches.features.shape[0] // max(1, len(part.clips))
        for j, clip in enumerate(part.clips):
            entry = part.patches.index(slice(j * t, (j + 1) * t))
            if clip not in cache.entries and cache.used + entry_bytes(entry) <= cache.budget:
                cache.entries[clip] = entry
                cache.used += entry_bytes(entry)


class EncoderCache:
    """PatchCache per clip key, bounded by budget_mib. lookup() returns the batch's PatchCache (frames in clip-major
    order, as model.encode gives them), encoding only the clips it does not hold."""

    def __init__(self, budget_mib: int):
        self.budget = budget_mib * MIB
        self.entries: dict[str, PatchCache] = {}
        self.used = 0
        self.hits = self.misses = 0

    def lookup(self, keys: list[str], frames: torch.Tensor, encode) -> PatchCache:
        """keys [B], frames [B, T, 3, H, W], encode: frames -> PatchCache of the B*T frames (model.encode)."""
        t = frames.shape[1]
        missing = [i for i, k in enumerate(keys) if k not in self.entries]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        fresh: dict[str, PatchCache] = {}
        if missing:
            new = encode(frames[missing]).detach()
            for j, i in enumerate(missing):
                part = new.index(slice(j * t, (j + 1) * t))
                fresh[keys[i]] = part
                size = entry_bytes(part)
                if self.used + size <= self.budget and keys[i] not in self.entries:
                    # a copy, so a held clip does not keep the whole batch's tensors alive
                    self.entries[keys[i]] = PatchCache(part.keys.clone(), part.values.clone(), part.features.clone())
                    self.used += size
        if len(missing) == len(keys):  # nothing held: the batch's own encode, no gather
            return new
        parts = [self.entries[k] if k in self.entries else fresh[k] for k in keys]
        return PatchCache(
            torch.cat([p.keys for p in parts], dim=1),  # [L, B*T, heads, P, hd]
            torch.cat([p.values for p in parts], dim=1),
            torch.cat([p.features for p in parts], dim=0),  # [B*T, P, D]
        )

    def __len__(self) -> int:
        return len(self.entries)


def entry_bytes(c: PatchCache) -> int:
    return sum(x.numel() * x.element_size() for x in (c.keys, c.values, c.features))
