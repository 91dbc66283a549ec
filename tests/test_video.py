"""File data: every source yields the same tensors for the same clip; sampling windows, resizing, keys, the held-out
split; each class of bad input is skipped, named and counted; a clip that fails later never stops a run."""

import json
import os
import signal

import numpy as np
import pytest
import torch

from foveal.config import ConfigError, SynthSpec, load_config, replace
from foveal.data.dataset import Collator, SyntheticClips, build_datasets
from foveal.data.export import write_frames, write_manifest, write_synthetic, write_video
from foveal.data.frames import resize_frames
from foveal.data.loader import micro_batches
from foveal.data.synthetic import render_clip
from foveal.data.video import file_datasets, select_frames, select_windows
from foveal.evaluation.evaluate import make_batch
from foveal.model.build import build_model
from foveal.model.targets.vae import encode_latents


def data_cfg(source, **kw):
    base = {"data.source": str(source), "data.num_frames": 8, "data.heldout_clips": 2, "data.train_clips": 0}
    base.update(kw)
    return load_config("tiny", overrides=[f"{k}={v}" for k, v in base.items()]).data


def by_name(datasets):
    """clip name -> item, over train and held-out."""
    return {ds.clips[i].name: ds[i] for ds in datasets for i in range(len(ds))}


# mean / max |file - memory| allowed per codec (0..255): lossless ones match exactly, near-lossless h264 within 1
# level; the lossy ones (32 px clips, default bitrates) only show that their container and codec decode
TOLERANCE = {"h264": (0.05, 1), "ffv1": (0, 0), "png": (0, 0), "vp9": (8.0, 255), "mpeg4": (10.0, 255)}


@pytest.mark.parametrize("codec", sorted(TOLERANCE))
def test_every_source_yields_the_in_memory_clip(tmp_path, codec):
    """A synthetic clip written as mp4 / mkv / webm / avi / png frames and read back by the file loader equals the
    clip generated in memory (SyntheticClips, same seed and index): same frames within codec tolerance, same
    caption, shape and dtype."""
    manifest = write_synthetic(tmp_path, videos=6, frames=8, size=32, codec=codec)
    d = data_cfg(manifest)
    items = by_name(file_datasets(d, 32))
    memory = SyntheticClips(d, 32, 6)
    assert len(items) == 6
    errors = []
    for name, item in items.items():
        ref = memory[int(name.split("_")[1])]
        assert item["frames"].dtype == torch.uint8 and item["frames"].shape == ref["frames"].shape == (8, 3, 32, 32)
        assert item["caption"] == ref["caption"]
        errors.append((item["frames"].int() - ref["frames"].int()).abs().float())
    mean_tol, max_tol = TOLERANCE[codec]
    err = torch.stack(errors)
    assert err.mean() <= mean_tol and err.max() <= max_tol


def test_frame_folder_root_is_a_source(tmp_path):
    """<root>/<video_id>/frame_*.png (no manifest) gives the same items as the manifest of the same folders; frame
    numbers sort numerically (frame_2 before frame_10); caption.txt is the caption."""
    spec = SynthSpec()
    clip = render_clip(spec, 16, 12, 0, 0)
    folder = tmp_path / "root" / "vid_a"
    folder.mkdir(parents=True)
    from PIL import Image

    for i, frame in enumerate(clip.frames):  # unpadded numbers: frame_10 sorts before frame_2 as text
        Image.fromarray(frame).save(folder / f"frame_{i}.png")
    (folder / "caption.txt").write_text(clip.caption + "\n")
    write_frames(tmp_path / "root" / "vid_b", render_clip(spec, 16, 12, 0, 1).frames)
    train, held = file_datasets(data_cfg(tmp_path / "root", **{"data.heldout_clips": 0, "data.num_frames": 12}), 16)
    items = by_name([train, held])
    assert sorted(items) == ["vid_a", "vid_b"]
    np.testing.assert_array_equal(items["vid_a"]["frames"].permute(0, 2, 3, 1).numpy(), clip.frames)
    assert items["vid_a"]["caption"] == clip.caption and items["vid_b"]["caption"] == ""


def test_select_frames_windows():
    times = np.arange(24) / 8  # 24 frames at 8 fps: 3 s
    assert select_frames(times, 4, "clip") == [0, 8, 15, 23]
    assert select_frames(times, 3, "first:1") == [0, 4, 8]  # frames 0..8 lie in the first second
    assert select_frames(times, 4, "fps:4") == [0, 2, 4, 6]
    assert select_frames(times, 4, "fps:2.5") == [0, 3, 6, 10]  # nearest to 0, 0.4, 0.8, 1.2 s
    for window, t in (("clip", 25), ("first:0.5", 6), ("fps:1", 5), ("fps:16", 4)):
        with pytest.raises(Exception, match="too few frames"):
            select_frames(times, t, window)


def test_windows_read_the_right_frames_from_a_video(tmp_path):
    clip = render_clip(SynthSpec(), 32, 24, 0, 5).frames  # [24, H, W, 3]
    write_video(tmp_path / "v", clip, fps=8, codec="ffv1")
    write_manifest(tmp_path / "m.csv", [{"videoid": "v", "path": "v.mkv"}])
    for window, frames in (("clip", [0, 8, 15, 23]), ("first:1", [0, 3, 5, 8]), ("fps:4", [0, 2, 4, 6])):
        d = data_cfg(tmp_path / "m.csv", **{"data.num_frames": 4, "data.window": window, "data.heldout_clips": 0})
        got = file_datasets(d, 32)[0][0]["frames"].permute(0, 2, 3, 1).numpy()
        np.testing.assert_array_equal(got, clip[frames], err_msg=window)


def test_windows_per_video_cut_where_the_config_says():
    """data.windows / data.window_stride on 48 frames at 8 fps (6 s), each window's frames relative to its start."""
    times = np.arange(48) / 8

    def cut(**kw):
        return select_windows(times, 4, data_cfg("m.csv", **{f"data.{k}": v for k, v in kw.items()}))

    assert cut() == [[0, 16, 31, 47]]  # one window: the whole video, as before
    assert cut(windows=3) == [[0, 5, 10, 15], [16, 21, 26, 31], [32, 37, 42, 47]]  # three consecutive 2 s parts
    assert cut(window_stride=2.5) == [[0, 6, 13, 19], [20, 26, 33, 39]]  # 2.5 s parts that fit whole: two
    assert cut(window="fps:4", windows=3) == [[0, 2, 4, 6], [21, 23, 25, 27], [41, 43, 45, 47]]  # last one ends last
    assert cut(window="first:1", window_stride=1.5) == [
        [0, 3, 5, 8],
        [12, 15, 17, 20],
        [24, 27, 29, 32],
        [36, 39, 41, 44],
    ]
    with pytest.raises(Exception, match="too few frames"):
        cut(windows=13)  # 48 frames in 13 parts: 3 or 4 frames each, 4 needed


def test_windows_are_clips_of_their_own_and_the_split_is_by_video(tmp_path):
    """Six 24-frame videos cut in three windows each: 18 clips named <video>@<start>s with their own frames and keys;
    the held-out videos keep all their windows and no video is on both sides."""
    manifest = write_synthetic(tmp_path, videos=6, frames=24, size=32, codec="ffv1")
    d = data_cfg(manifest, **{"data.num_frames": 4, "data.windows": 3, "data.heldout_clips": 2})
    train, held = file_datasets(d, 32)
    assert (len(train), len(held)) == (12, 6)
    videos = {side: {c.video for c in ds.clips} for side, ds in (("train", train), ("held", held))}
    assert len(videos["train"]) == 4 and len(videos["held"]) == 2 and not videos["train"] & videos["held"]
    assert {c.name for c in held.clips} == {f"{v}@{s}s" for v in videos["held"] for s in (0, 1, 2)}
    assert len(set(train.keys()) | set(held.keys())) == 18
    video = held.clips[0].video
    frames = render_clip(SynthSpec(), 32, 24, 0, int(video.split("_")[1])).frames
    for k, start in enumerate((0, 8, 16)):  # window k: frames start + [0, 2, 5, 7]
        item = held[[c.name for c in held.clips].index(f"{video}@{k}s")]
        np.testing.assert_array_equal(
            item["frames"].permute(0, 2, 3, 1).numpy(), frames[[start + i for i in (0, 2, 5, 7)]]
        )
    with pytest.raises(ConfigError, match="give one"):
        data_cfg(manifest, **{"data.windows": 2, "data.window_stride": 1.0})
    with pytest.raises(ConfigError, match="synthetic clips"):
        load_config("tiny", overrides=["data.windows=2"])


def test_long_video_seeks_to_the_same_frames(tmp_path, monkeypatch):
    """Seeking (targets far apart) and decoding straight through give the same frames."""
    import foveal.data.video as video

    clip = render_clip(SynthSpec(), 32, 80, 0, 2).frames
    write_video(tmp_path / "long", clip, fps=8, codec="h264")
    write_manifest(tmp_path / "m.csv", [{"videoid": "long", "path": "long.mp4"}])
    d = data_cfg(tmp_path / "m.csv", **{"data.num_frames": 5, "data.heldout_clips": 0})
    dataset = file_datasets(d, 32)[0]
    pts = dataset.clips[0].frames
    monkeypatch.setattr(video, "SEEK_GAP_S", 0.5)  # 10 frames = 1.25 s between targets: seeks
    seeking = np.stack(video.read_video(dataset.clips[0].path, pts))
    monkeypatch.setattr(video, "SEEK_GAP_S", 100.0)
    straight = np.stack(video.read_video(dataset.clips[0].path, pts))
    np.testing.assert_array_equal(seeking, straight)
    assert np.abs(seeking.astype(int) - clip[[0, 20, 40, 59, 79]]).max() <= 1


@pytest.mark.parametrize("mode", ["crop", "squash"])
def test_non_square_video_is_resized_like_resize_frames(tmp_path, mode):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(8, 48, 80, 3), dtype=np.uint8)
    write_video(tmp_path / "wide", frames, codec="ffv1")
    write_manifest(tmp_path / "m.csv", [{"videoid": "wide", "path": "wide.mkv"}])
    d = data_cfg(tmp_path / "m.csv", **{"data.resize": mode, "data.heldout_clips": 0})
    got = file_datasets(d, 32)[0][0]["frames"]
    want = resize_frames(torch.from_numpy(frames).permute(0, 3, 1, 2), 32, mode)
    assert got.shape == (8, 3, 32, 32)
    torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_keys_split_and_determinism(tmp_path):
    manifest = write_synthetic(tmp_path / "a", videos=12, frames=8, size=32, codec="png")
    d = data_cfg(manifest, **{"data.heldout_clips": 3, "data.train_clips": 5})
    train, held = file_datasets(d, 32)
    assert len(train) == 5 and len(held) == 3
    assert not {c.name for c in train.clips} & {c.name for c in held.clips}
    # the split depends only on the ids: listing the rows in reverse order holds out the same clips
    rows = list(reversed(manifest.read_text().splitlines()[1:]))
    (tmp_path / "a" / "rev.csv").write_text("videoid,path,caption,duration\n" + "\n".join(rows) + "\n")
    held_rev = file_datasets(data_cfg(tmp_path / "a" / "rev.csv", **{"data.heldout_clips": 3}), 32)[1]
    assert {c.name for c in held_rev.clips} == {c.name for c in held.clips}
    # keys: the same for the same sampling, different for any change of T, window, resize or frame size
    keys = set(train.keys())
    assert len(keys) == 5 and all(train[i]["key"] == k for i, k in enumerate(train.keys()))
    for change, size in (
        ({"data.num_frames": 4}, 32),
        ({"data.window": "first:0.875"}, 32),
        ({"data.resize": "squash"}, 32),
        ({}, 16),
    ):
        other = file_datasets(data_cfg(manifest, **{"data.heldout_clips": 3, "data.train_clips": 5, **change}), size)[0]
        assert [c.name for c in other.clips] == [c.name for c in train.clips]
        assert not keys & set(other.keys()), change


def make_bad_inputs(root):
    """A manifest with 3 good clips and one of each kind of bad input; returns (manifest, {reason: [name]})."""
    spec = SynthSpec()
    good = [write_video(root / f"good{i}", render_clip(spec, 32, 8, 0, i).frames) for i in range(3)]
    data = good[0].read_bytes()
    (root / "corrupt.mp4").write_bytes(os.urandom(4000))
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (root / "empty.mp4").write_bytes(b"")
    write_video(root / "short", render_clip(spec, 32, 5, 0, 9).frames)  # 5 < 8 frames
    write_frames(root / "badimage", render_clip(spec, 32, 8, 0, 10).frames)
    (root / "badimage" / "frame_003.png").write_bytes(b"not a png")
    (root / "clip.gif").write_bytes(data)
    rows = [{"videoid": f"good{i}", "path": p.name} for i, p in enumerate(good)]
    rows += [
        {"videoid": "missing", "path": "missing.mp4"},
        {"videoid": "corrupt", "path": "corrupt.mp4"},
        {"videoid": "truncated", "path": "truncated.mp4"},
        {"videoid": "empty", "path": "empty.mp4"},
        {"videoid": "short", "path": "short.mp4"},
        {"videoid": "badimage", "path": "badimage"},
        {"videoid": "gif", "path": "clip.gif"},
        {"videoid": "", "path": "", "caption": "a row without a path"},
    ]
    expected = {
        "manifest row without a path": [f"m.csv:{len(rows) + 1}"],
        "missing file": ["missing"],
        "unreadable video": ["corrupt", "truncated"],
        "zero-byte file": ["empty"],
        "too few frames": ["short"],
        "unreadable image": ["badimage"],
        "unknown extension": ["gif"],
    }
    return write_manifest(root / "m.csv", rows), expected


def test_each_bad_input_is_skipped_named_and_counted(tmp_path, logs):
    manifest, expected = make_bad_inputs(tmp_path)
    train, held = file_datasets(data_cfg(manifest, **{"data.heldout_clips": 1}), 32)
    assert {c.name for c in train.clips + held.clips} == {"good0", "good1", "good2"}
    assert train.skipped == expected and held.skipped is train.skipped
    err = logs()
    for reason, names in expected.items():
        assert all(f"skipped {n}: {reason}" in err for n in names), reason
    assert "3 usable clips" in err and "skipped 8" in err


def test_truncated_streaming_containers_are_caught(tmp_path):
    """mkv / webm have no frame count; a cut file still opens, but ends before the duration its header declares."""
    frames = render_clip(SynthSpec(), 32, 24, 0, 0).frames
    rows = []
    for codec in ("ffv1", "vp9", "mpeg4"):
        path = write_video(tmp_path / codec, frames, codec=codec)
        cut = path.with_name(f"cut_{path.name}")
        cut.write_bytes(path.read_bytes()[: int(path.stat().st_size * 0.8)])
        rows += [{"videoid": codec, "path": path.name}, {"videoid": f"cut_{codec}", "path": cut.name}]
    train, _ = file_datasets(data_cfg(write_manifest(tmp_path / "m.csv", rows), **{"data.heldout_clips": 0}), 32)
    assert sorted(c.name for c in train.clips) == ["ffv1", "mpeg4", "vp9"]
    assert sorted(train.skipped["truncated video"]) == ["cut_ffv1", "cut_mpeg4", "cut_vp9"]


def test_jsonl_manifest_with_webvid_columns(tmp_path):
    """WebVid columns: videoid (found as <root>/<videoid>.<ext>), name as caption, duration ignored; a line that is
    not JSON is skipped and counted."""
    clip = render_clip(SynthSpec(), 32, 8, 0, 0)
    write_video(tmp_path / "1066", clip.frames, codec="ffv1")
    write_video(tmp_path / "1067", clip.frames, codec="ffv1")
    lines = [json.dumps({"videoid": 1066, "name": "a cat", "duration": "PT00H00M03S"}), "{oops", ""]
    lines.append(json.dumps({"videoid": "1067", "duration": 1.0}))
    (tmp_path / "m.jsonl").write_text("\n".join(lines))
    train, _ = file_datasets(data_cfg(tmp_path / "m.jsonl", **{"data.heldout_clips": 0}), 32)
    assert [(c.name, c.caption) for c in train.clips] == [("1066", "a cat"), ("1067", "")]
    assert train.skipped == {"unreadable manifest row": ["m.jsonl:2"]}


def test_no_usable_clip_is_a_clear_error(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"")
    write_manifest(tmp_path / "m.csv", [{"videoid": "a", "path": "a.mp4"}, {"videoid": "b", "path": "b.mp4"}])
    with pytest.raises(ConfigError, match=r"no usable clip .*1 zero-byte file, 1 missing file"):
        file_datasets(data_cfg(tmp_path / "m.csv"), 32)
    with pytest.raises(ConfigError, match="does not exist"):
        file_datasets(data_cfg(tmp_path / "nope.csv"), 32)


def test_a_clip_that_fails_later_is_replaced_and_counted(tmp_path):
    """Decoding fails after the probe (the file changed): the next clip stands in, the same one every time, keys
    follow, and the failure is counted."""
    manifest = write_synthetic(tmp_path, videos=4, frames=8, size=32, codec="ffv1")
    train, _ = file_datasets(data_cfg(manifest, **{"data.heldout_clips": 0}), 32)
    before = train.keys()
    train.clips[1].path.write_bytes(os.urandom(2000))
    item = train[1]
    assert item["index"] == 1 and item["key"] == before[2]
    torch.testing.assert_close(item["frames"], train[2]["frames"])
    assert train.keys() == [before[0], before[2], before[2], before[3]]
    assert list(train.skipped) == ["decode failed"] and train.skipped["decode failed"] == ["clip_00001"]


# ---------------------------------------------------------------------------------------------------------------------
# micro-batches with decode workers


class Items(torch.utils.data.Dataset):
    """Cheap items; the one at crash_index kills the worker process that loads it (a decoder segfault)."""

    def __init__(self, n, crash_index=None):
        self.n, self.crash_index = n, crash_index

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i == self.crash_index and torch.utils.data.get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        return {"frames": torch.full((2, 3, 4, 4), i, dtype=torch.uint8), "caption": "", "key": str(i), "index": i}


def collate(items):
    return {"frames": torch.stack([it["frames"] for it in items]), "keys": [it["key"] for it in items]}


def run_batches(dataset, ks, workers):
    from foveal.config import DataConfig
    from foveal.data.dataset import micro_batch

    order = lambda k: micro_batch(k, len(dataset), 3, 0)  # noqa: E731
    return [
        (idx, raw["frames"]) for idx, raw in micro_batches(dataset, collate, order, ks, DataConfig(num_workers=workers))
    ]


def same(a, b):
    return len(a) == len(b) and all(i == j and torch.equal(x, y) for (i, x), (j, y) in zip(a, b))


def test_workers_keep_the_order_resume_and_survive_a_crash(capfd):
    plain = run_batches(Items(20), range(0, 12), 0)
    assert [i for idx, _ in plain for i in idx][:6] != list(range(6))  # shuffled
    assert same(run_batches(Items(20), range(0, 12), 2), plain)
    assert same(run_batches(Items(20), range(5, 12), 2), plain[5:])  # resumed at micro-batch 5
    crash_at = plain[7][0][1]  # a clip of micro-batch 7 kills its worker
    assert same(run_batches(Items(20, crash_index=crash_at), range(0, 12), 2), plain)
    assert "data loader worker failed" in capfd.readouterr().err


def test_training_on_files_reports_skips_and_reads_the_cache(tmp_path, tiny_cfg, monkeypatch):
    """precompute encodes every clip once; training then encodes nothing (encode_latents would raise); the bad
    inputs are counted in results.json; a different VAE or sampling needs new entries."""
    import foveal.model.targets.vae as vae_module
    from foveal.analysis.precompute import precompute
    from foveal.data.dataset import build_datasets
    from foveal.data.latent_cache import LatentCache
    from foveal.train.loop import train

    manifest, expected = make_bad_inputs(tmp_path)
    for i in range(3, 8):
        write_video(tmp_path / f"good{i}", render_clip(SynthSpec(), 32, 8, 0, i).frames)
    rows = manifest.read_text() + "".join(f"good{i},good{i}.mp4,,\n" for i in range(3, 8))
    manifest.write_text(rows)
    over = {"data.source": str(manifest), "data.heldout_clips": 2, "data.num_frames": 8, "train.steps": 2}
    cfg = tiny_cfg(**over, **{"data.train_clips": 0, "model.frame_size": 32, "cache_dir": str(tmp_path / "c")})
    stats = precompute(cfg)
    assert stats["train"]["encoded"] == 6 and stats["heldout"]["encoded"] == 2
    assert precompute(cfg)["train"]["encoded"] == 0

    def no_encoding(*a, **k):
        raise AssertionError("a cached clip was encoded again")

    monkeypatch.setattr(vae_module, "encode_latents", no_encoding)
    results = train(cfg)
    assert results["data_skipped"] == {reason: len(names) for reason, names in expected.items()}
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["data_skipped_files"] == expected
    monkeypatch.undo()
    cache = LatentCache(cfg.cache_dir, os.path.basename(stats["cache"]))
    assert cache.missing(build_datasets(cfg)[0].keys()) == []
    resampled = build_datasets(replace(cfg, data={"resize": "squash"}))[0]
    assert cache.missing(resampled.keys()) == list(range(len(resampled)))
    assert precompute(replace(cfg, train={"seed": 1}))["train"]["encoded"] == 6  # another random VAE


def test_cli_data_synth_precompute_and_info(tmp_path, capsys):
    from foveal.cli import main

    assert main(["data", "synth", "--out", str(tmp_path / "d"), "--videos", "5", "--frames", "4", "--size", "32"]) == 0
    assert len(list((tmp_path / "d" / "videos").glob("clip_*.mp4"))) == 5
    args = ["--data", str(tmp_path / "d" / "manifest.csv"), "--quiet", f"cache_dir={tmp_path / 'c'}"]
    args += ["data.num_frames=4", "data.heldout_clips=1", "model.frame_size=32"]
    assert main(["precompute", *args]) == 0
    out = capsys.readouterr().out
    assert "4 train + 1 held-out clips, latents 4x4x4x4 per clip; 5 encoded now in" in out and "0 were cached" in out
    assert main(["precompute", *args]) == 0
    assert "0 encoded now, 5 were cached" in capsys.readouterr().out
    assert main(["info", *args[2:]]) == 0
    out = capsys.readouterr().out
    assert "patch grid  4x4 patches + CLS = 17 tokens per frame" in out and "latent      4x4x4 per frame" in out
    assert "tied embeddings" in out and "parameters  827,648" in out  # the tiny preset's DINO


def test_a_clip_that_breaks_after_probing_keeps_frames_and_targets_one_clips(tmp_path, tiny_cfg):
    """A file that fails only in training: the next good clip stands in, and its targets are its own (looked up by
    the served clip's key, not by the position the broken clip had)."""
    paths = [write_video(tmp_path / f"c{i}", render_clip(SynthSpec(), 32, 8, 0, i).frames) for i in range(5)]
    manifest = write_manifest(tmp_path / "m.csv", [{"videoid": p.stem, "path": p.name} for p in paths])
    over = {"data.source": str(manifest), "data.heldout_clips": 1, "data.num_frames": 8, "data.train_clips": 0}
    cfg = tiny_cfg(**over, **{"model.frame_size": 32, "cache_dir": str(tmp_path / "c")})
    model, tok = build_model(cfg)
    train_set, heldout = build_datasets(cfg)
    model.target.prepare(model, [train_set, heldout])
    first, second = train_set.clips[0], train_set.clips[1]
    first.path.write_bytes(os.urandom(2000))  # breaks after probing
    raw = Collator(tok)([train_set[0]])
    assert raw["keys"] == [second.key]  # the stand-in
    targets = model.target(make_batch(raw, "cpu", caption=False), None)
    torch.testing.assert_close(targets[0], model.target.store[second.key])
    assert torch.equal(targets[0], encode_latents(model.target.lazy.vae, raw["frames"][0]))  # the stand-in's frames
    assert first.key not in model.target.store  # the broken clip's latents were never made, nor served
    vae = model.target.build_vae()
    torch.testing.assert_close(targets[0], encode_latents(vae, raw["frames"][0]), atol=1e-5, rtol=1e-5)
