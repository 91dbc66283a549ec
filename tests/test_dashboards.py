"""Dashboards: held-out evaluation during training under eval/ (ratios with intervals, controls, attention), the
training scalars under train/, an attention picture, hyperparameters beside the final numbers; W&B named, grouped
and tagged as asked, with its summary, and a missing wandb package reported before any work."""

import importlib.machinery
import importlib.util
import json
import math
import sys
import types

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import tiny_overrides
from foveal.analysis.compare import compare
from foveal.cli import main
from foveal.config import load_config
from foveal.train.logger import scalars
from foveal.train.loop import train
from foveal.train.optim import TrainingError


def test_scalars_flatten_a_summary_with_its_intervals():
    summary = {
        "clips": 8,
        "recon": {"ratio": 1.2, "ratio_ci": [1.1, 1.3], "steered_from": 2, "per_frame": [[1.0, 1.1]]},
        "controls": {"fine": {"h_other_minus_loss": {"value": 0.5, "ci": [0.25, 0.75], "over": "clips", "n": 8}}},
        "attention": {"fine": {"mean": 0.4, "per_layer": [0.3, 0.5]}, "ok": True},
    }
    assert scalars(summary, "eval") == {
        "eval/clips": 8.0,
        "eval/recon/ratio": 1.2,
        "eval/recon/ratio_lo": 1.1,
        "eval/recon/ratio_hi": 1.3,
        "eval/recon/steered_from": 2.0,
        "eval/controls/fine/h_other_minus_loss": 0.5,
        "eval/controls/fine/h_other_minus_loss_lo": 0.25,
        "eval/controls/fine/h_other_minus_loss_hi": 0.75,
        "eval/attention/fine/mean": 0.4,
    }


def test_tensorboard_gets_train_eval_an_attention_picture_and_hparams(tmp_path, cache_dir):
    over = tiny_overrides(**{"train.tensorboard": True, "train.eval_every": 2, "train.steps": 4})
    cfg = load_config("tiny", overrides=[*over, f"out_dir={tmp_path / 'run'}", f"cache_dir={cache_dir}"])
    train(cfg)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0}).Reload()
    tags = events.Tags()
    assert {"train/loss", "train/recon_ratio", "eval/recon/ratio", "eval/recon/ratio_lo"} <= set(tags["scalars"])
    assert any(t.startswith("eval/attention/") for t in tags["scalars"])  # attention on the target
    assert any(t.startswith("eval/controls/") for t in tags["scalars"])
    value = {t: events.Scalars(t) for t in ("eval/recon/ratio", "eval/recon/ratio_lo", "eval/recon/ratio_hi")}
    assert [e.step for e in value["eval/recon/ratio"]] == [1]  # after 2 of the 4 steps (rows count from 0)
    lo, mid, hi = (value[f"eval/recon/ratio{s}"][0].value for s in ("_lo", "", "_hi"))
    assert lo <= mid <= hi and lo < hi
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert math.isclose(rows[1]["eval/recon/ratio"], mid, rel_tol=1e-6) and "eval/recon/ratio" not in rows[0]
    (image,) = events.Images("eval/attention")
    assert image.step == 1 and image.height > image.width  # one row per frame (4), two attention columns
    hparams = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()  # the HPARAMS tab's data
    assert "_hparams_/session_start_info" in hparams.Tags()["tensors"] or any(
        "hparams" in p for p in hparams.PluginTagToContent("hparams")
    )


class FakeWandb(types.ModuleType):
    """What a W&B run received: init's arguments, the logged rows, the summary."""

    def __init__(self):
        super().__init__("wandb")
        self.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
        self.runs, self.util = [], types.SimpleNamespace(generate_id=lambda: f"id{len(self.runs)}")

    def init(self, **kw):
        run = types.SimpleNamespace(kw=kw, rows=[], summary={}, finished=False)
        run.log = lambda row, step: run.rows.append((step, row))
        run.finish = lambda: setattr(run, "finished", True)
        self.runs.append(run)
        return run

    def Image(self, picture):  # noqa: N802 (wandb's name)
        return ("image", picture.shape)


def test_wandb_flags_name_group_tag_and_summarise_a_comparison(tmp_path, cache_dir, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    over = tiny_overrides(**{"train.eval_every": 2, "train.steps": 3})
    cfg = load_config(
        "tiny",
        overrides=[
            *over,
            f"cache_dir={cache_dir}",
            "train.wandb=true",
            "train.wandb_project=p",
            "train.wandb_tags=[a]",
        ],
    )
    compare(cfg, ["film", "mlp"], tmp_path / "cmp", controls="none")
    assert [r.kw["name"] for r in fake.runs] == ["film", "mlp"]
    assert {r.kw["group"] for r in fake.runs} == {"cmp"} and {r.kw["project"] for r in fake.runs} == {"p"}
    assert all(r.kw["tags"] == ["a"] and r.finished for r in fake.runs)
    run = fake.runs[0]
    assert math.isfinite(run.summary["final/recon/ratio"]) and run.summary["steps"] == 3
    logged = {k for _, row in run.rows for k in row}
    assert {"train/loss", "eval/recon/ratio", "eval/attention"} <= logged
    assert [s for s, row in run.rows if "eval/recon/ratio" in row] == [1]


def test_a_missing_wandb_package_stops_before_any_work(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(TrainingError, match="pip install wandb"):
        train(load_config("tiny", overrides=[*tiny_overrides(), f"out_dir={tmp_path / 'run'}", "train.wandb=true"]))
    assert not (tmp_path / "run").exists()
    assert main(["train", "--wandb-group", "g", *tiny_overrides(), f"out_dir={tmp_path / 'run'}"]) == 1
    assert "the wandb package is not installed" in capsys.readouterr().err


def test_evaluating_during_training_leaves_training_unchanged(tmp_path, cache_dir):
    """A run that evaluates (and draws its picture) every 2 steps trains exactly as one that does not: same model
    mode, same random numbers (the training here draws some after each evaluation: prev_drop)."""
    losses = []
    for every in (0, 2):
        over = tiny_overrides(**{"train.eval_every": every, "train.steps": 4, "train.tensorboard": every > 0})
        over.append("model.prev_drop=0.5")  # training draws random numbers after the evaluation too
        train(load_config("tiny", overrides=[*over, f"out_dir={tmp_path / str(every)}", f"cache_dir={cache_dir}"]))
        rows = (tmp_path / str(every) / "metrics.jsonl").read_text().splitlines()
        losses.append([json.loads(line)["loss"] for line in rows])
    assert losses[0] == losses[1]
