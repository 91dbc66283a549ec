"""Clip datasets, batching and the resumable micro-batch order.

A clip dataset yields {"frames": uint8 [T, 3, H, W], "caption": str, "key": str, "index": int}. `key` names the clip
*and* how it was sampled (frames, window, size), so a cached latent is reused only for the very same pixels.
"""

from __future__ import annotations

import functools
import json
from collections import OrderedDict
from dataclasses import asdict

import torch
from torch.utils.data import Dataset

from foveal.config import ConfigError, DataConfig, RunConfig
from foveal.data.frames import resize_frames
from foveal.data.lazy import LAZY_ABOVE, count_listed, lazy_datasets
from foveal.data.shards import is_shard_set, shard_datasets
from foveal.data.synthetic import SynthClip, patch_masks, render_clip, target_attributes
from foveal.data.video import file_datasets, source_path

HELDOUT_OFFSET = 1_000_000  # synthetic held-out clips come from indices no training clip uses
RENDERED_MIB = 512  # the rendered clips a process keeps (about 0.12 MiB a 6-frame 64 px clip)


class Rendered:
    """Rendered synthetic clips by key, least recently used dropped first beyond `mib`: compare's models share one
    data config, and an evaluation reads each held-out clip three times (pixels, target patches, target attributes),
    so each clip is rendered once per process. Callers must not write into a clip they get."""

    def __init__(self, mib: int):
        self.limit, self.bytes, self.clips = mib * 2**20, 0, OrderedDict()

    def get(self, key: str, render) -> SynthClip:
        clip = self.clips.get(key)
        if clip is not None:
            self.clips.move_to_end(key)
            return clip
        clip = self.clips[key] = render()
        self.bytes += clip.frames.nbytes + clip.masks.nbytes
        while self.bytes > self.limit and len(self.clips) > 1:
            _, old = self.clips.popitem(last=False)
            self.bytes -= old.frames.nbytes + old.masks.nbytes
        return clip


RENDERED = Rendered(RENDERED_MIB)


class SyntheticClips(Dataset):
    """Clips rendered on demand (about 1 ms each at 64 px) from (spec, seed, index)."""

    def __init__(self, data: DataConfig, frame_size: int, count: int, offset: int = 0):
        self.data, self.count, self.offset = data, count, offset
        self.size = data.synthetic.render_size or frame_size
        self.frame_size = frame_size
        spec = asdict(data.synthetic)
        new_knobs = (("target_colours", 1), ("distractor_flicker", False), ("target_flicker", False), ("lamp", 0.0))
        for key, default in new_knobs:  # keys of older clips stay valid
            if spec[key] == default:
                del spec[key]
        spec = json.dumps(spec, sort_keys=True)
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
        render = functools.partial(
            render_clip, d.synthetic, self.size, d.num_frames, d.seed, self.offset + i, d.frame_gap
        )
        return RENDERED.get(f"{self._key}|{self.offset + i}", render)

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

    def target_attributes(self, i: int) -> dict[str, torch.Tensor]:
        """Clip i's target per frame: box centre [T, 2] (shares of the side) and colour index [T] (-1: unknown)."""
        return {k: torch.from_numpy(v) for k, v in target_attributes(self.clip(i)).items()}

    def __getitem__(self, i: int) -> dict:
        clip = self.clip(i)
        frames = torch.tensor(clip.frames).permute(0, 3, 1, 2)  # [T, 3, H, W] uint8, a copy: the rendering is shared
        if self.size != self.frame_size:
            frames = resize_frames(frames, self.frame_size, "squash")
        return {"frames": frames, "caption": clip.caption, "key": f"{self._key}|{self.offset + i}", "index": i}


def target_looks(dataset, index, patch: int) -> torch.Tensor | None:
    """The target's patches [B, T, G*G] of clips `index` of a dataset with ground truth (synthetic), else None."""
    if not hasattr(dataset, "target_patches"):
        return None
    return torch.stack([dataset.target_patches(int(i), patch) for i in index])


_BUILT: dict = {}  # compare builds the datasets once per model: list and probe once per process


def build_datasets(cfg: RunConfig) -> tuple[Dataset, Dataset]:
    """(train, held-out) clip datasets for cfg.data.source; held-out clips are never trained on."""
    d, size = cfg.data, cfg.model.frame_size
    if d.source == "synthetic":
        return SyntheticClips(d, size, d.train_clips), SyntheticClips(d, size, d.heldout_clips, HELDOUT_OFFSET)
    src = source_path(d.source)
    memo = (str(src.resolve()), src.stat().st_mtime_ns, json.dumps(asdict(d)), size)
    if memo in _BUILT:
        return _BUILT[memo]
    if is_shard_set(src):
        _BUILT[memo] = shard_datasets(src, d, size)
    else:
        _BUILT[memo] = lazy_datasets(d, size) if validates_lazily(d) else file_datasets(d, size)
    return _BUILT[memo]


def validates_lazily(d: DataConfig) -> bool:
    """data.validate, with auto decided by the listing's length (eager messages up front where probing is quick)."""
    if d.validate == "auto":
        return not d.window_stride and count_listed(d.source) > LAZY_ABOVE
    return d.validate == "lazy"


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


class Collator:
    """Items -> batch dict: frames uint8 [B, T, 3, H, W]; caption ids + eos, right-padded, with a mask."""

    def __init__(self, tokenizer, max_tokens: int = 32):
        self.tokenizer, self.max_tokens = tokenizer, max_tokens

    def word(self, token_id: int) -> str:
        """One caption token as text (the per-slot caption diagnostic's label)."""
        return self.tokenizer.decode([token_id]).strip()

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
            "skips": [skip for it in items for skip in it.get("skips", ())],  # bad clips found serving these
        }


def micro_batch(k: int, n: int, batch: int, seed: int, rank: int = 0, world: int = 1) -> list[int]:
    """Dataset indices of this rank's part of the k-th global micro-batch. Stateless: a resumed run asks for batch
    k and gets exactly what the uninterrupted run got. Each epoch is a fresh seeded permutation; the ranks split
    every global batch into disjoint slices, so world=2 with batch b sees what world=1 sees with batch 2b, and
    every clip is read once per epoch (but the last n mod global batch, a different few each epoch)."""
    per_epoch = n // (batch * world)
    if per_epoch == 0:
        raise ValueError(f"{n} clips are fewer than one global batch ({batch} x {world} ranks)")
    epoch, j = divmod(k, per_epoch)
    start = j * batch * world + rank * batch
    return epoch_order(n, seed, epoch)[start : start + batch].tolist()


@functools.lru_cache(maxsize=2)
def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The epoch's permutation of n clips, made once (10M clips: ~0.3 s and 80 MB, not per micro-batch)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


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
