"""`foveal compare`: train one model per prediction head under the same data, order and budget (optionally several
seeds, and a coarse-only control per head and seed), then write the held-out tables (summary.md / summary.json),
each run's results.json and a chart.

Every number in the tables is held-out. With one seed its interval is a 95% paired bootstrap over held-out clips;
with N seeds it is the mean and the 95% Student-t interval of the N per-seed values. Controls in every table:
copy-last and the h-ablation (evaluate.py); with `controls` a coarse-only model (train.fine_iterations=0: the static
query only, same steps, clips and order) is trained as the fair baseline for the fine path.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from .config import RunConfig, replace
from .report import write_report
from .stats import mean_interval, paired_bootstrap_ratio
from .train import train

NAN = float("nan")
# the seed's table, one row per head (issue: summary.json schema); every other number sits in "metrics"
SUMMARY_KEYS = (
    "head",
    "steps",
    "final_ratio",
    "ratio_above_1",
    "params",
    "min_ratio",
    "max_ratio",
    "loss_fine",
    "loss_coarse",
    "heldout_ratio",
    "coarse_weight",
    "seed",
)
# what was predicted, how far ahead, MSE and cosine whatever the loss; written when present (copy_last: dino only)
TARGET_KEYS = ("target", "target_loss", "frame_gap", "target_shape", "target_features", "copy_last")
TARGET_KEYS += ("mse_fine", "mse_coarse", "cos_fine", "cos_coarse")


def run_dir(out: Path, head: str, seed: int, seeds: int, coarse_only: bool = False) -> Path:
    name = f"{head}-coarse-only" if coarse_only else head
    return out / name if seeds == 1 else out / name / f"seed-{seed}"


def load_run(folder: Path) -> tuple[dict, dict]:
    """A finished run folder -> (results.json, held-out arrays)."""
    if not (folder / "results.json").exists():
        raise FileNotFoundError(f"{folder} has no results.json: train it first (drop --summarize-only)")
    arrays = {k: v.numpy() for k, v in torch.load(folder / "heldout_losses.pt").items()}
    return json.loads((folder / "results.json").read_text()), arrays


def compare(
    cfg: RunConfig,
    heads: list[str],
    out_dir: str | Path,
    quiet: bool = False,
    seeds: int = 1,
    controls: bool = False,
    summarize_only: bool = False,
) -> list[dict]:
    """Train every head (`seeds` times; with `controls` also a coarse-only model per head and seed), then one
    aggregated row per head read back from the run folders: out/<head>[/seed-<s>], out/<head>-coarse-only[/...].
    summarize_only: train nothing, rebuild the tables from the folders already there."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seed_list = range(cfg.train.seed, cfg.train.seed + seeds)
    for head in heads if not summarize_only else []:
        for seed in seed_list:
            run = replace(cfg, model={"head": head}, train={"seed": seed}, out_dir=str(run_dir(out, head, seed, seeds)))
            only = replace(
                run,
                train={"fine_iterations": 0, "coarse_weight": cfg.train.coarse_weight or 1.0},
                out_dir=str(run_dir(out, head, seed, seeds, coarse_only=True)),
            )
            for r in [run, only] if controls else [run]:
                t0 = time.time()
                result = train(r, quiet=quiet)
                if not result:  # a non-zero rank under torchrun: rank 0 writes the tables
                    return []
                if not quiet:
                    what = (
                        "coarse-only"
                        if not result["fine_iterations"]
                        else f"held-out ratio {result['heldout_ratio']:.4f}"
                    )
                    print(f"{head} seed {seed}: {result['steps']} steps in {time.time() - t0:.0f} s, {what}")
    rows = []
    for head in heads:
        runs = []
        for seed in seed_list:
            result, arrays = load_run(run_dir(out, head, seed, seeds))
            control = load_run(run_dir(out, head, seed, seeds, coarse_only=True))[1] if controls else None
            runs.append(run_metrics(result, arrays, control, seed) | {"result": result})
        rows.append(aggregate(runs[0]["result"], runs))
    write_summary(rows, cfg, out)
    write_report(out, quiet=quiet)
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# per-run metrics -> one row per head


def run_metrics(result: dict, arrays: dict, control: dict | None, seed: int = 0) -> dict:
    """name -> (value, ci_lo, ci_hi) for one trained model (CI nan where there is none), plus per-layer lists."""
    held, m = result["heldout"], {"final_ratio": (result["final_ratio"], NAN, NAN)}
    for kind in ("recon", "caption"):
        s = held.get(kind, {})
        if "ratio" in s:
            m[f"{kind}_ratio"] = (s["ratio"], *s["ratio_ci"])
            m[f"{kind}_fine_better"] = (s["fine_better_share"], NAN, NAN)
        for path in ("coarse", "fine"):
            if f"video_other_minus_{path}" in s:
                d = s[f"video_other_minus_{path}"]
                m[f"caption_video_other_minus_{path}"] = (d["value"], *d["ci"])
        if "ratio_after_first" in s:
            m[f"{kind}_ratio_after_first"] = (s["ratio_after_first"], *s["ratio_after_first_ci"])
            m[f"{kind}_fine_better_after_first"] = (s["fine_better_share_after_first"], NAN, NAN)
    c = held.get("controls", {})
    if c:
        m["copy_last"] = (c["copy_last"], NAN, NAN)
        for path in ("coarse", "fine"):
            if path in c:
                m[f"loss_{path}"] = (c[path]["loss"], NAN, NAN)
                for key in ("h_zero", "h_other"):
                    d = c[path][f"{key}_minus_loss"]
                    m[f"{key}_minus_{path}"] = (d["value"], *d["ci"])
    a = held.get("attention", {})
    layers = {}
    if "chance" in a:
        m["attention_chance"] = (a["chance"], NAN, NAN)
    for path in ("coarse", "fine"):
        if path in a:
            m[f"entropy_{path}"] = (a[path]["entropy"], NAN, NAN)
        if "mean" in a.get(path, {}):
            m[f"attention_{path}"] = (a[path]["mean"], NAN, NAN)
            layers[path] = a[path]["per_layer"]
        if "fine_minus_coarse" in a:
            d = a["fine_minus_coarse"]
            m["attention_fine_minus_coarse"] = (d["value"], *d["ci"])
    if control is not None and "recon_fine" in arrays:  # the fair baseline: a model that only ever had q_static
        only, fine = control["recon_coarse"][:, 1:].mean(1), arrays["recon_fine"][:, 1:].mean(1)
        m["loss_coarse_only"] = (float(only.mean()), NAN, NAN)
        m["recon_coarse_only_over_fine"] = paired_bootstrap_ratio(only, fine, seed=seed)
    if control is not None and "caption_fine" in arrays:
        m["caption_coarse_only_over_fine"] = paired_bootstrap_ratio(
            control["caption_coarse"], arrays["caption_fine"], seed=seed
        )
    if control is not None and "attention_coarse" in control:
        m["attention_coarse_only"] = (float(control["attention_coarse"][:, 1:].mean()), NAN, NAN)
    if control is not None and "attention_coarse_entropy" in control:
        m["entropy_coarse_only"] = (float(control["attention_coarse_entropy"][:, 1:].mean()), NAN, NAN)
    return {"metrics": m, "layers": layers, "step_ratios": result["step_ratios"]}


def aggregate(first: dict, runs: list[dict]) -> dict:
    """Per metric: one run -> its value and bootstrap CI ("clips"); N runs -> mean and t-interval ("seeds")."""
    metrics = {}
    for name in runs[0]["metrics"]:
        values = [r["metrics"][name] for r in runs if name in r["metrics"]]
        if len(values) == 1:
            v, lo, hi = values[0]
            metrics[name] = {"value": v, "ci": [lo, hi], "over": "clips"}
        else:
            v, lo, hi = mean_interval([x[0] for x in values])
            metrics[name] = {"value": v, "ci": [lo, hi], "over": "seeds", "values": [x[0] for x in values]}
    layers = {
        path: np.mean([r["layers"][path] for r in runs if path in r["layers"]], axis=0).tolist()
        for path in runs[0]["layers"]
    }
    results = [r["result"] for r in runs]
    mean = lambda key: float(np.mean([r[key] for r in results]))  # noqa: E731
    kind = first.get("ratio_kind", "recon")
    return {
        "head": first["head"],
        "steps": first["steps"],
        "final_ratio": mean("final_ratio"),
        "ratio_above_1": mean("ratio_above_1"),
        "params": first["params"],
        "min_ratio": min(r["min_ratio"] for r in results),
        "max_ratio": max(r["max_ratio"] for r in results),
        "loss_fine": mean("loss_fine"),
        "loss_coarse": mean("loss_coarse"),
        "heldout_ratio": metrics.get(f"{kind}_ratio", {}).get("value", NAN),
        "coarse_weight": first["coarse_weight"],
        "seed": first["seed"],
        "ratio_kind": kind,
        "objective": first["objective"],
        "preset": first["preset"],
        "nonfinite_steps": sum(r.get("nonfinite_steps", 0) for r in results),
        "heldout": first["heldout"],
        **{k: first[k] for k in TARGET_KEYS if k in first},
        **{k: first[k] for k in first if k.startswith("final_") and k not in ("final_ratio",)},
        "seeds": len(runs),
        "clips": first["heldout"].get("clips", 0),
        "metrics": metrics,
        "attention_layers": layers,
        "step_ratios": runs[0]["step_ratios"],
    }


# ---------------------------------------------------------------------------------------------------------------------
# tables


def _fmt_params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"


def _fmt(x: float, digits: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _ci(stats: dict, key: str = "ratio_ci") -> str:
    lo, hi = stats.get(key, [float("nan")] * 2)
    return "" if math.isnan(lo) else f" [{lo:.4f}, {hi:.4f}]"


def table(rows: list[dict]) -> str:
    """The seed's table, one row per head; caption columns appear when the objective has a caption loss."""
    has_caption = any("final_caption_ratio" in r or r.get("ratio_kind") == "caption" for r in rows)
    joint = any("final_caption_ratio" in r for r in rows)
    cols = ["Head Type", "Steps", "Final Ratio", "Ratio > 1.0", "Parameters", "Held-out Ratio"]
    if joint:
        cols += ["Caption Final Ratio", "Caption Held-out Ratio"]
    dino = any(r.get("target") == "dino" for r in rows)
    if dino:
        cols += DINO_COLUMNS
    cols.append("Notes")
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        kind = r.get("ratio_kind", "recon")
        notes = [
            f"{kind} ratio" if has_caption and not joint else "",
            "fine loss only (seed protocol)" if r["coarse_weight"] == 0 else f"coarse_weight {r['coarse_weight']:g}",
        ]
        if r.get("seeds", 1) > 1:
            notes.append(f"mean of {r['seeds']} seeds")
        if r.get("nonfinite_steps"):
            notes.append(f"{r['nonfinite_steps']} non-finite steps skipped")
        cells = [
            f"**{r['head']}**",
            str(r["steps"]),
            f"**{_fmt(r['final_ratio'])}**",
            f"{100 * r['ratio_above_1']:.1f}%",
            _fmt_params(r["params"]),
            cell(r, f"{kind}_ratio"),  # one seed: bootstrap CI over clips; several: t-interval over seeds
        ]
        if joint:
            cells += [_fmt(r.get("final_caption_ratio")), cell(r, "caption_ratio")]
        if dino:
            cells += dino_cells(r)
        cells.append("; ".join(n for n in notes if n))
        lines.append("| " + " | ".join(cells) + " |")
    if dino:
        lines.append(copy_last_line(rows, len(cols)))
    return "\n".join(lines)


def _num(x: float, style: str) -> str:
    if x is None or math.isnan(x):
        return "n/a"
    return {"ratio": f"{x:.4f}", "loss": f"{x:.4f}", "diff": f"{x:+.4f}", "share": f"{100 * x:.0f}%"}[style]


def cell(row: dict, name: str, style: str = "ratio") -> str:
    metric = row["metrics"].get(name)
    if metric is None:
        return "–"
    lo, hi = metric["ci"]
    if style == "share":  # a share lives in [0, 1]; a t-interval over few seeds can overshoot it
        lo, hi = max(lo, 0.0), min(hi, 1.0)
    text = _num(metric["value"], style)
    return text if math.isnan(lo) else f"{text} [{_num(lo, style)}, {_num(hi, style)}]"


# (column title, metric, style); a column no row has is left out
RATIO_COLUMNS = [
    ("Recon ratio", "recon_ratio", "ratio"),
    ("Recon ratio, frames 1..T-1", "recon_ratio_after_first", "ratio"),
    ("Fine better (clips, frames 1..T-1)", "recon_fine_better_after_first", "share"),
    ("Coarse-only / fine (frames 1..T-1)", "recon_coarse_only_over_fine", "ratio"),
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
    head = ["Objective", "Head", *(c[0] for c in columns), *(e[0] for e in extra)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        cells = [r["objective"], f"**{r['head']}**", *(cell(r, name, style) for _, name, style in columns)]
        cells += [fn(r) for _, fn in extra]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tables(rows: list[dict]) -> str:
    """The held-out ratio table, the controls table and (where there is ground truth) the attention table; a table
    none of whose metrics exist (e.g. controls without a recon loss) is left out."""
    has = lambda columns: any(name in r["metrics"] for r in rows for _, name, _ in columns)  # noqa: E731
    layers = lambda r: " / ".join(f"{100 * v:.0f}" for v in r["attention_layers"].get("fine", [])) or "–"  # noqa: E731
    info = [("Seeds", lambda r: str(r["seeds"])), ("Steps", lambda r: str(r["steps"])),
            ("Head params", lambda r: _fmt_params(r["params"]))]  # fmt: skip
    parts = [
        "**Does looking where the model chose help?** ratio = loss_coarse / loss_fine on held-out clips (> 1: fine "
        "beats coarse).\n\n" + markdown_table(rows, RATIO_COLUMNS, info)
    ]
    if has(CONTROL_COLUMNS):
        parts.append(
            "**Controls** (held-out recon MSE, frames 1..T-1; caption CE per token). h=0 / h of another clip: the "
            "trained head fed zeros or another held-out clip's states instead of its own h; other clip's video: each "
            "caption scored after another clip's frames. A difference near 0 means the loss ignores the video, and "
            "no ratio can be read.\n\n" + markdown_table(rows, CONTROL_COLUMNS)
        )
    if has(ATTENTION_COLUMNS):
        parts.append(
            "**Where the queries look** (frames 1..T-1, where the fine query is the LLM's; mean over encoder layers "
            "and heads): attention mass on the target's patches (ground truth, where the data has it) and the "
            "attention's entropy / ln P (1.000 = uniform: the query cannot look anywhere).\n\n"
            + markdown_table(rows, ATTENTION_COLUMNS, [("Fine per layer (%)", layers)])
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


def write_summary(rows: list[dict], cfg: RunConfig, out: Path) -> None:
    (out / "summary.json").write_text(
        json.dumps([{k: v for k, v in r.items() if k not in ("step_ratios", "heldout")} for r in rows], indent=1)
    )
    t = cfg.train
    header = (
        f"# foveal compare: {cfg.preset} preset, objective {t.objective}\n\n"
        f"{t.batch_size} x {t.grad_accum} clips per step, {cfg.data.num_frames} frames, coarse_weight "
        f"{t.coarse_weight:g}, data {cfg.data.source}. Final Ratio = mean of the last 100 step ratios (training "
        f"batches, as the seed reported it); Held-out Ratio over clips never trained on. {interval_note(rows)}\n\n"
    )
    if rows[0].get("target") == "dino":
        header += dino_header(rows[0])
    (out / "summary.md").write_text(header + table(rows) + "\n\n" + tables(rows) + "\n")
    plot_comparison(rows, out / "comparison.png")


# ---------------------------------------------------------------------------------------------------------------------
# dino target: held-out MSE and cosine beside the ratios, and the copy-last control row

DINO_COLUMNS = ["Held-out MSE fine (t>=1)", "Held-out cos fine (t>=1)", "Copy MSE / MSE fine"]


def dino_cells(r: dict) -> list[str]:
    held, copy = r.get("heldout", {}).get("recon", {}), r.get("copy_last", {})
    return [
        _fmt(held.get("mse_fine_after_first")),
        _fmt(held.get("cos_fine_after_first")),
        _fmt(copy.get("mse_copy_over_fine")) + _ci(copy, "mse_copy_over_fine_ci"),
    ]


def copy_last_line(rows: list[dict], num_cols: int) -> str:
    """Frame t-1's features as frame t's prediction, on the same held-out clips: no parameters, no ratio."""
    copies = [r["copy_last"] for r in rows if "copy_last" in r]
    if not copies:
        return "| copy-last (control) | " + " | ".join(["n/a"] * (num_cols - 1)) + " |"
    c = copies[0]
    same = all(abs(x["mse"] - c["mse"]) <= 1e-6 * max(1.0, abs(c["mse"])) for x in copies)
    note = f"frame t-1 as frame t's prediction; {c['clips']} held-out clips"
    if not same:  # a trainable encoder moves the features each run predicts
        note += "; differs per run (trainable encoder): first run shown"
    lead = ["copy-last (control)", "-", "-", "-", "0"] + ["-"] * (num_cols - 5 - len(DINO_COLUMNS) - 1)
    return "| " + " | ".join([*lead, _fmt(c["mse"]), _fmt(c["cos"]), "1", note]) + " |"


def dino_header(r: dict) -> str:
    shape = "x".join(map(str, r.get("target_shape", [])))
    f, gap = r.get("target_features", {}), r.get("frame_gap", {})
    reduced = (
        f"PCA to {f['pca']} channels keeping {100 * f['explained_variance']:.1f}% of the variance"
        if f.get("pca")
        else "all channels"
    )
    spacing = [f"{gap['frames']} frame(s)" if gap.get("frames") is not None else ""]
    spacing.append(f"{gap['seconds']:.3g} s" if gap.get("seconds") is not None else "")
    if "motion" in gap:  # synthetic clips have no frame rate; say how far objects move instead
        spacing.append(f"synthetic, objects move {gap['motion']:.3g} frame sides per gap")
    return (
        f"Target: the next frame's encoder patch features ({shape}, {reduced}{', CLS appended' if f.get('cls') else ''}"
        f"), loss {r.get('target_loss', 'mse')}. Gap between frames: {', '.join(x for x in spacing if x) or 'n/a'}. "
        "MSE and cosine on frames 1..T-1 (frame 0 has no previous frame); Copy MSE / MSE fine > 1: the head beats "
        "copying the previous frame's features (95% paired-bootstrap CI).\n\n"
    )


def plot_comparison(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kind = "recon" if "recon_ratio" in rows[0]["metrics"] else "caption"
    labels = [f"{r['head']}\n{r['objective']}" for r in rows]
    x = np.arange(len(rows))
    fig, (ax_bar, ax_curve) = plt.subplots(1, 2, figsize=(11, 4))
    bars = [("final_ratio", "train, last 100 steps"), (f"{kind}_ratio", "held-out (95% CI)")]
    if kind == "recon":
        bars.append(("recon_ratio_after_first", "held-out, frames 1..T-1"))
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
    plt.close(fig)
