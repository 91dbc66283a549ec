"""One run folder, one writer, one record (issue 14): an OS lock on the run folder, a stale lock taken over with a
message, and a resume that continues from the run's own config.yaml, refusing changes that break its checkpoints."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from test_reliability_checkpoint import SRC, copy_run, foveal_cli, no_traceback, train_args, trained  # noqa: F401


def test_a_second_writer_fails_at_once_naming_the_first(tmp_path, cache_dir):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(
        [sys.executable, "-m", "foveal", *train_args(run, cache_dir, **{"train.steps": 400, "train.ckpt_every": 1000})],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while not ((run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text()):
            assert time.time() < deadline and first.poll() is None, "the first run did not start"
            time.sleep(0.1)
        t0 = time.time()
        second = foveal_cli([*train_args(run, cache_dir, **{"train.steps": 400}), "resume=true"], tmp_path)
        assert first.poll() is None, "the first run ended before the second one tried"
        assert second.returncode == 1, second.stderr[-2000:]
        no_traceback(second)
        assert "is in use" in second.stderr and f"pid {first.pid}" in second.stderr
        assert time.time() - t0 < 60
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_message(tmp_path, cache_dir):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text(f"{dead.pid}\n")
    proc = foveal_cli(train_args(run, cache_dir, **{"train.steps": 2}), tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"took over the lock of {run} left by pid {dead.pid}" in proc.stderr


@pytest.mark.parametrize(
    "change",
    ["model.head=mlp", "train.lr=0.5", "train.seed=3", "data.num_frames=8", "model.frame_size=32", "data.seed=2"],
)
def test_resume_refuses_changes_that_break_the_checkpoint(trained, tmp_path, cache_dir, capsys, change):  # noqa: F811
    from foveal.cli import main

    run = copy_run(trained, tmp_path)
    before = (run / "config.yaml").read_bytes()
    rc = main(["train", "--quiet", "--out", str(run), "--resume", f"cache_dir={cache_dir}", change])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    key = change.split("=")[0]
    assert len(err) == 1 and f"resume: {key}=" in err[0] and "config.yaml" in err[0], err
    assert (run / "config.yaml").read_bytes() == before  # not rewritten before the checks
    assert not (run / "resumes.jsonl").exists()


def test_resume_uses_its_own_record_and_records_safe_changes(trained, tmp_path, cache_dir):  # noqa: F811
    run = copy_run(trained, tmp_path)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    (run / "results.json").unlink()
    # none of the run's own overrides are repeated: the saved config must be what continues
    proc = foveal_cli(
        ["train", "--quiet", "--out", str(run), "--resume", "--steps", "6", "train.ckpt_every=3"], tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    now = yaml.safe_load((run / "config.yaml").read_text())
    assert now["train"]["steps"] == 6 and now["train"]["ckpt_every"] == 3
    for section in ("model", "data"):
        assert now[section] == saved[section]
    assert {k: v for k, v in now["train"].items() if k not in ("steps", "ckpt_every")} == {
        k: v for k, v in saved["train"].items() if k not in ("steps", "ckpt_every")
    }
    (row,) = [json.loads(x) for x in (run / "resumes.jsonl").read_text().splitlines()]
    assert row["changes"] == {"train.ckpt_every": [2, 3], "train.steps": [4, 6]}
    assert row["from"] == "step-0000004.safetensors"
    assert json.loads((run / "results.json").read_text())["steps"] == 6
