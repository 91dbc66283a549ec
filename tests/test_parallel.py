"""compare's models at once in worker processes (analysis/parallel.py): how many, and the same numbers as in turn."""

import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from conftest import tiny_overrides
from foveal.analysis import parallel
from foveal.cli import main

MIB = parallel.JOB_MIB


@pytest.mark.parametrize(
    "setting, models, cores, cpu, world, free, cache, jobs",
    [
        ("auto", 5, 2, True, 1, 64 * MIB, 0, 2),  # one per core
        ("auto", 5, 16, True, 1, 64 * MIB, 0, 5),  # never more than there are models
        ("auto", 5, 16, True, 1, 3.5 * MIB, 0, 3),  # as many as fit in memory
        ("auto", 5, 16, True, 1, 2 * MIB, 4096, 1),  # each one's encoder cache budget counted; at least one
        ("auto", 5, 16, True, 1, None, 0, 1),  # memory unknown: in turn
        ("auto", 5, 16, False, 1, 64 * MIB, 0, 1),  # a GPU: one device to share
        (3, 5, 16, False, 1, 64 * MIB, 0, 3),  # a number is taken as given
        (3, 2, 16, True, 1, 64 * MIB, 0, 2),  # ... up to the number of models
        (3, 5, 16, True, 4, 64 * MIB, 0, 1),  # torchrun: every rank trains every model
    ],
)
def test_jobs_for(setting, models, cores, cpu, world, free, cache, jobs):
    assert parallel.jobs_for(setting, models, cores, cpu, world, free, cache) == jobs


def test_a_shared_encoder_cache_is_counted_once():
    """Where the workers map one encoder cache (compare, every training clip read), its budget counts once."""
    free = 5 * MIB + 4096
    assert parallel.jobs_for("auto", 5, 16, True, 1, free, 4096, shared=True) == 5
    assert parallel.jobs_for("auto", 5, 16, True, 1, free, 4096, shared=False) == 2


def test_available_memory_is_read_from_meminfo(tmp_path):
    path = tmp_path / "meminfo"
    path.write_text("MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   2048000 kB\n")
    assert parallel.available_mib(str(path)) == 2000
    assert parallel.available_mib(str(tmp_path / "missing")) is None


def test_a_worker_error_reaches_the_caller():
    with pytest.raises(ValueError, match="invalid literal"):
        parallel.run_all(int, ["1", "x", "3"], 2)


def compare(out, cache_dir, *extra):
    args = ["compare", "--heads", "film,mlp", "--controls", "none", "--out", str(out), "--quiet"]
    return main([*args, *tiny_overrides(), f"cache_dir={cache_dir}", *extra])


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())


def test_models_at_once_give_the_numbers_they_give_in_turn(tmp_path):
    """Two workers against the same models trained in turn on as many threads as each worker had: identical held-out
    arrays (NaN where a clip has no target region), and each run's config says the thread count it ran on."""
    threads = parallel.threads_per_job(2)  # each with a cache of its own: the workers' VAE latents made afresh
    assert compare(tmp_path / "at-once", tmp_path / "cache-1", "train.jobs=2") == 0
    assert compare(tmp_path / "in-turn", tmp_path / "cache-2", "train.jobs=1", f"train.threads={threads}") == 0
    for head in ("film", "mlp"):
        at_once = torch.load(tmp_path / "at-once" / head / "heldout_losses.pt")
        in_turn = torch.load(tmp_path / "in-turn" / head / "heldout_losses.pt")
        assert at_once.keys() == in_turn.keys()
        assert all(same(at_once[k], in_turn[k]) for k in at_once), head
        saved = yaml.safe_load((tmp_path / "at-once" / head / "config.yaml").read_text())
        assert saved["train"]["threads"] == threads
    assert not math.isnan(float(at_once["recon_fine"].mean()))


def test_ctrl_c_stops_every_worker_with_one_line(tmp_path, cache_dir):
    """Ctrl-C (SIGINT to the terminal's process group) while two workers train: exit 130, one line, no traceback,
    and no worker left running."""
    args = ["compare", "--heads", "film,mlp", "--controls", "none", "--out", str(tmp_path / "cmp")]
    over = [*tiny_overrides(**{"train.steps": 400, "train.ckpt_every": 100}), f"cache_dir={cache_dir}"]
    cmd = [sys.executable, "-m", "foveal", *args, *over]
    proc = subprocess.Popen(  # SIGINT handled as in a terminal (a background job, as under make or CI, ignores it)
        [*cmd, "train.jobs=2"],
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        cwd=tmp_path,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines = []
    for line in proc.stderr:  # the workers' own lines come once they have started training
        lines.append(line)
        if "step" in line and "/400" in line:
            break
    os.killpg(proc.pid, signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 130, "".join(lines) + rest
    assert "Traceback" not in rest and rest.strip().splitlines()[-1].startswith("foveal: interrupted"), rest
    assert gone(proc.pid), "a worker outlived the command"


def gone(group: int, seconds: float = 20) -> bool:
    """Whether every process of the group has ended within `seconds` (the spawn's resource tracker ends on its own
    once the parent's pipe closes)."""
    end = time.time() + seconds
    while time.time() < end:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False
