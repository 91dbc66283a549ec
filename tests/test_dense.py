"""The dense reader control (model.dense_tokens = k): each frame read as k average-pooled patch tokens, no query.
Its tokens against an independent pooling, which LLM states it keeps, its control model through `foveal compare`
into the tables (with its FLOPs per clip), and the configs it cannot run refused in one line."""

import json
from pathlib import Path

import pytest
import torch

from conftest import tiny_overrides
from foveal.analysis.compare import planned_runs
from foveal.analysis.report import gallery
from foveal.cli import main
from foveal.config import ConfigError, load_config
from foveal.evaluation.pictures import analyse
from foveal.model.build import build_model
from foveal.model.encoder import PatchCache
from foveal.model.foveated import Batch

DENSE = ["model.target=pixels", "train.fine_iterations=0"]


def _dense(k: int = 4):
    cfg = load_config("tiny", overrides=[*DENSE, f"model.dense_tokens={k}"])
    torch.manual_seed(0)
    model, _ = build_model(cfg)
    return model.eval(), cfg


def test_the_dense_tokens_are_the_pooled_patch_features_projected():
    """k = 4 on the tiny 8x8 patch grid: each token is the mean of one 4x4 quadrant's final features (CLS left out),
    row-major, through dino_to_llm and the RMS norm at the visual scale; frame by frame."""
    model, _ = _dense(4)
    b, t = 2, 3
    with torch.no_grad():
        cache = model.encode(torch.randn(b, t, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
        tokens = model.dense_pass(cache, b, t, llm=False).tokens  # [B, T*k, H]
        patches = cache.features[:, 1:].view(b * t, 2, 4, 2, 4, -1)  # [N, row block, row, col block, col, D]
        quadrants = patches.mean((2, 4)).flatten(1, 2)  # [N, 4, D]
        x = model.dino_to_llm(quadrants)
        expected = x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt() * model.visual_scale
    assert tokens.shape == (b, t * 4, model.llm.config.hidden_size)
    torch.testing.assert_close(tokens, expected.reshape(b, t * 4, -1))


def test_the_llm_reads_t_times_k_tokens_and_the_kept_states_are_each_frames_last():
    model, _ = _dense(4)
    k, b, t = 4, 2, 3
    seen = []
    model.llm.model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["inputs_embeds"].shape), with_kwargs=True)
    g = torch.Generator().manual_seed(1)
    batch = Batch(torch.randn(b, t, 3, 64, 64, generator=g), targets=torch.randn(b, t, 3, 8, 8, generator=g))
    with torch.no_grad():
        cache = model.encode(batch.frames)
        p = model(batch, fine_iterations=0, cache=cache).coarse
    assert seen == [(b, 1 + t * k, model.llm.config.hidden_size)] and p.hidden.shape[1] == 1 + t
    # frame 1's last pooled token alone changed (its bottom-right quadrant's features): only the state kept for
    # frame 1 moves; a kept state that were not the frame's last token would not see it
    features = cache.features.clone()
    features[1, 1:].view(8, 8, -1)[4:, 4:] += 1.0  # clip 0, frame 1
    with torch.no_grad():
        moved = model.dense_pass(PatchCache(cache.keys, cache.values, features), b, t)
    diff = (moved.hidden - p.hidden).abs().amax(-1)  # [B, 1+T]
    assert (diff[0, :2] == 0).all() and diff[0, 2] > 1e-4 and (diff[1] == 0).all()
    assert (moved.tokens[0, k : 2 * k - 1] == p.tokens[0, k : 2 * k - 1]).all()  # frame 1's first three tokens
    # frame 1's pixels: nothing kept before it changes, its state and every later one does
    frames = batch.frames.clone()
    frames[:, 1] += 1.0
    with torch.no_grad():
        after = model(Batch(frames, targets=batch.targets), fine_iterations=0).coarse
    diff = (after.hidden - p.hidden).abs().amax(-1)
    assert (diff[:, :2] == 0).all() and (diff[:, 2:] > 1e-4).all()


def test_what_needs_a_query_refuses_a_dense_model_cleanly():
    model, cfg = _dense(4)
    frames = torch.randint(0, 255, (3, 3, 64, 64), dtype=torch.uint8)
    with pytest.raises(ValueError, match="no query"):
        model(Batch(torch.randn(1, 3, 3, 64, 64)), fine_iterations=1)
    with pytest.raises(ValueError, match="no autoregressive path"):
        model.forward_autoregressive(Batch(torch.randn(1, 3, 3, 64, 64)))
    with pytest.raises(ValueError, match="no look to draw"):
        analyse(model, cfg, type("Clip", (), {"frames": frames})())
    ids = model.generate(torch.randn(1, 3, 3, 64, 64), mode="coarse", max_new_tokens=2)
    assert ids.shape[0] == 1


def test_compare_trains_the_dense_reader_and_tabulates_its_ratio_and_flops(tmp_path, cache_dir):
    out = tmp_path / "cmp"
    steps = [o for o in tiny_overrides() if not o.startswith("train.steps")]
    args = ["compare", "--heads", "film,mlp", "--steps", "2", "--out", str(out), "--quiet", *steps]
    assert main([*args, f"cache_dir={cache_dir}"]) == 0
    dense = load_config(None, out / "film-dense" / "config.yaml")
    assert dense.model.dense_tokens == 16 and dense.train.fine_iterations == 0 and not (out / "mlp-dense").exists()
    rows = {r["head"]: r for r in json.loads((out / "summary.json").read_text())}
    for head in ("film", "mlp"):
        m = rows[head]["metrics"]
        assert 0 < m["recon_dense_ratio"]["value"] < float("inf")
        assert m["recon_dense_ratio"]["ci"][0] <= m["recon_dense_ratio"]["value"] <= m["recon_dense_ratio"]["ci"][1]
        assert m["flops_per_clip_dense"]["value"] > m["flops_per_clip_dense_encoder"]["value"] > 0
        assert m["flops_per_clip"]["value"] > m["flops_per_clip_encoder"]["value"] > 0
    assert rows["film"]["metrics"]["recon_dense_ratio"] == rows["mlp"]["metrics"]["recon_dense_ratio"]  # borrowed
    md = (out / "summary.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| Head | "))
    column = header.split(" | ").index("Dense reader (16 tokens)")
    film, mlp = (next(ln for ln in md.splitlines() if ln.startswith(f"| **{h}** |")).split(" | ") for h in rows)
    assert not film[column].endswith("†") and mlp[column].endswith(" †")
    assert "**FLOPs per clip**" in md and "dense reader (16 tokens): " in md
    assert "recon_dense_ratio" in (out / "summary.csv").read_text().splitlines()[0]
    assert gallery(out / "film-dense", 2) == []  # no look to draw: no gallery, no crash


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.dense_tokens=5", *DENSE], "model.dense_tokens: 5 pooled tokens per frame; use a square number"),
        (["model.dense_tokens=81", *DENSE], r"up to 64 \(the 8x8 patch grid\)"),
        (["model.dense_tokens=16"], "model.dense_tokens: a dense reader has no query.*train.fine_iterations=0"),
        (["model.dense_tokens=16", *DENSE, "model.look=oracle"], "model.look=learned"),
        (["train.dense_control_tokens=0"], "train.dense_control_tokens: 0 pooled tokens per frame"),
    ],
)
def test_a_dense_reader_that_cannot_work_is_refused_in_one_line(overrides, message, capsys):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", overrides=overrides)
    assert main(["config", *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dense" in err[0], err


def test_compare_refuses_a_dense_control_finer_than_the_patch_grid(tmp_path):
    with pytest.raises(ConfigError, match=r"--controls: the dense control model: model.dense_tokens: 81 .* up to 64"):
        planned_runs(load_config("tiny", overrides=["train.dense_control_tokens=81"]), ["film"], tmp_path, 1, "all")
    names = [Path(r.out_dir).name for r in planned_runs(load_config("tiny"), ["film"], tmp_path, 1, "reference")]
    assert names == ["film", "film-oracle", "film-prev-only", "film-dense"]
