"""`foveal compare`: train one model per prediction head under the same data, order and budget (optionally several
seeds, and a coarse-only control per head and seed), then write the held-out tables (summary.md / summary.json),
each run's results.json and report.html, and a chart.

Orchestration only: aggregate.py turns the run folders into rows of typed estimates, tables.py renders them.
Every number in the tables is held-out; with one seed its interval is a 95% paired bootstrap over held-out clips,
with N seeds the mean and the 95% Student-t interval of the N per-seed values.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from foveal.analysis.aggregate import aggregate, run_metrics
from foveal.analysis.report import write_report
from foveal.analysis.tables import write_summary
from foveal.config import RunConfig, replace
from foveal.train import distributed
from foveal.train.loop import train

log = logging.getLogger(__name__)


def run_dir(out: Path, head: str, seed: int, seeds: int, coarse_only: bool = False) -> Path:
    name = f"{head}-coarse-only" if coarse_only else head
    return out / name if seeds == 1 else out / name / f"seed-{seed}"


def read_run(folder: Path) -> tuple[dict, dict]:
    """A finished run folder -> (results.json, held-out arrays)."""
    if not (folder / "results.json").exists():
        raise FileNotFoundError(f"{folder} has no results.json: train it first (drop --summarize-only)")
    arrays = {k: v.numpy() for k, v in torch.load(folder / "heldout_losses.pt").items()}
    return json.loads((folder / "results.json").read_text()), arrays


def planned_runs(cfg: RunConfig, heads: list[str], out: Path, seeds: int, controls: bool) -> list[RunConfig]:
    """Every model the comparison trains: per head and seed the main run and, with controls, a coarse-only model
    (train.fine_iterations=0: the static query only, same steps, clips and order)."""
    runs = []
    for head in heads:
        for seed in range(cfg.train.seed, cfg.train.seed + seeds):
            run = replace(cfg, model={"head": head}, train={"seed": seed}, out_dir=str(run_dir(out, head, seed, seeds)))
            runs.append(run)
            if controls:
                only = {"fine_iterations": 0, "coarse_weight": cfg.train.coarse_weight or 1.0}
                runs.append(replace(run, train=only, out_dir=str(run_dir(out, head, seed, seeds, coarse_only=True))))
    return runs


def finished(run: RunConfig) -> bool:
    """A resumed comparison keeps a run whose results.json records its full budget."""
    path = Path(run.out_dir) / "results.json"
    return bool(run.resume) and path.exists() and json.loads(path.read_text()).get("steps") == run.train.steps


def train_all(runs: list[RunConfig]) -> None:
    """Train each run (every rank takes part in every run under torchrun) and, on rank 0, write its report."""
    for run in runs:
        if finished(run):
            log.info(f"{run.out_dir}: finished earlier, kept")
            continue
        t0 = time.time()
        result = train(run)
        if not result:  # a non-zero rank: rank 0 writes reports and tables
            continue
        write_report(run.out_dir)
        what = "coarse-only" if not result["fine_iterations"] else f"held-out ratio {result['heldout_ratio']:.4f}"
        log.info(f"{run.model.head} seed {run.train.seed}: {result['steps']} steps in {time.time() - t0:.0f} s, {what}")


def rows_from(out: Path, heads: list[str], seed0: int, seeds: int, controls: bool) -> list[dict]:
    """One aggregated row per head, read back from the run folders."""
    rows = []
    for head in heads:
        runs = []
        for seed in range(seed0, seed0 + seeds):
            result, arrays = read_run(run_dir(out, head, seed, seeds))
            control = read_run(run_dir(out, head, seed, seeds, coarse_only=True))[1] if controls else None
            runs.append(run_metrics(result, arrays, control, seed))
        rows.append(aggregate(runs))
    return rows


def compare(
    cfg: RunConfig,
    heads: list[str],
    out_dir: str | Path,
    seeds: int = 1,
    controls: bool = False,
    summarize_only: bool = False,
) -> list[dict]:
    """Train every head (`seeds` times; with `controls` also a coarse-only model per head and seed), then one
    aggregated row per head: out/<head>[/seed-<s>], out/<head>-coarse-only[/...]. cfg.resume: finished runs are
    kept and the others continue from their newest checkpoint. summarize_only: train nothing, rebuild the tables
    from the folders already there. Under torchrun every rank trains; rank 0 alone writes and returns the rows."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not summarize_only:
        train_all(planned_runs(cfg, heads, out, seeds, controls))
    if not distributed.is_main():
        return []
    rows = rows_from(out, heads, cfg.train.seed, seeds, controls)
    write_summary(rows, cfg, out)
    log.info("compare: writing report.html")
    write_report(out)
    return rows
