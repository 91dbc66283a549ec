"""train.parallel=fsdp2 under torchrun (2 gloo processes on CPU): the same training as DDP, step-N.dcp checkpoints,
and a resume from one that ends identical to the uninterrupted run."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_overrides
from foveal.config import ConfigError, load_config
from foveal.train.checkpoint import load_checkpoint
from foveal.train.optim import TrainingError
from foveal.train.run_folder import claim_run_folder

SRC = str(Path(__file__).resolve().parents[1] / "src")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "foveal"]
# 4 steps, a checkpoint every 2, a held-out evaluation (drawn into TensorBoard) at step 2: every collective path
OVER = tiny_overrides(**{"train.batch_size": 1, "train.eval_every": 2, "train.tensorboard": True})
FINAL = "checkpoints/step-0000004.safetensors"


def torchrun(args: list[str], cwd: Path) -> None:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*TORCHRUN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def losses(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cache_dir) -> Path:
    """The same 2-rank run twice: DDP (ddp/) and FSDP2 (fsdp2/)."""
    root = tmp_path_factory.mktemp("fsdp")
    for parallel in ("ddp", "fsdp2"):
        args = ["train", "--quiet", *OVER, f"cache_dir={cache_dir}", f"out_dir={root / parallel}"]
        torchrun([*args, f"train.parallel={parallel}"], root)
    return root


@pytest.mark.slow
def test_fsdp2_trains_as_ddp_does(runs):
    ddp, fsdp = runs / "ddp", runs / "fsdp2"
    a, b = losses(ddp), losses(fsdp)
    assert [s for s, _ in a] == [s for s, _ in b] == [0, 1, 2, 3]
    assert [x for _, x in b] == pytest.approx([x for _, x in a], rel=1e-5)
    wa, wb = load_checkpoint(ddp / FINAL), load_checkpoint(fsdp / FINAL)  # the whole weights, gathered by rank 0
    assert wa["model"].keys() == wb["model"].keys()
    assert wa["frozen_fingerprint"] == wb["frozen_fingerprint"]
    assert max((wa["model"][k] - wb["model"][k]).abs().max().item() for k in wa["model"]) < 1e-5
    dcp = sorted(p.name for p in (fsdp / "checkpoints").glob("*.dcp"))
    assert dcp == ["step-0000002.dcp", "step-0000004.dcp"]
    assert (fsdp / "results.json").exists() and list((fsdp / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_fsdp2_resumed_from_its_dcp_checkpoint_ends_as_the_uninterrupted_run(runs, cache_dir):
    """A run stopped after step 3, before step 4's checkpoint (as a kill leaves it), continues from step-2.dcp."""
    whole, cut = runs / "fsdp2", runs / "cut"
    shutil.copytree(whole, cut)
    for path in [*(cut / "checkpoints").glob("step-0000004.*"), *(cut / "checkpoints").glob("best*")]:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    (cut / "results.json").unlink()
    args = ["train", "--quiet", "--resume", *OVER, f"cache_dir={cache_dir}", f"out_dir={cut}"]
    torchrun([*args, "train.parallel=fsdp2"], runs)
    assert json.loads((cut / "resumes.jsonl").read_text())["from"] == "step-0000002.dcp"
    assert losses(cut) == losses(whole)
    a, b = load_checkpoint(whole / FINAL)["model"], load_checkpoint(cut / FINAL)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_parallel_is_ddp_or_fsdp2_and_a_dcp_checkpoint_holds_the_folder(tmp_path):
    with pytest.raises(ConfigError, match=r"train.parallel: 'fsdp' is not allowed; choose one of ddp, fsdp2"):
        load_config("tiny", overrides=["train.parallel=fsdp"])
    with pytest.raises(ConfigError, match="train.parallel: fsdp2 runs neither train.encoder_cache"):
        load_config("tiny", overrides=["train.parallel=fsdp2", "train.encoder_cache=true"])
    (tmp_path / "checkpoints" / "step-0000002.dcp").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step-0000002.dcp" / "run.safetensors").write_bytes(b"")
    with pytest.raises(TrainingError, match="already holds a run with checkpoints"):
        claim_run_folder(tmp_path, fresh=True, overwrite=False)
    claim_run_folder(tmp_path, fresh=True, overwrite=True)
    assert not (tmp_path / "checkpoints").exists()
