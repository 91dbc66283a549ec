"""The where-to-look benchmark's ground truth: masks line up with the rendered pixels at patch resolution."""

import numpy as np
import pytest

from foveal.config import SynthSpec, load_config
from foveal.data.dataset import SyntheticClips
from foveal.data.synthetic import COLOURS, patch_masks, render_clip


def test_single_object_mask_covers_exactly_its_pixels():
    spec = SynthSpec(num_objects=1, num_distractors=0, size_range=[0.1, 0.2])
    for index in range(5):
        clip = render_clip(spec, 64, 6, seed=0, index=index)
        drawn = (clip.frames != clip.frames[0, 0, 0]).any(-1)  # [T, H, W] pixels that differ from the plain background
        assert drawn.any()
        assert np.array_equal(clip.masks[:, 0], drawn)
        # at patch resolution: exactly the patches that hold at least one of its pixels
        expected = drawn.reshape(6, 8, 8, 8, 8).any(axis=(2, 4))
        assert np.array_equal(patch_masks(clip.masks[:, 0], 8), expected)
        x0, y0, x1, y1 = clip.boxes[:, 0].T  # the box holds the mask
        ys, xs = np.nonzero(drawn[0])
        assert (
            x0[0] <= xs.min() + 0.5 and xs.max() + 0.5 <= x1[0] and y0[0] <= ys.min() + 0.5 and ys.max() + 0.5 <= y1[0]
        )


def test_where_preset_target_is_visible_named_and_the_only_mover():
    cfg = load_config("where", overrides=["data.num_frames=6"])
    spec = cfg.data.synthetic
    clips = SyntheticClips(cfg.data, cfg.model.frame_size, 8)
    for i in range(8):
        clip = clips.clip(i)
        target = clip.masks[:, clip.target]  # [T, H, W]
        assert target.any(axis=(1, 2)).all(), "the target is on top: visible in every frame"
        colour = clip.frames[target]  # every target pixel has the target's colour, named first in the caption
        named = clip.caption.split()[2]
        assert (colour == COLOURS[named]).all() and clip.caption.startswith("the ")
        side = clip.boxes[0, 0, 2] - clip.boxes[0, 0, 0]
        lo, hi = spec.target_size_range or spec.size_range
        assert lo * 64 <= side <= hi * 64
        others = clip.boxes[:, 1:]
        assert np.allclose(others, others[:1]), "distractors stand still"
        assert not np.allclose(clip.boxes[:, 0], clip.boxes[:1, 0]), "the target moves"
        # the dataset's ground truth: the target's patches in the encoder's row-major order
        grid = clips.target_patches(i, 8).numpy()  # [T, 64]
        assert np.array_equal(grid, patch_masks(target, 8).reshape(6, 64))
        assert grid.sum(1).min() >= 1


def test_target_patches_at_a_larger_render_size():
    cfg = load_config("where", overrides=["data.num_frames=3", "data.synthetic.render_size=128"])
    clips = SyntheticClips(cfg.data, cfg.model.frame_size, 2)
    grid = clips.target_patches(0, 8).numpy()  # 16-px patches at 128 px = the 8 x 8 grid of the 64-px frames
    clip = clips.clip(0)
    assert grid.shape == (3, 64)
    assert np.array_equal(grid, patch_masks(clip.masks[:, 0], 16).reshape(3, 64))
    bad = SyntheticClips(load_config("where", overrides=["data.synthetic.render_size=100"]).data, 64, 1)
    with pytest.raises(ValueError, match="render_size"):
        bad.target_patches(0, 8)


def test_default_spec_is_unchanged_by_the_knobs():
    """The new knobs left at their defaults draw nothing extra: existing clips (and their cached latents) stay."""
    base = render_clip(SynthSpec(), 64, 4, seed=0, index=3)
    same = render_clip(SynthSpec(target_size_range=None, other_speed=None, target_on_top=False), 64, 4, 0, 3)
    assert np.array_equal(base.frames, same.frames) and base.caption == same.caption
    small = render_clip(SynthSpec(target_size_range=[0.05, 0.06]), 64, 4, seed=0, index=3)
    side = small.boxes[0, 0, 2] - small.boxes[0, 0, 0]
    assert 0.05 * 64 <= side <= 0.06 * 64


def test_a_process_renders_each_synthetic_clip_once_and_drops_the_oldest_past_its_budget(monkeypatch):
    import foveal.data.dataset as ds

    calls = []
    monkeypatch.setattr(ds, "RENDERED", ds.Rendered(mib=1))
    monkeypatch.setattr(ds, "render_clip", lambda *a: calls.append(a[-2]) or render_clip(*a))
    cfg = load_config("tiny")
    first, again = (SyntheticClips(cfg.data, cfg.model.frame_size, 12) for _ in range(2))
    item = first[3]
    item["frames"].zero_()  # an item is the caller's own: writing into it leaves the shared rendering intact
    assert again[3]["frames"].any() and again.target_patches(3, 8).any() and calls == [3]
    fresh = render_clip(cfg.data.synthetic, first.size, cfg.data.num_frames, cfg.data.seed, 3, cfg.data.frame_gap)
    assert np.array_equal(again.clip(3).frames, fresh.frames) and again.clip(3).caption == fresh.caption
    size = fresh.frames.nbytes + fresh.masks.nbytes  # ~0.25 MiB at 8 frames, 64 px: four fit in 1 MiB
    for i in range(12):
        first.clip(i)
    assert ds.RENDERED.bytes <= 2**20 and len(ds.RENDERED.clips) == 2**20 // size
    first.clip(0)  # dropped long ago: rendered again
    assert calls.count(0) == 2 and calls.count(11) == 1
