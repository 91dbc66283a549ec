"""Synthetic clips with ground truth: coloured shapes moving at constant velocity and bouncing off the borders.

Every clip is a pure function of (spec, size, frames, seed, index), so the default needs no download and every run
sees the same pixels. The caption names the target object first ("the small red triangle moves left and bounces.")
and then the other named objects; distractors move too but are never named. Ground truth per frame: every object's
box and mask, and which one is the target. Knobs for the where-to-look benchmark (configs/where.yaml): a size range of
the target's own (small), other objects' speed (0: only the target moves), distractors, a textured background.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from foveal.config import SynthSpec

COLOURS = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 235),
    "yellow": (240, 220, 40),
    "magenta": (220, 50, 220),
    "cyan": (40, 220, 220),
    "orange": (250, 140, 30),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("right", "up right", "up", "up left", "left", "down left", "down", "down right")  # by angle, 45 deg
SIZES = ("small", "large")
WORDS = sorted({*COLOURS, *SHAPES, *SIZES, *" ".join(DIRECTIONS).split(), "the", "a", "moves", "and", "bounces", "."})


@dataclass
class SynthClip:
    frames: np.ndarray  # [T, H, W, 3] uint8
    caption: str
    boxes: np.ndarray  # [T, K, 4] float pixel boxes (x0, y0, x1, y1) of every object, target first
    masks: np.ndarray  # [T, K, H, W] bool, each object's visible pixels (later objects paint over earlier ones)
    target: int = 0  # index of the object the caption names first
    named: int = 1  # objects 0..named-1 are named in the caption; the rest are distractors


def target_attributes(clip: SynthClip) -> dict[str, np.ndarray]:
    """What a probe should find in a frame token: the target's box centre [T, 2] (x, y as shares of the frame side)
    and its colour [T] (index into COLOURS; -1 where it covers no pixel or is not a palette colour)."""
    size = clip.frames.shape[1]
    box = clip.boxes[:, clip.target]  # [T, 4]
    centre = np.stack([box[:, 0] + box[:, 2], box[:, 1] + box[:, 3]], axis=1) / (2 * size)
    palette = np.array(list(COLOURS.values()))  # [8, 3]
    colour = np.full(len(clip.frames), -1)
    for t, (frame, mask) in enumerate(zip(clip.frames, clip.masks[:, clip.target])):
        if mask.any():
            match = np.flatnonzero((palette == frame[mask][0]).all(1))
            colour[t] = match[0] if len(match) else -1
    return {"centre": centre, "colour": colour}


def _bounce(x: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Fold a straight path into [lo, hi] like a ball between two walls; also returns the direction sign."""
    span = hi - lo
    y = np.mod(x - lo, 2 * span)
    return lo + span - np.abs(y - span), np.where(y < span, 1.0, -1.0)


def _shape_mask(shape: str, xx, yy, cx, cy, r) -> np.ndarray:
    """xx, yy [1, H, W] pixel centres; cx, cy [T, 1, 1]; r half-size -> [T, H, W] bool."""
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    # triangle, apex up: half-width grows from 0 at the top to r at the bottom
    return (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2)


def render_clip(spec: SynthSpec, size: int, num_frames: int, seed: int, index: int, gap: int = 1) -> SynthClip:
    """Clip `index`: frame t shows the scene at render step t * gap (gap 0: every frame is the first one)."""
    rng = np.random.default_rng([seed, index, 7919])
    k = spec.num_objects + spec.num_distractors
    colours = rng.choice(list(COLOURS), size=k, replace=k > len(COLOURS))
    shapes = rng.choice(SHAPES, size=k)
    lo, hi = spec.size_range
    sides = rng.uniform(lo, hi, size=k) * size  # object side in pixels
    angles = rng.integers(0, 8, size=k) * np.pi / 4 + rng.uniform(-0.2, 0.2, size=k)
    start = rng.uniform(0, 1, size=(k, 2))
    ranges = [(lo, hi)] * k
    if spec.target_size_range is not None:  # drawn last: clips without the knob keep their pixels
        ranges[0] = tuple(spec.target_size_range)
        sides[0] = rng.uniform(*ranges[0]) * size
    speeds = [spec.speed] + [spec.speed if spec.other_speed is None else spec.other_speed] * (k - 1)
    palette = _palettes(rng, spec, colours, num_frames)  # [K, T] colour names; drawn last, as the size above

    t = gap * np.arange(num_frames, dtype=np.float64)[:, None, None]  # [T, 1, 1] render steps
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)[:, None] + 0.5  # [1, H, W] each
    frames = _background(rng, size, spec.textured_background)
    frames = np.broadcast_to(frames, (num_frames, size, size, 3)).copy()
    if spec.lamp:  # the target lights the room: frame t's background takes its colour of frame t-1
        lit = np.array([COLOURS[c] for c in palette[0][:-1]], dtype=np.float64)  # [T-1, 3]
        frames[1:] = np.round((1 - spec.lamp) * frames[1:] + spec.lamp * lit[:, None, None]).astype(np.uint8)
    boxes = np.zeros((num_frames, k, 4))
    masks = np.zeros((num_frames, k, size, size), dtype=bool)
    bounced = np.zeros(k, dtype=bool)
    order = [*range(1, k), 0] if spec.target_on_top else range(k)  # painting order: later objects cover earlier ones
    for n, j in enumerate(order):  # few objects; each is one vectorised render over all frames
        r = sides[j] / 2
        vel = speeds[j] * size * np.array([np.cos(angles[j]), -np.sin(angles[j])])
        path = start[j] * (size - 2 * r) + r + vel * t[:, 0]  # [T, 2] unfolded
        cx, sx = _bounce(path[:, 0], r, size - r)
        cy, sy = _bounce(path[:, 1], r, size - r)
        bounced[j] = bool((np.diff(sx) != 0).any() or (np.diff(sy) != 0).any())
        mask = _shape_mask(shapes[j], xx, yy, cx[:, None, None], cy[:, None, None], r)  # [T, H, W]
        rgb = np.array([COLOURS[c] for c in palette[j]], dtype=np.uint8)  # [T, 3]
        frames[mask] = np.broadcast_to(rgb[:, None, None], frames.shape)[mask]
        masks[:, list(order[:n])] &= ~mask[:, None]  # occluded pixels belong to the object in front
        masks[:, j] = mask
        boxes[:, j] = np.stack([cx - r, cy - r, cx + r, cy + r], axis=1)

    def describe(j: int) -> str:
        direction = DIRECTIONS[int(np.round((angles[j] % (2 * np.pi)) / (np.pi / 4))) % 8]
        size_word = SIZES[int(sides[j] / size > sum(ranges[j]) / 2)]  # relative to the range it was drawn from
        names = " and ".join(dict.fromkeys(palette[j])) if j == 0 else colours[j]  # the target's colours, in order
        names = palette[j][0] if j == 0 and spec.target_flicker else names  # flickering: its first colour
        text = f"{size_word} {names} {shapes[j]}"
        if speeds[j] == 0:  # a still object: no motion words
            return text
        return text + f" moves {direction}" + (" and bounces" if bounced[j] else "")

    caption = " . ".join(("the " if j == 0 else "a ") + describe(j) for j in range(spec.num_objects)) + " ."
    return SynthClip(frames, caption, boxes, masks, target=0, named=spec.num_objects)


def _palettes(rng: np.random.Generator, spec: SynthSpec, colours: np.ndarray, num_frames: int) -> np.ndarray:
    """Each object's colour in each frame [K, T]: its own colour throughout, except that the target cycles through
    spec.target_colours colours (its own first, then ones no object has while the palette lasts) and flickering
    distractors draw a fresh colour every frame."""
    k = len(colours)
    out = np.repeat(np.asarray(colours)[:, None], num_frames, axis=1).astype(object)
    if spec.target_colours > 1:
        free = [c for c in COLOURS if c not in set(colours)] or [c for c in COLOURS if c != colours[0]]
        n = spec.target_colours - 1
        cycle = [colours[0], *rng.choice(free, size=n, replace=len(free) < n)]
        out[0] = [cycle[t % len(cycle)] for t in range(num_frames)]
    if spec.target_flicker:
        out[0] = rng.choice(list(COLOURS), size=num_frames)
    if spec.distractor_flicker and k > spec.num_objects:
        out[spec.num_objects :] = rng.choice(list(COLOURS), size=(k - spec.num_objects, num_frames))
    return out


def _background(rng: np.random.Generator, size: int, textured: bool) -> np.ndarray:
    if not textured:
        return np.full((size, size, 3), 20, dtype=np.uint8)
    # smooth random texture: low-resolution noise upsampled; static over the clip
    coarse = rng.integers(0, 90, size=(8, 8, 3)).astype(np.uint8)
    reps = -(-size // 8)
    return np.kron(coarse, np.ones((reps, reps, 1), dtype=np.uint8))[:size, :size]


def patch_masks(masks: np.ndarray, patch: int, min_cover: float = 0.0) -> np.ndarray:
    """Pixel masks [..., H, W] -> patch-grid masks [..., H//patch, W//patch]: True where the object covers more than
    min_cover of the patch (default: any pixel). Pixels beyond the last full patch are dropped, as the encoder does."""
    h, w = masks.shape[-2:]
    g_h, g_w = h // patch, w // patch
    cropped = masks[..., : g_h * patch, : g_w * patch]
    cover = cropped.reshape(*masks.shape[:-2], g_h, patch, g_w, patch).mean(axis=(-3, -1))
    return cover > min_cover
