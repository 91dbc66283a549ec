"""Lazy validation (issue 16): start-up reads the manifest only; each training clip is checked by the process that
reads it, with eager validation's reasons and the same clips, keys, held-out split and counts in the end."""

import torch

import foveal.data.video as video
from foveal.config import load_config
from foveal.data import dataset as dataset_module
from foveal.data.dataset import build_datasets, micro_batch
from foveal.data.export import write_synthetic
from foveal.data.lazy import LazyClips, lazy_datasets, list_rows
from foveal.data.loader import micro_batches
from foveal.data.video import Skips, file_datasets, merge_skips


def run_cfg(source, **kw):
    base = {"data.source": str(source), "data.num_frames": 4, "data.heldout_clips": 2, "data.train_clips": 0}
    base.update(kw)
    return load_config("tiny", overrides=[f"{k}={v}" for k, v in base.items()])


def mixed_manifest(tmp_path):
    """6 good videos, then a missing file, a zero-byte file, a repeated id and the same file under a new id."""
    manifest = write_synthetic(tmp_path, videos=6, frames=4, size=32, codec="png")
    lines = manifest.read_text().splitlines()
    (tmp_path / "empty.mp4").write_bytes(b"")
    first = lines[1].split(",")
    bad = ["gone,missing.mp4,a caption,1", "empty,empty.mp4,,1", lines[1], ",".join(["again", *first[1:]])]
    out = tmp_path / "mixed.csv"
    out.write_text("\n".join([*lines[:4], *bad[:2], *lines[4:], *bad[2:]]) + "\n")
    return out


def read_all(ds):
    return [ds[i]["key"] for i in range(len(ds))]


def test_lazy_serves_eagers_clips_and_counts_bad_ones_when_read(tmp_path):
    manifest = mixed_manifest(tmp_path)
    e_train, e_held = file_datasets(run_cfg(manifest, **{"data.validate": "eager"}).data, 32)
    l_train, l_held = lazy_datasets(run_cfg(manifest).data, 32)
    assert isinstance(l_train, LazyClips)
    assert [c.key for c in l_held.clips] == [c.key for c in e_held.clips]  # the same videos held out, probed
    assert l_train.skipped.counts() == {"duplicate clip id": 1, "duplicate file": 1}  # listing: no file opened
    served = read_all(l_train)
    assert len(served) == len(e_train) + 2  # the bad rows are clips until read; then the next good one stands in
    assert sorted(set(served)) == sorted(read_all(e_train))
    assert {r: sorted(n) for r, n in l_train.skipped.items()} == {r: sorted(n) for r, n in e_train.skipped.items()}
    assert l_train.skipped.counts() == {"duplicate clip id": 1, "duplicate file": 1, "missing file": 1,
                                        "zero-byte file": 1}  # fmt: skip


def test_auto_lists_long_manifests_lazily_and_probes_only_the_held_out_clips(tmp_path, monkeypatch):
    manifest = write_synthetic(tmp_path, videos=6, frames=4, size=32, codec="png")
    probed = []
    real_probe = video.probe
    monkeypatch.setattr(video, "probe", lambda clip, *a, **k: probed.append(clip.name) or real_probe(clip, *a, **k))
    monkeypatch.setattr(dataset_module, "_BUILT", {})
    monkeypatch.setattr(dataset_module, "LAZY_ABOVE", 5)
    train, held = build_datasets(run_cfg(manifest))
    assert isinstance(train, LazyClips) and len(train) == 4
    assert sorted(probed) == sorted(c.name for c in held.clips)
    monkeypatch.setattr(dataset_module, "LAZY_ABOVE", 6)
    train, _ = build_datasets(run_cfg(manifest, **{"data.seed": 1}))  # 6 rows: not above, eager
    assert not isinstance(train, LazyClips) and len(probed) == 2 + 6


def test_a_bad_clip_a_worker_finds_is_counted_in_the_main_process(tmp_path):
    manifest = mixed_manifest(tmp_path)
    cfg = run_cfg(manifest, **{"data.num_workers": 1, "data.heldout_fraction": 0.0})
    train, _ = lazy_datasets(cfg.data, 32)
    assert "missing file" not in train.skipped
    keys = lambda items: {"keys": [it["key"] for it in items], "skips": [s for it in items for s in it["skips"]]}  # noqa: E731
    batches = list(micro_batches(train, keys, lambda k: [k], range(len(train)), cfg.data))
    assert [idx for idx, _ in batches] == [[k] for k in range(len(train))]
    assert train.skipped.counts()["missing file"] == 1 and train.skipped.counts()["zero-byte file"] == 1
    assert [b["keys"][0] for _, b in batches] == read_all(train)  # the worker served what this process serves


def test_windows_of_a_lazy_row_are_its_eager_windows(tmp_path):
    manifest = write_synthetic(tmp_path, videos=3, frames=8, size=32, codec="png")
    kw = {"data.windows": 2, "data.heldout_clips": 1}
    e_train, _ = file_datasets(run_cfg(manifest, **kw, **{"data.validate": "eager"}).data, 32)
    l_train, _ = lazy_datasets(run_cfg(manifest, **kw).data, 32)
    assert read_all(l_train) == read_all(e_train) and len(e_train) == 4
    assert torch.equal(l_train[3]["frames"], e_train[3]["frames"])


def test_streamed_csv_keeps_quoted_captions_across_lines(tmp_path):
    manifest = write_synthetic(tmp_path, videos=2, frames=4, size=32, codec="png")
    header, a, b = manifest.read_text().splitlines()
    a = a.rsplit(",", 2)[0] + ',"two\nlines",1'
    (tmp_path / "q.csv").write_text("\n".join([header, a, b]) + "\n")
    rows = list_rows(str(tmp_path / "q.csv"), Skips())
    assert [rows.clip(i).caption for i in range(2)] == ["two\nlines", b.split(",")[2]]


def test_skips_of_several_processes_merge_without_double_counting():
    a, b = {"missing file": ["x", "y"]}, {"missing file": ["y", "z"], "decode failed": ["w"]}
    assert merge_skips([a, b, a]) == {"missing file": ["x", "y", "z"], "decode failed": ["w"]}


def test_two_ranks_read_every_clip_at_most_once_per_epoch():
    n, batch, world = 11, 2, 2  # 2 global batches per epoch; 3 clips left over
    for epoch in range(3):
        ks = range(epoch * 2, epoch * 2 + 2)
        read = [i for k in ks for r in range(world) for i in micro_batch(k, n, batch, 5, r, world)]
        assert len(read) == len(set(read)) == 8


def test_lazy_names_clips_named_by_their_path_as_eager_does(tmp_path):
    write_synthetic(tmp_path, videos=4, frames=4, size=32, codec="png")
    paths = [
        "./frames/clip_00000",
        "frames//clip_00001",
        "frames/./clip_00002/",
        str(tmp_path / "frames/clip_00003"),
    ]
    (tmp_path / "p.csv").write_text("path\n" + "\n".join(paths) + "\n")
    kw = {"data.heldout_clips": 1}
    e_train, e_held = file_datasets(run_cfg(tmp_path / "p.csv", **kw, **{"data.validate": "eager"}).data, 32)
    l_train, l_held = lazy_datasets(run_cfg(tmp_path / "p.csv", **kw).data, 32)
    assert [l_train.name(j) for j in range(len(l_train))] == [c.name for c in e_train.clips]
    assert [c.name for c in l_held.clips] == [c.name for c in e_held.clips]
    assert read_all(l_train) == read_all(e_train)
