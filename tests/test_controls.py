"""Held-out controls: copy-last, h-ablation, target attention mass, and the coarse-only model."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from foveal.analysis.aggregate import aggregate
from foveal.analysis.compare import compare
from foveal.analysis.science import seed_claim, verdict
from foveal.analysis.tables import tables
from foveal.config import load_config
from foveal.data.dataset import Collator, build_datasets
from foveal.evaluation.controls import CONTROLS, Evaluated, attention_entropy, target_mass
from foveal.evaluation.evaluate import evaluate, make_batch
from foveal.evaluation.stats import Estimate
from foveal.evaluation.summary import summarize
from foveal.model.build import build_model
from foveal.objectives import build_objective, score
from foveal.train.checkpoint import latest, load_checkpoint

RECON, CAPTION = build_objective("recon"), build_objective("caption")


@pytest.fixture(scope="module")
def where(tmp_path_factory):
    """A tiny model on the where-to-look clips, with random stand-in targets (no VAE needed)."""
    cfg = load_config(
        "where",
        overrides=["data.num_frames=4", "data.train_clips=8", "data.heldout_clips=6",
                   f"cache_dir={tmp_path_factory.mktemp('c')}"],
    )  # fmt: skip
    torch.manual_seed(0)
    model, tok = build_model(cfg)
    _, heldout = build_datasets(cfg)
    targets = torch.randn(len(heldout), 4, *model.target_shape)
    model.target.store.update({heldout[i]["key"]: targets[i] for i in range(len(heldout))})  # the vae target's lookup
    return model, Collator(tok), heldout, targets


def test_copy_last_equals_the_hand_computed_mse(where):
    model, collator, heldout, targets = where
    by_hand = np.array(
        [[((targets[i, t] - targets[i, t - 1]) ** 2).mean().item() for t in range(1, 4)] for i in range(len(heldout))]
    )
    np.testing.assert_allclose(model.target.copy_last(targets).loss.numpy(), by_hand, rtol=1e-6)
    arrays = evaluate(model, heldout, collator, RECON, batch_size=4)
    np.testing.assert_allclose(arrays["recon_copy_last"], by_hand, rtol=1e-6)  # across batches of 4 and 2
    np.testing.assert_allclose(arrays["copy_last_mse"], by_hand, rtol=1e-6)
    assert arrays["recon_coarse"].shape == arrays["recon_fine_h_zero"].shape == (6, 4)


def test_caption_video_control_swaps_only_the_frames(where):
    """The other-video caption control scores each clip's own caption after the previous clip's frames: with every
    clip showing the same video it equals the normal loss exactly; with different videos it does not."""
    model, collator, heldout, targets = where

    class SameVideo:  # every clip shows clip 0's frames, with its own caption
        def __len__(self):
            return len(heldout)

        def __getitem__(self, i):
            return heldout[i] | {"frames": heldout[0]["frames"]}

    same = evaluate(model, SameVideo(), collator, CAPTION, batch_size=4)
    np.testing.assert_allclose(same["caption_fine_video_other"], same["caption_fine"], rtol=1e-5)
    real = evaluate(model, heldout, collator, CAPTION, batch_size=4)
    assert np.abs(real["caption_fine_video_other"] - real["caption_fine"]).max() > 1e-6
    assert "video_other_minus_fine" in summarize(real)["caption"]


def test_per_token_caption_ce_is_kept_across_ragged_batches(where):
    """caption_tokens_<path> [N, L+1]: batches of 4 and 2 clips padded to the longest caption, NaN past each eos
    exactly where caption_ids is; its mean over a clip's tokens is that clip's caption_<path>."""
    model, collator, heldout, _ = where
    clips = sorted((heldout[i] for i in range(len(heldout))), key=lambda c: -len(c["caption"].split()))
    lengths = [len(collator([c])["caption_ids"][0]) for c in clips]
    assert max(lengths[4:]) < max(lengths[:4])  # the longest captions first: the second batch is narrower
    arrays = evaluate(model, clips, collator, CAPTION, batch_size=4)
    ids = arrays["caption_ids"]
    assert ids.shape == (len(clips), max(lengths)) and np.isfinite(ids).sum(1).tolist() == lengths
    for path in ("coarse", "fine", "fine_video_other", "shuffled"):  # the paths and a control's re-scored pass
        tokens = arrays[f"caption_tokens_{path}"]
        np.testing.assert_array_equal(np.isfinite(tokens), np.isfinite(ids))
        np.testing.assert_allclose(np.nanmean(tokens, 1), arrays[f"caption_{path}"], rtol=1e-5)


def test_h_ablation_changes_h_only(where):
    model, collator, heldout, targets = where
    raw = collator([heldout[i] for i in range(3)])
    batch = make_batch(raw, "cpu", caption=False)
    with torch.no_grad():
        out = model(batch)
        coarse, fine = score(model, out, batch, ("recon",))
    p, own_loss = out.fine[0], fine[0].recon
    before = {k: v.clone() for k, v in model.head.state_dict().items()}
    seen = []  # every (h, prev) the head is called with
    hook = model.head.register_forward_pre_hook(lambda m, args: seen.append([a.detach().clone() for a in args]))
    ev = Evaluated(model, RECON, batch, out, {"coarse": coarse, "fine": fine[0]}, 1, None)
    with torch.no_grad():
        ablated = CONTROLS["h_ablation"](ev)
        own = model.target.losses(model.predict_next(p.hidden[:, :4], out.targets), out.targets).loss
    hook.remove()
    assert all(torch.equal(before[k], v) for k, v in model.head.state_dict().items())  # weights untouched
    assert all(torch.equal(prev, seen[-1][1]) for _, prev in seen)  # same previous latents in every call
    torch.testing.assert_close(own, own_loss)  # with its own h, the ablation path gives the pass's loss
    h = p.hidden[:, :4]
    assert torch.equal(seen[2][0], torch.zeros_like(h))  # calls: coarse h_zero, coarse h_other, fine h_zero, ...
    assert torch.equal(seen[3][0], torch.cat([h[-1:], h[:-1]]))  # each clip gets the previous clip's h
    assert not torch.allclose(ablated["recon_fine_h_zero"], own_loss)
    assert ablated["recon_fine_h_zero"].shape == ablated["recon_fine_h_other"].shape == own_loss.shape


def test_target_mass_counts_only_target_patches():
    weights = torch.zeros(2, 1, 3, 2, 5)  # [B*T, 1, L, heads, P]: CLS + 4 patches
    weights[..., 0] = 0.5  # half on CLS
    weights[..., 2] = 0.25
    weights[..., 4] = 0.25
    patches = torch.tensor([[[False, True, False, False], [False, True, False, True]]])  # [B=1, T=2, 4]
    mass = target_mass(weights, patches)
    assert mass.shape == (1, 2, 3)
    torch.testing.assert_close(mass[0, 0], torch.full((3,), 0.25))
    torch.testing.assert_close(mass[0, 1], torch.full((3,), 0.5))


def test_attention_entropy_is_one_when_uniform_and_zero_when_peaked():
    weights = torch.full((4, 1, 2, 3, 5), 0.2)  # [B*T=4, 1, L, heads, P]: uniform
    weights[2:] = torch.nn.functional.one_hot(torch.tensor(1), 5).float()  # frames of the second clip: one token
    ent = attention_entropy(weights, frames=2)
    torch.testing.assert_close(ent, torch.tensor([[1.0, 1.0], [0.0, 0.0]]))


def test_evaluate_reports_attention_on_the_target(where):
    model, collator, heldout, targets = where
    arrays = evaluate(model, heldout, collator, RECON)
    assert arrays["attention_fine"].shape == (6, 4, model.encoder.dino.config.num_hidden_layers)
    assert ((arrays["attention_fine"] >= 0) & (arrays["attention_fine"] <= 1)).all()
    chance = np.stack([heldout.target_patches(i, 8).float().numpy().sum(1) / 65 for i in range(6)])
    np.testing.assert_allclose(arrays["attention_chance"], chance, rtol=1e-6)
    assert ((arrays["attention_fine_entropy"] > 0) & (arrays["attention_fine_entropy"] <= 1 + 1e-6)).all()
    s = summarize(arrays)
    assert set(s["controls"]) == {"copy_last", "coarse", "fine"}
    assert s["attention"]["fine"]["mean"] == pytest.approx(arrays["attention_fine"][:, 1:].mean(), rel=1e-5)
    lo, hi = s["attention"]["fine_minus_coarse"]["ci"]
    assert lo <= s["attention"]["fine_minus_coarse"]["value"] <= hi


def test_compare_with_controls_trains_a_coarse_only_model(tiny_cfg, tmp_path):
    """--controls: a coarse-only model (train.fine_iterations=0) per head, whose fine-only parts never move; the
    table pairs its held-out loss with the fine path's, clip by clip."""
    cfg = tiny_cfg()
    init, _ = build_model(cfg)  # every component is seeded by name: the runs start from these weights
    rows = compare(cfg, ["film"], tmp_path / "cmp", controls="all")
    only = Path(tmp_path / "cmp" / "film-coarse-only")
    trained = load_checkpoint(latest(only / "checkpoints"))["model"]
    for name in ("q_init", "fine_token", "llm_to_query.weight"):
        assert torch.equal(trained[name], init.state_dict()[name]), name
    assert not torch.equal(trained["q_static"], init.state_dict()["q_static"])
    result = json.loads((only / "results.json").read_text())
    assert result["fine_iterations"] == 0 and result["steps"] == 4
    assert "ratio" not in result["heldout"]["recon"] and "fine" not in result["heldout"]["controls"]

    control = torch.load(only / "heldout_losses.pt")
    main = torch.load(tmp_path / "cmp" / "film" / "heldout_losses.pt")
    expected = control["recon_coarse"][:, 2:].mean(1).sum() / main["recon_fine"][:, 2:].mean(1).sum()
    m = rows[0]["metrics"]
    assert m["recon_coarse_only_over_fine"]["value"] == pytest.approx(expected.item(), rel=1e-5)
    text = (tmp_path / "cmp" / "summary.md").read_text()
    columns = ["Coarse-only / fine", "Copy-last", "h=0 minus fine", "Recon ratio, steered frames t>=2"]
    for column in [*columns, "Oracle-look model", "Prev-only model"]:
        assert column in text


def test_seeds_aggregate_to_a_student_t_interval():
    first = {"head": "film", "objective": "recon", "preset": "tiny", "steps": 5, "params": 10, "coarse_weight": 1.0,
             "heldout": {"clips": 8}, "seed": 0, "final_ratio": 1.0, "ratio_above_1": 0.5, "min_ratio": 0.9,
             "max_ratio": 1.1, "loss_fine": 0.2, "loss_coarse": 0.2}  # fmt: skip
    runs = [
        {
            "metrics": {
                "recon_ratio": Estimate(v, v - 0.01, v + 0.01, "clips", 8),
                "final_ratio": Estimate(v),
                "ratio_above_1": Estimate(0.5),
                "loss_fine_train": Estimate(0.2),
                "loss_coarse_train": Estimate(0.2 * v),
            },
            "layers": {"fine": [v, v]},
            "step_ratios": {},
            "result": first | {"final_ratio": v},
        }  # fmt: skip
        for v in (1.0, 1.1, 1.2)
    ]
    row = aggregate(runs)
    metric = row["metrics"]["recon_ratio"]
    assert metric["over"] == "seeds" and metric["value"] == pytest.approx(1.1) and metric["values"] == [1.0, 1.1, 1.2]
    assert metric["ci"][1] - 1.1 == pytest.approx(4.302653 * 0.1 / np.sqrt(3), rel=1e-5)
    assert row["attention_layers"]["fine"] == pytest.approx([1.1, 1.1])
    assert row["loss_coarse"] == pytest.approx(0.22)  # every field from all seeds, none from the first alone
    single = aggregate(runs[:1])["metrics"]["recon_ratio"]
    assert single["over"] == "clips" and single["ci"] == [0.99, 1.01]  # one seed: the bootstrap interval
    assert row["final_ratio"] == pytest.approx(1.1) and row["heldout_ratio"] == pytest.approx(1.1)
    assert "1.1000 [0.8516, 1.3484]" in tables([row])


def test_seed_claim_is_read_off_the_intervals():
    def row(objective, lo, hi):
        metric = {"value": (lo + hi) / 2, "ci": [lo, hi]}
        return {"head": "film", "objective": objective, "metrics": {"recon_ratio": metric}}

    assert "**confirmed**" in seed_claim([row("recon", 0.99, 1.01), row("joint", 1.10, 1.20)])
    assert "**refuted**" in seed_claim([row("recon", 1.05, 1.10), row("joint", 0.99, 1.01)])
    not_joint = seed_claim([row("recon", 0.99, 1.01), row("joint", 1.00, 1.20)])
    assert "**not confirmed: joint training" in not_joint and "vacuously" not in not_joint
    blind = row("recon", 0.99, 1.01)
    blind["metrics"]["h_other_minus_fine"] = {"value": 0.0, "ci": [-1e-4, 1e-4]}  # the head ignores h
    assert "vacuously" in seed_claim([blind, row("joint", 1.10, 1.20)])
    assert verdict({"value": 1.1, "ci": [1.05, 1.15]}) == "yes"
    assert verdict({"value": 0.9, "ci": [0.85, 0.95]}).startswith("no")
    assert verdict({"value": 1.0, "ci": [0.95, 1.05]}).startswith("not resolved")
