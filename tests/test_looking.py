"""The instrument's looking controls, each on data where the answer is known: which frames a look can change, the
gain captured, the target-region loss, the head options (prev-only, delta), the look benchmark's clips, and a planted
effect that the whole pipeline (train -> held-out evaluation -> tables) must detect."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from foveal.analysis.aggregate import look_metrics
from foveal.analysis.compare import CONTROL_MODELS, planned_runs
from foveal.analysis.viz import heldout_clip
from foveal.cli import build_parser
from foveal.config import ConfigError, load_config
from foveal.data.synthetic import COLOURS, patch_masks, render_clip, target_attributes
from foveal.evaluation.controls import region_mse
from foveal.evaluation.pictures import analyse
from foveal.evaluation.stats import gain_captured, oracle_headroom
from foveal.evaluation.summary import summarize
from foveal.model.build import build_model
from foveal.model.foveated import FIRST_STEERED, Batch
from foveal.train.loop import CURRICULUM_OUTSIDE, fine_bias, train


def _model(**overrides):
    cfg = load_config("tiny", overrides=["model.target=pixels", *(f"{k}={v}" for k, v in overrides.items())])
    torch.manual_seed(0)
    model, _ = build_model(cfg)
    return model.eval()


def test_the_llm_query_changes_only_the_steered_frames():
    """Frames 0 and 1 are predicted from states that saw only statically read frames: perturbing the LLM -> query
    projection leaves their fine predictions unchanged and changes every later one."""
    model = _model()
    g = torch.Generator().manual_seed(1)
    batch = Batch(torch.randn(2, 5, 3, 64, 64, generator=g), targets=torch.randn(2, 5, 3, 8, 8, generator=g))
    with torch.no_grad():
        before = model(batch).fine[-1].pred
        model.llm_to_query.weight.add_(torch.randn_like(model.llm_to_query.weight))
        after = model(batch).fine[-1].pred
    change = (after - before).abs().flatten(2).amax(-1)  # [B, T]
    assert FIRST_STEERED == 2
    assert (change[:, :FIRST_STEERED] == 0).all()
    assert (change[:, FIRST_STEERED:] > 1e-4).all()


def test_gain_captured_is_one_for_the_oracle_and_zero_for_coarse():
    rng = np.random.default_rng(0)
    coarse = 1.0 + 0.1 * rng.random(50)
    oracle = coarse - 0.3 - 0.01 * rng.random(50)
    half = (coarse + oracle) / 2
    assert gain_captured(coarse, oracle, oracle).value == pytest.approx(1.0)
    assert gain_captured(coarse, coarse, oracle).value == pytest.approx(0.0, abs=1e-12)
    g = gain_captured(coarse, half, oracle)
    assert g.value == pytest.approx(0.5) and g.low <= 0.5 <= g.high
    assert oracle_headroom(coarse, oracle) and not oracle_headroom(coarse, coarse + 0.01 * rng.normal(size=50))


def test_without_headroom_the_gain_is_not_reported():
    rng = np.random.default_rng(0)
    coarse = 1.0 + 0.1 * rng.random((40, 6))
    arrays = {"recon_coarse": coarse, "recon_fine": coarse - 0.01}
    flat = look_metrics(arrays, {"recon_coarse": coarse, "recon_fine": coarse + 1e-3 * rng.normal(size=(40, 6))},
                        None, 0)  # fmt: skip
    assert np.isnan(flat["recon_gain_captured"].value)
    room = look_metrics(arrays, {"recon_coarse": coarse, "recon_fine": coarse - 0.04}, None, 0)
    assert room["recon_gain_captured"].value == pytest.approx(0.25)
    assert room["recon_oracle_ratio"].value > 1 and room["recon_oracle_ratio"].low > 1


def test_region_mse_is_the_error_on_the_target_cells_only():
    targets = torch.zeros(1, 2, 3, 4, 4)
    pred = targets.clone()
    pred[0, :, :, 0, 0] = 2.0  # wrong in the top-left cell only
    on_target = torch.zeros(1, 2, 16, dtype=torch.bool)
    on_target[0, 0, [0, 1]] = True  # frame 0: the target covers the top-left two cells
    on_target[0, 1, [5]] = True  # frame 1: a cell the prediction got right
    region = region_mse(pred, targets, on_target)
    torch.testing.assert_close(region, torch.tensor([[2.0, 0.0]]))  # (4 + 0) / 2 cells; 0
    assert torch.isnan(region_mse(pred, targets, torch.zeros_like(on_target))).all()


def test_a_prev_only_head_ignores_h_and_delta_adds_the_previous_frame():
    prev_only = _model(**{"model.prev_only": "true"})
    targets = torch.randn(2, 4, 3, 8, 8)
    h = torch.randn(2, 4, prev_only.llm.config.hidden_size)
    with torch.no_grad():
        torch.testing.assert_close(prev_only.predict_next(h, targets), prev_only.predict_next(-h, targets))
    delta = _model(**{"model.predict": "delta"})
    last = list(delta.head.modules())[-1]
    with torch.no_grad():  # a head that outputs zero change predicts the previous frame exactly
        for p in [p for m in delta.head.modules() if m is last for p in m.parameters()]:
            p.zero_()
        pred = delta.predict_next(h, targets)
    torch.testing.assert_close(pred[:, 1:], targets[:, :-1])


def test_the_look_benchmark_lamp_tints_the_next_background_with_the_targets_colour():
    cfg = load_config("look")
    spec, t = cfg.data.synthetic, cfg.data.num_frames
    clip = render_clip(spec, 64, t, 0, 3, gap=0)
    colour = lambda j, f: clip.frames[f][clip.masks[f, j]][0].astype(float)  # noqa: E731
    background = ~clip.masks.any(1)  # [T, H, W]
    for f in range(1, t):
        tint = clip.frames[f][background[f]].astype(float)
        expected = np.round((1 - spec.lamp) * 20 + spec.lamp * colour(0, f - 1))
        assert (tint == expected).all()  # the whole background, from the target's colour one frame back
    target = [tuple(colour(0, f)) for f in range(t)]
    distractor = [tuple(colour(1, f)) for f in range(t)]
    assert len(set(target)) > 2 and len(set(distractor)) > 2  # both flicker: only a look tells them apart
    first = next(n for n, rgb in COLOURS.items() if rgb == target[0])
    assert clip.caption.startswith("the ") and first in clip.caption
    assert (clip.masks[:, 0] == clip.masks[:1, 0]).all()  # a still scene


def test_an_oracle_look_needs_ground_truth(tmp_path):
    (tmp_path / "m.csv").write_text("path,caption\nx.mp4,a\n")
    with pytest.raises(ConfigError, match="model.look=oracle"):
        load_config("tiny", overrides=["model.look=oracle", f"data.source={tmp_path / 'm.csv'}"])


def test_the_oracle_curriculum_fades_from_forced_to_free():
    """Step 0 reads as good as forced onto the target, half-way through the fade with half the outside logit, and
    from the end of the fade on with no bias at all; the ceiling model is always forced."""
    looks = torch.tensor([[[True, False, False, True]]])  # [B, T, G*G]

    def at(step, look="learned", share=0.5):
        train = SimpleNamespace(oracle_curriculum=share, steps=100)
        run = SimpleNamespace(
            model=SimpleNamespace(options=SimpleNamespace(look=look)), step=step, cfg=SimpleNamespace(train=train)
        )
        return fine_bias(run, looks)

    outside = [0, 2, 3]  # CLS and the two patches off the target
    assert at(0)[0, 0, outside].tolist() == [CURRICULUM_OUTSIDE] * 3 and at(0)[0, 0, [1, 4]].tolist() == [0, 0]
    assert at(25)[0, 0, outside].tolist() == [CURRICULUM_OUTSIDE / 2] * 3
    assert at(50) is None and at(0, share=0.0) is None
    assert at(99, look="oracle")[0, 0, 2] < -1e3


PLANTED = {  # the next background is the target's colour now; the distractor's colour is noise
    "data.train_clips": 480,
    "data.heldout_clips": 32,
    "data.num_frames": 4,
    "train.steps": 60,
    "train.batch_size": 8,
    "train.grad_accum": 1,
    "train.warmup_steps": 5,
    "data.synthetic.lamp": 0.8,
    "train.ckpt_every": 1000,
    "train.tensorboard": "false",
    "train.report_clips": 0,
}


def test_a_planted_effect_is_seen_by_the_oracle_and_not_by_shuffled_looks(tmp_path, cache_dir):
    """The look benchmark shrunk: an oracle-look model beats the static look on held-out clips (interval above 1),
    while the same model's fine pass fed another clip's queries does not."""
    over = [f"{k}={v}" for k, v in PLANTED.items()] + [f"cache_dir={cache_dir}", f"out_dir={tmp_path / 'oracle'}"]
    result = train(load_config("look", overrides=[*over, "model.look=oracle"]))
    recon = result["heldout"]["recon"]
    assert recon["ratio_ci"][0] > 1.0, recon["ratio"]
    learned = train(load_config("look", overrides=[*over, f"out_dir={tmp_path / 'learned'}"]))["heldout"]["recon"]
    assert learned["ratio_shuffled"]["ci"][0] <= 1.0  # includes 1, or sits below it


@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        ([], ["film", "film-oracle", "film-prev-only", "film-dense", "mlp"]),  # default: the reference head's controls
        (
            ["--controls"],
            ["film", *(f"film-{c}" for c in CONTROL_MODELS), "mlp", *(f"mlp-{c}" for c in CONTROL_MODELS)],
        ),
        (["--controls", "none"], ["film", "mlp"]),
    ],
)
def test_compare_plans_the_control_models_the_flag_asks_for(flag, expected, tmp_path):
    args = build_parser().parse_args(["compare", "--heads", "film,mlp", *flag])
    runs = planned_runs(load_config("look"), ["film", "mlp"], tmp_path, 1, args.controls)
    assert [Path(r.out_dir).name for r in runs] == expected
    by_name = {Path(r.out_dir).name: r for r in runs}
    if "film-oracle" in by_name:
        assert by_name["film-oracle"].model.look == "oracle" and by_name["film-oracle"].train.fine_iterations == 1
        prev = by_name["film-prev-only"]
        assert prev.model.prev_only and prev.train.fine_iterations == 0 and prev.model.look == "learned"
    files = planned_runs(load_config("tiny", overrides=[f"data.source={tmp_path / 'm.csv'}"]), ["film"], tmp_path, 1,
                         "reference")  # fmt: skip
    assert [Path(r.out_dir).name for r in files] == ["film", "film-prev-only", "film-dense"]  # no oracle: no truth


def test_the_probes_find_what_a_token_carries_and_nothing_else():
    """Tokens built from the target's position and colour are read back (R^2 ~1, accuracy ~1); random tokens give
    R^2 <= ~0 and accuracy near chance."""
    rng = np.random.default_rng(0)
    n, t, h = 64, 5, 32
    centre = rng.random((n, t, 2))
    colour = rng.integers(0, 8, (n, t))
    mix = rng.normal(size=(10, h))
    informed = np.concatenate([centre, np.eye(8)[colour]], -1) @ mix + 0.01 * rng.normal(size=(n, t, h))
    arrays = {"truth_centre": centre, "truth_colour": colour, "recon_coarse": np.ones((n, t)),
              "tokens_coarse": informed, "tokens_fine": rng.normal(size=(n, t, h))}  # fmt: skip
    p = summarize(arrays)["probes"]
    assert p["coarse"]["position_r2"] > 0.95 and p["coarse"]["colour_accuracy"] > 0.95
    assert p["fine"]["position_r2"] < 0.1 and p["fine"]["colour_accuracy"] < p["colour_chance"] + 0.15
    assert p["clips_fit"] == 32 and p["clips_scored"] == 32


def test_target_attributes_are_the_rendered_centre_and_colour():
    clip = render_clip(load_config("look").data.synthetic, 64, 4, 0, 5, gap=0)
    a = target_attributes(clip)
    ys, xs = np.nonzero(clip.masks[0, 0])
    assert (
        abs(a["centre"][0, 0] - (xs.mean() + 0.5) / 64) < 0.05
        and abs(a["centre"][0, 1] - (ys.mean() + 0.5) / 64) < 0.05
    )
    names = list(COLOURS)
    assert all(tuple(clip.frames[f][clip.masks[f, 0]][0]) == COLOURS[names[a["colour"][f]]] for f in range(4))


def test_viz_draws_an_oracle_look_models_fine_pass_as_it_reads():
    """The gallery of an oracle-look model shows the masked attention it trained and was scored with."""
    cfg = load_config("look", overrides=["model.look=oracle", "data.num_frames=3"])
    torch.manual_seed(0)
    model, _ = build_model(cfg)
    clip = heldout_clip(cfg, 0)
    view = analyse(model, cfg, clip)
    grid = cfg.model.frame_size // model.encoder.patch_size
    on_target = torch.from_numpy(patch_masks(clip.mask, model.encoder.patch_size)).flatten(1)  # [T, G*G]
    assert on_target.shape[-1] == grid * grid and on_target.any(-1).all()
    outside = (view.attention["fine"][..., 1:] * ~on_target[:, None, None]).sum(-1)  # [T, L, heads]
    assert outside.max() < 1e-6 and view.attention["fine"][..., 0].max() < 1e-6  # neither elsewhere nor on CLS
    assert (view.attention["coarse"][..., 1:] * ~on_target[:, None, None]).sum(-1).mean() > 0.2  # coarse: unmasked
