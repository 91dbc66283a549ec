import csv
import json

import pytest
import torch

from conftest import tiny_overrides
from foveal.cli import main
from foveal.config import load_config
from foveal.model.build import build_model
from foveal.model.heads import HEADS

ROW_KEYS = {  # the schema the issue asks for, written out: importing SUMMARY_KEYS would test nothing
    "head",
    "steps",
    "final_ratio",
    "ratio_above_1",
    "params",
    "min_ratio",
    "max_ratio",
    "loss_fine",
    "loss_coarse",
    "heldout_ratio",
    "coarse_weight",
    "seed",
}


def test_compare_writes_every_file_with_the_schema(tmp_path, cache_dir, capsys):
    out = tmp_path / "cmp"
    code = main(
        [
            "compare",
            "--steps",
            "2",
            "--seed",
            "3",
            "--out",
            str(out),
            "--quiet",
            *[o for o in tiny_overrides() if not o.startswith("train.steps")],
            f"cache_dir={cache_dir}",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    head = "| Head Type | Steps | Final Ratio | Ratio > 1.0 | Parameters | Held-out Ratio | Held-out MSE fine (t>=2) |"
    assert head in printed and "| copy-last (control) |" in printed  # every target has the copy-last control
    text = (out / "summary.json").read_text()  # strict JSON: a missing number is null, never a bare NaN
    rows = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in summary.json"))
    assert [r["head"] for r in rows] == list(HEADS)
    assert "null" in text  # there are missing numbers (the coarse-only control has no ratio of its own)
    with open(out / "summary.csv", newline="") as f:  # the same rows for spreadsheets
        lines = list(csv.DictReader(f))
    assert [line["head"] for line in lines] == list(HEADS)
    for line, r in zip(lines, rows):
        assert float(line["recon_ratio"]) == r["metrics"]["recon_ratio"]["value"]
        assert float(line["recon_ratio_hi"]) == r["metrics"]["recon_ratio"]["ci"][1]
    for r in rows:
        assert set(r) >= ROW_KEYS
        assert r["steps"] == 2 and r["seed"] == 3 and r["coarse_weight"] == 1.0
        assert 0.0 <= r["ratio_above_1"] <= 1.0
        assert r["min_ratio"] <= r["final_ratio"] <= r["max_ratio"]
        per_head = json.loads((out / r["head"] / "results.json").read_text())
        assert set(per_head) >= ROW_KEYS
        assert len(per_head["step_ratios"]["recon"]) == 2
        assert per_head["final_ratio"] == r["final_ratio"]
    md = (out / "summary.md").read_text()
    assert md.count("\n| **") == 2 * len(HEADS)  # the looking table first, then the study's table
    assert md.index("**Does looking pay?**") < md.index("| Head Type |") and "| Oracle-look model |" in md
    assert "Caption per slot" not in md and all(r["caption_slots"] == [] for r in rows)  # recon only: no captions
    assert (out / "comparison.png").stat().st_size > 10_000


def test_same_seed_same_backbones_and_data_for_every_head(tmp_path, cache_dir):
    """Every head starts from identical backbone and connector weights."""
    states = []
    for head in ("film", "mlp"):
        cfg = load_config("tiny", overrides=[f"model.head={head}", f"cache_dir={cache_dir}"])
        model, _ = build_model(cfg)
        states.append({k: v for k, v in model.state_dict().items() if not k.startswith("head.")})
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
