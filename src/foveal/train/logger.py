"""metrics.jsonl always; TensorBoard by default; W&B when asked (WANDB_MODE=offline works without network).

Training scalars show under train/ and the held-out evaluations (every train.eval_every steps) under eval/: the
ratios with their 95 % intervals, the controls and the attention on the target, and one held-out clip's attention
picture. At the end TensorBoard gets the run's hyperparameters beside its final held-out numbers (the HPARAMS tab)
and W&B its summary.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
from torch.utils.tensorboard import SummaryWriter

from foveal.config import RunConfig, leaves
from foveal.jsonio import strict_json
from foveal.train.optim import TrainingError
from foveal.train.run_folder import repair_metrics


def check_wandb(cfg: RunConfig) -> None:
    """Before any work: a run that asks for W&B fails now, not after start-up, when the package is missing."""
    if cfg.train.wandb and importlib.util.find_spec("wandb") is None:
        raise TrainingError("train.wandb: the wandb package is not installed; pip install wandb, or drop --wandb")


def scalars(summary: dict, prefix: str) -> dict[str, float]:
    """A held-out summary as flat scalars <prefix>/<path>: every number; an estimate's or a ratio's 95 % interval
    as <name>_lo / <name>_hi. Per-frame and per-layer lists are left to results.json."""
    out: dict[str, float] = {}
    for key, value in summary.items():
        name = f"{prefix}/{key}"
        if isinstance(value, dict) and "value" in value and "ci" in value:
            out[name], (out[f"{name}_lo"], out[f"{name}_hi"]) = value["value"], value["ci"]
        elif isinstance(value, dict):
            out |= scalars(value, name)
        elif key.endswith("_ci") and isinstance(value, (list, tuple)) and len(value) == 2:
            out[f"{name[:-3]}_lo"], out[f"{name[:-3]}_hi"] = value
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = value
    return {k: float(v) for k, v in out.items()}


def hparams(cfg: RunConfig) -> dict:
    """Every config key as TensorBoard takes hyperparameters (numbers, strings, bools; lists as text)."""
    flat = leaves(cfg.to_dict())
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flat.items()}


class MetricsLogger:
    def __init__(self, out: Path, cfg: RunConfig, start_step: int, enabled: bool):
        self.enabled, self.cfg = enabled, cfg
        self.path = out / "metrics.jsonl"
        self.tb = self.wandb = self.wandb_lib = None
        if not enabled:
            return
        repair_metrics(self.path, start_step)  # lines past the resumed checkpoint, and torn lines, dropped
        if cfg.train.tensorboard:
            self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=start_step)
        if cfg.train.wandb:
            self.wandb_lib = importlib.import_module("wandb")  # optional: check_wandb found it
            self.wandb = start_wandb(self.wandb_lib, out, cfg)

    def log(self, row: dict) -> None:
        """One step's row: metrics.jsonl as is; the dashboards with train/ before every key not already grouped."""
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(strict_json(row, indent=None) + "\n")  # null for a missing number
        step = row["step"]
        grouped = {k if "/" in k else f"train/{k}": v for k, v in row.items() if k != "step"}
        numbers = {k: v for k, v in grouped.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        if self.tb:
            for k, v in numbers.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb:
            self.wandb.log(numbers, step=step)

    def image(self, tag: str, picture: np.ndarray, step: int) -> None:
        """picture uint8 [H, W, 3]."""
        if self.tb:
            self.tb.add_image(tag, picture, step, dataformats="HWC")
        if self.wandb:
            self.wandb.log({tag: self.wandb_lib.Image(picture)}, step=step)

    def finish(self, results: dict) -> None:
        """The final held-out numbers beside the hyperparameters (TensorBoard), the run's summary (W&B)."""
        if not self.enabled or not results:
            return
        final = scalars(results.get("heldout", {}), "final")
        table = {k: results[k] for k in ("final_ratio", "ratio_above_1", "params", "steps") if k in results}
        if self.tb:
            headline = {k: v for k, v in final.items() if k.split("/")[-1].startswith(("ratio", "loss_"))}
            finite = {k: v for k, v in headline.items() if math.isfinite(v)}
            self.tb.add_hparams(hparams(self.cfg), finite or {"final/steps": results.get("steps", 0)}, run_name=".")
        if self.wandb:
            self.wandb.summary.update({**table, **{k: v for k, v in final.items() if math.isfinite(v)}})

    def close(self) -> None:
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()


def start_wandb(wandb, out: Path, cfg: RunConfig):
    """The W&B run, named, grouped and tagged as configured; its id is kept so a resume continues the same run."""
    t = cfg.train
    id_file = out / "wandb_id"
    run_id = id_file.read_text() if id_file.exists() else wandb.util.generate_id()
    id_file.write_text(run_id)
    return wandb.init(
        project=t.wandb_project,
        entity=t.wandb_entity or None,
        name=t.wandb_name or out.name,
        group=t.wandb_group or None,
        tags=list(t.wandb_tags) or None,
        dir=str(out),
        id=run_id,
        resume="allow",
        config=cfg.to_dict(),
    )
