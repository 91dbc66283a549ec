"""`foveal viz`: where each query looked, and what the model predicted from it, for chosen clips.

Per clip: <name>.png (evaluation/pictures.py's grid: one row per frame, the frame under the coarse and the fine
query's attention, then the true, predicted and copy-last next frames with their MSE), <name>.gif (the rows in
sequence), <name>_layers.png (every layer's map) and <name>.json (the per-frame numbers).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from foveal.analysis.inference import load_clip as load_item
from foveal.analysis.inference import load_run
from foveal.config import ConfigError, RunConfig
from foveal.data.dataset import build_datasets
from foveal.data.video import read_clip
from foveal.evaluation.pictures import (
    Clip,
    ClipView,
    analyse,
    grid_figure,
    layers_figure,
    row_frames,
    summary,
)
from foveal.evaluation.plotting import figure_pixels
from foveal.model.backbones import build_vae

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------------------
# clips


def load_clip(spec: str, cfg: RunConfig) -> Clip:
    """'synthetic:<i>' (held-out synthetic clip i, with its target box) or a video file, at the run's frame size."""
    size = cfg.model.frame_size
    if spec.startswith("synthetic:"):
        item = load_item(spec, cfg)
        truth = item["truth"]
        scale = size / truth.frames.shape[1]  # ground truth is in render pixels
        boxes = truth.boxes[:, truth.target] * scale
        return Clip(item["frames"], spec.replace(":", "-"), item["caption"], boxes, truth.masks[:, truth.target])
    item = read_clip(spec, cfg.data, size)
    return Clip(item["frames"], Path(spec).stem, item.get("caption", ""))


def heldout_clip(cfg: RunConfig, i: int) -> Clip:
    """Held-out clip i of the run's own data (synthetic ones with their target box)."""
    if cfg.data.source == "synthetic":
        return load_clip(f"synthetic:{i}", cfg)
    item = build_datasets(cfg)[1][i]
    return Clip(item["frames"], f"heldout-{i}", item.get("caption", ""))


def save_gif(images: list[np.ndarray], path: Path, ms_per_frame: int = 600) -> None:
    frames = [Image.fromarray(im) for im in images]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=ms_per_frame, loop=0)


def write_viz(
    view: ClipView, out_dir: str | Path, layer: int | None = -1, head: int | None = None, layers: bool = True
) -> dict[str, Path]:
    """<name>.png (grid), <name>.gif (the rows in sequence), <name>_layers.png (every layer), <name>.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = view.clip.name
    paths = {"png": out / f"{name}.png", "gif": out / f"{name}.gif", "json": out / f"{name}.json"}
    fig = grid_figure(view, layer, head)
    fig.set_dpi(90)
    pixels = figure_pixels(fig)  # one rendering for the PNG and the GIF's rows
    Image.fromarray(pixels).save(paths["png"])
    save_gif(row_frames(fig, pixels), paths["gif"])
    if layers:
        paths["layers"] = out / f"{name}_layers.png"
        fig = layers_figure(view, head)
        fig.savefig(paths["layers"], dpi=72)
    paths["json"].write_text(json.dumps(summary(view, layer, head), indent=1))
    return paths


def visualize(
    checkpoint: str | Path,
    videos: list[str],
    out_dir: str | Path | None = None,
    layer: int | None = -1,
    head: int | None = None,
    decode: bool | None = None,
) -> list[dict[str, Path]]:
    """The `foveal viz` command: load the run once, then every clip."""
    cfg, model, _ = load_run(checkpoint)
    check_selection(model, layer, head)
    vae = build_vae(cfg.model.vae, cfg.model.frame_size, cfg.train.seed) if cfg.model.target == "vae" else None
    if out_dir is None:  # <run folder>/viz
        path = Path(checkpoint)
        run = path if path.is_dir() else path.parent.parent if path.parent.name == "checkpoints" else path.parent
        out_dir = run / "viz"
    return [write_viz(analyse(model, cfg, load_clip(v, cfg), vae, decode), out_dir, layer, head) for v in videos]


def check_selection(model, layer: int | None, head: int | None) -> None:
    enc = model.encoder
    n_layers = len(enc.dino.encoder.layer) if enc.deep else 1
    n_heads = enc.num_heads if enc.deep else 1
    if layer is not None and not -n_layers <= layer < n_layers:
        raise ConfigError(
            f"--layer: {layer} is out of range; the encoder has {n_layers} query layers (0..{n_layers - 1})"
        )
    if head is not None and not 0 <= head < n_heads:
        raise ConfigError(f"--head: {head} is out of range; the encoder has {n_heads} heads (0..{n_heads - 1})")
