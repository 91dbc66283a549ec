"""`foveal precompute`: VAE-encode every clip once into the latent cache, before any training.

The cache (cache_dir/latents/<VAE weights fingerprint>/, safetensors shards) is keyed by the clip, the exact frames
sampled from it, their size, and the VAE's weights: training and compare read it and never re-encode a cached clip;
another VAE or another sampling (frames, window, resize, frame size) gets new entries. Under torchrun every rank
encodes the missing ones of every world-th clip into its own index (no clip twice, no file shared); an interrupted
precompute resumes with the clips still missing. Nothing is stacked in memory: the latents stay on disk. compare's
workers do the same before the models they train at once start (shares, encode_share)."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass

import torch

from foveal.config import ConfigError, RunConfig, encoder_cache_on
from foveal.data.dataset import build_datasets
from foveal.data.frames import encoder_input
from foveal.data.latent_cache import LatentCache
from foveal.data.video import merge_skips
from foveal.log import progress
from foveal.model.backbones import build_vae, fingerprint
from foveal.model.build import build_model
from foveal.model.targets.vae import VAETarget, dataset_keys, encode_missing
from foveal.train import distributed
from foveal.train.encoder_cache import MIB, Part, cache_key, clip_bytes, shared_empty
from foveal.train.optim import autocast_for

log = logging.getLogger(__name__)


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


def clips_read(runs: list[RunConfig]) -> int:
    """Training clips the longest of the runs reads (one process; compare's workers are never under torchrun)."""
    return max(r.train.steps * r.train.batch_size * r.train.grad_accum for r in runs)


@dataclass
class Share:
    """One worker's part of what models trained at once all read, of every world-th clip: the VAE latents the cache
    lacks (held-out clips, and training clips where the runs read all of them), or the frozen encoder's K/V."""

    run: RunConfig
    rank: int
    world: int
    threads: int  # the workers' torch threads: a latent encoded on 2 threads differs from 1 thread's by ~4e-6
    reads: int  # training clips the longest run reads
    kind: str = "latents"  # latents: VAE targets into the latent cache | encoder: frozen encoder K/V (a Part)


def shares(runs: list[RunConfig], jobs: int, threads: int) -> list[Share]:
    """What `jobs` workers encode before the models start: each VAE target's clips once, and the first run's encoder
    K/V, split between them. Otherwise every model that starts before a clip is cached encodes it too, at the same
    time (the first model of each worker of a five-head tiny compare: 68 s of its 186), and every worker holds an
    encoder cache of its own. A run reading a few clips of a long manifest encodes those as it goes."""
    seen, out, reads = set(), [], clips_read(runs) if runs else 0
    for run in runs:
        t = run.train
        key = json.dumps([dataclasses.asdict(run.data), dataclasses.asdict(run.model.vae), run.model.frame_size,
                          t.seed, str(run.cache_path)], sort_keys=True, default=str)  # fmt: skip
        if run.model.target != "vae" or key in seen:
            continue
        seen.add(key)
        out += [Share(run, rank, jobs, threads, reads) for rank in range(jobs)]
    if runs and encoder_cache_on(runs[0]):  # the first (longest) run's encoder: the one most runs share
        out += [Share(runs[0], rank, jobs, threads, reads, "encoder") for rank in range(jobs)]
    return out


def encoder_part(share: Share) -> Part | None:
    """Of every world-th training clip (up to train.encoder_cache_mib), the frozen encoder's K/V in shared memory,
    made as training makes them (model.encode under the run's autocast; bitwise the same in any batch); None where
    the runs read only part of the clips (then each worker encodes what it reads)."""
    run, t, cpu = share.run, share.run.train, torch.device("cpu")
    train_set, _ = build_datasets(run)
    if share.reads < len(train_set):
        return None
    model, _ = build_model(run)
    per_clip = clip_bytes(model, run.data.num_frames, run.model.frame_size, t.precision)
    todo = list(range(share.rank, min(len(train_set), t.encoder_cache_mib * MIB // per_clip), share.world))
    clips, frames, out, t0 = [], run.data.num_frames, None, time.time()
    with autocast_for(t.precision, cpu):
        for start in progress(range(0, len(todo), t.batch_size), desc="encoder cache", unit="batch"):
            items = [train_set[i] for i in todo[start : start + t.batch_size]]
            got = model.encode(encoder_input(torch.stack([it["frames"] for it in items])))  # [L, B*T, ...]
            if out is None:  # in shared memory from the start: the part is mapped by every worker, never copied
                out = shared_empty(got, len(todo) * frames)
            at = slice(start * frames, start * frames + got.features.shape[0])
            out.keys[:, at], out.values[:, at], out.features[at] = got.keys, got.values, got.features
            clips += [it["key"] for it in items]
    if out is None:
        return None
    log.info(f"encoder cache, share {share.rank + 1}/{share.world}: {len(clips)} clips into shared memory "
             f"({len(clips) * per_clip / MIB:.0f} MiB, {time.time() - t0:.0f} s)")  # fmt: skip
    return Part(cache_key(model.encoder.dino, t.precision), clips, out)


def encode_share(share: Share) -> int | Part | None:
    """One share: latents into the latent cache (its own index file; returns how many clips), or the encoder's
    part (encoder_part)."""
    torch.set_num_threads(share.threads)
    if share.kind == "encoder":
        return encoder_part(share)
    run = share.run
    train_set, heldout_set = build_datasets(run)
    vae = build_vae(run.model.vae, run.model.frame_size, run.train.seed)
    cache = LatentCache(run.cache_path, fingerprint(vae), writer=f"job{share.rank}")
    sets = [("training", train_set)] * (share.reads >= len(train_set)) + [("held-out", heldout_set)]
    return sum(
        encode_missing(d, vae, cache, f"{name} clips, share {share.rank + 1}/{share.world}", share.rank, share.world)
        for name, d in sets
    )
