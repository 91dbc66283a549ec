"""report.html for a run folder (`foveal train`) or a comparison folder (`foveal compare`): the summary table, the
ratio and loss curves per head, the comparison chart, the held-out statistics and a gallery of `viz` pictures of a
few held-out clips. One HTML file plus PNG/GIF files beside it (referenced by relative paths), so the folder opens
offline in any browser and can be copied or zipped as a whole.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
import shutil
import subprocess
from pathlib import Path

import markdown
import numpy as np
import torch
import yaml
from matplotlib.ticker import MaxNLocator

from foveal.analysis.inference import load_run
from foveal.analysis.verdict import verdict
from foveal.analysis.viz import heldout_clip, write_viz
from foveal.evaluation.pictures import analyse, summary
from foveal.evaluation.plotting import subplots
from foveal.jsonio import load_numbers, loads_numbers
from foveal.model.backbones import build_vae
from foveal.train.checkpoint import latest

log = logging.getLogger(__name__)

ASSETS = "report"  # <folder>/report/: the curves drawn for the report
GALLERY = "viz"  # <run>/viz/: the gallery pictures (shared with `foveal viz`'s default output folder)


# ---------------------------------------------------------------------------------------------------------------------
# what the folder holds


def runs_below(folder: Path, depth: int, prefix: str = "") -> dict[str, Path]:
    """path below folder -> run folder, for every folder holding results.json at most `depth` levels down."""
    runs = {}
    for p in sorted(q for q in folder.iterdir() if q.is_dir()):
        if (p / "results.json").exists():
            runs[prefix + p.name] = p
        elif depth > 1:
            runs |= runs_below(p, depth - 1, f"{prefix}{p.name}/")
    return runs


def find_runs(folder: Path) -> dict[str, Path]:
    """name -> run folder: the folder itself when it is one run, else the folders below it holding results.json
    (compare: <head>/, --seeds N: <head>/seed-<s>/, --sweep: <point>/<head>[/seed-<s>]/; in the order of
    summary.json when there is one)."""
    if (folder / "results.json").exists():
        return {folder.name: folder}
    runs = runs_below(folder, 3)
    summary = folder / "summary.json"
    if summary.exists():
        order = [r["head"] for r in json.loads(summary.read_text())]
        runs = {k: runs[k] for k in order if k in runs} | runs
    return runs


def read_metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [loads_numbers(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------------------------------
# charts


def _integer_ticks(ax) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def running_mean(values: list[float], k: int) -> list[float]:
    """The mean over a window of k steps centred on each step (shorter at the ends): drawn at the step it is
    centred on, so a change shows where it happened, not k/2 steps late."""
    x = np.asarray(values, dtype=float)
    sums = np.concatenate([[0.0], np.cumsum(x)])
    lo = np.clip(np.arange(len(x)) - k // 2, 0, len(x))
    hi = np.clip(np.arange(len(x)) + (k - 1) // 2 + 1, 0, len(x))
    return ((sums[hi] - sums[lo]) / np.maximum(hi - lo, 1)).tolist()


def kinds_of(results: dict[str, dict]) -> list[str]:
    """Loss kinds trained (recon, caption), primary first."""
    first = next(iter(results.values()))
    return list(first.get("step_ratios", {first.get("ratio_kind", "recon"): []}))


def y_range(values: list[float]) -> tuple[float, float]:
    """Limits that show the data after warm-up (2nd to 98th percentile, 1 included, 10 % margin): one early spike
    or a few outliers no longer flatten every curve."""
    finite = np.array([v for v in values if math.isfinite(v)] + [1.0])
    lo, hi = np.percentile(finite, [2, 98])
    lo, hi = min(lo, 1.0), max(hi, 1.0)
    pad = 0.1 * max(hi - lo, 1e-3)
    return float(lo - pad), float(hi + pad)


def plot_ratio_curves(results: dict, metrics: dict, path: Path, warmup: int = 0) -> None:
    """Per head: the step ratio (faint), its running mean, held-out evaluations (markers), and ratio = 1; the
    y-range from the steps after warm-up."""
    kinds = kinds_of(results)
    fig, axes = subplots(1, len(kinds), figsize=(6.5 * len(kinds), 4), squeeze=False, layout="constrained")
    for ax, kind in zip(axes[0], kinds):
        shown: list[float] = []
        for i, (name, r) in enumerate(results.items()):
            colour = f"C{i}"
            ratios = r.get("step_ratios", {}).get(kind, [])
            steps = [m["step"] for m in metrics[name] if f"{kind}_ratio" in m]
            if len(steps) != len(ratios):  # no metrics.jsonl (or a partial one): number the steps
                steps = list(range(len(ratios)))
            ax.plot(steps, ratios, color=colour, alpha=0.25, lw=0.8)
            ax.plot(steps, running_mean(ratios, max(1, len(ratios) // 20)), color=colour, label=name)
            held = [(m["step"], m[f"heldout_{kind}_ratio"]) for m in metrics[name] if f"heldout_{kind}_ratio" in m]
            final = r.get("heldout", {}).get(kind, {}).get("ratio")
            if final is not None and steps:
                held.append((steps[-1], final))
            if held:
                ax.plot(*zip(*held), "o", color=colour, ms=4)
            shown += ratios[min(warmup, len(ratios) // 2) :] + [v for _, v in held]
        if shown:
            ax.set_ylim(*y_range(shown))
        ax.axhline(1.0, color="k", lw=1, ls="--", label="ratio = 1")
        _integer_ticks(ax)
        ax.set_xlabel("step")
        ax.set_ylabel(f"{kind} ratio = loss_coarse / loss_fine")
        ax.set_title(f"{kind} ratio per step (faint), running mean, held-out (dots)", fontsize=10)
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=100)


def plot_loss_curves(metrics: dict, kinds: list[str], path: Path) -> None:
    """Per head: the coarse (dashed) and fine (solid) training loss, running mean over steps."""
    fig, axes = subplots(1, len(kinds), figsize=(6.5 * len(kinds), 4), squeeze=False, layout="constrained")
    for ax, kind in zip(axes[0], kinds):
        for i, (name, rows) in enumerate(metrics.items()):
            rows = [m for m in rows if f"{kind}_coarse" in m]  # a coarse-only control has no fine loss
            if not rows:
                continue
            steps = [m["step"] for m in rows]
            k = max(1, len(rows) // 20)
            if f"{kind}_fine" in rows[0]:
                fine = running_mean([m[f"{kind}_fine"] for m in rows], k)
                ax.plot(steps, fine, color=f"C{i}", label=f"{name} fine")
            coarse = running_mean([m[f"{kind}_coarse"] for m in rows], k)
            ax.plot(steps, coarse, color=f"C{i}", ls="--", label=f"{name} coarse")
        ax.set_yscale("log")
        _integer_ticks(ax)
        ax.set_xlabel("step")
        ax.set_ylabel(f"{kind} loss (running mean)")
        ax.set_title(f"{kind} training loss: fine (solid), coarse (dashed)", fontsize=10)
        ax.legend(fontsize=7, ncol=2)
    fig.savefig(path, dpi=100)


def plot_per_frame(results: dict, path: Path) -> bool:
    """Held-out recon loss per frame position, coarse vs fine (frame 0 is predicted from the learned blank), and
    the ratio per frame with its 95% interval; the steered frames (t >= 2) are shaded."""
    series = {
        n: r["heldout"]["recon"]
        for n, r in results.items()
        if "per_frame_fine" in r.get("heldout", {}).get("recon", {})
    }
    if not series:
        return False
    fig, (ax, ax_ratio) = subplots(1, 2, figsize=(11, 4), layout="constrained")
    for i, (name, s) in enumerate(series.items()):
        ax.plot(s["per_frame_fine"], color=f"C{i}", marker="o", ms=3, label=f"{name} fine")
        ax.plot(s["per_frame_coarse"], color=f"C{i}", ls="--", label=f"{name} coarse")
        if "per_frame_ratio" in s:
            r = np.asarray(s["per_frame_ratio"], dtype=float)  # [T, 3]: value, lo, hi
            err = np.nan_to_num(np.abs(r[:, 1:].T - r[:, 0]), nan=0.0)
            ax_ratio.errorbar(np.arange(len(r)) + 0.06 * i, r[:, 0], yerr=err, color=f"C{i}", marker="o", ms=3,
                              capsize=2, label=name)  # fmt: skip
    for a in (ax, ax_ratio):
        a.axvspan(s.get("steered_from", 2) - 0.5, len(s["per_frame_fine"]) - 0.5, color="0.9", zorder=0)
        _integer_ticks(a)
        a.set_xlabel("frame t (its prediction uses frames < t); shaded: steered")
    ax_ratio.axhline(1.0, color="k", lw=1, ls="--")
    ax_ratio.set_ylabel("ratio = coarse / fine at frame t")
    ax_ratio.set_title("held-out ratio per frame (95% CI)", fontsize=10)
    ax.set_ylabel("held-out loss")
    ax.set_title("held-out next-frame loss per frame position", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    ax_ratio.legend(fontsize=7)
    fig.savefig(path, dpi=100)
    return True


# ---------------------------------------------------------------------------------------------------------------------
# gallery


def gallery(run: Path, count: int) -> list[dict]:
    """viz pictures of held-out clips 0..count-1 of the run's newest checkpoint, in <run>/viz/. Reused when
    <run>/viz/gallery.json says they were drawn from that very checkpoint (compare's report reuses each head's)."""
    ckpt = latest(run / "checkpoints")
    if ckpt is None or count <= 0 or dense_reader(run):  # the dense reader has no look to draw
        return []
    out = run / GALLERY
    manifest = out / "gallery.json"
    stamp = {"checkpoint": ckpt.name, "mtime_ns": ckpt.stat().st_mtime_ns, "count": count}
    if manifest.exists():
        saved = json.loads(manifest.read_text())
        if saved.get("stamp") == stamp and all((run / p).exists() for e in saved["clips"] for p in e["files"].values()):
            return saved["clips"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg, model, _ = load_run(ckpt, device=device)
    vae = (
        build_vae(cfg.model.vae, cfg.model.frame_size, cfg.train.seed).to(device) if cfg.model.target == "vae" else None
    )
    clips = []
    for i in range(min(count, cfg.data.heldout_clips)):
        view = analyse(model, cfg, heldout_clip(cfg, i), vae)
        paths = write_viz(view, out, layers=False)
        files = {k: str(p.relative_to(run)) for k, p in paths.items()}
        clips.append({"name": view.clip.name, "files": files, "summary": summary(view)})
    manifest.write_text(json.dumps({"stamp": stamp, "clips": clips}, indent=1))
    log.info(f"report: drew {len(clips)} held-out clips into {out}")
    return clips


# ---------------------------------------------------------------------------------------------------------------------
# HTML


def _fmt(x, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))):
        return "n/a"
    return f"{x:.{digits}f}" if isinstance(x, float) else html.escape(str(x))


def _pct(x) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.1f}%"


def _ci(pair) -> str:
    if not pair or any(v is None or math.isnan(v) for v in pair):
        return ""
    return f" <span class=ci>[{pair[0]:.4f}, {pair[1]:.4f}]</span>"


def _table(header: list[str], rows: list[list[str]], cls: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table class={cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def summary_table(results: dict) -> str:
    header = ["head", "steps", "final ratio (train)", "ratio > 1", "head params", "held-out ratio [95% CI]"]
    header += ["held-out coarse", "held-out fine", "fine better", "wall s"]
    rows = []
    for name, r in results.items():
        kind = r.get("ratio_kind", "recon")
        held = r.get("heldout", {}).get(kind, {})
        rows.append(
            [
                f"<b>{html.escape(name)}</b>",
                str(r.get("steps")),
                _fmt(r.get("final_ratio")),
                _pct(r.get("ratio_above_1")),
                f"{r.get('params', 0):,}",
                f"<b>{_fmt(r.get('heldout_ratio'))}</b>" + _ci(held.get("ratio_ci")),  # held-out: what counts
                _fmt(held.get("loss_coarse")),
                _fmt(held.get("loss_fine")),
                f"{100 * held['fine_better_share']:.1f}%" if "fine_better_share" in held else "n/a",
                _fmt(r.get("wall_s"), 1) if isinstance(r.get("wall_s"), float) else _fmt(r.get("wall_s")),
            ]
        )
    return _table(header, rows, "summary")


def heldout_table(results: dict) -> str:
    header = ["head", "loss", "clips", "coarse", "fine", "ratio, steered frames t>=2 [95% CI]"]
    header.append("ratio, all frames [95% CI]")
    header += ["fine better", "autoregressive"]
    rows = []
    for name, r in results.items():
        held = r.get("heldout", {})
        for kind in ("recon", "caption"):
            s = held.get(kind)
            if not s:
                continue
            rows.append(
                [
                    html.escape(name),
                    kind,
                    str(held.get("clips", "")),
                    _fmt(s.get("loss_coarse")),
                    _fmt(s.get("loss_fine")),
                    _fmt(s.get("ratio")) + _ci(s.get("ratio_ci")),
                    _fmt(s.get("ratio_all_frames")) + _ci(s.get("ratio_all_frames_ci")),
                    f"{100 * s['fine_better_share']:.1f}%" if "fine_better_share" in s else "n/a",
                    _fmt(s.get("loss_autoregressive")),
                ]
            )
    return _table(header, rows, "heldout") if rows else "<p>No held-out statistics in this folder.</p>"


def _img(src: str, alt: str) -> str:
    return f'<a href="{html.escape(src)}"><img src="{html.escape(src)}" alt="{html.escape(alt)}"></a>'


def gallery_html(name: str, prefix: str, clips: list[dict]) -> str:
    parts = [f"<h3>{html.escape(name)}</h3>"]
    for c in clips:
        s = c["summary"]
        facts = []
        if "mse_next_mean" in s:
            m = s["mse_next_mean"]
            facts.append(f"next-frame MSE coarse {m['coarse']:.4f}, fine {m['fine']:.4f}, copy-last {m['copy']:.4f}")
        for k in ("coarse", "fine"):
            if "peak_on_target_share" in s.get(k, {}):
                facts.append(f"{k} attention peak on the target in {100 * s[k]['peak_on_target_share']:.0f}% of frames")
        caption = f"“{html.escape(s['caption'])}”<br>" if s.get("caption") else ""
        files = c["files"]
        parts.append(
            "<figure><div class=pair>"
            + _img(f"{prefix}{files['gif']}", f"{name} {c['name']} animation")
            + _img(f"{prefix}{files['png']}", f"{name} {c['name']} grid")
            + "</div><figcaption>"
            + f"<b>{html.escape(c['name'])}</b>: {caption}{html.escape('; '.join(facts))}. "
            + "Left: the clip frame by frame; right: every frame (click for full size)."
            + "</figcaption></figure>"
        )
    return "\n".join(parts)


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f0f0f0; } td:first-child, th:first-child { text-align: left; }
.ci { color: #777; font-size: 12px; } img { max-width: 100%; border: 1px solid #eee; }
figure { margin: 1em 0; } .pair { display: flex; gap: 1em; align-items: flex-start; }
.pair a:first-child { flex: 3; } .pair a:last-child { flex: 1; }
figcaption { font-size: 13px; color: #444; } .warn { color: #a40; }
"""


def gallery_sections(folder: Path, runs: dict[str, Path], gallery_clips: int | None) -> list[str]:
    """Each run's gallery (a failed drawing is named, never hides the numbers already written)."""
    out: list[str] = []
    for name, run in runs.items():
        count = gallery_clips if gallery_clips is not None else _config(run).get("train", {}).get("report_clips", 2)
        try:
            clips = gallery(run, count)
        except Exception as e:  # the run's numbers are already saved; a failed drawing must not hide them
            log.warning(f"report: gallery of {run} failed: {e!r}")
            out.append(f"<p class=warn>{html.escape(name)}: gallery failed: {html.escape(repr(e))}</p>")
            continue
        if clips:
            prefix = "" if run == folder else f"{run.relative_to(folder).as_posix()}/"
            out.append(gallery_html(name, prefix, clips))
    return out


def write_report(folder: str | Path, gallery_clips: int | None = None) -> Path:
    """Write <folder>/report.html (and its pictures) for a run folder or a comparison folder; returns its path.
    gallery_clips: held-out clips drawn per run (default: each run's train.report_clips)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"report: {folder} is not a folder (give a run folder or a compare folder)")
    runs = find_runs(folder)
    if not runs:
        raise FileNotFoundError(f"{folder} holds no results.json (a run folder) nor sub-folders with one (compare)")
    log.info(f"report: writing {folder / 'report.html'} ({len(runs)} run(s))")
    assets = folder / ASSETS
    assets.mkdir(exist_ok=True)
    results = {n: load_numbers(p / "results.json") for n, p in runs.items()}
    metrics = {n: read_metrics(p) for n, p in runs.items()}
    kinds = kinds_of(results)
    first = next(iter(runs.values()))
    cfg = _config(first)
    looks = {n: _config(p).get("model", {}).get("look", "learned") for n, p in runs.items()}

    plot_ratio_curves(results, metrics, assets / "ratio.png", cfg.get("train", {}).get("warmup_steps", 0))
    plot_loss_curves(metrics, kinds, assets / "loss.png")
    body = [
        f"<h1>foveal report: {html.escape(folder.name)}</h1>",
        f"<p>{html.escape(_describe(cfg))} ratio = loss_coarse / loss_fine (&gt; 1: looking where the model chose "
        "helped). Final ratio: the mean of the last 100 step ratios; held-out ratio over clips never trained on, "
        "with a 95% paired-bootstrap interval (held-out numbers in bold).</p>",
        "<h2>Verdict</h2>",
        f"<p class=verdict>{html.escape(verdict(results, looks))}</p>",
        "<h2>Summary</h2>",
        summary_table(results),
        *summary_md(folder),
        "<h2>Ratio during training</h2>",
        _img(f"{ASSETS}/ratio.png", "ratio curves"),
        "<h2>Loss curves</h2>",
        _img(f"{ASSETS}/loss.png", "loss curves"),
    ]
    if (folder / "comparison.png").exists():
        body += ["<h2>Comparison</h2>", _img("comparison.png", "comparison chart")]
    body += ["<h2>Held-out statistics</h2>", heldout_table(results)]
    if plot_per_frame(results, assets / "per_frame.png"):
        body.append(_img(f"{ASSETS}/per_frame.png", "held-out loss per frame"))

    body.append("<h2>Gallery: where it looks</h2>")
    body.append(
        "<p>Held-out clips. Each row: frame t under the coarse (static) and the fine (LLM-chosen) query's attention "
        "(last layer, mean over heads; + marks the peak, the violet box the captioned target, CLS share in the "
        "title), then frame t+1: the true latent, the coarse and fine predictions made with what was read from "
        "frame t, and the copy-last baseline, each with its MSE. <code>foveal viz</code> draws any clip.</p>"
    )
    body += gallery_sections(folder, runs, gallery_clips)

    page = (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>foveal report: {html.escape(folder.name)}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
    path = folder / "report.html"
    tmp = path.with_name(".report.html.tmp")
    tmp.write_text(page)
    os.replace(tmp, path)
    return path


CHROMIUM = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars"]


def screenshot(page: Path, png: Path, width: int = 1280, height: int = 3000) -> Path:
    """A picture of report.html as a browser draws it (headless Chromium), e.g. to check or share it."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        raise FileNotFoundError(
            "--screenshot: no chromium found; install it (apt-get install chromium) or drop the flag"
        )
    png.parent.mkdir(parents=True, exist_ok=True)
    flags = [*CHROMIUM, f"--window-size={width},{height}", f"--screenshot={png.resolve()}"]
    subprocess.run([browser, *flags, page.resolve().as_uri()], capture_output=True, timeout=120, check=False)
    if not png.exists():
        raise FileNotFoundError(f"--screenshot: chromium wrote no {png}")
    return png


def summary_md(folder: Path) -> list[str]:
    """A comparison's summary.md as HTML (its looking-controls, controls, attention and probe tables)."""
    path = folder / "summary.md"
    if not path.exists():
        return []
    text = path.read_text().split("\n", 1)[-1] if path.read_text().startswith("# ") else path.read_text()
    return ["<h2>Held-out tables (summary.md)</h2>", markdown.markdown(text, extensions=["tables"])]


def _config(run: Path) -> dict:
    path = run / "config.yaml"
    return yaml.safe_load(path.read_text()) if path.exists() else {}


def dense_reader(run: Path) -> bool:
    """Whether the run folder holds the dense reader control (model.dense_tokens > 0)."""
    return bool(_config(run).get("model", {}).get("dense_tokens"))


def _describe(cfg: dict) -> str:
    if not cfg:
        return ""
    t, d = cfg.get("train", {}), cfg.get("data", {})
    return (
        f"Preset {cfg.get('preset')}, objective {t.get('objective')}, seed {t.get('seed')}, "
        f"{t.get('batch_size')} x {t.get('grad_accum')} clips per step, {d.get('num_frames')} frames per clip, "
        f"data {d.get('source')}, coarse_weight {t.get('coarse_weight')}, protocol {cfg.get('protocol', 'foveal')}."
    )
