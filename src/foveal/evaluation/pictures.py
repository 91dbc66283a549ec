"""Pictures of one clip: where each query looked and what the model predicted from it, from one forward pass.

`analyse` runs the coarse and the fine pass over a clip with the attention kept (`return_attention=True`: the forward
pass's own softmax, not a recomputation) and, for a VAE or pixels target, scores and draws the next-frame
predictions. `grid_figure` draws one row per frame t: the frame under the coarse and the fine query's attention over
the patch grid, then frame t+1 as the model saw it coming (the true target, the coarse and fine predictions made with
the token read from frame t, and the copy-last baseline), each with its MSE. The map drawn is exactly weights[1:]
(CLS is index 0; its share is printed in each title because the patch map does not sum to 1 when CLS takes mass).
`foveal viz` (analysis/viz.py) writes these for chosen clips; training draws one held-out clip into TensorBoard at
each evaluation (train/logger.py).
"""

from __future__ import annotations

import logging
import math
import textwrap
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib import patheffects
from matplotlib.patches import Rectangle

from foveal.config import RunConfig
from foveal.data.frames import encoder_input
from foveal.data.synthetic import patch_masks
from foveal.evaluation.plotting import subplots
from foveal.model.encoder import look_mask
from foveal.model.foveated import Batch
from foveal.model.targets.vae import encode_latents
from foveal.objectives import score

log = logging.getLogger(__name__)


PASSES = ("coarse", "fine")
NEXT = ("true", "coarse", "fine", "copy")  # the next-frame panels
ATTENTION_CMAP = "inferno"  # perceptually uniform, dark to bright; drawn only above the uniform share
BOX_COLOUR = (105 / 255, 0, 135 / 255)  # the RGB colour farthest from every synthetic palette colour (and black)
NEXT_TITLES = {"true": "true", "coarse": "coarse pred", "fine": "fine pred", "copy": "copy-last"}


@dataclass
class Clip:
    frames: torch.Tensor  # uint8 [T, 3, S, S] at the model's frame size
    name: str
    caption: str = ""
    boxes: np.ndarray | None = None  # [T, 4] the target's (x0, y0, x1, y1) in frame pixels, when known
    mask: np.ndarray | None = None  # [T, R, R] the target's pixels at render size R, when known (the oracle look)


@dataclass
class ClipView:
    """Everything the pictures show for one clip (CPU tensors)."""

    clip: Clip
    attention: dict[str, torch.Tensor]  # pass -> [T, L, heads, P] softmax weights of the forward (P = CLS + g*g)
    patch: int
    grid: int
    losses: dict[str, torch.Tensor]  # coarse | fine | copy -> [T] MSE of each frame's prediction; {} for no recon
    pictures: dict[str, torch.Tensor]  # true | coarse | fine | copy -> uint8 [T, 3, H, W] (index t = frame t)
    latent_view: str  # how latents became pictures: "decoded" (VAE decoder) or "latent channels 0-2"
    fine_trained: bool = True  # False for a coarse-only model: its fine column is the untrained query path


# ---------------------------------------------------------------------------------------------------------------------
# the numbers


def dataset_clip(dataset, i: int, name: str) -> Clip:
    """Item i of a dataset as a Clip; with the target's box (frame pixels) and mask where it has ground truth."""
    item = dataset[i]
    if not hasattr(dataset, "clip"):  # video files: no ground truth
        return Clip(item["frames"], name, item.get("caption", ""))
    truth = dataset.clip(i)
    scale = item["frames"].shape[-1] / truth.frames.shape[1]  # ground truth is in render pixels
    return Clip(
        item["frames"], name, item["caption"], truth.boxes[:, truth.target] * scale, truth.masks[:, truth.target]
    )


def _to_uint8(x: torch.Tensor) -> torch.Tensor:  # [-1, 1] -> uint8
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def latent_pictures(latents: torch.Tensor, vae, decode: bool) -> torch.Tensor:
    """latents [N, C, h, w] (x scaling factor) -> uint8 [N, 3, H, W]: the VAE decoder's pixels, or the first three
    channels as colours (a random VAE decodes to noise; its channels still show where things are)."""
    if decode:
        return _to_uint8(vae.decode(latents / vae.config.scaling_factor).sample)
    rgb = latents[:, :3].float()
    if rgb.shape[1] < 3:
        rgb = rgb[:, :1].expand(-1, 3, -1, -1)
    lo = rgb.amin(dim=(0, 2, 3), keepdim=True)  # one scale for the whole set, so panels compare
    hi = rgb.amax(dim=(0, 2, 3), keepdim=True)
    return _to_uint8((rgb - lo) / (hi - lo).clamp(min=1e-6) * 2 - 1)


def oracle_bias(model, clip: Clip, frame_size: int) -> torch.Tensor | None:
    """An oracle-look model reads its fine pass at the target, here as in training ([1, T, P] mask); None for a
    learned-look model. Without ground truth (a video file) its fine column is the unmasked query's, and says so."""
    if model.options.look != "oracle":
        return None
    if clip.mask is None:
        log.warning(f"viz: {clip.name} has no ground-truth target; the oracle-look model's fine column is unmasked")
        return None
    patch = model.encoder.patch_size * clip.mask.shape[-1] // frame_size  # the encoder's patch in render pixels
    looks = torch.from_numpy(patch_masks(clip.mask, patch)).flatten(1)[None]  # [1, T, G*G]
    return look_mask(looks).to(next(model.parameters()).device)


@torch.no_grad()
def analyse(model, cfg: RunConfig, clip: Clip, vae=None, decode: bool | None = None) -> ClipView:
    """One forward (coarse, then fine) over the clip with the attention kept; losses and pictures of the next-frame
    predictions when the run predicts pixels, or VAE latents and a VAE is given."""
    if model.dense_tokens:
        raise ValueError("viz: a dense reader (model.dense_tokens > 0) has no query, so no look to draw")
    device = next(model.parameters()).device
    frames = clip.frames.to(device)
    batch = Batch(encoder_input(frames)[None])
    if cfg.model.target == "vae" and vae is not None:
        batch.targets = encode_latents(vae, frames)[None]  # [1, T, C, h, w]
    elif cfg.model.target == "pixels":
        batch.targets = model.target(batch, None)  # [1, T, 3, s, s] pooled frames in [-1, 1]
    targets = batch.targets
    was_training = model.training
    model.eval()
    # a coarse-only model (fine_iterations 0) still has the query path: drawn for comparison, marked untrained
    fine_iterations = max(1, cfg.train.fine_iterations)
    bias = oracle_bias(model, clip, cfg.model.frame_size)
    recon = targets is not None
    out = model(batch, recon=recon, fine_iterations=fine_iterations, return_attention=True, fine_bias=bias)
    model.train(was_training)
    passes = {"coarse": out.coarse, "fine": out.fine[-1]}
    attention = {k: p.attention.weights[:, 0].float().cpu() for k, p in passes.items()}  # [T, L, heads, P]

    losses, pictures, view = {}, {}, ""
    if targets is not None:
        copy = model.previous(targets)  # what the head was given: the blank for frame 0, then the true frame t-1
        coarse, fine = score(model, out, batch, ("recon",))
        losses = {"coarse": coarse.recon[0].float().cpu(), "fine": fine[-1].recon[0].float().cpu()}
        losses["copy"] = (copy.float() - targets.float()).pow(2).flatten(2).mean(-1)[0].cpu()
        stack = torch.cat([targets, passes["coarse"].pred, passes["fine"].pred, copy])  # [4, T, C, h, w]
        if cfg.model.target == "pixels":  # already a picture
            flat, view = _to_uint8(stack.flatten(0, 1)).cpu(), "pooled pixels"
        else:
            decode = cfg.model.vae.source != "random" if decode is None else decode
            flat = latent_pictures(stack.flatten(0, 1).to(device), vae, decode).cpu()
            view = "decoded" if decode else "latent channels 0-2"
        pictures = dict(zip(NEXT, flat.unflatten(0, (4, -1))))
    patch = model.encoder.patch_size
    grid = cfg.model.frame_size // patch
    return ClipView(clip, attention, patch, grid, losses, pictures, view, cfg.train.fine_iterations > 0)


def patch_maps(weights: torch.Tensor, grid: int, layer: int | None = -1, head: int | None = None):
    """weights [T, L, heads, P] -> (maps [T, g, g], cls [T]): one layer (None: the mean over layers) and one head
    (None: the mean over heads). The map is exactly weights[..., 1:] in the encoder's row-major patch order."""
    w = weights.mean(1) if layer is None else weights[:, layer]  # [T, heads, P]
    w = w.mean(1) if head is None else w[:, head]  # [T, P]
    return w[:, 1:].reshape(-1, grid, grid), w[:, 0]


def peak_xy(m: torch.Tensor, patch: int) -> tuple[float, float]:
    """A map [g, g] -> pixel centre (x, y) of its most-attended patch."""
    r, c = divmod(int(m.argmax()), m.shape[1])
    return (c + 0.5) * patch, (r + 0.5) * patch


def in_box(xy: tuple[float, float], box) -> bool:
    x, y = xy
    return bool(box[0] <= x <= box[2] and box[1] <= y <= box[3])


def summary(view: ClipView, layer: int | None = -1, head: int | None = None) -> dict:
    """Per-frame numbers of the picture: CLS share, peak position, on-target hits, losses."""
    out: dict = {"clip": view.clip.name, "caption": view.clip.caption, "layer": layer, "head": head}
    for k in PASSES:
        maps, cls = patch_maps(view.attention[k], view.grid, layer, head)
        peaks = [peak_xy(m, view.patch) for m in maps]
        out[k] = {"cls_share": cls.tolist(), "peak_xy": peaks, "patch_max": maps.flatten(1).amax(1).tolist()}
        if view.clip.boxes is not None:
            hits = [in_box(p, b) for p, b in zip(peaks, view.clip.boxes)]
            out[k]["peak_on_target"] = hits
            out[k]["peak_on_target_share"] = float(np.mean(hits))
    if view.losses:
        out["mse"] = {k: v.tolist() for k, v in view.losses.items()}  # index t: the prediction of frame t
        out["mse_next_mean"] = {k: float(v[1:].mean()) for k, v in view.losses.items()}  # frames 1.. (shown)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# the pictures


def _hwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(1, 2, 0).numpy()


def draw_attention(ax, frame: torch.Tensor, m: torch.Tensor, patch: int, vmax: float, box=None, title: str = ""):
    """The frame with a patch-grid map [g, g] over it. The grid covers g*patch pixels: the encoder drops the last
    frame_size % patch rows and columns, so those stay uncovered (dashed line where the grid ends)."""
    size, covered = frame.shape[-1], m.shape[-1] * patch
    ax.imshow(_hwc(frame), extent=(0, size, size, 0), interpolation="nearest")
    values = m.numpy()
    # opaque only above the uniform share 1/g^2, fully so at twice it: a flat map leaves the frame visible
    uniform = 1.0 / values.size
    alpha = 0.8 * np.clip((values - uniform) / max(vmax - uniform, uniform), 0, 1)
    shown = ax.imshow(
        values,
        cmap=ATTENTION_CMAP,
        vmin=0,
        vmax=vmax,
        alpha=alpha,
        extent=(0, covered, covered, 0),
        interpolation="nearest",
    )
    if covered < size:
        ax.plot([covered, covered, 0], [0, covered, covered], color="w", lw=0.6, ls="--")
    if box is not None:
        x0, y0, x1, y1 = box
        rect = Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=BOX_COLOUR, lw=1.4)
        rect.set_path_effects([patheffects.withStroke(linewidth=3.2, foreground="white")])
        ax.add_patch(rect)
    x, y = peak_xy(m, patch)  # white on black: visible on any colour, the objects' own included
    ax.plot([x], [y], marker="+", color="black", ms=10, mew=3.6)
    ax.plot([x], [y], marker="+", color="white", ms=8, mew=1.4)
    ax.set_xlim(0, size)
    ax.set_ylim(size, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8)
    return shown


def draw_picture(ax, picture: torch.Tensor, title: str) -> None:
    ax.imshow(_hwc(picture), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8)


def columns(view: ClipView) -> int:
    return len(PASSES) + (len(NEXT) if view.pictures else 0)


def draw_row(axes, view: ClipView, t: int, maps: dict, cls: dict, label: str) -> None:
    """Row t: coarse and fine attention over frame t, then frame t+1: true, predicted (coarse, fine), copy-last."""
    frame, box = view.clip.frames[t].cpu(), None if view.clip.boxes is None else view.clip.boxes[t]
    vmax = max(float(maps[k][t].max()) for k in PASSES)  # one colour scale per row: coarse and fine compare
    for ax, k in zip(axes, PASSES):
        peak = float(maps[k][t].max()) * maps[k][t].numel()
        title = f"frame {t}: {k}\nCLS {100 * float(cls[k][t]):.0f}%, peak {peak:.1f}x uniform"
        shown = draw_attention(ax, frame, maps[k][t], view.patch, vmax, box, title)
    cax = axes[len(PASSES) - 1].inset_axes([1.05, 0.1, 0.07, 0.8])  # in the gap grid_figure leaves for it
    bar = axes[0].figure.colorbar(shown, cax=cax)
    bar.set_label("attention share", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    axes[0].set_ylabel(label, fontsize=8)
    if not view.pictures:
        return
    for ax, k in zip(axes[len(PASSES) :], NEXT):
        if t + 1 >= len(view.clip.frames):  # the last frame has no next frame to predict: its panels stay empty
            ax.axis("off")
            continue
        mse = "" if k == "true" else f"  mse {float(view.losses[k][t + 1]):.4f}"
        draw_picture(ax, view.pictures[k][t + 1], f"{t + 1}: {NEXT_TITLES[k]}{mse}")


def headline(view: ClipView, layer: int | None, head: int | None) -> str:
    n_layers = view.attention["coarse"].shape[1]
    which = "the mean over layers" if layer is None else f"layer {layer % n_layers} of 0..{n_layers - 1}"
    where = f"{which}, {'mean over heads' if head is None else f'head {head}'}"
    text = f"{view.clip.name}: attention at {where}"
    if view.clip.boxes is not None:
        text += "; violet box: the captioned target; + marks the peak"
    if view.losses:
        mean = {k: float(v[1:].mean()) for k, v in view.losses.items()}
        ratio = mean["coarse"] / max(mean["fine"], 1e-12)
        text += (
            f"\nnext-frame MSE (frames 1..): coarse {mean['coarse']:.4f}, fine {mean['fine']:.4f}, "
            f"copy-last {mean['copy']:.4f}, ratio {ratio:.3f}; latents shown as {view.latent_view}"
        )
    if not view.fine_trained:
        text += "\ncoarse-only model: its fine column is the query path it never trained, shown for comparison"
    if view.clip.caption:
        text += f"\n“{view.clip.caption}”"
    return text


def wrap(text: str, width_in: float, fontsize: float) -> str:
    """Wrap each line of a title to fit a figure width_in inches wide."""
    chars = max(20, int(width_in * 72 / (0.55 * fontsize)))  # a glyph is about 0.55 em wide
    return "\n".join(textwrap.fill(line, chars) for line in text.splitlines())


def _maps(view: ClipView, layer, head):
    pairs = {k: patch_maps(view.attention[k], view.grid, layer, head) for k in PASSES}
    return {k: v[0] for k, v in pairs.items()}, {k: v[1] for k, v in pairs.items()}


GRID_GAPS = {"side": 0.4, "across": 0.25, "bar": 0.3, "left": 0.35, "bottom": 0.1}  # inches; side: titles above a cell


def grid_axes(t_count: int, ncol: int, cell: float, title_lines: int):
    """(figure, axes [t_count, ncol]) of square cells `cell` inches apart, laid out by hand: constrained layout took
    most of the ~2.5 s a gallery picture cost. After the attention columns a gap holds their colour bar."""
    g = GRID_GAPS
    side, top = cell - g["side"], 0.1 + 0.1625 * title_lines + g["side"]  # a 9 pt title line is ~0.16 in
    width = g["left"] + ncol * (side + g["across"]) + g["bar"]
    height = top + t_count * cell - g["side"] + g["bottom"]
    ratios = [1.0] * len(PASSES) + [g["bar"] / side] + [1.0] * (ncol - len(PASSES))
    spec = {
        "width_ratios": ratios,
        "left": g["left"] / width,
        "right": 1 - 0.1 / width,
        "top": 1 - top / height,
        "bottom": g["bottom"] / height,
        "wspace": g["across"] / ((ncol * side + g["bar"]) / (ncol + 1)),  # matplotlib's gaps: shares of a mean cell
        "hspace": g["side"] / side,
    }
    fig, axes = subplots(t_count, ncol + 1, figsize=(width, height), squeeze=False, gridspec_kw=spec)
    for ax in axes[:, len(PASSES)]:
        ax.remove()  # the colour bar's gap
    return fig, np.delete(axes, len(PASSES), axis=1)


def grid_figure(view: ClipView, layer: int | None = -1, head: int | None = None, cell: float = 1.9):
    t_count, ncol = len(view.clip.frames), columns(view)
    title = wrap(headline(view, layer, head), cell * ncol, 9)
    fig, axes = grid_axes(t_count, ncol, cell, title.count("\n") + 1)
    maps, cls = _maps(view, layer, head)
    for t in range(t_count):
        draw_row(axes[t], view, t, maps, cls, f"frame {t}")
    fig.suptitle(title, fontsize=9, x=0.01, y=1 - 0.05 / fig.get_figheight(), ha="left", va="top")
    return fig


def layers_figure(view: ClipView, head: int | None = None, cell: float = 1.3):
    """Every layer's map (and their mean) for both passes: rows frame t coarse, frame t fine; one colour scale per
    row."""
    t_count, n_layers = len(view.clip.frames), view.attention["coarse"].shape[1]
    ncol = n_layers + 1
    fig, axes = subplots(
        2 * t_count, ncol, figsize=(cell * ncol, cell * 2 * t_count + 0.6), squeeze=False, layout="constrained"
    )
    for t in range(t_count):
        box = None if view.clip.boxes is None else view.clip.boxes[t]
        for i, k in enumerate(PASSES):
            row = axes[2 * t + i]
            per_layer = [patch_maps(view.attention[k][t : t + 1], view.grid, layer, head) for layer in range(n_layers)]
            per_layer.append(patch_maps(view.attention[k][t : t + 1], view.grid, None, head))
            vmax = max(float(m.max()) for m, _ in per_layer)
            for j, (ax, (m, c)) in enumerate(zip(row, per_layer)):
                name = f"layer {j}" if j < n_layers else "mean"
                title = f"{name} (CLS {100 * float(c[0]):.0f}%)"
                draw_attention(ax, view.clip.frames[t].cpu(), m[0], view.patch, vmax, box, title)
            row[0].set_ylabel(f"frame {t} {k}", fontsize=8)
    title = f"{view.clip.name}: every layer's attention, {'mean over heads' if head is None else f'head {head}'}"
    fig.suptitle(wrap(title, cell * ncol, 10), fontsize=10)
    return fig


def row_frames(fig, pixels: np.ndarray) -> list[np.ndarray]:
    """The rendered grid (pixels [H, W, 3] = figure_pixels(fig)) cut into one picture per row, each under the
    figure's headline: the GIF's frames, from the one rendering the PNG is (a figure per frame took ~1.5 s a clip)."""
    renderer, height = fig.canvas.get_renderer(), pixels.shape[0]
    spans: dict[int, tuple[float, float]] = {}  # grid row -> its axes' extent, display pixels from the bottom
    for ax in fig.axes:
        spec, box = ax.get_subplotspec(), ax.get_tightbbox(renderer)
        if spec is None or box is None:  # a colourbar sits inside its row
            continue
        lo, hi = spans.get(spec.rowspan.start, (math.inf, -math.inf))
        spans[spec.rowspan.start] = (min(lo, box.y0), max(hi, box.y1))
    bands = [(max(0, int(height - hi)), min(height, math.ceil(height - lo))) for _, (lo, hi) in sorted(spans.items())]
    title, tallest = pixels[: bands[0][0]], max(b - a for a, b in bands)
    frames = []
    for a, b in bands:
        row = np.full((tallest + 4, *pixels.shape[1:]), 255, np.uint8)  # rows differ by a few pixels: one size
        row[: b - a] = pixels[a:b]
        frames.append(np.concatenate([title, row]))
    return frames
