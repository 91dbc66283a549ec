"""model.target = vae: the next frame's VAE latent (SD-VAE architecture), the posterior mean x scaling factor.

Latents are encoded once per clip into the on-disk cache (data/latent_cache.py, keyed by the clip's pixels and the
VAE's weights) and looked up by clip key, so a batch's targets are always its own clips'. They are encoded lazily:
a clip the first time a batch holds it (from the batch's own pixels, clip by clip, as `foveal precompute` does), so
start-up does not grow with the dataset; `foveal precompute` fills the cache ahead for runs that want it warm.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from foveal.config import ConfigError, RunConfig
from foveal.data.frames import vae_input
from foveal.data.latent_cache import LatentCache
from foveal.log import progress
from foveal.model.backbones import build_vae, fingerprint, vae_downsample
from foveal.model.targets.base import TARGETS, Target

log = logging.getLogger(__name__)

STORE_CLIPS = 4096  # latents kept in memory (full preset: 131 kB each, 0.5 GB); the rest are read from the cache


@torch.no_grad()
def encode_latents(vae, frames: torch.Tensor, chunk: int = 32) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> posterior-mean latents x scaling factor [N, C, h, w] (deterministic)."""
    out = []
    for part in frames.split(chunk):
        out.append(vae.encode(vae_input(part)).latent_dist.mean * vae.config.scaling_factor)
    return torch.cat(out)


def dataset_keys(dataset) -> list[str]:
    return dataset.keys() if hasattr(dataset, "keys") else [dataset[i]["key"] for i in range(len(dataset))]


def encode_missing(dataset, vae, cache: LatentCache, desc: str = "latents", rank: int = 0, world: int = 1) -> int:
    """Encode this rank's share of the clips the cache lacks (of every world-th clip, those missing: a share does not
    depend on what the others have written yet); returns how many it encoded.

    Written in cache shards of 256 clips as it goes, so an interrupted run resumes with what is still missing."""
    todo = [i for i in cache.missing(dataset_keys(dataset)) if i % world == rank]
    t0, new = time.time(), {}
    for i in progress(todo, desc=f"VAE-encoding {desc}", unit="clip"):
        item = dataset[i]
        new[item["key"]] = encode_latents(vae, item["frames"])
        if len(new) >= 256:
            cache.put(new)
            new = {}
    if new:
        cache.put(new)
    if todo:
        log.info(f"{desc}: encoded {len(todo)} clips ({len(todo) / max(time.time() - t0, 1e-9):.1f} clips/s)")
    return len(todo)


@TARGETS.register("vae")
class VAETarget(Target):
    def __init__(self, cfg: RunConfig, encoder_width: int, patch_size: int):
        super().__init__(cfg, encoder_width, patch_size)
        self.spec, self.frame_size, self.seed, self.cache_dir = (
            cfg.model.vae,
            cfg.model.frame_size,
            cfg.train.seed,
            cfg.cache_path,
        )
        self.store: OrderedDict[str, torch.Tensor] = OrderedDict()  # clip key -> latents [T, C, h, w], the
        #                                 STORE_CLIPS last used (not in the state dict; the rest are on disk)
        self.lazy: LazyLatents | None = None  # set by prepare()

    @staticmethod
    def shape_for(cfg: RunConfig, encoder_width: int, patch_size: int) -> tuple[int, int, int]:
        side = cfg.model.frame_size // vae_downsample(cfg.model.vae)
        return (cfg.model.vae.latent_channels, side, side)

    @staticmethod
    def check_config(cfg: RunConfig) -> None:
        factor = vae_downsample(cfg.model.vae)
        if cfg.model.frame_size % factor:
            raise ConfigError(
                f"model.frame_size: {cfg.model.frame_size} is not divisible by the VAE downsampling {factor}"
            )

    def build_vae(self):
        return build_vae(self.spec, self.frame_size, self.seed)

    def prepare(self, model, datasets: list, *, main: bool = True, barrier=None, out=None, fresh: bool = True) -> dict:
        """The VAE and the cache; nothing is encoded yet. Every process (rank) writes what it encodes to the cache,
        each into its own index."""
        vae = self.build_vae()
        self.lazy = LazyLatents(vae, LatentCache(self.cache_dir, fingerprint(vae)))
        return {}

    def forward(self, batch, cache) -> torch.Tensor:
        missing = [i for i, k in enumerate(batch.keys) if k not in self.store]
        if missing:
            if self.lazy is None:
                raise RuntimeError("vae target: call prepare() before the first batch")
            pixels = None if batch.pixels is None else batch.pixels.cpu()
            self.store.update(self.lazy.latents([batch.keys[i] for i in missing], pixels, missing))
        out = torch.stack([self.store[k] for k in batch.keys]).to(batch.frames.device)
        for k in batch.keys:
            self.store.move_to_end(k)
        while len(self.store) > STORE_CLIPS:  # a million clips' latents do not fit in memory; the disk has them
            self.store.popitem(last=False)
        return out

    def flush(self) -> None:
        """At the end of a run or evaluation: the pending latents to disk, and what this process encoded."""
        if self.lazy is None:
            return
        self.lazy.flush()
        done = self.lazy
        if done.encoded or done.from_cache:
            log.info(f"vae target: {done.encoded} clips encoded so far, {done.from_cache} read from the cache")


@dataclass
class LazyLatents:
    """Latents on demand: from the disk cache, else encoded now (and written out in shards of `shard` clips)."""

    vae: object  # not an nn.Module attribute of the target: the frozen VAE is no part of the model's state
    cache: LatentCache
    shard: int = 256
    pending: dict = field(default_factory=dict)
    encoded: int = 0
    from_cache: int = 0

    def latents(self, keys: list[str], pixels: torch.Tensor | None, rows: list[int]) -> dict[str, torch.Tensor]:
        """keys' latents; a key not cached is encoded from pixels[rows[j]] [T, 3, H, W], clip by clip."""
        absent = {j for j in self.cache.missing(keys) if keys[j] not in self.pending}
        cached = [k for j, k in enumerate(keys) if j not in absent and k not in self.pending]
        out = dict(zip(cached, self.cache.get(cached))) if cached else {}
        out.update({k: self.pending[k] for k in keys if k in self.pending})  # encoded, not yet written
        self.from_cache += len(cached)
        for j in sorted(absent):
            if pixels is None:
                raise RuntimeError(f"vae target: clip {keys[j]} is not in the cache and the batch has no pixels")
            out[keys[j]] = self.pending[keys[j]] = encode_latents(self.vae, pixels[rows[j]])
            self.encoded += 1
        if len(self.pending) >= self.shard:
            self.flush()
        return out

    def flush(self) -> None:
        if self.pending:
            self.cache.put(self.pending)
        self.pending = {}
