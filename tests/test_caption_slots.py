"""The per-slot caption diagnostic: chance and per-path CE on arrays whose answer is known, and a tiny caption run's
results.json and tables."""

import json
import math

import numpy as np
import pytest
import torch

from conftest import tiny_overrides
from foveal.analysis.aggregate import aggregate, run_metrics
from foveal.analysis.tables import slot_table, tables
from foveal.config import load_config
from foveal.data.dataset import Collator, build_datasets
from foveal.evaluation.slots import caption_slots
from foveal.evaluation.summary import summarize
from foveal.model.backbones import word_tokenizer
from foveal.train.loop import train

NAN = float("nan")


def known_arrays() -> dict[str, np.ndarray]:
    """8 clips, 4 positions: slot 0 always token 5; slot 1 tokens 2 / 3 half each; slot 2 in 6 clips (1, 1, 1, 1,
    4, 4); slot 3 in 2 clips only (below half: not a slot). fine predicts slot 1 perfectly; coarse is at chance."""
    ids = np.full((8, 4), NAN, np.float32)
    ids[:, 0], ids[:, 1] = 5, [2, 3] * 4
    ids[:6, 2], ids[:2, 3] = [1, 1, 1, 1, 4, 4], 7
    present = np.isfinite(ids)
    coarse = np.where(present, math.log(2), NAN).astype(np.float32)
    fine = np.where(present, 0.5, NAN).astype(np.float32)
    fine[:, 1] = 0.0
    return {"caption_ids": ids, "caption_tokens_coarse": coarse, "caption_tokens_fine": fine}


def test_chance_is_the_slots_entropy_and_a_perfect_path_scores_zero():
    slots = caption_slots(known_arrays(), word=lambda i: f"w{i}")
    assert [s["slot"] for s in slots] == [0, 1, 2]  # slot 3: 2 of 8 clips
    fixed, two, skewed = slots
    assert fixed["chance"] == 0.0 and fixed["fixed"] and fixed["distinct"] == 1 and fixed["word"] == "w5"
    assert two["chance"] == pytest.approx(math.log(2)) and not two["fixed"] and two["distinct"] == 2
    assert skewed["chance"] == pytest.approx(-(2 / 3) * math.log(2 / 3) - (1 / 3) * math.log(1 / 3))
    assert skewed["word"] == "w1" and skewed["clips"] == 6  # the commonest token, over the clips that have one
    assert two["ce"]["fine"]["value"] == 0.0 and two["ce"]["fine"]["ci"] == [0.0, 0.0]
    assert two["ce"]["coarse"]["value"] == pytest.approx(math.log(2))
    assert skewed["ce"]["fine"]["n"] == 6


def test_summary_and_table_show_the_informative_slots():
    held = summarize(known_arrays())
    assert [s["word"] for s in held["caption_slots"]] == [
        "5",
        "2",
        "1",
    ]  # no tokenizer: the token id (a tie: the smallest)
    train = {"final_ratio": 1.0, "ratio_above_1": 0.5, "min_ratio": 1.0, "max_ratio": 1.0, "step_ratios": {}}
    result = train | {"heldout": held, "loss_fine": 1.0, "loss_coarse": 1.0, "head": "film", "objective": "caption"}
    row = aggregate([run_metrics(result, known_arrays(), None)])
    lines = slot_table([row]).splitlines()
    assert lines[0] == "| Objective | Head | Slot | Word | Chance | Coarse CE | Fine CE |"
    assert len(lines) == 4 and [x.split(" | ")[2] for x in lines[2:]] == ["1", "2"]  # fixed slot 0 left out
    assert lines[2].split(" | ")[4:] == ["0.6931", "0.6931 [0.6931, 0.6931]", "0.0000 [0.0000, 0.0000] |"]


@pytest.fixture(scope="module")
def caption_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("slots")
    over = tiny_overrides(
        **{"train.objective": "caption", "train.steps": 1, "train.grad_accum": 1, "train.ckpt_every": 1}
    )
    cfg = load_config("tiny", overrides=[*over, f"out_dir={out}", f"cache_dir={out / 'cache'}"])
    return cfg, train(cfg), out


def test_a_caption_run_reports_every_template_slot(caption_run):
    cfg, _, out = caption_run
    results = json.loads((out / "results.json").read_text())
    slots = results["heldout"]["caption_slots"]
    _, heldout = build_datasets(cfg)
    collate = Collator(word_tokenizer(), cfg.train.max_caption_tokens)
    mask = collate([heldout[i] for i in range(len(heldout))])["caption_mask"]  # [N, L+1]
    assert len(slots) == int((mask.float().mean(0) >= 0.5).sum())  # every position most captions reach
    assert slots[0]["word"] == "the" and slots[0]["fixed"] and slots[0]["chance"] == 0.0
    assert any(not s["fixed"] for s in slots)  # the attribute words vary
    for s in slots:
        assert {"coarse", "fine"} <= set(s["ce"])
        assert all(math.isfinite(e["value"]) and all(map(math.isfinite, e["ci"])) for e in s["ce"].values())
    arrays = {k: v.numpy() for k, v in torch.load(out / "heldout_losses.pt").items()}
    assert arrays["caption_tokens_fine"].shape == arrays["caption_ids"].shape == tuple(mask.shape)
    row = aggregate([run_metrics(results, arrays, None)])
    assert "**Caption per slot**" in tables([row]) and "Fine CE, other clip's video" in tables([row])
