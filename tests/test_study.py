"""The seed study's protocol and table (issue 18): the protocol layer, what the fine-only loss trains, the ratio as
the study computed it, its frame choice and weight decay, the copy-last flag, the table's reading on constructed
rows, and a small end-to-end study whose two arms differ in one key."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from conftest import tiny_overrides
from foveal.analysis import study
from foveal.analysis.tables import COPY_FLAG, cell
from foveal.config import PROTOCOLS, ConfigError, config_from_dict, leaves, load_config, replace
from foveal.data.video import select_frames
from foveal.model.build import build_model
from foveal.model.foveated import Batch
from foveal.objectives import build_objective
from foveal.objectives.base import score
from foveal.train.loop import record
from foveal.train.optim import param_groups
from foveal.train.results import study_figures


def _seed_leaves(cfg) -> dict:
    return {k: v for k, v in leaves(cfg.to_dict()).items() if k in leaves(PROTOCOLS["seed"])}


def test_protocol_seed_is_a_layer_between_the_preset_and_what_the_user_asks_for(tmp_path):
    seed = load_config("look", overrides=["protocol=seed"])
    assert _seed_leaves(seed) == leaves(PROTOCOLS["seed"])
    plain = load_config("look")
    assert plain.train.coarse_weight == 1.0 and plain.train.grad_clip == 1.0  # no layer without the switch
    later = load_config("look", overrides=["protocol=seed", "train.lr=1e-4"])
    assert later.train.lr == 1e-4 and later.train.coarse_weight == 0.0  # a flag after the layer wins
    path = tmp_path / "config.yaml"
    later.save(path)  # a saved run reproduces itself: the file's keys win over the layer it names
    again = load_config(path=path)
    assert again.to_dict() == later.to_dict()
    assert config_from_dict(yaml.safe_load(path.read_text())).train.lr == 1e-4
    with pytest.raises(ConfigError, match="protocol: unknown protocol 'seeds'"):
        load_config("tiny", overrides=["protocol=seeds"])


def _grads(model, loss) -> dict:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


def _losses(cut_queries: bool):
    """(seed-protocol loss, both-paths loss, fine loss alone) of one batch, each from a fresh forward."""
    cfg = load_config("tiny", overrides=["protocol=seed", "model.target=pixels", "data.num_frames=4"])
    torch.manual_seed(0)
    model, _ = build_model(cfg)
    if cut_queries:  # the fine queries no longer depend on the coarse pass: its only route into the fine loss
        model.llm_to_query.weight.data.zero_()
    g = torch.Generator().manual_seed(1)
    batch = Batch(torch.randn(2, 4, 3, 64, 64, generator=g), targets=torch.randn(2, 4, 3, 8, 8, generator=g))
    objective = build_objective("recon")

    def loss(coarse_weight: float | None):
        out = model(batch)
        coarse, fine = score(model, out, batch, objective.kinds)
        if coarse_weight is None:
            return objective.pass_loss(fine[-1], cfg.train)
        return objective.loss(coarse, fine, replace(cfg, train={"coarse_weight": coarse_weight}).train)

    return model, loss


def test_under_the_seed_protocol_the_coarse_loss_trains_nothing():
    """The gradient is the fine loss's alone; with the coarse pass's one route into the fine pass (the queries it
    emits) cut, the coarse path's own parameters get exactly zero gradient, and with both paths trained they do not."""
    model, loss = _losses(cut_queries=False)
    seed, fine_alone, both = _grads(model, loss(0.0)), _grads(model, loss(None)), _grads(model, loss(1.0))
    for name in seed:
        assert (seed[name] is None) == (fine_alone[name] is None), name
        if seed[name] is not None:
            torch.testing.assert_close(seed[name], fine_alone[name], rtol=0, atol=0)
    assert not torch.equal(seed["coarse_token"], both["coarse_token"])
    model, loss = _losses(cut_queries=True)
    seed, both = _grads(model, loss(0.0)), _grads(model, loss(1.0))
    for name in ("q_static", "coarse_token"):
        assert seed[name] is None or not seed[name].any(), name
        assert both[name] is not None and both[name].abs().sum() > 0, name


def test_the_ratio_is_computed_per_step_from_micro_batch_means_as_the_study_did():
    """A constructed run: 150 steps, the first 50 with fine twice as bad as coarse, the last 100 with coarse 1.5x
    the fine loss, and one step with a fine loss of 0 (the study's floor: 1e-8)."""
    run = SimpleNamespace(kinds=("recon",), tracked=("recon",), paths=("coarse", "fine"))
    run.history = {p: {"recon": []} for p in ("ratio", "coarse", "fine")}
    for step in range(150):
        fine_micro = np.array([0.2, 0.4, 0.3, 0.1]) * (1 + step % 3)  # four micro-batches, mean 0.25 x (1..3)
        coarse_micro = fine_micro * (0.5 if step < 50 else 1.5)
        row = {"recon_coarse": coarse_micro.mean(), "recon_fine": fine_micro.mean()}
        if step == 10:
            row["recon_fine"] = 0.0
        record(run, row)
    ratios = run.history["ratio"]["recon"]
    assert ratios[10] == pytest.approx(0.25 / 1e-8)  # coarse 0.5 x 0.25 x 2 over the floor
    assert ratios[11] == pytest.approx(0.5) and ratios[149] == pytest.approx(1.5)
    figures = study_figures(ratios)
    assert figures["final_ratio"] == pytest.approx(1.5)  # the last 100 steps only
    assert figures["ratio_above_1"] == pytest.approx(101 / 150)  # 100 late steps + the floored one


def test_the_seed_picks_8_of_16_frames_by_truncated_linspace():
    times = np.arange(16) / 8.0
    assert select_frames(times, 8, "clip:floor") == [0, 2, 4, 6, 8, 10, 12, 15]  # reference-system.md 2.5
    assert select_frames(times, 8, "clip") == [0, 2, 4, 6, 9, 11, 13, 15]
    with pytest.raises(ConfigError, match="data.window"):
        load_config("tiny", overrides=["data.window=clip:ceil"])


def test_decay_all_decays_every_parameter_as_torch_adamw_does():
    cfg = load_config("tiny", overrides=["protocol=seed"])
    model, _ = build_model(cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    def decayed(t):
        return sum(p.numel() for g in param_groups(model, t) if g["weight_decay"] > 0 for p in g["params"])

    assert decayed(cfg.train) == trainable
    assert 0 < decayed(replace(cfg, train={"decay": "matrices"}).train) < trainable  # biases, norms, tokens not


def _row(**metrics) -> dict:
    """A table row from (value, lo, hi) triples."""
    return {"head": "film", "metrics": {k: {"value": v[0], "ci": [v[1], v[2]]} for k, v in metrics.items()}}


def test_a_ratio_over_a_coarse_path_worse_than_copy_last_is_flagged():
    worse = _row(recon_ratio=(1.3, 1.2, 1.4), mse_copy_over_coarse=(0.8, 0.7, 0.9), caption_ratio=(1.1, 1.0, 1.2))
    better = _row(recon_ratio=(1.3, 1.2, 1.4), mse_copy_over_coarse=(1.2, 1.1, 1.3))
    assert cell(worse, "recon_ratio").endswith(COPY_FLAG)
    assert not cell(worse, "caption_ratio").endswith(COPY_FLAG)  # a caption ratio has no copy-last
    assert not cell(better, "recon_ratio").endswith(COPY_FLAG)


ABOVE, AROUND, BELOW, HIGH = (1.3, 1.2, 1.4), (1.0, 0.98, 1.02), (0.8, 0.7, 0.9), (1.6, 1.5, 1.7)


def _results(seed, both, foveal, oracle=HIGH, learned=AROUND, row="MLP recon") -> dict:
    """Constructed study results: `row`'s recon ratio per arm, and the positive control (oracle-look model against
    the learned-look FiLM) the same in every arm."""
    uses_h = (0.03, 0.02, 0.04)  # another clip's h raises the fine loss: the head reads h
    foveal_row = _row(recon_ratio=foveal, h_other_minus_fine=uses_h)
    out = {row: {"seed": _row(recon_ratio=seed), "both": _row(recon_ratio=both), "foveal": foveal_row}}
    out.setdefault(study.LEARNED, {arm: _row(recon_ratio=learned) for arm in study.ARMS})
    out[study.POSITIVE] = {arm: _row(recon_ratio=oracle) for arm in study.ARMS}
    return out


def _spec(name: str):
    return next(r for r in study.ROWS if r.name == name)


@pytest.mark.parametrize(
    "seed, both, foveal, oracle, expected",
    [
        (ABOVE, AROUND, AROUND, HIGH, ["artefact of training one path", "does not hold here"]),
        (ABOVE, ABOVE, ABOVE, HIGH, ["survives training both paths", "**holds**"]),
        (AROUND, AROUND, AROUND, AROUND, ["not resolved from 1", "does not see a planted look", "cannot be decided"]),
        (BELOW, BELOW, BELOW, HIGH, ["ratio is below 1", "does not hold here"]),
    ],
)
def test_the_reading_of_a_claimed_gain_follows_the_intervals(seed, both, foveal, oracle, expected):
    text = study.reading(_spec("MLP recon"), _results(seed, both, foveal, oracle))
    for phrase in expected:
        assert phrase in text, text


def test_a_claimed_null_holds_only_where_a_planted_look_would_show():
    row = _spec("Cross-attention recon")
    powered = study.reading(row, _results(AROUND, AROUND, AROUND, HIGH, row=row.name))
    blind = study.reading(row, _results(AROUND, AROUND, AROUND, AROUND, row=row.name))
    assert "holds (~1.00), and not vacuously" in powered
    assert "cannot be decided at this scale" in blind
    ignores = _results(AROUND, AROUND, AROUND, HIGH, row=row.name)
    ignores[row.name]["foveal"]["metrics"]["h_other_minus_fine"] = {"value": 0.0, "ci": [-1e-6, 1e-6]}
    assert "holds (~1.00), but vacuously" in study.reading(row, ignores)  # a head that ignores h cannot move


def test_a_joint_row_is_read_on_both_of_its_ratios():
    results = _results(AROUND, AROUND, AROUND, HIGH, row="FiLM joint")
    results["FiLM joint"]["seed"]["metrics"]["caption_ratio"] = {"value": 1.3, "ci": [1.2, 1.4]}
    results["FiLM joint"]["both"]["metrics"]["caption_ratio"] = {"value": 1.0, "ci": [0.98, 1.02]}
    text = study.reading(_spec("FiLM joint"), results)
    assert "recon: the seed protocol's ratio is not resolved from 1" in text
    assert "caption: the seed protocol's ratio > 1 (1.300 [1.200, 1.400]) is an artefact of training one path" in text


def test_the_positive_control_is_seen_only_where_the_oracle_beats_the_learned_look():
    seen = study.reading(_spec(study.POSITIVE), _results(AROUND, AROUND, AROUND, HIGH))
    unseen = study.reading(_spec(study.POSITIVE), _results(AROUND, AROUND, AROUND, ABOVE, learned=ABOVE))
    assert seen.count("sees the planted look") == len(study.ARMS)
    assert unseen.count("does not see the planted look") == len(study.ARMS)  # both > 1, but alike: no power


def test_the_reading_says_whether_the_looks_matter_and_flags_copy_last():
    results = _results(ABOVE, ABOVE, ABOVE, HIGH)
    results["MLP recon"]["foveal"]["metrics"]["recon_ratio_shuffled"] = {"value": 1.0, "ci": [0.98, 1.02]}
    assert "the learned looks matter" in study.reading(_spec("MLP recon"), results)
    results["MLP recon"]["foveal"]["metrics"]["recon_ratio_shuffled"] = {"value": 1.3, "ci": [1.2, 1.4]}
    assert "no sign that the looks matter" in study.reading(_spec("MLP recon"), results)
    results = _results(ABOVE, AROUND, AROUND, HIGH)
    results["MLP recon"]["seed"]["metrics"]["mse_copy_over_coarse"] = {"value": 0.8, "ci": [0.7, 0.9]}
    assert "worse than copy-last ‡" in study.reading(_spec("MLP recon"), results)


def test_a_small_study_trains_three_arms_the_first_two_differing_in_one_key(tmp_path, cache_dir, monkeypatch):
    rows = [r for r in study.ROWS if r.name in ("FiLM recon", "Caption only")]
    monkeypatch.setattr(study, "ROWS", tuple(rows))
    over = [*tiny_overrides(**{"train.steps": 2}), f"cache_dir={cache_dir}"]
    configs = {p: load_config("look", overrides=[f"protocol={p}", *over]) for p in ("seed", "foveal")}
    configs["seed"] = replace(configs["seed"], train={"batch_size": 2, "grad_accum": 2})  # the layer's key, smaller
    result = study.run_study(configs, tmp_path / "study", seeds=2)
    text = (tmp_path / "study" / "study.md").read_text()
    for r in rows:
        assert f"| **{r.name}** | study (" in text
        assert r.name in result["rows"] and set(result["rows"][r.name]) == set(study.ARMS)
    for arm in study.ARMS.values():
        assert text.count(f"| {arm.label} | 2 |") == len(rows)
    for r in rows:
        saved = {arm: tmp_path / "study" / arm / r.slug / "film" / "seed-1" / "config.yaml" for arm in study.ARMS}
        configs = {arm: leaves(yaml.safe_load(path.read_text())) for arm, path in saved.items()}
        differ = {k for k in configs["seed"] if configs["seed"][k] != configs["both"][k]}
        assert differ == {"train.coarse_weight", "out_dir"}, differ
        assert configs["seed"]["train.coarse_weight"] == 0 and configs["both"]["train.coarse_weight"] == 1
        assert configs["foveal"]["protocol"] == "foveal" and configs["foveal"]["train.objective"] == r.objective


def test_a_study_refuses_protocol_configs_that_differ_outside_the_protocol():
    configs = {p: load_config("look", overrides=[f"protocol={p}"]) for p in ("seed", "foveal")}
    configs["foveal"] = replace(configs["foveal"], data={"num_frames": 8})
    with pytest.raises(ConfigError, match="differ outside the protocol in data.num_frames"):
        study.run_study(configs, "unused")
