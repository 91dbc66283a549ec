"""`foveal compare`: train one model per prediction head under the same data, order and budget (optionally several
seeds, and a coarse-only control per head and seed), then write the held-out tables (summary.md / summary.json),
each run's results.json and report.html, and a chart. The control models (a coarse-only, an oracle-look, a
prev-only and a dense reader model per head and seed, or the oracle, prev-only and dense reader for the first head
alone) bound the ratio and say what one token per frame recovers of what many give. A sweep (--sweep
train.lr=1e-4,3e-4, several keys: their grid) repeats all of it per grid point in out/<key>=<value>[,...]/ and
tabulates every (grid point, head) as one row, the swept values in columns of their own.

Orchestration only: aggregate.py turns the run folders into rows of typed estimates, tables.py renders them.
Every number in the tables is held-out; with one seed its interval is a 95% paired bootstrap over held-out clips,
with N seeds the mean and the 95% Student-t interval of the N per-seed values.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import time
from pathlib import Path
from typing import NamedTuple

import torch

from foveal.analysis import parallel, precompute
from foveal.analysis.aggregate import aggregate, run_metrics
from foveal.analysis.report import write_report
from foveal.analysis.tables import write_summary
from foveal.config import ConfigError, RunConfig, encoder_cache_on, leaves, nest, replace, validate, value_text
from foveal.jsonio import load_numbers
from foveal.train import distributed, encoder_cache
from foveal.train.hardware import DEFAULT_THREADS
from foveal.train.loop import train

log = logging.getLogger(__name__)


CONTROL_MODELS = ("coarse-only", "oracle", "prev-only", "dense")  # separately trained control models, folder suffixes
CONTROL_CHOICES = ("none", "reference", "all")  # --controls: none; the first head's oracle, prev-only, dense; all


def run_dir(out: Path, head: str, seed: int, seeds: int, control: str = "") -> Path:
    name = f"{head}-{control}" if control else head
    return out / name if seeds == 1 else out / name / f"seed-{seed}"


def read_run(folder: Path) -> tuple[dict, dict]:
    """A finished run folder -> (results.json, held-out arrays)."""
    if not (folder / "results.json").exists():
        raise FileNotFoundError(
            f"{folder} has no results.json: train it first (drop --summarize-only), or pass the --controls and "
            "--sweep the comparison was run with (--controls none for one without control models)"
        )
    arrays = {k: v.numpy() for k, v in torch.load(folder / "heldout_losses.pt").items()}
    return load_numbers(folder / "results.json"), arrays


def control_run(run: RunConfig, control: str, coarse_weight: float) -> dict:
    """The overrides that turn a head's run into one of its control models (same steps, clips and order):
    coarse-only: the static query only; oracle: the fine pass reads every frame at the target (model.look=oracle);
    prev-only: the head gets a learned constant instead of h (a coarse-only model: h is unused anyway); dense: the
    same LLM reading train.dense_control_tokens pooled patch tokens per frame, no query (its one pass is coarse)."""
    only = {"fine_iterations": 0, "coarse_weight": coarse_weight or 1.0}
    return {
        "coarse-only": {"train": only},
        "oracle": {"model": {"look": "oracle"}},
        "prev-only": {"model": {"prev_only": True}, "train": only},
        "dense": {  # nothing that needs a query: no glimpse location, look supervision or curriculum
            "model": {"dense_tokens": run.train.dense_control_tokens, "glimpse": "none"},
            "train": only | {"look_supervision": 0.0, "oracle_curriculum": 0.0},
        },
    }[control]


def controls_for(cfg: RunConfig, head: str, heads: list[str], controls: str) -> list[str]:
    """Which control models a head gets. The oracle needs ground truth (synthetic clips)."""
    first = ["oracle", "prev-only", "dense"] if head == heads[0] else []
    wanted = {"none": [], "reference": first, "all": CONTROL_MODELS}
    chosen = list(wanted[controls])
    if cfg.data.source != "synthetic" and "oracle" in chosen:
        chosen.remove("oracle")
    return chosen


def planned_runs(cfg: RunConfig, heads: list[str], out: Path, seeds: int, controls: str) -> list[RunConfig]:
    """Every model the comparison trains: per head and seed the main run and its control models."""
    runs = []
    for head in heads:
        for seed in range(cfg.train.seed, cfg.train.seed + seeds):
            run = replace(cfg, model={"head": head}, train={"seed": seed}, out_dir=str(run_dir(out, head, seed, seeds)))
            runs.append(run)
            for control in controls_for(cfg, head, heads, controls):
                over = control_run(run, control, cfg.train.coarse_weight)
                runs.append(
                    checked(replace(run, **over, out_dir=str(run_dir(out, head, seed, seeds, control))), control)
                )
    return [wandb_named(r, out) for r in runs] if cfg.train.wandb else runs


def checked(run: RunConfig, control: str) -> RunConfig:
    """A control model's config, validated before anything trains (e.g. the dense reader's k against the grid)."""
    try:
        validate(run)
    except ConfigError as e:
        raise ConfigError(f"--controls: the {control} control model: {e}") from None
    return run


def wandb_named(run: RunConfig, out: Path) -> RunConfig:
    """In W&B a comparison is one group (its folder's name unless given) and each model is named by its folder."""
    t, folder = run.train, Path(run.out_dir).relative_to(out).as_posix()
    name = f"{t.wandb_name}/{folder}" if t.wandb_name else folder
    return replace(run, train={"wandb_group": t.wandb_group or out.name, "wandb_name": name})


def finished(run: RunConfig) -> bool:
    """A resumed comparison keeps a run whose results.json records its full budget."""
    path = Path(run.out_dir) / "results.json"
    return bool(run.resume) and path.exists() and json.loads(path.read_text()).get("steps") == run.train.steps


def train_all(runs: list[RunConfig]) -> None:
    """Train each run, train.jobs at a time (analysis/parallel.py; every rank takes part in every run under
    torchrun) and, on rank 0, write its report."""
    todo = []
    for run in runs:
        if finished(run):
            log.info(f"{run.out_dir}: finished earlier, kept")
        else:
            todo.append(run)
    if not todo:
        return
    jobs, shares = jobs_of(todo), []
    if jobs > 1:
        threads = parallel.threads_per_job(jobs)
        log.info(f"compare: {len(todo)} models, {jobs} at a time on {threads} thread(s) each (train.jobs=1: in turn)")
        todo = [r if r.train.threads else replace(r, train={"threads": threads}) for r in todo]
        todo.sort(key=lambda r: -r.train.steps * (1 + r.train.fine_iterations))  # the long first: none runs alone
        shares = precompute.shares(todo, jobs, threads)  # targets and encoder cache once, split between the workers
    parallel.run_all(train_one, todo, jobs, before=(precompute.encode_share, shares))


def jobs_of(runs: list[RunConfig]) -> int:
    t = runs[0].train
    cache = t.encoder_cache_mib if encoder_cache_on(runs[0]) else 0
    cpu = not torch.cuda.is_available()
    free = parallel.available_mib()
    shared = 0 < runs[0].data.train_clips <= precompute.clips_read(runs)  # one cache for all (precompute.encoder_part)
    return parallel.jobs_for(t.jobs, len(runs), DEFAULT_THREADS, cpu, distributed.world_size(), free, cache, shared)


def train_one(run: RunConfig, made: list = ()) -> None:
    """One model; `made`: what the workers made before the models started (precompute.shares): the encoder
    cache's parts go into this process's cache."""
    t0 = time.time()
    encoder_cache.install([m for m in made if isinstance(m, encoder_cache.Part)], run.train.encoder_cache_mib)
    result = train(run)
    if not result:  # a non-zero rank: rank 0 writes reports and tables
        return
    write_report(run.out_dir)
    what = "coarse-only" if not result["fine_iterations"] else f"held-out ratio {result['heldout_ratio']:.4f}"
    what += " (oracle look)" if run.model.look == "oracle" else " (prev-only)" if run.model.prev_only else ""
    what += f" (dense reader, {run.model.dense_tokens} tokens per frame)" if run.model.dense_tokens else ""
    log.info(f"{run.model.head} seed {run.train.seed}: {result['steps']} steps in {time.time() - t0:.0f} s, {what}")


def rows_from(cfg: RunConfig, out: Path, heads: list[str], seeds: int, controls: str) -> list[dict]:
    """One aggregated row per head, read back from the run folders. A head without its own oracle / prev-only
    models borrows the reference head's (the first head): their ratios are against the reference's coarse path,
    and the gain captured is this head's gain over the reference's headroom; its row says so. The dense reader
    comes with its results (its FLOPs per clip) as well as its arrays."""
    rows = []
    seed0 = cfg.train.seed
    for head in heads:
        runs = []
        own = controls_for(cfg, head, heads, controls)
        borrowed = [c for c in controls_for(cfg, heads[0], heads, controls) if c not in own and c != "coarse-only"]
        for seed in range(seed0, seed0 + seeds):
            result, arrays = read_run(run_dir(out, head, seed, seeds))
            found = {c: read_run(run_dir(out, head, seed, seeds, c)) for c in own}
            found |= {c: read_run(run_dir(out, heads[0], seed, seeds, c)) for c in borrowed}
            reference = read_run(run_dir(out, heads[0], seed, seeds))[1] if borrowed else None
            got = {c: arrays_of for c, (_, arrays_of) in found.items()}
            controls_found = (got.get("coarse-only"), seed, got.get("oracle"), got.get("prev-only"), reference)
            runs.append(run_metrics(result, arrays, *controls_found, dense=found.get("dense")))
        row = aggregate(runs)
        row["controls_from"] = heads[0] if borrowed else head
        if "dense" in own + borrowed:
            row["dense_tokens"] = cfg.train.dense_control_tokens
        rows.append(row)
    return rows


class GridPoint(NamedTuple):
    values: dict  # swept key -> its typed value ({} without a sweep)
    folder: Path  # the comparison's folder for this point: out/<key>=<value>[,<key2>=<value2>] (out without a sweep)
    cfg: RunConfig


UNSAFE = re.compile(r"[^A-Za-z0-9._+=,\[\]-]")  # in a folder name, anything else becomes "_"


def check_sweep_key(key: str, values: list) -> None:
    if not values:
        raise ConfigError(f"--sweep {key}: no values; give one or more, e.g. --sweep train.lr=1e-4,3e-4")
    if key == "model.head":
        raise ConfigError("--sweep model.head: the heads are chosen with --heads (e.g. --heads film,mlp)")
    if key.split(".")[0] not in ("model", "data", "train"):
        raise ConfigError(f"--sweep {key}: sweep a model., data. or train. key; {key} is one per comparison")


def grid_point(cfg: RunConfig, values: dict, out: Path) -> GridPoint:
    """cfg with one combination of swept values, validated; its folder is named by the typed values."""
    label = " ".join(f"{k}={value_text(v)}" for k, v in values.items())
    try:
        run = replace(cfg, **nest(values))
        validate(run)
    except ConfigError as e:
        raise ConfigError(f"--sweep {label}: {e}") from None
    flat = leaves(run.to_dict())
    section = next((k for k in values if k not in flat), None)
    if section:
        raise ConfigError(f"--sweep {section}: a section of keys, not one key; sweep one of its keys instead")
    typed = {k: flat[k] for k in values}
    name = UNSAFE.sub("_", ",".join(f"{k}={value_text(v)}" for k, v in typed.items()))
    return GridPoint(typed, out / name, run)


def sweep_points(cfg: RunConfig, sweep: dict[str, list] | None, out: Path) -> list[GridPoint]:
    """Every combination of the swept values (the first key varies slowest), each point's config validated before
    anything trains. Without a sweep: the one point cfg, in out itself."""
    if not sweep:
        return [GridPoint({}, out, cfg)]
    for key, values in sweep.items():
        check_sweep_key(key, values)
    points = [grid_point(cfg, dict(zip(sweep, combo)), out) for combo in itertools.product(*sweep.values())]
    folders = [p.folder.name for p in points]
    twice = next((f for f in folders if folders.count(f) > 1), None)
    if twice:
        raise ConfigError(
            f"--sweep: two grid points share the folder {twice} (a value listed twice, or values that differ only "
            "in characters a folder name cannot hold); list each value once"
        )
    return points


def compare(
    cfg: RunConfig,
    heads: list[str],
    out_dir: str | Path,
    seeds: int = 1,
    controls: str = "reference",
    summarize_only: bool = False,
    sweep: dict[str, list] | None = None,
) -> list[dict]:
    """Train every head (`seeds` times) and its control models (`controls`: none | reference (the first head's
    oracle-look, prev-only and dense reader models) | all (coarse-only, oracle, prev-only, dense for every head)),
    then one aggregated row per head: out/<head>[/seed-<s>], out/<head>-<control>[/...]. sweep ({"train.lr": [1e-4,
    3e-4], ...}): all of it per point of the keys' grid, in out/<key>=<value>[,...]/, one row per point and head
    (row["sweep"]: the point's values). cfg.resume: finished runs are kept and the others continue from their
    newest checkpoint. summarize_only: train nothing, rebuild the tables from the folders already there. Under
    torchrun every rank trains; rank 0 alone writes and returns the rows."""
    out = Path(out_dir)
    points = sweep_points(cfg, sweep, out)  # every point validated before anything trains
    out.mkdir(parents=True, exist_ok=True)
    if not summarize_only:
        train_all([run for p in points for run in planned_runs(p.cfg, heads, p.folder, seeds, controls)])
    if not distributed.is_main():
        return []
    rows = []
    for p in points:
        point = {"sweep": p.values} if p.values else {}
        rows += [point | row for row in rows_from(p.cfg, p.folder, heads, seeds, controls)]
    write_summary(rows, cfg, out)
    write_report(out)
    return rows
