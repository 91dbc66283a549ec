"""metrics.jsonl always; TensorBoard by default; W&B when asked (WANDB_MODE=offline works without network)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from foveal.config import RunConfig
from foveal.train.optim import TrainingError
from foveal.train.run_folder import repair_metrics


class MetricsLogger:
    def __init__(self, out: Path, cfg: RunConfig, start_step: int, enabled: bool):
        self.enabled = enabled
        self.path = out / "metrics.jsonl"
        self.tb = self.wandb = None
        if not enabled:
            return
        repair_metrics(self.path, start_step)  # lines past the resumed checkpoint, and torn lines, dropped
        if cfg.train.tensorboard:
            self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=start_step)
        if cfg.train.wandb:
            self.wandb = start_wandb(out, cfg)

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        for k, v in row.items():
            if self.tb and k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                self.tb.add_scalar(k, v, row["step"])
        if self.wandb:
            self.wandb.log(row, step=row["step"])

    def close(self) -> None:
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()


def start_wandb(out: Path, cfg: RunConfig):
    """W&B is optional: imported only when asked for, and the run id is kept so a resume continues the same run."""
    try:
        import wandb
    except ImportError as e:
        raise TrainingError("train.wandb: install wandb first (pip install wandb)") from e
    id_file = out / "wandb_id"
    run_id = id_file.read_text() if id_file.exists() else wandb.util.generate_id()
    id_file.write_text(run_id)
    return wandb.init(project="foveal", dir=str(out), id=run_id, resume="allow", config=cfg.to_dict())
