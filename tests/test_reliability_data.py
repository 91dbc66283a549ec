"""Data that is what it says (issue 14): 16-bit PNG frames decoded, a folder named like a video named as such,
manifests without a header, with unknown columns or not in UTF-8 reported, one file under two spellings one clip,
and a held-out split that depends on each clip's id, not on which other clips survived probing."""

import numpy as np
import pytest

from foveal.config import ConfigError, SynthSpec, load_config
from foveal.data.export import write_manifest, write_synthetic, write_video
from foveal.data.synthetic import render_clip
from foveal.data.video import file_datasets


def data_cfg(source, **kw):
    base = {"data.source": str(source), "data.num_frames": 4, "data.heldout_clips": 0, "data.train_clips": 0}
    base.update(kw)
    return load_config("tiny", overrides=[f"{k}={v}" for k, v in base.items()]).data


def test_16_bit_png_frames_are_scaled_not_saturated(tmp_path):
    from PIL import Image

    folder = tmp_path / "root" / "clip16"
    folder.mkdir(parents=True)
    for i in range(4):
        level = 64 * (i + 1) - 1  # 63, 127, 191, 255 in 8 bits
        Image.fromarray(np.full((32, 32), level * 257, dtype=np.uint16)).save(folder / f"frame_{i:03d}.png")
    assert Image.open(folder / "frame_000.png").mode.startswith("I")
    (train, _) = file_datasets(data_cfg(tmp_path / "root"), 32)
    frames = train[0]["frames"]
    assert [int(frames[i].float().mean()) for i in range(4)] == [63, 127, 191, 255]


def test_a_folder_named_like_a_video_gets_its_own_reason(tmp_path, logs):
    spec = SynthSpec()
    write_video(tmp_path / "good", render_clip(spec, 32, 8, 0, 0).frames)
    write_video(tmp_path / "good2", render_clip(spec, 32, 8, 0, 1).frames)
    (tmp_path / "x.mp4").mkdir()
    m = write_manifest(tmp_path / "m.csv", [{"path": "good.mp4"}, {"path": "good2.mp4"}, {"path": "x.mp4"}])
    train, _ = file_datasets(data_cfg(m), 32)
    assert train.skipped == {"folder named like a video": ["x.mp4"]}
    assert "is a directory, not a .mp4 file" in logs()


def test_manifest_without_header_is_a_clear_error(tmp_path):
    manifest = write_synthetic(tmp_path, videos=3, frames=4, size=32, codec="png")
    rows = manifest.read_text().splitlines()[1:]
    (tmp_path / "noheader.csv").write_text("\n".join(r.split(",", 1)[1] for r in rows) + "\n")
    with pytest.raises(ConfigError, match="no 'path' or 'videoid' column .* header line"):
        file_datasets(data_cfg(tmp_path / "noheader.csv"), 32)


def test_unknown_columns_are_named_once(tmp_path, logs):
    manifest = write_synthetic(tmp_path, videos=3, frames=4, size=32, codec="png")
    lines = manifest.read_text().splitlines()
    (tmp_path / "extra.csv").write_text(
        "\n".join([lines[0] + ",captoin,fps"] + [ln + ",typo,8" for ln in lines[1:]]) + "\n"
    )
    file_datasets(data_cfg(tmp_path / "extra.csv"), 32)
    warnings = [ln for ln in logs().splitlines() if "unknown column" in ln]
    assert len(warnings) == 1 and "captoin, fps" in warnings[0]


def test_non_utf8_manifest_is_one_clear_line(tmp_path, capsys):
    from foveal.cli import main

    manifest = write_synthetic(tmp_path, videos=3, frames=4, size=32, codec="png")
    lines = manifest.read_text().splitlines()
    (tmp_path / "latin1.csv").write_bytes(("\n".join(lines[:2] + [lines[2] + " café"]) + "\n").encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.csv is not UTF-8 \(byte 0xe9 on line 3\); re-save it as UTF-8"):
        file_datasets(data_cfg(tmp_path / "latin1.csv"), 32)
    assert main(["precompute", "--data", str(tmp_path / "latin1.csv"), "data.heldout_clips=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not UTF-8" in err[0]


def test_one_file_under_several_spellings_is_one_clip(tmp_path):
    spec = SynthSpec()
    for i in range(3):
        write_video(tmp_path / f"v{i}", render_clip(spec, 32, 8, 0, i).frames)
    (tmp_path / "x").mkdir()
    rows = [{"path": "v0.mp4"}, {"path": "./v0.mp4"}, {"path": "x/../v0.mp4"}, {"path": str(tmp_path / "v0.mp4")}]
    rows += [{"path": "v1.mp4"}, {"path": "v2.mp4"}]
    train, held = file_datasets(data_cfg(write_manifest(tmp_path / "m.csv", rows), **{"data.heldout_clips": 1}), 32)
    paths = [c.path.resolve() for c in train.clips + held.clips]
    assert len(paths) == len(set(paths)) == 3


def test_heldout_split_does_not_move_when_other_clips_fail(tmp_path):
    """The held-out set is decided on the listed ids: breaking some clips removes them, and no clip changes side."""
    manifest = write_synthetic(tmp_path, videos=20, frames=4, size=32, codec="png")
    cfg = data_cfg(manifest, **{"data.heldout_clips": 5})
    train, held = file_datasets(cfg, 32)
    side = {c.name: "train" for c in train.clips} | {c.name: "held" for c in held.clips}
    broken = [c for c in held.clips[:2]] + [c for c in train.clips[:3]]
    for c in broken:
        (c.path / "frame_000.png").write_bytes(b"broken")
    train2, held2 = file_datasets(data_cfg(manifest, **{"data.heldout_clips": 5, "data.seed": 1}), 32)
    side2 = {c.name: "train" for c in train2.clips} | {c.name: "held" for c in held2.clips}
    assert set(side2) == set(side) - {c.name for c in broken}
    assert all(side2[n] == side[n] for n in side2)


def test_heldout_fraction_is_a_function_of_each_id_alone(tmp_path):
    from foveal.data.video import id_hash

    manifest = write_synthetic(tmp_path, videos=20, frames=4, size=32, codec="png")
    train, held = file_datasets(data_cfg(manifest, **{"data.heldout_fraction": 0.3}), 32)
    assert {c.name for c in held.clips} == {c.name for c in train.clips + held.clips if id_hash(c.name) < 0.3}
    rows = manifest.read_text().splitlines()
    (tmp_path / "half.csv").write_text("\n".join(rows[:11]) + "\n")  # half the clips listed
    _, held_half = file_datasets(data_cfg(tmp_path / "half.csv", **{"data.heldout_fraction": 0.3}), 32)
    assert {c.name for c in held_half.clips} == {c.name for c in held.clips} & {r.split(",")[0] for r in rows[1:11]}
