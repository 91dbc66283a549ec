"""`foveal precompute`: VAE-encode every clip once into the latent cache, before any training.

The cache (cache_dir/latents/<VAE weights fingerprint>/, safetensors shards) is keyed by the clip, the exact frames
sampled from it, their size, and the VAE's weights: training and compare read it and never re-encode a cached clip;
another VAE or another sampling (frames, window, resize, frame size) gets new entries. Under torchrun every rank
encodes every world-th missing clip into its own index (no clip twice, no file shared); an interrupted precompute
resumes with the clips still missing. Nothing is stacked in memory: the latents stay on disk.
"""

from __future__ import annotations

import time

from foveal.config import ConfigError, RunConfig
from foveal.data.dataset import build_datasets
from foveal.data.latent_cache import LatentCache
from foveal.data.video import merge_skips
from foveal.model.backbones import build_vae, fingerprint
from foveal.model.targets.vae import VAETarget, dataset_keys, encode_missing
from foveal.train import distributed


def precompute(cfg: RunConfig) -> dict:
    """Encode what the cache lacks for cfg's train and held-out clips; returns counts and timings (all ranks)."""
    if cfg.model.target != "vae":
        raise ConfigError(
            f"model.target: {cfg.model.target!r} targets are made during training; only vae latents are precomputed"
        )
    t0, dist = time.time(), distributed.setup("cpu")
    train_set, heldout_set = build_datasets(cfg)
    vae = build_vae(cfg.model.vae, cfg.model.frame_size, cfg.train.seed)
    cache = LatentCache(cfg.cache_path, fingerprint(vae))
    out = {"cache": str(cache.dir), "setup_s": round(time.time() - t0, 1), "ranks": dist.world}
    for name, dataset in (("train", train_set), ("heldout", heldout_set)):
        missing, t1 = len(cache.missing(dataset_keys(dataset))), time.time()
        encoded = encode_missing(dataset, vae, cache, f"{name} clips", dist.rank, dist.world)
        dist.barrier()  # every rank's shards are written before anyone reads the whole cache
        encoded, seconds = int(dist.sum([encoded])[0]), time.time() - t1
        cache = LatentCache(cfg.cache_path, fingerprint(vae))  # re-read: the other ranks' indices too
        out[name] = {
            "clips": len(dataset),
            "encoded": encoded,
            "from_cache": len(dataset) - missing,
            "seconds": round(seconds, 2),
            "clips_per_s": round(encoded / seconds, 2) if encoded else None,
            "latent_shape": [cfg.data.num_frames, *VAETarget.shape_for(cfg, 0, 0)],  # [T, C, h, w]
        }
    skipped = merge_skips(dist.gather(dict(getattr(train_set, "skipped", {}))))
    out["data_skipped"] = {reason: len(names) for reason, names in skipped.items()}
    distributed.teardown()
    return out
