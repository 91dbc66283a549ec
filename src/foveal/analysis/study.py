"""`foveal study`: the seed study's table, rerun under its own protocol and beside both-paths training.

The seed (shared results page, reference-system.md 2.5 and 3.2) reports per-step training ratios of runs in which
only the fine loss was back-propagated, so its coarse path was never trained directly. Here each of its rows (MLP,
cross-attention and FiLM recon, FiLM joint, caption only) and a positive control (FiLM recon with the oracle look)
is trained in two arms that differ in one key: `seed` (protocol seed: fine loss only) and `both` (protocol seed
with train.coarse_weight 1: both paths trained). Same data, steps, clips, order and seeds; every number beside the
study's training-batch figures is held-out, with a Student-t interval across seeds.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from foveal.analysis.compare import planned_runs, rows_from, train_all
from foveal.analysis.tables import COPY_NOTE, cell, coarse_worse_than_copy
from foveal.config import PROTOCOLS, ConfigError, RunConfig, leaves, replace
from foveal.jsonio import strict_json
from foveal.train import distributed


@dataclass(frozen=True)
class Published:
    """A row as the seed reported it (training batches: final ratio = mean of the last 100 step ratios)."""

    final_ratio: float
    steps: int | None = None
    above_1: float | None = None  # share of steps with ratio > 1
    source: str = ""
    approx: bool = False  # reported as "~" (no run behind it in the results page's table)


@dataclass(frozen=True)
class StudyRow:
    name: str
    objective: str
    head: str
    published: Published | None  # None: not in the study (the positive control)
    claim: str = "gain"  # what the study read off it: gain (fine beats coarse) | none (~1.00)
    overrides: dict = field(default_factory=dict)

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")

    @property
    def kind(self) -> str:  # the held-out ratio the row is read on
        return "caption" if self.objective == "caption" else "recon"


ROWS = (
    # seed/ results page, summary table (2026-01-19): 815 steps, 1.020, 94.2 % of steps > 1
    StudyRow("MLP recon", "recon", "mlp", Published(1.020, 815, 0.942, "results page")),
    # same table: 834 steps, 1.00007 ("ratio stayed within 0.997-1.002"), 65.6 %
    StudyRow(
        "Cross-attention recon", "recon", "cross_attention", Published(1.00007, 834, 0.656, "results page"), "none"
    ),
    # results page, "FiLM with reconstruction-only: ratio ~ 1.0" (earlier runs, no step count)
    StudyRow("FiLM recon", "recon", "film", Published(1.00, source="results page, earlier runs", approx=True), "none"),
    # results page: FiLM (joint recon+caption) ~1.17, ~100 % of steps > 1, "not directly comparable"
    StudyRow("FiLM joint", "joint", "film", Published(1.17, None, 1.0, "results page, joint runs", approx=True)),
    # reference-system.md 3.2, experiment_captioning_fast.py: caption_fine only, 800 steps, avg50 ratio 1.0518
    StudyRow("Caption only", "caption", "film", Published(1.0518, 800, None, "reference-system.md 3.2")),
    StudyRow(
        "FiLM recon, oracle look (positive control)", "recon", "film", None, "gain", {"model": {"look": "oracle"}}
    ),
)


@dataclass(frozen=True)
class Arm:
    label: str
    protocol: str  # which protocol's config the arm starts from
    overrides: dict = field(default_factory=dict)


ARMS = {
    "seed": Arm("fine loss only", "seed"),  # the seed protocol as the study ran it
    "both": Arm("both paths trained", "seed", {"train": {"coarse_weight": 1.0}}),  # the same, one key changed
    "foveal": Arm("foveal protocol", "foveal"),  # foveal's defaults: both paths, lr 1e-3 on the connector, clipping
}


def arm_config(configs: dict[str, RunConfig], arm: str, row: StudyRow, out: Path) -> RunConfig:
    over = {k: dict(v) for k, v in row.overrides.items()}
    for section, values in ARMS[arm].overrides.items():
        over.setdefault(section, {}).update(values)
    over.setdefault("train", {})["objective"] = row.objective
    over.setdefault("model", {})["head"] = row.head
    return replace(configs[ARMS[arm].protocol], **over, out_dir=str(out / arm / row.slug))


def check_shared(configs: dict[str, RunConfig]) -> None:
    """The two protocols' configs may differ only in what the seed protocol sets (and the protocol's name)."""
    seed, foveal = (leaves(configs[p].to_dict()) for p in ("seed", "foveal"))
    if configs["seed"].protocol != "seed" or configs["foveal"].protocol != "foveal":
        raise ConfigError("study: needs one config under protocol seed and one under protocol foveal")
    layer = set(leaves(PROTOCOLS["seed"])) | {"protocol"}
    differ = sorted(k for k in seed if k not in layer and seed[k] != foveal.get(k))
    if differ:
        raise ConfigError(f"study: the two protocols' configs differ outside the protocol in {', '.join(differ)}")


def study_rows(cfg: RunConfig) -> list[StudyRow]:
    """The rows this data can run: the oracle look needs ground truth (synthetic clips)."""
    return [r for r in ROWS if cfg.data.source == "synthetic" or "look" not in r.overrides.get("model", {})]


def run_study(configs: dict[str, RunConfig], out_dir: str | Path, seeds: int = 3, summarize_only: bool = False):
    """Train every row in every arm (`seeds` each; a config's resume keeps finished runs), then write study.md and
    study.json in out_dir; returns {"rows": {row: {arm: aggregated row}}, "text": study.md}. configs: "seed" and
    "foveal", the same run under each protocol."""
    check_shared(configs)
    out, t0, rows = Path(out_dir), time.time(), study_rows(configs["seed"])
    plans = [(row, arm, arm_config(configs, arm, row, out)) for row in rows for arm in ARMS]
    if not summarize_only:
        models = [planned_runs(run, [run.model.head], Path(run.out_dir), seeds, "none") for _, _, run in plans]
        train_all([model for group in models for model in group])  # all at once: train.jobs of them at a time
    if not distributed.is_main():
        return {}
    results = {}
    for row, arm, run in plans:
        (agg,) = rows_from(run, Path(run.out_dir), [run.model.head], seeds, "none")
        results.setdefault(row.name, {})[arm] = agg
    wall = None if summarize_only else time.time() - t0
    text = study_text(configs, rows, results, seeds, wall)
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.md").write_text(text)
    keep = lambda r: {k: v for k, v in r.items() if k not in ("step_ratios", "heldout")}  # noqa: E731
    (out / "study.json").write_text(
        strict_json({name: {arm: keep(r) for arm, r in arms.items()} for name, arms in results.items()})
    )
    return {"rows": results, "text": text}


# ---------------------------------------------------------------------------------------------------------------------
# the table and its reading

COLUMNS = [
    "Row", "Training", "Steps", "Final ratio (train)", "Steps > 1", "Held-out ratio", "Shuffled looks",
    "Copy MSE / MSE coarse", "Attention on target, fine - coarse",
]  # fmt: skip


def _published_line(row: StudyRow) -> str:
    p = row.published
    if p is None:
        return f"| **{row.name}** | study | not in the study | | | | | | |"
    steps, near = (str(p.steps) if p.steps else "n/a"), "~" if p.approx else ""
    above = f"{near}{100 * p.above_1:.1f}%" if p.above_1 is not None else "n/a"
    ratio = f"{near}{p.final_ratio:.2f}" if p.approx else f"{p.final_ratio:g}"
    return f"| **{row.name}** | study ({p.source}) | {steps} | {ratio} | {above} | n/a | n/a | n/a | n/a |"


def _arm_line(row: StudyRow, arm: str, r: dict) -> str:
    k = row.kind  # final_ratio is on the objective's primary kind: recon for joint, caption for caption only
    cells = [
        "",
        ARMS[arm].label,
        str(r["steps"]),
        cell(r, "final_ratio"),
        cell(r, "ratio_above_1", "share"),
        f"{cell(r, f'{k}_ratio')} ({'recon, t>=2' if k == 'recon' else 'caption'})",
        cell(r, f"{k}_ratio_shuffled"),
        cell(r, "mse_copy_over_coarse"),
        cell(r, "attention_fine_minus_coarse", "diff"),
    ]
    if row.objective == "joint":  # its caption ratio too
        cells[5] += f"; caption {cell(r, 'caption_ratio')}"
    return "| " + " | ".join(cells) + " |"


def study_table(rows: list[StudyRow], results: dict) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for row in rows:
        lines.append(_published_line(row))
        for arm in ARMS:
            lines.append(_arm_line(row, arm, results[row.name][arm]))
    return "\n".join(lines)


def _interval(r: dict, name: str) -> tuple[float, float, float] | None:
    m = r["metrics"].get(name)
    if m is None or math.isnan(m["ci"][0]):
        return None
    return m["value"], m["ci"][0], m["ci"][1]


def _side(x: tuple[float, float, float] | None) -> str:
    """above | below | straddles 1 (or unknown)."""
    if x is None:
        return "unknown"
    return "above" if x[1] > 1 else "below" if x[2] < 1 else "straddles"


def looks_matter(r: dict, kind: str) -> str:
    """Whether the learned looks are what moves the ratio: the fine pass re-read with another clip's queries
    (shuffled) against the fine pass itself, intervals across seeds."""
    fine, shuffled = _interval(r, f"{kind}_ratio"), _interval(r, f"{kind}_ratio_shuffled")
    if fine is None or shuffled is None:
        return "cannot tell whether the looks matter"
    if fine[1] > shuffled[2]:
        return "the learned looks matter (fine beats shuffled looks)"
    return "no sign that the looks matter (shuffled looks do as well)"


POSITIVE, LEARNED = "FiLM recon, oracle look (positive control)", "FiLM recon"  # the same model, two kinds of look


def _show(x: tuple[float, float, float] | None) -> str:
    return "n/a" if x is None else f"{x[0]:.3f} [{x[1]:.3f}, {x[2]:.3f}]"


def power(results: dict, arm: str) -> tuple[bool, str]:
    """Whether an arm's ratio can see a look at all: its oracle-look model's interval lies above the interval of the
    same model with learned looks (a ratio that scores both alike cannot tell looking from not looking)."""
    if POSITIVE not in results:
        return False, "no positive control (it needs synthetic clips)"
    oracle, learned = (_interval(results[name][arm], "recon_ratio") for name in (POSITIVE, LEARNED))
    seen = oracle is not None and learned is not None and oracle[1] > learned[2]
    return seen, f"oracle-look model {_show(oracle)} vs learned looks {_show(learned)}"


def _per_seed(r: dict, name: str) -> str:
    values = r["metrics"].get(name, {}).get("values")
    return f"; per seed {min(values):.3f}-{max(values):.3f}" if values else ""


def _protocol_part(arms: dict, kind: str) -> str:
    """Seed arm against both-paths arm (identical but for the coarse loss), on one kind of ratio."""
    name = f"{kind}_ratio"
    seed, both = (_interval(arms[a], name) for a in ("seed", "both"))
    s, b = _side(seed), _side(both)
    copy = (
        ", its coarse path worse than copy-last ‡" if kind == "recon" and coarse_worse_than_copy(arms["seed"]) else ""
    )
    if "unknown" in (s, b):
        return f"{kind}: no interval (run at least 2 seeds)"
    if s == "above" and b != "above":
        gone = f"it is gone with both paths trained ({_show(both)})"
        return (
            f"{kind}: the seed protocol's ratio > 1 ({_show(seed)}{copy}) is an artefact of training one path: {gone}"
        )
    if s == "above":
        return f"{kind}: the seed protocol's ratio > 1 ({_show(seed)}) survives training both paths ({_show(both)})"
    if s == "straddles":
        spread = _per_seed(arms["seed"], name)
        return f"{kind}: the seed protocol's ratio is not resolved from 1 across seeds ({_show(seed)}{spread}{copy})"
    return f"{kind}: the seed protocol's ratio is below 1 ({_show(seed)})"


def uses_input(row: StudyRow, r: dict) -> tuple[bool, str]:
    """Whether the row's loss depends on what the model saw: another clip's h (recon) or video (caption) must
    raise it. A ratio of a loss that ignores its input is 1 whatever the look: a null there is vacuous."""
    name = "h_other_minus_fine" if row.kind == "recon" else "caption_video_other_minus_fine"
    x = _interval(r, name)
    what = "another clip's h" if row.kind == "recon" else "another clip's video"
    return x is not None and x[1] > 0, f"{what} changes the fine loss by {_show(x)}"


def _looking_part(row: StudyRow, results: dict) -> tuple[str, str]:
    """(what the foveal arm says about looking, the study's claim's verdict)."""
    if "foveal" not in results[row.name]:
        return "no foveal-protocol arm", "cannot be decided"
    seen, why = power(results, "foveal")
    r = results[row.name]["foveal"]
    fov = _interval(r, f"{row.kind}_ratio")
    f = _side(fov)
    if not seen:
        return f"foveal's protocol does not see a planted look ({why})", "cannot be decided at this scale"
    if f == "above":
        said = f"under foveal's protocol the learned looks help ({_show(fov)}): {looks_matter(r, row.kind)}"
        return said, "holds" if row.claim == "gain" else "does not hold (fine beats coarse)"
    said = f"under foveal's protocol, which sees a planted look ({why}), the learned looks give {_show(fov)}"
    used, how = uses_input(row, r)
    if not used:
        said += f", but this loss ignores its input ({how})"
    if row.claim == "gain":
        return said, "does not hold here: no gain from looking where one was measurable"
    if f != "straddles":
        return said, "differs (fine is worse than coarse)"
    return said, "holds (~1.00), and not vacuously: a planted look would have shown" if used else (
        "holds (~1.00), but vacuously: the ratio cannot move when the loss ignores the input"
    )  # fmt: skip


def reading(row: StudyRow, results: dict) -> str:
    """One row's verdict, read off the intervals mechanically."""
    if row.published is None:
        parts = []
        for arm in results[row.name]:
            seen, why = power(results, arm)
            parts.append(f"{ARMS[arm].label}: {'sees' if seen else 'does not see'} the planted look ({why})")
        return "; ".join(parts)
    said, verdict = _looking_part(row, results)
    kinds = ("recon", "caption") if row.objective == "joint" else (row.kind,)
    protocol = "; ".join(_protocol_part(results[row.name], k) for k in kinds)
    caveat = " (the positive control is on recon)" if row.kind == "caption" else ""
    return f"{protocol}; {said}{caveat} -> the study's finding **{verdict}**"


def study_text(configs: dict, rows: list[StudyRow], results: dict, seeds: int, wall: float | None) -> str:
    t, d, f = configs["seed"].train, configs["seed"].data, configs["foveal"].train
    clips = next(iter(next(iter(results.values())).values()))["clips"]
    header = (
        f"# foveal study: the seed's table under its protocol and beside both-paths training "
        f"({configs['seed'].preset} preset)\n\n"
        f"Three arms on the same clips, steps ({t.steps}), frames ({d.num_frames}), data ({d.source}) and seeds "
        f"({seeds} per cell: train.seed {t.seed}..{t.seed + seeds - 1}, init and order). **fine loss only**: protocol "
        f"seed (train.coarse_weight 0, lr {t.lr:g} on every parameter, warmup {t.warmup_steps} then constant, no "
        f"clipping, weight decay {t.weight_decay:g} on all, {t.batch_size} x {t.grad_accum} clips per step). **both "
        f"paths trained**: the same with train.coarse_weight 1, nothing else changed. **foveal protocol**: foveal's "
        f"defaults (both paths, connector lr {f.lr:g}, backbone lr {f.backbone_lr:g}, clipping {f.grad_clip:g}, "
        f"{f.batch_size} x {f.grad_accum} clips per step). Final ratio and steps > 1: training batches, the study's "
        f"definition (per step, coarse / fine of the micro-batch means; mean of the last 100). Held-out: {clips} "
        f"clips never trained on; recon over the steered frames t>=2; value = mean over seeds, [lo, hi] = 95% "
        f"Student-t interval across seeds. Shuffled looks: the same model's fine pass re-read with another clip's "
        f"queries (if it scores like fine, the looks do not matter). Copy MSE / MSE coarse < 1: the coarse path is "
        f"worse than copying the previous frame."
        + (f" Wall time {wall / 60:.1f} min." if wall is not None else "")
        + "\n\n"
    )
    verdicts = "\n".join(f"- **{row.name}**: {reading(row, results)}." for row in rows)
    flagged = any(coarse_worse_than_copy(arms[a]) for arms in results.values() for a in arms)
    return (
        header
        + study_table(rows, results)
        + ("\n\n" + COPY_NOTE if flagged else "")
        + "\n\n**Reading** (mechanical, from the held-out intervals)\n\n"
        + verdicts
        + "\n"
    )
