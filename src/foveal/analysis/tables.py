"""Rendering of compare's rows: the reference study's table, the held-out tables (ratios, controls, where the
queries look), summary.md / summary.json and the comparison chart. Every cell reads a row's typed estimates."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from foveal.analysis.export import write_csv
from foveal.config import RunConfig, value_text
from foveal.evaluation.plotting import subplots
from foveal.jsonio import strict_json

NAN = float("nan")


def _fmt_params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"


def _fmt(x: float, digits: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def swept(rows: list[dict]) -> list[str]:
    """The keys a sweep (compare --sweep) varied: a column each, after the head's."""
    return list(rows[0].get("sweep", {}))


def sweep_cells(row: dict) -> list[str]:
    return [value_text(v) for v in row.get("sweep", {}).values()]


def table(rows: list[dict]) -> str:
    """The reference study's table, one row per head; caption columns appear when the objective has a caption loss."""
    joint = any("final_caption_ratio" in r["metrics"] for r in rows)
    has_caption = joint or any(r.get("ratio_kind") == "caption" for r in rows)
    cols = ["Head Type", *swept(rows), "Steps", "Final Ratio", "Ratio > 1.0", "Parameters", "Held-out Ratio"]
    if joint:
        cols += ["Caption Final Ratio", "Caption Held-out Ratio"]
    target = any("mse_copy_over_fine" in r["metrics"] for r in rows)
    if target:
        cols += TARGET_COLUMNS
    cols.append("Notes")
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        kind = r.get("ratio_kind", "recon")
        notes = [
            f"{kind} ratio" if has_caption and not joint else "",
            "fine loss only" if r["coarse_weight"] == 0 else f"coarse_weight {r['coarse_weight']:g}",
            f"protocol {r['protocol']}" if r.get("protocol", "foveal") != "foveal" else "",
        ]
        if r.get("seeds", 1) > 1:
            notes.append(f"mean of {r['seeds']} seeds")
        if r.get("nonfinite_steps"):
            notes.append(f"{r['nonfinite_steps']} non-finite steps skipped")
        cells = [
            f"**{r['head']}**",
            *sweep_cells(r),
            str(r["steps"]),
            f"**{_fmt(r['final_ratio'])}**",
            f"{100 * r['ratio_above_1']:.1f}%",
            _fmt_params(r["params"]),
            cell(r, f"{kind}_ratio"),  # one seed: bootstrap CI over clips; several: t-interval over seeds
        ]
        if joint:
            cells += [cell(r, "final_caption_ratio"), cell(r, "caption_ratio")]
        if target:
            cells += [cell(r, "mse_fine_steered"), cell(r, "cos_fine_steered"), cell(r, "mse_copy_over_fine")]
            cells.append(cell(r, "mse_copy_over_coarse"))
        cells.append("; ".join(n for n in notes if n))
        lines.append("| " + " | ".join(cells) + " |")
    if target:
        lines.append(copy_last_line(rows, len(cols)))
    return "\n".join(lines)


def _num(x: float, style: str) -> str:
    if x is None or math.isnan(x):
        return "n/a"
    return {"ratio": f"{x:.4f}", "loss": f"{x:.4f}", "diff": f"{x:+.4f}", "share": f"{100 * x:.0f}%"}[style]


# ratios whose numerator is this model's coarse path: flagged where that path is worse than copying the last frame
COARSE_RATIOS = ("recon_ratio", "recon_ratio_all_frames", "recon_ratio_oracle_eval", "recon_ratio_shuffled")
COPY_FLAG = " ‡"
COPY_NOTE = (
    "‡ this model's coarse path predicts the held-out steered frames worse than copying the previous frame "
    "(Copy MSE / MSE coarse < 1): a ratio over it compares the fine path with an untrained one, not two looks."
)


def coarse_worse_than_copy(row: dict) -> bool:
    metric = row["metrics"].get("mse_copy_over_coarse")
    return metric is not None and metric["value"] < 1.0


def cell(row: dict, name: str, style: str = "ratio") -> str:
    metric = row["metrics"].get(name)
    if metric is None:
        return "–"
    lo, hi = metric["ci"]
    if style == "share":  # a share lives in [0, 1]; a t-interval over few seeds can overshoot it
        lo, hi = max(lo, 0.0), min(hi, 1.0)
    text = _num(metric["value"], style)
    text = text if math.isnan(lo) else f"{text} [{_num(lo, style)}, {_num(hi, style)}]"
    return text + COPY_FLAG if name in COARSE_RATIOS and coarse_worse_than_copy(row) else text


# (column title, metric, style); a column no row has is left out
RATIO_COLUMNS = [
    ("Recon ratio, steered frames t>=2", "recon_ratio", "ratio"),
    ("Fine better (clips, t>=2)", "recon_fine_better", "share"),
    ("Coarse-only / fine (t>=2)", "recon_coarse_only_over_fine", "ratio"),
    ("Recon ratio, all frames", "recon_ratio_all_frames", "ratio"),
    ("Caption ratio", "caption_ratio", "ratio"),
    ("Fine better (clips, caption)", "caption_fine_better", "share"),
    ("Caption coarse-only / fine", "caption_coarse_only_over_fine", "ratio"),
    ("Train final ratio (last 100 steps)", "final_ratio", "ratio"),
]
CONTROL_COLUMNS = [
    ("Fine", "loss_fine", "loss"),
    ("Coarse", "loss_coarse", "loss"),
    ("Coarse-only model", "loss_coarse_only", "loss"),
    ("Copy-last", "copy_last", "loss"),
    ("h=0 minus fine", "h_zero_minus_fine", "diff"),
    ("h of another clip minus fine", "h_other_minus_fine", "diff"),
    ("h=0 minus coarse", "h_zero_minus_coarse", "diff"),
    ("Caption CE, other clip's video minus fine", "caption_video_other_minus_fine", "diff"),
    ("Caption CE, other clip's video minus coarse", "caption_video_other_minus_coarse", "diff"),
]
ATTENTION_COLUMNS = [
    ("Coarse query", "attention_coarse", "share"),
    ("Fine query", "attention_fine", "share"),
    ("Fine minus coarse", "attention_fine_minus_coarse", "diff"),
    ("Coarse-only model", "attention_coarse_only", "share"),
    ("Chance (uniform look)", "attention_chance", "share"),
    ("Entropy coarse", "entropy_coarse", "ratio"),
    ("Entropy fine", "entropy_fine", "ratio"),
    ("Entropy coarse-only", "entropy_coarse_only", "ratio"),
]


def markdown_table(rows: list[dict], columns: list[tuple[str, str, str]], extra=None) -> str:
    columns = [c for c in columns if any(c[1] in r["metrics"] for r in rows)]
    extra = extra or []
    head = ["Objective", "Head", *swept(rows), *(c[0] for c in columns), *(e[0] for e in extra)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        cells = [r["objective"], f"**{r['head']}**", *sweep_cells(r)]
        cells += [cell(r, name, style) for _, name, style in columns]
        cells += [fn(r) for _, fn in extra]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


DENSE_TITLE = "Dense reader (k tokens)"  # k filled in from the rows (train.dense_control_tokens)

# the looking table: every ratio is the model's coarse loss over the loss with another look, steered frames t>=2
LOOK_COLUMNS = [
    ("Fine (learned looks)", "recon_ratio", False),
    ("Oracle-look model", "recon_oracle_ratio", True),
    ("Oracle look at eval", "recon_ratio_oracle_eval", False),
    ("Shuffled looks", "recon_ratio_shuffled", False),
    ("Prev-only model", "recon_prev_only_ratio", True),
    (DENSE_TITLE, "recon_dense_ratio", True),
    ("Gain captured", "recon_gain_captured", True),
    ("Caption fine", "caption_ratio", False),
    ("Caption oracle-look model", "caption_oracle_ratio", True),
    (f"Caption {DENSE_TITLE.lower()}", "caption_dense_ratio", True),
    ("Caption shuffled", "caption_ratio_shuffled", False),
    ("Caption gain captured", "caption_gain_captured", True),
]
REGION_COLUMNS = [
    ("Coarse", "region_coarse", "loss"),
    ("Fine", "region_fine", "loss"),
    ("Oracle-look model", "region_oracle", "loss"),
]


def look_cell(row: dict, name: str, from_control: bool) -> str:
    """A looking-table cell; a gain without oracle headroom says so; a value from the reference head's control
    models is marked with a dagger."""
    if name.endswith("gain_captured") and name in row["metrics"] and math.isnan(row["metrics"][name]["value"]):
        text = "no headroom"
    else:
        text = cell(row, name)
    borrowed = from_control and text != "–" and row.get("controls_from", row["head"]) != row["head"]
    return text + " †" if borrowed else text


def has_controls(rows: list[dict]) -> bool:
    """Whether any row has a trained control model or a look control (the looking table has something to say)."""
    return any(name in r["metrics"] for r in rows for _, name, _ in LOOK_COLUMNS[1:7])


def look_table(rows: list[dict]) -> str:
    """Does looking pay, and how much of what a perfect look buys do the learned looks get?"""
    columns = [c for c in LOOK_COLUMNS if any(c[1] in r["metrics"] for r in rows)]
    k = {r["dense_tokens"] for r in rows if "dense_tokens" in r}
    dense = f"{k.pop()} tokens" if len(k) == 1 else "k tokens"  # a sweep of train.dense_control_tokens: its column
    head = ["Head", *swept(rows), *(c[0].replace("k tokens", dense) for c in columns)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        cells = [f"**{r['head']}**", *sweep_cells(r), *(look_cell(r, n, b) for _, n, b in columns)]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        "**Does looking pay?** Held-out, steered frames t>=2 (the only ones predicted after an LLM-chosen look); "
        "each ratio = the model's coarse loss / the loss with that look (> 1: better than the static look). Oracle-"
        "look model: trained and evaluated with every fine read forced onto the target (the ceiling); oracle look at "
        "eval: this model read that way; shuffled: its fine pass read with another clip's queries (the floor of "
        "looking); prev-only: a model whose head gets a constant instead of h (the previous frame alone); dense "
        "reader: the same LLM reading k average-pooled patch tokens per frame instead of one looked-at token "
        "(model.dense_tokens = train.dense_control_tokens; no query, trained coarse-only with the same budget). "
        "Gain captured = (L_coarse - L_fine) / (L_coarse - L_oracle), shown where the oracle's gain is clearly > 0."
    ]
    if any(r.get("controls_from", r["head"]) != r["head"] for r in rows):
        notes.append(
            f"† the reference head's ({rows[0]['head']}) control models, against its own coarse path; the gain "
            "captured is this head's gain over the reference's headroom."
        )
    flops = flops_line(rows)
    return " ".join(notes) + "\n\n" + "\n".join(lines) + (f"\n\n{flops}" if flops else "")


def gflop(x: float) -> str:
    return f"{x / 1e9:.3g} GFLOP"


def flops_line(rows: list[dict]) -> str:
    """What each reader costs: forward FLOPs per clip (one held-out batch; encoder included, its share given), the
    dense reader against each head's foveated model (coarse + fine as trained); "" without a dense reader."""
    dense = next((r for r in rows if "flops_per_clip_dense" in r["metrics"]), None)
    if dense is None:
        return ""
    m = dense["metrics"]
    k = dense.get("dense_tokens", "k")
    heads = [r for r in rows if "flops_per_clip" in r["metrics"]]
    fov = ", ".join(
        f"{' '.join([r['head'], *sweep_cells(r)])} {gflop(r['metrics']['flops_per_clip']['value'])}" for r in heads
    )
    return (
        f"**FLOPs per clip** (forward: encoder, LLM passes and head; one held-out batch): dense reader ({k} tokens): "
        f"{gflop(m['flops_per_clip_dense']['value'])} per clip vs foveated (coarse + fine) {fov}; the encoder's "
        f"share {gflop(m['flops_per_clip_dense_encoder']['value'])}, the same for every reader."
    )


PROBE_COLUMNS = [
    ("Position R^2 coarse", "probe_position_r2_coarse", "ratio"),
    ("Position R^2 fine", "probe_position_r2_fine", "ratio"),
    ("Position R^2 oracle look", "probe_position_r2_oracle_eval", "ratio"),
    ("Colour acc. coarse", "probe_colour_accuracy_coarse", "share"),
    ("Colour acc. fine", "probe_colour_accuracy_fine", "share"),
    ("Colour acc. oracle look", "probe_colour_accuracy_oracle_eval", "share"),
    ("Colour chance", "probe_colour_chance", "share"),
]


# a caption path's column title in the per-slot table; any other path present gets "<path> CE"
SLOT_PATHS = {
    "coarse": "Coarse CE",
    "fine": "Fine CE",
    "autoregressive": "Autoregressive CE",
    "oracle_eval": "Oracle look CE",
    "shuffled": "Shuffled looks CE",
    "coarse_video_other": "Coarse CE, other clip's video",
    "fine_video_other": "Fine CE, other clip's video",
}


def slot_table(rows: list[dict]) -> str:
    """One line per run and informative caption slot (chance > 0): the slot's commonest word, chance and each
    path's held-out CE there."""
    found = dict.fromkeys(p for r in rows for s in r.get("caption_slots", []) for p in s["paths"])
    paths = [p for p in SLOT_PATHS if p in found] + [p for p in found if p not in SLOT_PATHS]
    head = ["Objective", "Head", *swept(rows), "Slot", "Word", "Chance", *(SLOT_PATHS.get(p, f"{p} CE") for p in paths)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        for s in (s for s in r.get("caption_slots", []) if not s["fixed"]):
            word = s["word"].replace("|", "\\|") or "(space)"  # a sub-word token may be a bare space or a pipe
            cells = [r["objective"], f"**{r['head']}**", *sweep_cells(r), str(s["slot"]), word]
            cells += [_num(s["chance"], "loss"), *(cell(r, f"caption_slot{s['slot']}_{p}", "loss") for p in paths)]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tables(rows: list[dict]) -> str:
    """The held-out ratio table, the controls table and (where there is ground truth) the attention table; a table
    none of whose metrics exist (e.g. controls without a recon loss) is left out."""
    has = lambda columns: any(name in r["metrics"] for r in rows for _, name, _ in columns)  # noqa: E731
    layers = lambda r: " / ".join(f"{100 * v:.0f}" for v in r["attention_layers"].get("fine", [])) or "–"  # noqa: E731
    info = [("Seeds", lambda r: str(r["seeds"])), ("Steps", lambda r: str(r["steps"])),
            ("Head params", lambda r: _fmt_params(r["params"]))]  # fmt: skip
    parts = []
    if has(REGION_COLUMNS):
        parts.append(
            "**On the target's region** (held-out MSE over the target grid cells the target covers, steered frames): "
            "where looking should pay.\n\n" + markdown_table(rows, REGION_COLUMNS)
        )
    parts += [
        "**Does looking where the model chose help?** ratio = loss_coarse / loss_fine on held-out clips (> 1: fine "
        "beats coarse).\n\n" + markdown_table(rows, RATIO_COLUMNS, info)
    ]
    if has(CONTROL_COLUMNS):
        parts.append(
            "**Controls** (held-out recon MSE, steered frames t>=2; caption CE per token). h=0 / h of another clip: "
            "the trained head fed zeros or another held-out clip's states instead of its own h; other clip's video: "
            "each caption scored after another clip's frames. A difference near 0 means the loss ignores the video, "
            "and no ratio can be read.\n\n" + markdown_table(rows, CONTROL_COLUMNS)
        )
    if has(ATTENTION_COLUMNS):
        parts.append(
            "**Where the queries look** (frames 1..T-1, where the fine query is the LLM's; mean over encoder layers "
            "and heads): attention mass on the target's patches (ground truth, where the data has it) and the "
            "attention's entropy / ln P (1.000 = uniform: the query cannot look anywhere).\n\n"
            + markdown_table(rows, ATTENTION_COLUMNS, [("Fine per layer (%)", layers)])
        )
    if has(PROBE_COLUMNS):
        parts.append(
            "**What a frame token says about the target** (linear probes of held-out tokens, frames t>=1, fitted on "
            "half the held-out clips and scored on the other half): R^2 of the target's position and accuracy of its "
            "colour, from the coarse and fine tokens and from this model's tokens read with the oracle look.\n\n"
            + markdown_table(rows, PROBE_COLUMNS)
        )
    if any(not s["fixed"] for r in rows for s in r.get("caption_slots", [])):
        parts.append(
            "**Caption per slot** (held-out CE per token, nats, at each caption position where at least half the clips "
            "have a word and more than one word occurs): chance = the entropy of the slot's words over the held-out "
            "clips, the CE of the best predictor that never sees the clip. A path below chance predicts the slot; "
            "other clip's video says how much of that comes from the video. Template words (one word, chance 0) are "
            "in results.json, flagged fixed.\n\n" + slot_table(rows)
        )
    return "\n\n".join(parts)


def interval_note(rows: list[dict]) -> str:
    n, clips = max(r["seeds"] for r in rows), rows[0]["clips"]
    if n == 1:
        return (
            f"One seed; [lo, hi] = 95% paired-bootstrap interval over {clips} held-out clips (clips never trained on)."
        )
    return (
        f"{n} seeds per head (train.seed, +1, ...: init and order; same data); value = mean over seeds, [lo, hi] = "
        f"95% Student-t interval across seeds. Held-out: {clips} clips never trained on."
    )


def sweep_note(rows: list[dict]) -> str:
    """What a sweep varied (every other key is the header's); "" without one."""
    if not swept(rows):
        return ""
    values = {k: list(dict.fromkeys(value_text(r["sweep"][k]) for r in rows)) for k in swept(rows)}
    grid = "; ".join(f"{k} = {', '.join(v)}" for k, v in values.items())
    return f"Swept: {grid} (one row per grid point and head; the swept values override the header's).\n\n"


def write_summary(rows: list[dict], cfg: RunConfig, out: Path) -> None:
    (out / "summary.json").write_text(
        strict_json([{k: v for k, v in r.items() if k not in ("step_ratios", "heldout")} for r in rows])
    )
    description = (*swept(rows), "head", "objective", "protocol", "seeds", "steps", "params", "clips")
    write_csv([r | r.get("sweep", {}) for r in rows], out / "summary.csv", description)
    t = cfg.train
    header = (
        f"# foveal compare: {cfg.preset} preset, objective {t.objective}, protocol {cfg.protocol}\n\n"
        f"{t.batch_size} x {t.grad_accum} clips per step, {cfg.data.num_frames} frames, coarse_weight "
        f"{t.coarse_weight:g}, data {cfg.data.source}. Final Ratio = mean of the last 100 step ratios (training "
        f"batches, as the reference study reported it); Held-out Ratio over clips never trained on. "
        f"{interval_note(rows)}\n\n{sweep_note(rows)}"
    )
    header += target_header(rows[0])
    looking = look_table(rows) + "\n\n" if has_controls(rows) else ""  # the question first, where it can be read
    flagged = "\n\n" + COPY_NOTE if any(coarse_worse_than_copy(r) for r in rows) else ""
    (out / "summary.md").write_text(header + looking + table(rows) + flagged + "\n\n" + tables(rows) + "\n")
    plot_comparison(rows, out / "comparison.png")


# the prediction's MSE and cosine beside the ratios (steered frames t>=2), and the copy-last control row

TARGET_COLUMNS = [
    "Held-out MSE fine (t>=2)",
    "Held-out cos fine (t>=2)",
    "Copy MSE / MSE fine",
    "Copy MSE / MSE coarse",
]


def copy_last_line(rows: list[dict], num_cols: int) -> str:
    """Frame t-1's features as frame t's prediction, on the same held-out clips: no parameters, no ratio."""
    copies = [r["metrics"] for r in rows if "copy_last_mse" in r["metrics"]]
    mse, cos = copies[0]["copy_last_mse"]["value"], copies[0]["copy_last_cos"]["value"]
    same = all(abs(c["copy_last_mse"]["value"] - mse) <= 1e-6 * max(1.0, abs(mse)) for c in copies)
    note = f"frame t-1 as frame t's prediction; {rows[0]['clips']} held-out clips"
    if not same:  # a trainable encoder moves the features each run predicts
        note += "; differs per run (trainable encoder): first run shown"
    lead = ["copy-last (control)", *("-" for _ in swept(rows)), "-", "-", "-", "0"]
    lead += ["-"] * (num_cols - len(lead) - len(TARGET_COLUMNS) - 1)
    return "| " + " | ".join([*lead, _fmt(mse), _fmt(cos), "1", "1", note]) + " |"


def target_header(r: dict) -> str:
    """What was predicted (the run's target and what results.json records of it) and how far ahead."""
    shape = "x".join(map(str, r.get("target_shape", [])))
    f, gap = r.get("target_features", {}), r.get("frame_gap", {})
    details = [shape]
    if f.get("pca"):
        details.append(f"PCA to {f['pca']} channels keeping {100 * f['explained_variance']:.1f}% of the variance")
    if f.get("cls"):
        details.append("CLS appended")
    spacing = [f"{gap['frames']} frame(s)" if gap.get("frames") is not None else ""]
    spacing.append(f"{gap['seconds']:.3g} s" if gap.get("seconds") is not None else "")
    if "motion" in gap:  # synthetic clips have no frame rate; say how far objects move instead
        spacing.append(f"synthetic, objects move {gap['motion']:.3g} frame sides per gap")
    return (
        f"Target: {r.get('target')} ({', '.join(details)}), loss {r.get('target_loss', 'mse')}. Gap between frames: "
        f"{', '.join(x for x in spacing if x) or 'n/a'}. MSE and cosine on the steered frames t>=2 (the only ones "
        "predicted after an LLM-chosen look); Copy MSE / MSE fine > 1: the head beats copying the previous frame's "
        "target (95% interval).\n\n"
    )


def plot_comparison(rows: list[dict], path: Path) -> None:
    kind = "recon" if "recon_ratio" in rows[0]["metrics"] else "caption"
    point = lambda r: [f"{k}={value_text(v)}" for k, v in r.get("sweep", {}).items()]  # noqa: E731
    labels = ["\n".join([r["head"], r["objective"], *point(r)]) for r in rows]
    x = np.arange(len(rows))
    fig, (ax_bar, ax_curve) = subplots(1, 2, figsize=(11, 4))
    bars = [("final_ratio", "train, last 100 steps"), (f"{kind}_ratio", "held-out, steered frames (95% CI)")]
    if kind == "recon":
        bars.append(("recon_ratio_all_frames", "held-out, all frames"))
    width, seen = 0.8 / len(bars), [1.0]
    for i, (name, label) in enumerate(bars):
        vals = np.array([r["metrics"].get(name, {}).get("value", NAN) for r in rows])
        ci = np.array([r["metrics"].get(name, {}).get("ci", [NAN, NAN]) for r in rows])
        err = np.nan_to_num(np.abs(ci.T - vals), nan=0.0)
        # bars grow from ratio = 1, so the sign of each effect is what the eye sees
        ax_bar.bar(
            x + (i - (len(bars) - 1) / 2) * width, vals - 1, bottom=1.0, width=width, yerr=err, capsize=3, label=label
        )
        seen += [v for v in [*vals, *ci.ravel()] if not math.isnan(v)]
    ax_bar.axhline(1.0, color="k", lw=1, ls="--")
    ax_bar.set_xticks(x, labels, fontsize=8)
    ax_bar.set_ylabel("ratio = loss_coarse / loss_fine")
    span = max([abs(v - 1) for v in seen] + [0.002]) * 1.3  # the interesting range is around 1, not from 0
    ax_bar.set_ylim(1 - span, 1 + span)
    ax_bar.legend(fontsize=8)
    ax_bar.set_title("ratio per head (> 1: fine beats coarse)")
    for r, label in zip(rows, labels):
        ratios = np.asarray(r["step_ratios"].get(kind, []), dtype=float)
        if len(ratios):
            k = max(1, len(ratios) // 20)  # running mean keeps the curves readable
            ax_curve.plot(np.convolve(ratios, np.ones(k) / k, mode="valid"), label=label.replace("\n", " "))
    ax_curve.axhline(1.0, color="k", lw=1, ls="--")
    ax_curve.set_xlabel("step")
    ax_curve.set_title(f"{kind} ratio during training (running mean, first seed)")
    ax_curve.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
