"""`foveal compare`: train one model per prediction head under the same seed, data, order and budget, then write the
seed-style table (summary.md / summary.json), each head's results.json and a chart of the ratios."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from .config import RunConfig, replace
from .report import write_report
from .train import train

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


def compare(cfg: RunConfig, heads: list[str], out_dir: str | Path, quiet: bool = False) -> list[dict]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for head in heads:
        run = replace(cfg, model={"head": head}, out_dir=str(out / head))
        t0 = time.time()
        result = train(run, quiet=quiet)
        if not result:  # a non-zero rank under torchrun: rank 0 writes the tables
            continue
        rows.append(result)
        if not quiet:
            print(
                f"{head}: {result['steps']} steps in {time.time() - t0:.0f} s, "
                f"final ratio {result['final_ratio']:.4f}, held-out {result['heldout_ratio']:.4f}"
            )
    if rows:
        write_summary(rows, cfg, out)
        write_report(out, quiet=quiet)
    return rows


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
        held = r.get("heldout", {}).get(kind, {})
        notes = [
            f"{kind} ratio" if has_caption and not joint else "",
            "fine loss only (seed protocol)" if r["coarse_weight"] == 0 else f"coarse_weight {r['coarse_weight']:g}",
        ]
        if r.get("nonfinite_steps"):
            notes.append(f"{r['nonfinite_steps']} non-finite steps skipped")
        cells = [
            f"**{r['head']}**",
            str(r["steps"]),
            f"**{_fmt(r['final_ratio'])}**",
            f"{100 * r['ratio_above_1']:.1f}%",
            _fmt_params(r["params"]),
            _fmt(r["heldout_ratio"]) + _ci(held),
        ]
        if joint:
            cap = r.get("heldout", {}).get("caption", {})
            cells += [_fmt(r.get("final_caption_ratio")), _fmt(r.get("heldout_caption_ratio")) + _ci(cap)]
        if dino:
            cells += dino_cells(r)
        cells.append("; ".join(n for n in notes if n))
        lines.append("| " + " | ".join(cells) + " |")
    if dino:
        lines.append(copy_last_line(rows, len(cols)))
    return "\n".join(lines)


def write_summary(rows: list[dict], cfg: RunConfig, out: Path) -> None:
    summary = [
        {k: r[k] for k in SUMMARY_KEYS}
        | {k: r[k] for k in r if k.startswith(("final_", "heldout_")) and k not in SUMMARY_KEYS and k != "heldout"}
        | {k: r[k] for k in TARGET_KEYS if k in r}
        for r in rows
    ]
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    t = cfg.train
    header = (
        f"# foveal compare: {cfg.preset} preset, objective {t.objective}\n\n"
        f"seed {t.seed}, {t.batch_size} x {t.grad_accum} clips per step, {cfg.data.num_frames} frames, "
        f"coarse_weight {t.coarse_weight:g}, data {cfg.data.source}. Final Ratio = mean of the last 100 step ratios "
        f"(coarse/fine, > 1: looking where the model chose helped); Held-out Ratio over "
        f"{rows[0].get('heldout', {}).get('clips', 0)} clips never trained on, with a 95% paired-bootstrap CI.\n\n"
    )
    if rows[0].get("target") == "dino":
        header += dino_header(rows[0])
    (out / "summary.md").write_text(header + table(rows) + "\n")
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

    heads = [r["head"] for r in rows]
    x = range(len(rows))
    fig, (ax_bar, ax_curve) = plt.subplots(1, 2, figsize=(11, 4))
    train_r = [r["final_ratio"] for r in rows]
    held = [r["heldout_ratio"] for r in rows]
    kind = rows[0].get("ratio_kind", "recon")
    err = [
        [max(0.0, h - r.get("heldout", {}).get(kind, {}).get("ratio_ci", [h, h])[0]) for h, r in zip(held, rows)],
        [max(0.0, r.get("heldout", {}).get(kind, {}).get("ratio_ci", [h, h])[1] - h) for h, r in zip(held, rows)],
    ]
    err = [[0.0 if math.isnan(v) else v for v in side] for side in err]
    # bars grow from ratio = 1, so the sign of each effect is what the eye sees
    ax_bar.bar(
        [i - 0.2 for i in x], [v - 1 for v in train_r], bottom=1.0, width=0.4, label="final (train, last 100 steps)"
    )
    ax_bar.bar(
        [i + 0.2 for i in x],
        [v - 1 for v in held],
        bottom=1.0,
        width=0.4,
        yerr=err,
        capsize=3,
        label="held-out (95% CI)",
    )
    ax_bar.axhline(1.0, color="k", lw=1, ls="--")
    ax_bar.set_xticks(list(x), heads, rotation=20)
    ax_bar.set_ylabel("ratio = loss_coarse / loss_fine")
    values = [v for v in train_r + held if not math.isnan(v)]
    span = max([abs(v - 1) for v in values] + [0.002]) * 1.4
    ax_bar.set_ylim(1 - span, 1 + span)
    ax_bar.legend(fontsize=8)
    ax_bar.set_title("ratio per head (> 1: fine beats coarse)")
    for r in rows:
        ratios = r["step_ratios"][kind]
        k = max(1, len(ratios) // 20)  # running mean keeps the curves readable
        smooth = [
            sum(ratios[max(0, i - k + 1) : i + 1]) / len(ratios[max(0, i - k + 1) : i + 1]) for i in range(len(ratios))
        ]
        ax_curve.plot(smooth, label=r["head"])
    ax_curve.axhline(1.0, color="k", lw=1, ls="--")
    ax_curve.set_xlabel("step")
    ax_curve.set_title(f"{kind} ratio during training (running mean)")
    ax_curve.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
