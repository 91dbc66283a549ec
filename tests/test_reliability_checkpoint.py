"""Checkpoints that cannot hijack or mislead (issue 14): no pickle is ever loaded, a checksum catches changed bytes, a
bad newest checkpoint falls back to the newest valid one, a full disk is one clear line and leaves no temp file,
torn metrics lines and stale temp files of killed runs are repaired, and non-finite weights are never saved."""

import errno
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import foveal.train.checkpoint as ck
from conftest import tiny_overrides

SRC = str(Path(__file__).resolve().parents[1] / "src")


def foveal_cli(args, cwd, timeout=300):
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "foveal", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def train_args(run, cache_dir, **kw):
    return ["train", "--quiet", *tiny_overrides(**kw), f"out_dir={run}", f"cache_dir={cache_dir}"]


def no_traceback(proc):
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 4-step run (checkpoints at steps 2 and 4); tests work on copies."""
    root = tmp_path_factory.mktemp("trained")
    proc = foveal_cli(train_args(root / "run", root / "cache"), root)
    assert proc.returncode == 0, proc.stderr
    return root


def copy_run(trained, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    return run


def step_files(run: Path) -> list[Path]:
    return sorted(p for p in (run / "checkpoints").glob("step-*") if p.suffix != ".json")


class Marker:
    """Unpickling this creates a file: the harmless stand-in for arbitrary code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def plant(path: Path, marker: Path) -> None:
    torch.save({"model": Marker(marker), "config": {}, "step": 99}, path)


@pytest.mark.parametrize("name", ["step-0000099.pt", "step-0000099.safetensors"])
def test_a_planted_pickle_never_runs_through_eval(trained, tmp_path, name):
    run, marker = copy_run(trained, tmp_path), tmp_path / "pwned"
    plant(run / "checkpoints" / name, marker)
    proc = foveal_cli(["eval", "--checkpoint", str(run / "checkpoints" / name)], tmp_path)
    assert not marker.exists(), "unpickling ran code"
    assert proc.returncode == 1
    no_traceback(proc)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("foveal: error")]
    assert len(lines) == 1 and "refusing to load" in lines[0] and "pickle" in lines[0], proc.stderr
    # the run folder itself: the planted file is named and skipped, the newest valid checkpoint is used
    from foveal.analysis.inference import load_run

    cfg, model, _ = load_run(run)
    assert not marker.exists()


def test_a_planted_pickle_never_runs_through_resume(trained, tmp_path, cache_dir):
    run, marker = copy_run(trained, tmp_path), tmp_path / "pwned"
    plant(run / "checkpoints" / "step-0000099.pt", marker)
    proc = foveal_cli([*train_args(run, cache_dir, **{"train.steps": 5}), "resume=true"], tmp_path)
    assert not marker.exists(), "unpickling ran code"
    assert proc.returncode == 0, proc.stderr
    no_traceback(proc)
    assert "ignoring" in proc.stderr and "step-0000099.pt" in proc.stderr


def test_flipped_bytes_are_detected_and_resume_falls_back(trained, tmp_path, cache_dir):
    from foveal.train.checkpoint import CheckpointError, load_checkpoint

    run = copy_run(trained, tmp_path)
    newest = step_files(run)[-1]
    data = bytearray(newest.read_bytes())
    for i in (len(data) // 2, len(data) - 5):  # inside the tensor data: same size, different bytes
        data[i] ^= 0xFF
    newest.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(newest)
    proc = foveal_cli([*train_args(run, cache_dir, **{"train.steps": 5}), "resume=true"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert newest.name in proc.stderr and "falling back to" in proc.stderr and "step-0000002" in proc.stderr
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]  # steps 2.. redone from the step-2 checkpoint


def test_truncated_newest_checkpoint_eval_names_it_and_falls_back(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    newest = step_files(run)[-1]
    newest.write_bytes(newest.read_bytes()[:1000])
    proc = foveal_cli(["eval", "--checkpoint", str(run)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    no_traceback(proc)
    assert newest.name in proc.stderr and "falling back to" in proc.stderr


def test_disk_full_during_save_is_one_line_and_leaves_no_temp_file(tiny_cfg, monkeypatch, capsys):
    import foveal.train.checkpoint as ck
    from foveal.cli import main

    real = ck._write_file

    def full_disk(f, tensors, metadata):
        real(f, dict(list(tensors.items())[:3]), metadata)  # part of it reached the disk
        raise OSError(errno.ENOSPC, "No space left on device")

    cfg = tiny_cfg()
    monkeypatch.setattr(ck, "_write_file", full_disk)
    assert main(["train", "--quiet", *tiny_overrides(), f"out_dir={cfg.out_dir}", f"cache_dir={cfg.cache_dir}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "disk full (ENOSPC)" in err[0] and "step-0000002" in err[0], err
    assert not [p for p in Path(cfg.out_dir).rglob("*") if ".tmp" in p.name]


def test_torn_metrics_line_and_stale_temps_are_repaired_on_resume(trained, tmp_path, cache_dir):
    run = copy_run(trained, tmp_path)
    step_files(run)[-1].unlink()  # killed before step 4's checkpoint: resume at 2
    (run / "results.json").unlink()
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "loss": 0.1')  # a write cut by a full disk
    stale = run / "checkpoints" / ".step-0000004.safetensors.tmp-99999"
    stale.write_bytes(b"\0" * 4096)
    proc = foveal_cli([*train_args(run, cache_dir), "resume=true"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not stale.exists() and "stale temp file" in proc.stderr
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]


def test_nonfinite_weights_are_never_called_good(tiny_cfg, monkeypatch):
    """lr=nan (set behind the config's back: the config itself refuses it) makes the weights NaN while the first
    loss and gradient are finite; no checkpoint of them may be written."""
    import foveal.train.loop as tr
    from foveal.train.checkpoint import CheckpointError, checkpoints, load_checkpoint

    real = tr.make_optimizer

    def nan_lr(model, t, device):
        opt, sched = real(model, t, device)
        for g in opt.param_groups:
            g["lr"] = float("nan")
        sched.base_lrs = [float("nan")] * len(sched.base_lrs)
        return opt, sched

    monkeypatch.setattr(tr, "make_optimizer", nan_lr)
    cfg = tiny_cfg(**{"train.steps": 6, "train.max_nonfinite": 2, "train.ckpt_every": 100})
    with pytest.raises((CheckpointError, tr.TrainingError), match="not finite|non-finite"):
        tr.train(cfg)
    for path in checkpoints(Path(cfg.out_dir) / "checkpoints"):
        state = load_checkpoint(path)["model"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), path


def test_checkpoint_holds_no_pickle_and_round_trips_exactly(tmp_path, monkeypatch):
    import random

    import numpy as np

    from foveal.train.checkpoint import atomic_save, load_checkpoint, rng_state

    state = {
        "rng": rng_state(),
        "optimizer": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"betas": (0.9, 0.99)}]},
        "history": {"x": [1.5, float("nan")]},
        "w": torch.arange(6, dtype=torch.bfloat16).view(2, 3),
    }
    path = tmp_path / "c.safetensors"
    atomic_save(state, path)

    def no_unpickling(*args, **kwargs):
        raise AssertionError("load_checkpoint unpickled something")

    # Loading must never reach an unpickler (probing the bytes with pickle.loads is no test: a safetensors header
    # length whose low byte is 0x80 reads as a pickle's PROTO opcode, and the error then depends on the next byte).
    monkeypatch.setattr(pickle, "loads", no_unpickling)
    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(pickle, "Unpickler", no_unpickling)
    monkeypatch.setattr(torch, "load", no_unpickling)
    back = load_checkpoint(path)
    assert back["rng"]["python"] == random.getstate()
    assert (back["rng"]["numpy"][1] == np.random.get_state()[1]).all()
    assert list(back["optimizer"]["state"]) == [0] and back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.99)
    assert torch.equal(back["w"], state["w"]) and back["w"].dtype == torch.bfloat16
    with safe_open(path, framework="pt") as f:  # a plain safetensors file that any safetensors reader opens
        assert torch.equal(f.get_tensor("w"), state["w"])
        assert torch.equal(f.get_tensor("optimizer.state.0.step"), torch.tensor(3.0))


@pytest.mark.parametrize("header_bytes", [0x280, 0x380, 0x1080])
def test_a_safetensors_header_length_that_starts_like_a_pickle_is_still_safetensors(tmp_path, header_bytes):
    """The u64 header length is little-endian: a header of 0x280 bytes begins the file with 0x80 0x02, the opening of
    a protocol-2 pickle. The file is what its structure says, not what its first byte suggests."""
    path = tmp_path / "step-0000001.safetensors"
    meta = {"pad": "x" * (header_bytes - 90)}
    for extra in range(64):  # find a metadata length that makes the header exactly header_bytes long
        with open(path, "wb") as f:
            ck._write_file(f, {"w": torch.ones(2)}, {**meta, "p": "y" * extra})
        if path.read_bytes()[:2] == header_bytes.to_bytes(8, "little")[:2]:
            break
    assert path.read_bytes()[:1] == b"\x80"
    assert ck._sniff(path) == "safetensors"
