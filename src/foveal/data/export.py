"""Write clips to disk as real video files (PyAV) or frame folders, with a manifest the file loader reads.

`foveal data synth` uses this to turn the synthetic clips into files, so the file path of the data pipeline (probe,
decode, sample, resize) runs on data whose pixels are known exactly.
"""

from __future__ import annotations

import csv
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from foveal.config import SynthSpec
from foveal.data.synthetic import render_clip

# name: (extension, encoder, pixel format, encoder options). Errors are mean / max |decoded - written| in 0..255,
# measured on 64 px synthetic clips (8 frames): h264 0.012 / 1, h264-420 2.1 / 154 (chroma subsampling blurs the
# shapes' sharp coloured edges), ffv1 0 / 0, vp9 2.2 / 166, mpeg4 4.0 / 216.
CODECS = {
    "h264": ("mp4", "libx264", "yuv444p", {"crf": "0"}),  # near-lossless H.264 (4:4:4, crf 0)
    "h264-420": ("mp4", "libx264", "yuv420p", {"crf": "18"}),  # plays everywhere, lossy
    "ffv1": ("mkv", "ffv1", "bgr0", {}),  # lossless RGB
    "vp9": ("webm", "libvpx-vp9", "yuv420p", {}),
    "mpeg4": ("avi", "mpeg4", "yuv420p", {}),
}
FRAME_FORMATS = ("png", "jpg")  # frame folders: <root>/<video_id>/frame_000.png ...


def write_video(path: str | Path, frames: np.ndarray, fps: float = 8.0, codec: str = "h264") -> Path:
    """uint8 [T, H, W, 3] -> a video file (the extension is the codec's; H and W must be even for 4:2:0)."""

    ext, encoder, pix_fmt, options = CODECS[codec]
    path = Path(path).with_suffix(f".{ext}")
    t, h, w, _ = frames.shape
    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=Fraction(fps).limit_denominator(1001), options=options)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())  # flush the encoder's delayed frames
    return path


def write_frames(folder: str | Path, frames: np.ndarray, fmt: str = "png") -> Path:
    """uint8 [T, H, W, 3] -> folder/frame_000.<fmt> ... (the reference's local per-video layout)."""

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"frame_{i:03d}.{fmt}", **({"quality": 95} if fmt == "jpg" else {}))
    return folder


def write_manifest(path: str | Path, rows: list[dict]) -> Path:
    """rows of {videoid, path, caption, duration} -> CSV (paths relative to the manifest's folder)."""
    path = Path(path)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["videoid", "path", "caption", "duration"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_synthetic(
    out: str | Path,
    videos: int,
    frames: int,
    size: int,
    codec: str = "h264",
    fps: float = 8.0,
    seed: int = 0,
    spec: SynthSpec | None = None,
) -> Path:
    """Synthetic clips 0..videos-1 (exactly SyntheticClips' clips for this spec, seed and size) written to out/ as
    video files (codec in CODECS) or frame folders (codec 'png' / 'jpg'), plus out/manifest.csv. Returns the
    manifest's path."""
    if codec not in CODECS and codec not in FRAME_FORMATS:
        raise ValueError(f"codec {codec!r}: choose one of {', '.join([*CODECS, *FRAME_FORMATS])}")
    out = Path(out)
    spec = spec or SynthSpec()
    rows = []
    for i in range(videos):
        clip = render_clip(spec, size, frames, seed, i)
        name = f"clip_{i:05d}"
        if codec in CODECS:
            (out / "videos").mkdir(parents=True, exist_ok=True)
            file = write_video(out / "videos" / name, clip.frames, fps, codec)
        else:
            file = write_frames(out / "frames" / name, clip.frames, codec)
        path = file.relative_to(out).as_posix()
        rows.append({"videoid": name, "path": path, "caption": clip.caption, "duration": f"{frames / fps:g}"})
    return write_manifest(out / "manifest.csv", rows)
