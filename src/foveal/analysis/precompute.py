"""`foveal precompute`: VAE-encode every clip once into the latent cache, before any training.

The cache (cache_dir/latents/<VAE weights fingerprint>/, safetensors shards) is keyed by the clip, the exact frames
sampled from it, their size, and the VAE's weights: training and compare read it and never re-encode a cached clip;
another VAE or another sampling (frames, window, resize, frame size) gets new entries.
"""

from __future__ import annotations

import time

from foveal.config import ConfigError, RunConfig
from foveal.data.dataset import build_datasets
from foveal.data.latent_cache import LatentCache
from foveal.model.backbones import build_vae, fingerprint
from foveal.model.targets.vae import dataset_keys, latents_for


def precompute(cfg: RunConfig) -> dict:
    """Encode what the cache lacks for cfg's train and held-out clips; returns counts and timings."""
    if cfg.model.target != "vae":
        raise ConfigError(
            f"model.target: {cfg.model.target!r} targets are made during training; only vae latents are precomputed"
        )
    t0 = time.time()
    train_set, heldout_set = build_datasets(cfg)
    vae = build_vae(cfg.model.vae, cfg.model.frame_size, cfg.train.seed)
    cache = LatentCache(cfg.cache_path, fingerprint(vae))
    setup_s = time.time() - t0
    out = {"cache": str(cache.dir), "setup_s": round(setup_s, 1)}
    for name, dataset in (("train", train_set), ("heldout", heldout_set)):
        keys = dataset_keys(dataset)
        missing = len(cache.missing(keys))
        t1 = time.time()
        latents = latents_for(dataset, vae, cache, f"{name} clips")
        seconds = time.time() - t1
        out[name] = {
            "clips": len(dataset),
            "encoded": missing,
            "from_cache": len(dataset) - missing,
            "seconds": round(seconds, 2),
            "clips_per_s": round(missing / seconds, 2) if missing else None,
            "latent_shape": list(latents.shape[1:]),  # [T, C, h, w]
        }
    out["data_skipped"] = {reason: len(names) for reason, names in getattr(train_set, "skipped", {}).items()}
    return out
