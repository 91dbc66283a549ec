"""Clip datasets, the on-disk latent cache, batching and the resumable micro-batch order.

A clip dataset yields {"frames": uint8 [T, 3, H, W], "caption": str, "key": str, "index": int}. `key` names the clip
*and* how it was sampled (frames, window, size), so a cached latent is reused only for the very same pixels.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..config import ConfigError, DataConfig, RunConfig
from .synthetic import SynthClip, patch_masks, render_clip

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HELDOUT_OFFSET = 1_000_000  # synthetic held-out clips come from indices no training clip uses


class SyntheticClips(Dataset):
    """Clips rendered on demand (about 1 ms each at 64 px) from (spec, seed, index)."""

    def __init__(self, data: DataConfig, frame_size: int, count: int, offset: int = 0):
        self.data, self.count, self.offset = data, count, offset
        self.size = data.synthetic.render_size or frame_size
        self.frame_size = frame_size
        spec = json.dumps(asdict(data.synthetic), sort_keys=True)
        self._key = f"synthetic|{spec}|{self.size}|{frame_size}|{data.num_frames}|{data.seed}"
        if data.frame_gap != 1:  # appended only when set, so latents cached before the option stay valid
            self._key += f"|gap={data.frame_gap}"
        self.skipped: dict[str, list[str]] = {}  # reason -> clip names (file datasets skip bad files)

    def __len__(self) -> int:
        return self.count

    def keys(self) -> list[str]:  # the latent cache's keys without rendering a clip
        return [f"{self._key}|{self.offset + i}" for i in range(self.count)]

    def clip(self, i: int) -> SynthClip:
        d = self.data
        return render_clip(d.synthetic, self.size, d.num_frames, d.seed, self.offset + i, d.frame_gap)

    def target_patches(self, i: int, patch: int) -> torch.Tensor:
        """Ground truth for where-to-look metrics: [T, G*G] bool, the patches (row-major, as the encoder orders them)
        that show clip i's target in each frame. patch = the encoder's patch size at the model's frame size."""
        if (patch * self.size) % self.frame_size:
            raise ValueError(
                f"target_patches: a {patch}-px patch at frame size {self.frame_size} is not a whole number of pixels "
                f"at render size {self.size}; choose data.synthetic.render_size as a multiple of the frame size"
            )
        clip = self.clip(i)
        scaled = patch * self.size // self.frame_size  # the same patch grid in rendered pixels
        grid = patch_masks(clip.masks[:, clip.target], scaled)  # [T, G, G]
        return torch.from_numpy(grid).flatten(1)

    def __getitem__(self, i: int) -> dict:
        clip = self.clip(i)
        frames = torch.from_numpy(clip.frames).permute(0, 3, 1, 2)  # [T, 3, H, W] uint8
        if self.size != self.frame_size:
            frames = resize_frames(frames, self.frame_size, "squash")
        return {"frames": frames, "caption": clip.caption, "key": f"{self._key}|{self.offset + i}", "index": i}


def resize_frames(frames: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """uint8 [T, 3, h, w] -> [T, 3, size, size]: 'crop' resizes the short side then centre-crops; 'squash' stretches."""
    import torch.nn.functional as F

    t, _, h, w = frames.shape
    if mode == "crop":
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    else:
        nh = nw = size
    out = F.interpolate(frames.float(), size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    return out[:, :, top : top + size, left : left + size].round().clamp(0, 255).to(torch.uint8)


def build_datasets(cfg: RunConfig) -> tuple[Dataset, Dataset]:
    """(train, held-out) clip datasets for cfg.data.source; held-out clips are never trained on."""
    d, size = cfg.data, cfg.model.frame_size
    if d.source == "synthetic":
        return SyntheticClips(d, size, d.train_clips), SyntheticClips(d, size, d.heldout_clips, HELDOUT_OFFSET)
    from .video import file_datasets

    return file_datasets(d, size)


def check_enough_clips(train_set: Dataset, cfg: RunConfig, world: int = 1) -> None:
    """Before any work: the training clips must fill one global batch (the sampler's epoch needs one)."""
    t, d = cfg.train, cfg.data
    need = t.batch_size * world
    if len(train_set) < need:
        raise ConfigError(
            f"data: {len(train_set)} usable training clips in {d.source} are fewer than one global batch "
            f"(train.batch_size {t.batch_size} x {world} rank(s) = {need}); lower train.batch_size, lower "
            f"data.heldout_clips ({d.heldout_clips}), raise data.train_clips ({d.train_clips}) or add clips"
        )


# ---------------------------------------------------------------------------------------------------------------------
# pixels -> model inputs


def encoder_input(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> float, ImageNet-normalised (the encoder's input)."""
    mean = torch.tensor(IMAGENET_MEAN, device=frames.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=frames.device).view(3, 1, 1)
    return (frames.float() / 255 - mean) / std


def vae_input(frames: torch.Tensor) -> torch.Tensor:
    """uint8 -> float in [-1, 1] (the VAE's input)."""
    return frames.float() / 127.5 - 1


class Collator:
    """Items -> batch dict: frames uint8 [B, T, 3, H, W]; caption ids + eos, right-padded, with a mask."""

    def __init__(self, tokenizer, max_tokens: int = 32):
        self.tokenizer, self.max_tokens = tokenizer, max_tokens

    def __call__(self, items: list[dict]) -> dict:
        tok = self.tokenizer
        ids = [
            tok(it["caption"], add_special_tokens=False).input_ids[: self.max_tokens] + [tok.eos_token_id]
            for it in items
        ]
        length = max(len(x) for x in ids)
        caption_ids = torch.full((len(items), length), tok.pad_token_id, dtype=torch.long)
        caption_mask = torch.zeros((len(items), length), dtype=torch.bool)
        for row, x in enumerate(ids):
            caption_ids[row, : len(x)] = torch.tensor(x)
            caption_mask[row, : len(x)] = True
        return {
            "frames": torch.stack([it["frames"] for it in items]),
            "caption_ids": caption_ids,
            "caption_mask": caption_mask,
            "index": torch.tensor([it["index"] for it in items]),
            "keys": [it["key"] for it in items],
        }


def micro_batch(k: int, n: int, batch: int, seed: int, rank: int = 0, world: int = 1) -> list[int]:
    """Dataset indices of this rank's part of the k-th global micro-batch. Stateless: a resumed run asks for batch
    k and gets exactly what the uninterrupted run got. Each epoch is a fresh seeded permutation; the ranks split
    every global batch into disjoint slices, so world=2 with batch b sees what world=1 sees with batch 2b."""
    per_epoch = n // (batch * world)
    if per_epoch == 0:
        raise ValueError(f"{n} clips are fewer than one global batch ({batch} x {world} ranks)")
    epoch, j = divmod(k, per_epoch)
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g)
    start = j * batch * world + rank * batch
    return perm[start : start + batch].tolist()


# ---------------------------------------------------------------------------------------------------------------------
# latent cache: each clip is VAE-encoded once per (pixels, VAE weights), in safetensors shards


class LatentCache:
    """cache_dir/latents/<vae fingerprint>/: shard-*.safetensors + index.json (clip key hash -> shard)."""

    def __init__(self, cache_dir: str | Path, vae_fingerprint: str):
        self.dir = Path(cache_dir) / "latents" / vae_fingerprint
        self.dir.mkdir(parents=True, exist_ok=True)
        self.index_path = self.dir / "index.json"
        self.index: dict[str, str] = json.loads(self.index_path.read_text()) if self.index_path.exists() else {}

    @staticmethod
    def entry(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()[:24]

    def missing(self, keys: list[str]) -> list[int]:
        return [i for i, k in enumerate(keys) if self.entry(k) not in self.index]

    def put(self, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        entries = {self.entry(k): v.contiguous() for k, v in tensors.items()}
        name = f"shard-{hashlib.sha256(''.join(sorted(entries)).encode()).hexdigest()[:12]}.safetensors"
        tmp = self.dir / (name + ".tmp")
        save_file(entries, str(tmp))
        os.replace(tmp, self.dir / name)
        self.index.update({e: name for e in entries})
        tmp_index = self.index_path.with_suffix(".tmp")
        tmp_index.write_text(json.dumps(self.index))
        os.replace(tmp_index, self.index_path)

    def get(self, keys: list[str]) -> torch.Tensor:
        from safetensors import safe_open

        entries = [self.entry(k) for k in keys]
        by_shard: dict[str, list[int]] = {}
        for i, e in enumerate(entries):
            by_shard.setdefault(self.index[e], []).append(i)
        out: list[torch.Tensor | None] = [None] * len(keys)
        for shard, rows in by_shard.items():
            with safe_open(str(self.dir / shard), framework="pt") as f:
                for i in rows:
                    out[i] = f.get_tensor(entries[i])
        return torch.stack(out)


@torch.no_grad()
def encode_latents(vae, frames: torch.Tensor, chunk: int = 32) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> posterior-mean latents x scaling factor [N, C, h, w] (deterministic)."""
    out = []
    for part in frames.split(chunk):
        out.append(vae.encode(vae_input(part)).latent_dist.mean * vae.config.scaling_factor)
    return torch.cat(out)


def latents_for(dataset: Dataset, vae, cache: LatentCache, desc: str = "latents", quiet: bool = False) -> torch.Tensor:
    """Latents [N, T, C, h, w] of every clip in dataset, encoding only clips not yet in the cache."""
    from tqdm import tqdm

    keys = [dataset[i]["key"] for i in range(len(dataset))] if not hasattr(dataset, "keys") else dataset.keys()
    todo = cache.missing(keys)
    if todo:
        t0, new = time.time(), {}
        bar = tqdm(todo, desc=f"VAE-encoding {desc}", unit="clip", disable=True if quiet else None, leave=False)
        for i in bar:
            item = dataset[i]
            new[item["key"]] = encode_latents(vae, item["frames"])
            if len(new) >= 256:
                cache.put(new)
                new = {}
        if new:
            cache.put(new)
        if not quiet:
            rate = len(todo) / max(time.time() - t0, 1e-9)
            print(f"{desc}: encoded {len(todo)} clips ({rate:.1f} clips/s), {len(keys) - len(todo)} from the cache")
        if hasattr(dataset, "keys"):  # a clip that failed to decode is now served by another: look up what is served
            keys = dataset.keys()
    return cache.get(keys)
