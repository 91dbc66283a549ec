"""The latent cache at scale (issue 16): an append-only index per writing rank (a write costs its shard, not the
whole index), a cut-short last line ignored, old caches read; and the VAE target keeps a bounded number of latents
in memory without changing what training computes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import foveal.model.targets.vae as vae_target
from conftest import tiny_overrides
from foveal.analysis.precompute import encode_share, shares
from foveal.config import load_config, replace
from foveal.data.dataset import build_datasets
from foveal.data.export import write_synthetic
from foveal.data.latent_cache import LatentCache
from foveal.model.backbones import build_vae, fingerprint
from foveal.train.loop import train

SRC = str(Path(__file__).resolve().parents[1] / "src")


def losses(run) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_each_rank_appends_its_own_index_and_a_torn_line_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    cache = LatentCache(tmp_path, "fp")
    cache.put({"a": torch.zeros(2), "b": torch.ones(2)})
    monkeypatch.setenv("RANK", "1")
    cache.put({"c": torch.full((2,), 2.0)})
    folder = tmp_path / "latents" / "fp"
    assert sorted(p.name for p in folder.glob("index-*.jsonl")) == ["index-0.jsonl", "index-1.jsonl"]
    again = LatentCache(tmp_path, "fp")
    assert again.missing(["a", "b", "c", "d"]) == [3]
    assert torch.equal(again.get(["c", "a"]), torch.tensor([[2.0, 2.0], [0.0, 0.0]]))
    with open(folder / "index-1.jsonl", "a") as f:
        f.write('{"shard": "shard-x.safetensors", "entr')  # a crash mid-line
    assert LatentCache(tmp_path, "fp").missing(["a", "b", "c"]) == []


def test_a_cache_with_the_old_single_index_is_still_read(tmp_path):
    cache = LatentCache(tmp_path, "fp")
    cache.put({"a": torch.zeros(3)})
    folder = tmp_path / "latents" / "fp"
    (index,) = folder.glob("index-*.jsonl")
    shard = json.loads(index.read_text())["shard"]
    index.unlink()
    (folder / "index.json").write_text(json.dumps({LatentCache.entry("a"): shard}))
    assert LatentCache(tmp_path, "fp").missing(["a", "b"]) == [1]


def test_a_bounded_latent_store_trains_exactly_as_an_unbounded_one(tmp_path, monkeypatch):
    over = tiny_overrides(**{"train.steps": 3, "data.train_clips": 6})  # 2 clips a micro-batch: evicted ones return
    cfg = lambda name: load_config("tiny", overrides=[*over, f"out_dir={tmp_path / name}", f"cache_dir={tmp_path}"])  # noqa: E731
    train(cfg("free"))
    monkeypatch.setattr(vae_target, "STORE_CLIPS", 3)
    stores = []
    real = vae_target.VAETarget.forward
    monkeypatch.setattr(
        vae_target.VAETarget, "forward", lambda self, *a: stores.append(len(self.store)) or real(self, *a)
    )
    train(cfg("bounded"))
    assert max(stores) == 3  # full, never over
    assert losses(tmp_path / "free") == losses(tmp_path / "bounded")


@pytest.mark.slow
def test_precompute_under_torchrun_splits_the_clips_between_ranks_and_resumes(tmp_path):
    manifest = write_synthetic(tmp_path / "clips", videos=7, frames=4, size=32, codec="png")
    args = ["precompute", "--data", str(manifest), "--quiet", f"cache_dir={tmp_path / 'c'}"]
    args += ["data.num_frames=4", "data.heldout_clips=1", "model.frame_size=32"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "foveal"]
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    runs = [subprocess.run([*torchrun, *args], env=env, capture_output=True, text=True, timeout=300) for _ in (0, 1)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr[-3000:]
    assert "7 encoded now" in runs[0].stdout and "by 2 ranks" in runs[0].stdout
    assert "0 encoded now by 2 ranks, 7 were cached" in runs[1].stdout
    (folder,) = (tmp_path / "c" / "latents").iterdir()
    by_rank = [
        [e for line in (folder / f"index-{r}.jsonl").read_text().splitlines() for e in json.loads(line)["entries"]]
        for r in (0, 1)
    ]
    assert sorted(map(len, by_rank)) == [3, 4] and not set(by_rank[0]) & set(by_rank[1])  # 6 train + 1 held-out


def test_models_trained_at_once_find_their_vae_latents_encoded_once(tmp_path):
    """compare with train.jobs > 1: its workers first encode the VAE latents of the clips the models read, split
    between them (precompute.shares, encode_share): every such clip is in the cache, none encoded twice, and the
    shares do not depend on the order the workers run in. Runs that read only part of the training clips get the
    held-out ones; the rest stays lazy."""
    cfg = load_config("tiny", overrides=[*tiny_overrides(), f"cache_dir={tmp_path}"])  # 4 x 2 x 2 = all 16 clips
    runs = [cfg, replace(cfg, model={"head": "mlp"}), replace(cfg, model={"target": "dino"})]
    parts = [s for s in shares(runs, jobs=2, threads=1) if s.kind == "latents"]
    assert [(p.rank, p.world) for p in parts] == [(0, 2), (1, 2)]  # one VAE target: the mlp run shares film's
    assert [encode_share(p) for p in reversed(parts)] == [12, 12]  # 16 + 8 clips, half each
    vae = build_vae(cfg.model.vae, cfg.model.frame_size, cfg.train.seed)
    cache = LatentCache(tmp_path, fingerprint(vae))
    for dataset in build_datasets(cfg):
        assert cache.missing(vae_target.dataset_keys(dataset)) == []
    assert sum(encode_share(p) for p in parts) == 0
    short = replace(cfg, train={"steps": 1}, cache_dir=str(tmp_path / "other"))
    assert sum(encode_share(p) for p in shares([short], jobs=2, threads=1) if p.kind == "latents") == 8
