"""The run folder: which checkpoint a run resumes from, and a fresh run's claim on its folder."""

from __future__ import annotations

import shutil
from pathlib import Path

from foveal.train.checkpoint import latest
from foveal.train.optim import TrainingError

RUN_FILES = ("checkpoints", "metrics.jsonl", "tensorboard", "results.json", "heldout_losses.pt")


def resume_path(resume: bool | str, ckpt_dir: Path) -> Path | None:
    if resume in (False, None, "", "false", "no"):
        return None
    if resume in (True, "latest", "true", "yes"):
        return latest(ckpt_dir)  # nothing yet: a fresh start, so `--resume` is safe to put in every launch script
    if not Path(resume).exists():
        raise TrainingError(f"resume: checkpoint {resume} does not exist")
    return Path(resume)


def claim_run_folder(out: Path, fresh: bool, overwrite: bool) -> None:
    """A fresh run never mixes with (or silently destroys) an earlier run's checkpoints."""
    if fresh and latest(out / "checkpoints") is not None:
        if not overwrite:
            raise TrainingError(
                f"{out} already holds a run with checkpoints: add --resume to continue it, --overwrite to start "
                f"afresh (its checkpoints are deleted), or choose another --out"
            )
        for name in RUN_FILES:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
