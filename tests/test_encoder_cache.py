"""Encoder cache: a cached batch equals encoding it, the budget holds, the size estimate is exact, and training with
the cache follows training without it."""

import json

import pytest
import torch

from conftest import tiny_overrides
from foveal.analysis.precompute import encode_share, shares
from foveal.config import ConfigError, encoder_cache_on, load_config, replace
from foveal.data.dataset import build_datasets
from foveal.data.frames import encoder_input
from foveal.model.build import build_model
from foveal.train import encoder_cache
from foveal.train.encoder_cache import MIB, EncoderCache, cache_plan, clip_bytes, entry_bytes, shared_cache
from foveal.train.loop import train


@pytest.fixture(scope="module")
def model_cfg(tmp_path_factory):
    cfg = load_config("tiny", overrides=["data.num_frames=3", f"cache_dir={tmp_path_factory.mktemp('c')}"])
    model, _ = build_model(cfg)
    return model.eval(), cfg


def assert_same(a, b):
    for x, y in ((a.keys, b.keys), (a.values, b.values), (a.features, b.features)):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


def test_lookup_equals_encoding_with_hits_and_misses(model_cfg):
    model, _ = model_cfg
    frames = torch.randn(3, 3, 3, 64, 64)
    cache = EncoderCache(budget_mib=64)
    first = cache.lookup(["a", "b"], frames[:2], model.encode)
    assert_same(first, model.encode(frames[:2]))
    assert len(cache) == 2 and (cache.hits, cache.misses) == (0, 2)
    order = [2, 0, 1]  # c is new, a and b are held; the result keeps the batch's order
    mixed = cache.lookup(["c", "a", "b"], frames[order], model.encode)
    assert_same(mixed, model.encode(frames[order]))
    assert (cache.hits, cache.misses) == (2, 3)
    assert cache.used == sum(entry_bytes(e) for e in cache.entries.values())


def test_budget_bounds_the_cache_and_uncached_clips_are_still_right(model_cfg):
    model, _ = model_cfg
    per_clip = clip_bytes(model, 3, 64, "fp32")
    budget = -(-per_clip // MIB)  # MiB that hold one clip
    keep = budget * MIB // per_clip
    frames = torch.randn(keep + 2, 3, 3, 64, 64)
    keys = [f"clip{i}" for i in range(len(frames))]
    cache = EncoderCache(budget)
    out = cache.lookup(keys, frames, model.encode)
    assert len(cache) == keep and cache.used <= budget * MIB
    assert_same(out, model.encode(frames))
    assert_same(cache.lookup(keys[::-1], frames.flip(0), model.encode), model.encode(frames.flip(0)))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_size_estimate_is_exact(model_cfg, precision):
    model, cfg = model_cfg
    cache = EncoderCache(64)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        cache.lookup(["a"], torch.randn(1, 3, 3, 64, 64), model.encode)
    assert entry_bytes(cache.entries["a"]) == clip_bytes(model, 3, 64, precision)
    assert "MiB per clip" in cache_plan(model, cfg, 100)


def test_cache_needs_a_frozen_encoder():
    with pytest.raises(ConfigError, match="model.dino.freeze"):
        load_config("tiny", overrides=["train.encoder_cache=true", "model.dino.freeze=false"])
    with pytest.raises(ConfigError, match="true, false or auto"):
        load_config("tiny", overrides=["train.encoder_cache=sometimes"])


@pytest.mark.parametrize(
    ("overrides", "on"),
    [
        ([], True),  # the look preset's auto, frozen encoder
        (["model.dino.freeze=false"], False),
        (["train.parallel=fsdp2"], False),
        (["train.encoder_cache=false"], False),
    ],
)
def test_auto_keeps_the_cache_wherever_it_can_run(overrides, on):
    cfg = load_config("look", overrides=overrides)
    assert cfg.train.encoder_cache == ("auto" if "train.encoder_cache=false" not in overrides else False)
    assert encoder_cache_on(cfg) is on


def test_training_with_the_cache_follows_training_without(tiny_cfg, tmp_path, logs):
    """Two epochs over 4 clips: the second epoch reads every clip from the cache; the losses stay the same."""
    kw = {"data.train_clips": 4, "data.heldout_clips": 2, "train.steps": 4, "train.grad_accum": 1}
    rows = []
    for on in (False, True):
        cfg = replace(tiny_cfg(**kw, **{"train.encoder_cache": on}), out_dir=str(tmp_path / f"run{on}"))
        train(cfg)
        lines = (tmp_path / f"run{on}" / "metrics.jsonl").read_text().splitlines()
        rows.append([json.loads(x)["loss"] for x in lines])
    assert "encoder cache:" in logs()
    torch.testing.assert_close(torch.tensor(rows[1]), torch.tensor(rows[0]), rtol=1e-4, atol=1e-6)


def test_models_with_one_frozen_encoder_share_its_cache(tiny_cfg, tmp_path, model_cfg, monkeypatch):
    """Two heads trained one after the other over the same 8 clips (one epoch each): the second encodes none of them;
    another encoder's weights or another precision get a cache of their own."""
    monkeypatch.setattr(encoder_cache, "_SHARED", {})  # what earlier tests cached stays out of the counts
    kw = {"data.train_clips": 8, "data.heldout_clips": 2, "train.steps": 2, "train.encoder_cache": True}
    for head in ("film", "mlp"):
        train(replace(tiny_cfg(**kw, **{"model.head": head}), out_dir=str(tmp_path / head)))
    model, _ = build_model(tiny_cfg(**kw))  # the same seed: the same frozen encoder
    cache = shared_cache(model.encoder.dino, "fp32", 64)
    assert (len(cache), cache.misses, cache.hits) == (8, 8, 8)
    assert shared_cache(model.encoder.dino, "bf16", 64) is not cache
    other, _ = model_cfg  # 3-frame config, same weights: its cache is a fresh one now (only the newest is kept)
    torch.nn.init.zeros_(other.encoder.dino.embeddings.cls_token)
    assert len(shared_cache(other.encoder.dino, "fp32", 64)) == 0


def test_workers_encode_parts_once_and_every_cache_holds_them_all(tmp_path, monkeypatch):
    """compare's workers (train.jobs > 1): each encodes every world-th training clip into shared memory
    (precompute.encoder_part), and install() puts every part into a process's cache, as views: the cache then
    holds each clip once, bitwise what encoding it during training gives, within the budget."""
    monkeypatch.setattr(encoder_cache, "_SHARED", {})
    cfg = load_config("tiny", overrides=[*tiny_overrides(), f"cache_dir={tmp_path}"])  # 16 clips, all read
    parts = [encode_share(s) for s in shares([cfg], jobs=2, threads=1) if s.kind == "encoder"]
    assert [len(p.clips) for p in parts] == [8, 8] and all(p.patches.keys.is_shared() for p in parts)
    model, _ = build_model(cfg)
    encoder_cache.install(parts, cfg.train.encoder_cache_mib)
    cache = shared_cache(model.encoder.dino, cfg.train.precision, cfg.train.encoder_cache_mib)
    train_set, _ = build_datasets(cfg)
    assert sorted(cache.entries) == sorted(train_set[i]["key"] for i in range(16))
    items = [train_set[i] for i in (5, 2)]
    frames = encoder_input(torch.stack([it["frames"] for it in items]))
    got, want = cache.lookup([it["key"] for it in items], frames, model.encode), model.encode(frames)
    assert cache.misses == 0 and all(torch.equal(a, b) for a, b in zip(vars(got).values(), vars(want).values()))
    assert cache.entries[items[0]["key"]].keys.untyped_storage().data_ptr() in {
        p.patches.keys.untyped_storage().data_ptr() for p in parts
    }  # views of the shared parts, not copies
    monkeypatch.setattr(encoder_cache, "_SHARED", {})
    small = clip_bytes(model, cfg.data.num_frames, cfg.model.frame_size, cfg.train.precision) * 3 // MIB + 1
    encoder_cache.install(parts, small)
    held = shared_cache(model.encoder.dino, cfg.train.precision, small)
    assert 0 < len(held) < 16 and held.used <= held.budget
