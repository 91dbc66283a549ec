"""Clips from files: frame folders and video files (decoded with PyAV), listed by a folder or a manifest.

data.source is either
  a folder    <root>/<video_id>/frame_*.jpg|png (the reference's local layout; an optional caption.txt per folder),
              and video files directly in <root>
  a manifest  .csv or .jsonl, one clip per row: `path` (a video file or a frame folder, relative to the manifest)
              or WebVid's `videoid` (found as <root>[/<page_dir>]/<videoid>.<ext> or .../<videoid>/); the caption
              in `caption` or WebVid's `name` (optional: reconstruction needs none); other columns are ignored
              with one warning naming them. A manifest must be UTF-8 and (csv) start with a header line.

A file reached by two spellings (`./a.mp4`, `x/../a.mp4`, an absolute path) is one clip: listed clips are
de-duplicated by resolved path, and a clip named by its path is named by the path relative to the manifest folder.

A long video gives several clips when data.windows (a count) or data.window_stride (seconds) cuts it into windows,
each its own clip id (<video>@<start>s) and cache entry; the held-out split is by video.

Every clip is probed when the dataset is built (it opens, has T frames in the window, its first and last sampled
frames decode). A clip that fails is skipped with a warning naming it and the reason, and counted in
`dataset.skipped` (reason -> names). A clip that still fails to decode later is served by the next good clip
(deterministically) and counted too, so a bad file never stops a run.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, get_worker_info
from tqdm import tqdm

from foveal.config import ConfigError, DataConfig
from foveal.data.frames import resize_frames

log = logging.getLogger(__name__)

VIDEO_EXTS = (".mp4", ".webm", ".mkv", ".avi")
MANIFEST_COLUMNS = ("videoid", "path", "caption", "name", "duration", "page_dir", "contenturl")
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
MANIFEST_EXTS = (".csv", ".jsonl")
SEEK_GAP_S = 2.0  # decode forward across gaps up to this long; seek to the keyframe before a target beyond it
SHOWN_PER_REASON = 20  # warnings printed per skip reason; the rest are only counted


def main_process() -> bool:
    """Under torchrun every rank builds the data and DataLoader workers read it; one process talks."""
    return os.environ.get("RANK", "0") == "0" and get_worker_info() is None


class Skips(dict):
    """reason -> names of the clips skipped for it. `add` warns (once per clip) naming the clip and the reason."""

    def __init__(self):
        super().__init__()
        self._seen: set[tuple[str, str]] = set()

    def add(self, reason: str, name: str, detail: str = "") -> None:
        if (reason, name) in self._seen:
            return
        self._seen.add((reason, name))
        names = self.setdefault(reason, [])
        names.append(name)
        if main_process() and len(names) <= SHOWN_PER_REASON:
            log.warning(f"warning: skipped {name}: {reason}" + (f" ({detail})" if detail else ""))
        elif main_process() and len(names) == SHOWN_PER_REASON + 1:
            log.warning(f"warning: further clips skipped for '{reason}' are only counted")

    def counts(self) -> dict[str, int]:
        return {reason: len(names) for reason, names in self.items()}

    def summary(self) -> str:
        return ", ".join(f"{n} {reason}" for reason, n in self.counts().items()) or "none"


def merge_skips(parts: list[dict[str, list[str]]]) -> dict[str, list[str]]:
    """Several processes' skips (ranks, workers) as one: reason -> names, each name once."""
    out: dict[str, list[str]] = {}
    for part in parts:
        for reason, names in part.items():
            out[reason] = list(dict.fromkeys([*out.get(reason, []), *names]))
    return out


class BadClip(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


@dataclass
class Clip:
    name: str  # the video id: named in warnings, hashed for the held-out split
    path: Path  # a video file or a frame folder
    caption: str = ""
    kind: str = ""  # after probing: "video" | "frames"
    frames: list = field(default_factory=list)  # after probing: pts to decode (video) or image files (frames)
    key: str = ""  # clip identity + the exact sampled frames + resize + size (the latent cache's key)
    video: str = ""  # the video the clip was cut from (its name unless data.windows cuts several): the held-out
    #                  split is by video, so no video has windows on both sides

    def __post_init__(self):
        self.video = self.video or self.name


# ---------------------------------------------------------------------------------------------------------------------
# listing


def source_path(source: str) -> Path:
    """data.source as a folder or a manifest that exists, or one line saying what to give instead."""
    src = Path(source).expanduser()
    if not src.exists():
        raise ConfigError(
            f"data.source: {source} does not exist; use 'synthetic', a manifest (.csv/.jsonl) or a folder of "
            f"<video_id>/frame_*.jpg folders (`foveal data synth --out DIR` writes an example)"
        )
    if not src.is_dir() and src.suffix.lower() not in MANIFEST_EXTS:
        raise ConfigError(f"data.source: {source} is neither a folder nor a manifest ({', '.join(MANIFEST_EXTS)})")
    return src


def list_clips(source: str, skipped: Skips) -> list[Clip]:
    src = source_path(source)
    clips = list_folder(src) if src.is_dir() else _list_manifest(src, skipped)
    unique, seen, files = [], set(), {}
    for clip in clips:  # one id, one clip; one file, one clip: the held-out split stays disjoint from training
        if clip.name in seen:
            skipped.add("duplicate clip id", clip.name, str(clip.path))
            continue
        real = os.path.realpath(clip.path)
        if real in files:
            skipped.add("duplicate file", clip.name, f"{clip.path} is {files[real]}'s file {real}")
            continue
        seen.add(clip.name)
        files[real] = clip.name
        unique.append(clip)
    return unique


def list_folder(root: Path) -> list[Clip]:
    clips = []
    for p in sorted(root.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir():
            caption = p / "caption.txt"
            clips.append(Clip(p.name, p, caption.read_text().strip() if caption.exists() else ""))
        elif p.suffix.lower() in VIDEO_EXTS:
            clips.append(Clip(p.stem, p))
    return clips


def manifest_lines(path: Path):
    """(line number, text) of a UTF-8 manifest, streamed (a 10M-row manifest is never all in memory); the text
    keeps its line end, as csv needs for quoted fields that span lines."""
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")  # -sig: a spreadsheet's byte-order mark
            except UnicodeDecodeError as e:
                raise ConfigError(
                    f"data.source: {path} is not UTF-8 (byte 0x{raw[e.start]:02x} on line {line_no}); re-save it as "
                    f"UTF-8, e.g. iconv -f latin1 -t utf-8 {path.name} > utf8-{path.name}"
                ) from None
            yield line_no, text


def check_columns(path: Path, columns: list[str], first_line: str) -> None:
    names = [c.strip().lower() for c in columns if c is not None]
    if "path" not in names and "videoid" not in names:
        raise ConfigError(
            f"data.source: {path} has no 'path' or 'videoid' column (its first line reads {first_line[:80]!r}); "
            f"a csv manifest starts with a header line, e.g. path,caption"
        )
    unknown = [c for c in names if c and c not in MANIFEST_COLUMNS]
    if unknown and main_process():
        log.warning(
            f"warning: {path.name}: ignoring unknown column(s) {', '.join(unknown)} "
            f"(known: {', '.join(MANIFEST_COLUMNS)})"
        )


COLUMNS_FROM_ROWS = 1000  # a jsonl manifest's columns are those of its first rows


def manifest_rows(path: Path):
    """('manifest:line', row dict or None when the line is not a JSON object), streamed."""
    lines = manifest_lines(path)
    if path.suffix.lower() == ".csv":
        _, first = next(lines, (0, ""))
        reader = csv.DictReader(itertools.chain([first], (text for _, text in lines)))
        check_columns(path, reader.fieldnames or [], first)
        for row in reader:
            yield f"{path.name}:{reader.line_num}", row
        return
    head, columns, first_line = [], {}, None
    for line_no, line in lines:
        first_line = line if first_line is None else first_line
        if line.strip():
            head.append((f"{path.name}:{line_no}", _json_object(line)))
            columns.update(dict.fromkeys(str(k) for k in (head[-1][1] or ())))
        if len(head) == COLUMNS_FROM_ROWS:
            break
    check_columns(path, list(columns), first_line or "")
    yield from head
    for line_no, line in lines:
        if line.strip():
            yield f"{path.name}:{line_no}", _json_object(line)


def _json_object(line: str) -> dict | None:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    return row if isinstance(row, dict) else None


def _list_manifest(manifest: Path, skipped: Skips) -> list[Clip]:
    clips = []
    for where, raw in manifest_rows(manifest):
        clip = manifest_clip(where, raw, manifest.parent, skipped)
        if clip is not None:
            clips.append(clip)
    return clips


def manifest_clip(where: str, raw: dict | None, root: Path, skipped: Skips) -> Clip | None:
    """One manifest row -> a Clip, or None (skipped and counted)."""
    if raw is None:
        skipped.add("unreadable manifest row", where, "not a JSON object")
        return None
    row = {str(k).strip().lower(): "" if v is None else str(v).strip() for k, v in raw.items() if k is not None}
    videoid, rel = row.get("videoid", ""), row.get("path", "")
    if rel:
        path = root / Path(rel).expanduser()  # an absolute path stays absolute
        if not videoid:  # named by its path: one name for every spelling of it (./a.mp4, x/../a.mp4, /abs/a.mp4)
            rel = os.path.relpath(os.path.realpath(path), os.path.realpath(root))
    elif videoid:
        path = find_video(root, videoid, row.get("page_dir", ""))
    else:
        skipped.add("manifest row without a path", where, "needs a 'path' or 'videoid' column value")
        return None
    return Clip(videoid or rel, path, row.get("caption") or row.get("name", ""))


def find_video(root: Path, videoid: str, page_dir: str) -> Path:
    for base in ([root / page_dir] if page_dir else []) + [root]:
        for candidate in [base / videoid, *(base / f"{videoid}{ext}" for ext in VIDEO_EXTS)]:
            if candidate.exists():
                return candidate
    return root / f"{videoid}.mp4"  # missing: reported as such by the probe


# ---------------------------------------------------------------------------------------------------------------------
# sampling and decoding


def select_frames(times: np.ndarray, num_frames: int, window: str) -> list[int]:
    """Indices of the T frames to use, given every frame's time in seconds from the clip's start (ascending).
    'clip': evenly spaced (linspace, rounded) over the whole clip; 'clip:floor': the same positions truncated, as
    the seed study picked 8 of 16 (0,2,4,6,8,10,12,15); 'first:<s>': over the frames in the first s seconds;
    'fps:<r>': the frames nearest to 0, 1/r, 2/r, ... s."""
    n = len(times)
    if window.startswith("fps:"):
        rate = float(window[4:])
        want = np.arange(num_frames) / rate
        if n == 0 or want[-1] > times[-1] + 0.5 / rate:
            have = times[-1] if n else 0.0
            raise BadClip(
                "too few frames", f"{num_frames} frames at {rate:g} fps span {want[-1]:.2f} s; clip {have:.2f} s"
            )
        idx = np.abs(times[None, :] - want[:, None]).argmin(1)
        if len(set(idx.tolist())) < num_frames:
            raise BadClip("too few frames", f"fewer than {num_frames} distinct frames at {rate:g} fps")
        return idx.tolist()
    if window.startswith("first:"):
        n = int((times <= float(window[6:]) + 1e-6).sum())
    if n < num_frames:
        raise BadClip("too few frames", f"{n} frames in window '{window}', {num_frames} needed")
    positions = np.linspace(0, n - 1, num_frames)
    return (positions if window == "clip:floor" else positions.round()).astype(int).tolist()


def window_starts(times: np.ndarray, num_frames: int, d: DataConfig) -> list[int]:
    """Where each window of a video starts (indices into times, seconds from its start, ascending) and, for 'clip'
    windows, where it ends: [(start, stop)]. One window of the whole video unless data.windows / data.window_stride
    cut more: 'clip' windows are consecutive parts (N equal ones, or stride-long ones that fit whole); 'first:<s>' and
    'fps:<r>' windows start evenly from 0 to the last start that fits (N of them) or every stride seconds."""
    n = len(times)
    step = float(np.median(np.diff(times))) if n > 1 else 0.0  # the last frame lasts one frame interval
    end = times[-1] + step if n else 0.0
    if d.windows == 1 and not d.window_stride:
        return [(0, n)]
    if d.window.startswith("clip"):
        if d.window_stride:
            edges = np.arange(0.0, end - d.window_stride + 1e-6, d.window_stride)
            return [tuple(np.searchsorted(times, [a - 1e-6, a + d.window_stride - 1e-6])) for a in edges]
        bounds = np.linspace(0, n, d.windows + 1).astype(int)
        return list(zip(bounds[:-1], bounds[1:]))
    kind, _, value = d.window.partition(":")
    span = float(value) if kind == "first" else (num_frames - 1) / float(value)
    last = times[-1] - span + 1e-6 if n else -1.0
    if last < 0:
        return [(0, n)]  # too short for one window: select_frames says so
    starts = np.arange(0.0, last, d.window_stride) if d.window_stride else np.linspace(0.0, last, d.windows)
    return [(int(np.searchsorted(times, a - 1e-6)), n) for a in starts]


def select_windows(times: np.ndarray, num_frames: int, d: DataConfig) -> list[list[int]]:
    """The frame indices of each window (select_frames within it, relative to its first frame); windows that pick
    the same frames as an earlier one are dropped. A window without enough frames makes the video a BadClip."""
    chosen, seen = [], set()
    for start, stop in window_starts(times, num_frames, d):
        local = times[start:stop] - (times[start] if stop > start else 0.0)
        idx = tuple(int(start) + i for i in select_frames(local, num_frames, d.window))
        if idx not in seen:
            seen.add(idx)
            chosen.append(list(idx))
    return chosen


def video_timestamps(path: Path) -> tuple[np.ndarray, float]:
    """(every frame's pts in presentation order, seconds per pts unit), from the packets alone (no decoding).
    A file that holds fewer frames, or ends earlier, than its own header declares is truncated."""

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise BadClip("unreadable video", "no video stream")
        stream = container.streams.video[0]
        pts = [p.pts for p in container.demux(stream) if p.size]  # size 0: the demuxer's final flush packet
        time_base, declared_frames = float(stream.time_base), stream.frames  # frames: 0 when the header has none
        declared_s = stream.duration * time_base if stream.duration else _tag_seconds(stream.metadata.get("DURATION"))
    if not pts or any(p is None for p in pts):
        raise BadClip("unreadable video", "no frames" if not pts else "packets without timestamps")
    pts = np.sort(np.array(pts, dtype=np.int64))
    if declared_frames and len(pts) < declared_frames:
        raise BadClip("truncated video", f"{len(pts)} of the {declared_frames} frames its header declares")
    step = float(np.median(np.diff(pts))) * time_base if len(pts) > 1 else 0.0
    end = (pts[-1] - pts[0]) * time_base + step
    if declared_s and end < declared_s - 1.5 * step:
        raise BadClip("truncated video", f"frames end at {end:.2f} s of the {declared_s:.2f} s its header declares")
    return pts, time_base


def _tag_seconds(tag: str | None) -> float:
    """Matroska's per-track DURATION tag, 'HH:MM:SS.nnnnnnnnn' -> seconds (0 when absent or unparsable)."""
    try:
        h, m, sec = (tag or "").split(":")
        return int(h) * 3600 + int(m) * 60 + float(sec)
    except ValueError:
        return 0.0


def read_video(path: Path, pts: list[int]) -> list[np.ndarray]:
    """The frames with these pts (ascending), as uint8 [H, W, 3]. Decodes forward across short gaps and seeks to
    the keyframe before a target beyond SEEK_GAP_S, so T frames of a long video cost T short decodes."""

    out = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        gap = SEEK_GAP_S / float(stream.time_base)
        position = stream.start_time or 0  # pts the decoder reaches next without a seek
        decoded, frame = container.decode(stream), None
        for target in pts:
            if target - position > gap:
                container.seek(int(target), stream=stream)  # backward: lands on the keyframe at or before target
                decoded = container.decode(stream)
            while frame is None or frame.pts < target:
                frame = next(decoded, None)
                if frame is None:
                    raise EOFError(f"the video ends before pts {target}")
                position = frame.pts
            out.append(frame.to_ndarray(format="rgb24"))
    return out


def read_images(files: list[Path]) -> list[np.ndarray]:
    """uint8 [H, W, 3] per file. 16-bit images (PIL modes I;16*, I) are scaled to 8 bits (x 255/65535), not
    saturated as PIL's convert("RGB") does."""

    out = []
    for f in files:
        with Image.open(f) as im:
            if im.mode.startswith("I;16") or im.mode == "I":
                a = np.asarray(im).astype(np.float64)
                a = np.clip(np.round(a * (255 / 65535)), 0, 255).astype(np.uint8)
                out.append(np.repeat(a[..., None], 3, axis=2))
            else:
                out.append(np.array(im.convert("RGB")))
    return out


def to_model_frames(arrays: list[np.ndarray], size: int, mode: str) -> torch.Tensor:
    """uint8 [H, W, 3] frames -> uint8 [T, 3, size, size] (resize_frames 'crop' or 'squash'; none if already sized)."""
    frames = [torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1) for a in arrays]
    if all(f.shape[-2:] == (size, size) for f in frames):
        return torch.stack(frames)
    if len({f.shape for f in frames}) == 1:
        return resize_frames(torch.stack(frames), size, mode)
    return torch.cat([resize_frames(f[None], size, mode) for f in frames])  # frames of different sizes: rare


def probe(clip: Clip, d: DataConfig, frame_size: int, check: bool = True) -> list[Clip]:
    """Choose each window's T frames and check they can be read: the video's clips (one unless data.windows /
    data.window_stride cut more); raises BadClip naming the reason. check=False skips the test decode (a lazy read
    decodes the frames right after, which is the test)."""
    path = clip.path
    if not path.exists():
        raise BadClip("missing file", str(path))
    if path.is_dir():
        if path.suffix.lower() in VIDEO_EXTS:
            raise BadClip(
                "folder named like a video", f"{path} is a directory, not a {path.suffix} file; point at the file"
            )
        kind, (windows, starts) = "frames", _probe_frames(path, d, check)
        identity = [",".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in w) for w in windows]
    else:
        kind, (windows, starts) = "video", _probe_video(path, d, check)
        stat = path.stat()
        identity = [f"{stat.st_size}:{stat.st_mtime_ns}:pts={','.join(map(str, w))}" for w in windows]
    rate = f"|rate={d.frame_rate:g}" if kind == "frames" else ""
    clips = []
    for frames, ident, start in zip(windows, identity, starts):
        name = clip.name if len(windows) == 1 and d.windows == 1 and not d.window_stride else f"{clip.name}@{start:g}s"
        key = f"{kind}|{path.resolve()}|{ident}|T={d.num_frames}|window={d.window}{rate}|{d.resize}|{frame_size}"
        clips.append(Clip(name, path, clip.caption, kind, frames, key, video=clip.name))
    return clips


def _probe_frames(path: Path, d: DataConfig, check: bool = True) -> tuple[list[list[Path]], list[float]]:
    """Each window's image files and its start in seconds; every chosen image is read once."""
    files = sorted(
        (f for f in path.iterdir() if f.name.startswith("frame_") and f.suffix.lower() in IMAGE_EXTS),
        key=lambda f: (int(re.sub(r"\D", "", f.stem) or 0), f.name),  # frame_2 before frame_10
    )
    times = np.arange(len(files)) / d.frame_rate
    chosen = select_windows(times, d.num_frames, d)
    windows = [[files[i] for i in w] for w in chosen]
    for f in dict.fromkeys(f for w in windows for f in w) if check else ():  # every chosen image once, in order
        if f.stat().st_size == 0:
            raise BadClip("unreadable image", f"{f.name}: zero-byte file")
        try:
            read_images([f])
        except Exception as e:
            raise BadClip("unreadable image", f"{f.name}: {type(e).__name__}: {e}") from e
    return windows, [round(float(times[w[0]]), 3) for w in chosen]


def _probe_video(path: Path, d: DataConfig, check: bool = True) -> tuple[list[list[int]], list[float]]:
    """Each window's pts and its start in seconds; the first and the last chosen frames are decoded."""
    ext = path.suffix.lower()
    if ext not in VIDEO_EXTS:
        raise BadClip("unknown extension", f"{ext or 'no extension'}; videos: {', '.join(VIDEO_EXTS)}")
    if path.stat().st_size == 0:
        raise BadClip("zero-byte file")
    try:
        pts, time_base = video_timestamps(path)
        times = (pts - pts[0]) * time_base
        chosen = select_windows(times, d.num_frames, d)
        windows = [[int(pts[i]) for i in w] for w in chosen]
        if check:
            read_video(path, [windows[0][0], max(w[-1] for w in windows)])
    except BadClip:
        raise
    except Exception as e:
        raise BadClip("unreadable video", f"{type(e).__name__}: {e}") from e
    return windows, [round(float(times[w[0]]), 3) for w in chosen]


def load_frames(clip: Clip, size: int, mode: str) -> torch.Tensor:
    arrays = read_video(clip.path, clip.frames) if clip.kind == "video" else read_images(clip.frames)
    return to_model_frames(arrays, size, mode)


def read_clip(path: str | Path, d: DataConfig, frame_size: int) -> dict:
    """One video file or frame folder -> a dataset item (what `foveal caption` / `foveal viz` read); a bad file
    raises a clear error instead of being skipped."""
    path = Path(path)
    try:
        clip = probe(Clip(path.stem, path), d, frame_size)[0]  # its first window
    except BadClip as e:
        raise FileNotFoundError(f"{path}: {e}") from e
    return {"frames": load_frames(clip, frame_size, d.resize), "caption": "", "key": clip.key, "index": 0}


# ---------------------------------------------------------------------------------------------------------------------
# datasets


class VideoClips(Dataset):
    """Probed clips -> {"frames": uint8 [T, 3, S, S], "caption", "key", "index", "skips"} (SyntheticClips' items).

    A clip that fails to decode is served by the next good one (deterministically: every rank and worker serves
    the same) and counted; the item's "skips" lists what serving it skipped, so a DataLoader worker's finds reach
    the main process."""

    def __init__(self, clips: list[Clip], frame_size: int, resize: str, skipped: Skips):
        self.clips, self.frame_size, self.resize, self.skipped = clips, frame_size, resize, skipped
        self.bad: set[int] = set()  # clips that failed to decode; the next good clip stands in

    def __len__(self) -> int:
        return len(self.clips)

    def clip(self, j: int) -> Clip:  # clip j, probed
        return self.clips[j]

    def name(self, j: int) -> str:
        return self.clips[j].name

    def _serve(self, i: int) -> int:
        n = len(self)
        for j in ((i + d) % n for d in range(n)):
            if j not in self.bad:
                return j
        raise RuntimeError("data: no clip of this dataset decodes any more; see the warnings above")

    def key(self, i: int) -> str:
        return self.clip(self._serve(i)).key

    def keys(self) -> list[str]:
        return [self.key(i) for i in range(len(self))]

    def __getitem__(self, i: int) -> dict:
        skips = []
        while True:
            j = self._serve(i)
            try:
                clip = self.clip(j)
                frames = load_frames(clip, self.frame_size, self.resize)
            except BadClip as e:  # a lazy probe's finding
                skip = (e.reason, self.name(j), f"{e.detail}; the next clip stands in")
            except Exception as e:  # decoding failed after the probe: never stop the run for one file
                skip = ("decode failed", self.name(j), f"{type(e).__name__}: {e}; the next clip stands in")
            else:
                return {"frames": frames, "caption": clip.caption, "key": clip.key, "index": i, "skips": skips}
            self.bad.add(j)
            self.skipped.add(*skip)
            skips.append(skip)


def probe_all(listed: list[Clip], d: DataConfig, frame_size: int, skipped: Skips) -> list[Clip]:
    """Probe every video (a few threads: PyAV and PIL release the GIL); the usable clips (each video's windows),
    in listing order."""

    def one(clip: Clip) -> list[Clip] | BadClip:
        try:
            return probe(clip, d, frame_size)
        except BadClip as e:
            return e
        except Exception as e:  # anything else unreadable (permissions, ...): skipped, named, counted
            return BadClip("unreadable file", f"{type(e).__name__}: {e}")

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        bar = tqdm(
            pool.map(one, listed), total=len(listed), desc="probing clips", unit="clip", leave=False, disable=None
        )
        results = list(bar)
    usable = []
    for clip, result in zip(listed, results):
        if isinstance(result, BadClip):
            skipped.add(result.reason, clip.name, result.detail)
        else:
            usable.extend(result)
    return usable


def id_hash(name: str) -> float:
    """A clip id -> a number in [0, 1): the first 8 bytes of sha256(id) / 2^64."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2**64


def heldout_names(listed: list[Clip], count: int, fraction: float | None = None) -> set[str]:
    """The ids held out, decided on the *listed* clips (before probing), so a clip that fails to probe never pulls
    another into (or out of) the held-out set. fraction set: held out iff id_hash(id) < fraction (a function of each
    id alone). Else the `count` listed ids with the lowest id_hash (exactly count when every clip probes; a failing
    held-out clip just leaves the held-out set one smaller)."""
    videos = sorted({c.video for c in listed})
    if fraction is not None:
        return {v for v in videos if id_hash(v) < fraction}
    return set(sorted(videos, key=id_hash)[:count])


def heldout_split(clips: list[Clip], held: set[str]) -> tuple[list[Clip], list[Clip]]:
    """(train, held-out), both in listing order; `held` names videos (all of a video's windows go one way)."""
    return [c for c in clips if c.video not in held], [c for c in clips if c.video in held]


def file_datasets(d: DataConfig, frame_size: int) -> tuple[VideoClips, VideoClips]:
    """(train, held-out) clip datasets from a folder or manifest; disjoint, deterministic, bad clips skipped."""
    skipped = Skips()
    listed = list_clips(d.source, skipped)
    clips = probe_all(listed, d, frame_size, skipped)
    if not clips:
        raise ConfigError(
            f"data.source: no usable clip in {d.source} ({len(listed)} listed; skipped: {skipped.summary()}); "
            f"see the warnings above"
        )
    videos = len({c.video for c in clips})
    if d.heldout_fraction is None and d.heldout_clips >= videos:
        raise ConfigError(
            f"data.heldout_clips: {d.heldout_clips} held-out videos leave none of the {videos} usable videos of "
            f"{d.source} for training; lower it"
        )
    train, heldout = heldout_split(clips, heldout_names(listed, d.heldout_clips, d.heldout_fraction))
    if not heldout and (d.heldout_fraction or d.heldout_clips):  # every held-out clip failed to probe
        train, heldout = heldout_split(clips, heldout_names(clips, max(1, d.heldout_clips)))
        if main_process():
            log.warning("warning: every held-out clip failed probing; holding out usable ones instead")
    if not train:
        raise ConfigError(
            f"data.heldout_fraction: {d.heldout_fraction} holds out all {len(clips)} usable clips of {d.source}; "
            f"lower it"
        )
    if d.train_clips:
        train = train[: d.train_clips]
    if main_process():
        skips = sum(skipped.counts().values())
        cut = f" cut from {videos} videos" if videos != len(clips) else ""
        log.info(
            f"data: {d.source}: {len(clips)} usable clips{cut} ({len(train)} train, {len(heldout)} held-out); "
            f"skipped {skips}" + (f": {skipped.summary()}" if skips else "")
        )
    return VideoClips(train, frame_size, d.resize, skipped), VideoClips(heldout, frame_size, d.resize, skipped)
