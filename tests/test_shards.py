"""Tar shards (issue 16): `foveal data shard` cuts a manifest's clips once (in parallel, resumable, bad clips
skipped and counted), and training reads the shards back as the very same items."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_overrides
from foveal.cli import main
from foveal.config import ConfigError, load_config
from foveal.data.dataset import build_datasets
from foveal.data.export import write_synthetic
from foveal.data.shards import shard_datasets
from foveal.data.video import file_datasets

SRC = str(Path(__file__).resolve().parents[1] / "src")


def cfg_for(source, **kw):
    base = {"data.source": str(source), "data.num_frames": 4, "data.heldout_clips": 2, "data.train_clips": 0}
    base.update(kw)
    return load_config("tiny", overrides=[f"{k}={v}" for k, v in base.items()])


@pytest.fixture
def shards(tmp_path):
    manifest = write_synthetic(tmp_path / "clips", videos=9, frames=4, size=32, codec="png")
    rows = manifest.read_text().splitlines()
    bad = tmp_path / "clips" / "bad.csv"
    bad.write_text("\n".join([*rows[:3], "gone,missing.mp4,lost,1", *rows[3:]]) + "\n")
    out = tmp_path / "shards"
    args = ["data", "shard", "--data", str(bad), "--out", str(out), "--shard-size", "3", "--jobs", "2", "--quiet"]
    args += ["data.num_frames=4", "data.heldout_clips=2", "data.train_clips=0", "data.validate=lazy"]
    assert main(args) == 0
    return bad, out, args


def test_shards_hold_exactly_the_clips_the_manifest_gives(shards):
    manifest, out, _ = shards
    index = json.loads((out / "shards.json").read_text())
    e_train, e_held = file_datasets(cfg_for(manifest).data, 64)
    assert sum(n for _, n in index["splits"]["train"]) == len(e_train) == 7  # skipped, not stood in for
    assert index["skipped"] == {"missing file": ["gone"]}
    s_train, s_held = shard_datasets(out, cfg_for(out).data, 64)
    assert [s_train.key(i) for i in range(len(s_train))] == [c.key for c in e_train.clips]
    assert [s_held[i]["key"] for i in range(len(s_held))] == [c.key for c in e_held.clips]
    for i in (0, 4, 6):
        a, b = s_train[i], e_train[i]
        assert torch.equal(a["frames"], b["frames"]) and a["caption"] == b["caption"]


def test_an_interrupted_cut_writes_only_the_missing_shards(shards, capsys):
    _, out, args = shards
    before = (out / "shards.json").read_text()
    kept = (out / "train-000000.tar").stat().st_mtime_ns
    (out / "train-000001.tar").unlink()
    assert main(args) == 0
    said = capsys.readouterr().out
    assert "4 shards of up to 3 clips" in said and "3 already there" in said
    assert (out / "train-000000.tar").stat().st_mtime_ns == kept and (out / "train-000001.tar").exists()
    assert (out / "shards.json").read_text() == before


def test_training_reads_shards_and_a_mismatched_run_is_one_line(shards, tmp_path):
    _, out, _ = shards
    cfg = cfg_for(out)
    train, held = build_datasets(cfg)
    assert len(train) == 7 and len(held) == 2 and train[0]["frames"].shape == (4, 3, 64, 64)
    with pytest.raises(ConfigError, match="hold 4 frames at 64 px; this run reads 4 at 32 px"):
        build_datasets(cfg_for(out, **{"model.frame_size": 32}))
    (out / "heldout-000000.tar").unlink()
    with pytest.raises(ConfigError, match="lacks 1 of its shards .heldout-000000.tar"):
        build_datasets(cfg)
    (out / "shards.json").write_text("{ torn")
    with pytest.raises(ConfigError, match="shards.json is unreadable"):
        build_datasets(cfg)


RECORDER = """
import os, sys
from foveal.data import shards
from foveal.cli import main

read = shards.ShardClips.__getitem__


def recorded(self, i):  # every train clip a rank (or its loader worker) reads, one line each
    item = read(self, i)
    if "/train-" in self.files[0]:
        with open(os.environ["READS"] + "." + os.environ.get("RANK", "0"), "a") as f:
            f.write(item["key"] + "\\n")
    return item


shards.ShardClips.__getitem__ = recorded
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_two_ranks_over_shards_read_every_train_clip_once_per_epoch_across_a_resume(tmp_path, cache_dir):
    """8 train clips, 2 ranks x batch 1 = 4 steps an epoch: steps 0-1, then a resumed run's steps 2-3, read every
    train clip exactly once between them; the clip skipped while cutting is counted in results.json."""
    manifest = write_synthetic(tmp_path / "clips", videos=10, frames=4, size=32, codec="png")
    rows = manifest.read_text().splitlines()
    manifest.write_text("\n".join([*rows[:3], "gone,missing.mp4,lost,1", *rows[3:]]) + "\n")
    over = ["data.num_frames=4", "data.heldout_clips=2", "data.train_clips=0"]
    assert main(["data", "shard", "--data", str(manifest), "--out", str(tmp_path / "s"), "--quiet", *over]) == 0
    (tmp_path / "rec.py").write_text(RECORDER)
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "READS": str(tmp_path / "reads")}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "rec.py"]
    common = ["train", "--quiet", "--data", str(tmp_path / "s"), f"cache_dir={cache_dir}", "out_dir=run"]
    common += tiny_overrides(**{"train.batch_size": 1, "train.grad_accum": 1, "data.train_clips": 0})
    for steps, resume in ((2, "false"), (4, "true")):
        cmd = [*torchrun, *common, f"train.steps={steps}", f"resume={resume}", "data.heldout_clips=2"]
        done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    reads = [(tmp_path / f"reads.{r}").read_text().split() for r in (0, 1)]
    train_keys = shard_datasets(tmp_path / "s", cfg_for(tmp_path / "s").data, 64)[0].keys()
    assert len(train_keys) == 8 and len(reads[0]) == len(reads[1]) == 4
    assert sorted(reads[0] + reads[1]) == sorted(train_keys)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["data_skipped"] == {"missing file": 1}
