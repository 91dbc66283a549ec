"""`foveal precompute`: VAE-encode every clip once into the latent cache, before any training.

The cache (cache_dir/latents/<VAE weights fingerprint>/, safetensors shards) is keyed by the clip, the exact frames
sampled from it, their size, and the VAE's weights: training and compare read it and never re-encode a cached clip;
another VAE or another sampling (frames, window, resize, frame size) gets new entries.
"""

from __future__ import annotations

import time

from .backbones import build_vae, fingerprint
from .config import ConfigError, RunConfig
from .data.dataset import LatentCache, build_datasets, latents_for


def precompute(cfg: RunConfig, quiet: bool = False) -> dict:
    """Encode what the cache lacks for cfg's train and held-out clips; returns counts and timings."""
    if cfg.model.target != "vae":
        raise ConfigError("model.target: 'dino' targets come from the encoder during training; nothing to precompute")
    t0 = time.time()
    train_set, heldout_set = build_datasets(cfg)
    vae = build_vae(cfg.model.vae, cfg.model.frame_size, cfg.train.seed)
    cache = LatentCache(cfg.cache_dir, fingerprint(vae))
    setup_s = time.time() - t0
    out = {"cache": str(cache.dir), "setup_s": round(setup_s, 1)}
    for name, dataset in (("train", train_set), ("heldout", heldout_set)):
        keys = dataset.keys() if hasattr(dataset, "keys") else [dataset[i]["key"] for i in range(len(dataset))]
        missing = len(cache.missing(keys))
        t1 = time.time()
        latents = latents_for(dataset, vae, cache, f"{name} clips", quiet)
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
