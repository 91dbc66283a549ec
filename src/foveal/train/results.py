"""What a finished run records in results.json: the reference study's table numbers from the per-step history
(final ratio = mean of the last 100 step ratios, share of steps > 1), beside the held-out summary."""

from __future__ import annotations

from foveal.config import RunConfig
from foveal.data.dataset import frame_gap
from foveal.model.backbones import num_params

LAST_N = 100  # the reference's "final ratio": mean of the last 100 step ratios


def mean(xs) -> float:
    return float(sum(xs) / len(xs)) if xs else float("nan")


def step_ratio(coarse: float, fine: float) -> float:
    """One optimiser step's ratio from its micro-batch means, as the seed computed it (reference-system.md 2.5:
    mean(coarse) / max(mean(fine), 1e-8) over the accumulated micro-batches)."""
    return coarse / max(fine, 1e-8)


def study_figures(ratios: list[float]) -> dict:
    """The seed table's columns from a run's per-step ratios: final ratio (mean of the last 100) and the share of
    steps whose ratio is > 1."""
    return {"final_ratio": mean(ratios[-LAST_N:]), "ratio_above_1": mean([float(r > 1) for r in ratios])}


def summarize_run(cfg: RunConfig, model, history: dict, heldout: dict, kinds, nonfinite: int, wall_s: float) -> dict:
    primary = kinds[0]
    ratios = history["ratio"][primary]
    last = slice(-LAST_N, None)
    row = {
        "head": cfg.model.head,
        "objective": cfg.train.objective,
        "preset": cfg.preset,
        "protocol": cfg.protocol,
        "steps": len(history["coarse"][primary]),
        **study_figures(ratios),
        "min_ratio": min(ratios, default=float("nan")),
        "max_ratio": max(ratios, default=float("nan")),
        "loss_fine": mean(history["fine"][primary][last]),
        "loss_coarse": mean(history["coarse"][primary][last]),
        "params": num_params(model.head),
        "heldout_ratio": heldout.get(primary, {}).get("ratio", float("nan")),
        "coarse_weight": cfg.train.coarse_weight,
        "fine_iterations": cfg.train.fine_iterations,  # 0: the coarse-only control (no ratio)
        "seed": cfg.train.seed,
        "ratio_kind": primary,
        "nonfinite_steps": nonfinite,
        "wall_s": round(wall_s, 1),
        "heldout": heldout,
        "step_ratios": history["ratio"],
    }
    row["target"], row["target_loss"], row["frame_gap"] = cfg.model.target, cfg.model.target_loss, frame_gap(cfg)
    row["target_shape"], row["target_features"] = list(model.target_shape), model.target.info()
    if "copy_last" in heldout:
        row["copy_last"] = heldout["copy_last"]
    for k in ("mse", "cos"):  # training-time (last 100 steps) MSE and cosine of the prediction, whatever the loss
        if k in history["fine"]:
            row[f"{k}_fine"], row[f"{k}_coarse"] = mean(history["fine"][k][last]), mean(history["coarse"][k][last])
    for k in kinds[1:]:
        row[f"final_{k}_ratio"] = mean(history["ratio"][k][last])
        row[f"heldout_{k}_ratio"] = heldout.get(k, {}).get("ratio", float("nan"))
    return row
