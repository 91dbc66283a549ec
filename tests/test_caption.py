"""Captioning objective end to end: joint training lowers caption loss; all three modes caption; eval reports."""

import json
from pathlib import Path

import pytest

from conftest import tiny_overrides
from foveal.analysis.inference import load_clip
from foveal.cli import main
from foveal.config import load_config
from foveal.data.synthetic import WORDS
from foveal.train.loop import train


@pytest.fixture(scope="module")
def joint_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("joint")
    over = tiny_overrides(
        **{"train.steps": 40, "train.objective": "joint", "data.train_clips": 32, "train.ckpt_every": 40}
    )
    cfg = load_config("tiny", overrides=[*over, f"out_dir={out}", f"cache_dir={out / 'cache'}"])
    results = train(cfg)
    return out, results


def test_joint_training_lowers_caption_loss_and_reports_both_ratios(joint_run):
    out, results = joint_run
    rows = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[0]["caption_fine"], sum(r["caption_fine"] for r in rows[-5:]) / 5
    assert last < 0.5 * first, (first, last)  # from ~ln(vocab) to well below
    assert "final_caption_ratio" in results and "heldout_caption_ratio" in results
    assert results["heldout"]["caption"]["ratio_ci"][0] <= results["heldout"]["caption"]["ratio_ci"][1]


def test_caption_cli_in_every_mode(joint_run, capsys):
    out, _ = joint_run
    assert main(["caption", "--checkpoint", str(out), "--video", "synthetic:0", "synthetic:1", "--mode", "all"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 8 and [x.split(":")[0] for x in lines[6:]] == ["[true] synthetic", "[true] synthetic"]
    for line in lines:
        words = line.split(": ", 1)[1].replace(".", " . ").split()
        assert words and set(words) <= set(WORDS), line  # the training vocabulary, nothing else
        assert words[0] == "the" and "moves" in words, line  # and the captions' grammar


def test_eval_cli_reports_every_mode_and_the_gap(joint_run, capsys):
    out, _ = joint_run
    assert main(["eval", "--checkpoint", str(out), "--json"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed, parse_constant=lambda c: pytest.fail(f"bare {c} in the JSON"))  # stdout: JSON alone
    for kind in ("caption", "recon"):
        s = summary[kind]
        assert {"loss_coarse", "loss_fine", "loss_autoregressive", "train_inference_gap"} <= set(s)
    assert main(["eval", "--checkpoint", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| caption |" in printed and "autoregressive" in printed


def test_caption_of_a_recon_only_run_says_so_and_shows_the_true_caption(tmp_path, cache_dir, capsys):
    over = tiny_overrides(**{"train.steps": 2})
    train(load_config("tiny", overrides=[*over, f"out_dir={tmp_path / 'run'}", f"cache_dir={cache_dir}"]))
    capsys.readouterr()
    assert main(["caption", "--checkpoint", str(tmp_path / "run"), "--video", "synthetic:2"]) == 0
    seen = capsys.readouterr()
    assert "caption path was never trained" in seen.err
    truth = load_config("tiny", overrides=over)
    assert seen.out.splitlines()[-1] == f"[true] synthetic:2: {load_clip('synthetic:2', truth)['caption']}"
    assert main(["caption", "--checkpoint", str(tmp_path / "run"), "--video", "synthetic:abc"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "foveal: config error: --video synthetic:abc: expected synthetic:<held-out clip number>, e.g. synthetic:3"
    ]
