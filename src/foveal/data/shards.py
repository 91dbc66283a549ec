"""Clips in tar shards (webdataset's layout): `foveal data shard` cuts them once, training reads them back.

A shard set is a folder: shards.json (what the clips were cut with: the data config and frame size; per split its
shard files and clip counts; the clips skipped while cutting) and <split>-NNNNNN.tar, whose members come in pairs
<n>.frames.npy (uint8 [T, 3, S, S], decoded, sampled and resized: a read is a seek and a copy, no video decode)
and <n>.json (key, caption). Shards are written in parallel, one process per shard, each to a temp file
renamed when whole, so an interrupted `foveal data shard` resumes by writing only the shards still missing. Reading
is map-style: clip i is found from the shard counts, its bytes from the shard's member table (read once per process
when the shard is first opened), so the resumable micro-batch order, the rank split and resume work as for any
dataset. A clip that fails to read while cutting is skipped there (named and counted in shards.json), not stood in
for: a shard holds no clip twice.
"""

from __future__ import annotations

import io
import json
import logging
import multiprocessing
import os
import tarfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from foveal.config import ConfigError, DataConfig
from foveal.data.video import Skips, main_process, merge_skips

log = logging.getLogger(__name__)

INDEX = "shards.json"
FORMAT = 1
_CUTTING: dict = {}  # split -> dataset, inherited by the forked shard writers


def is_shard_set(path: Path) -> bool:
    return path.is_dir() and (path / INDEX).exists()


def shard_name(split: str, k: int) -> str:
    return f"{split}-{k:06d}.tar"


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _write_shard(job: tuple[str, int, int, int, str]) -> tuple[str, int, int, dict]:
    """One shard of clips [start, stop) of a split: (split, k, clips written, skips)."""
    split, k, start, stop, folder = job
    torch.set_num_threads(1)  # a forked process: one thread each, as DataLoader workers run
    dataset, path = _CUTTING[split], Path(folder) / shard_name(split, k)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    written, skips = 0, Skips()
    with tarfile.open(tmp, "w") as tar:
        for i in range(start, stop):
            item = dataset[i]
            if item.get("skips"):  # clip i did not read; the clip that stood in is cut at its own index
                for skip in item["skips"]:
                    skips.add(*skip)
                continue
            buf = io.BytesIO()
            np.save(buf, item["frames"].numpy())
            _add(tar, f"{written:06d}.frames.npy", buf.getvalue())
            meta = {"key": item["key"], "caption": item["caption"]}
            _add(tar, f"{written:06d}.json", json.dumps(meta).encode())
            written += 1
    os.replace(tmp, path)
    return split, k, written, dict(skips)


def _count(path: Path) -> int:
    with tarfile.open(path) as tar:
        return sum(1 for m in tar if m.name.endswith(".json"))


def write_shards(splits: dict, out: Path, data: DataConfig, frame_size: int, shard_size: int, jobs: int, say=print):
    """splits: name -> clip dataset. Writes the shards still missing, then shards.json; returns its content."""
    out.mkdir(parents=True, exist_ok=True)
    plan = [
        (split, k, start, min(start + shard_size, len(ds)), str(out))
        for split, ds in splits.items()
        for k, start in enumerate(range(0, len(ds), shard_size))
    ]
    todo = [job for job in plan if not (out / shard_name(job[0], job[1])).exists()]
    say(f"data shard: {len(plan)} shards of up to {shard_size} clips in {out}; {len(plan) - len(todo)} already there")
    counts, skipped = {}, [dict(getattr(ds, "skipped", {})) for ds in splits.values()]
    _CUTTING.update(splits)
    try:
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
            for n, (split, k, written, skips) in enumerate(pool.map(_write_shard, todo), 1):
                counts[split, k], skipped = written, [*skipped, skips]
                say(f"  {shard_name(split, k)}: {written} clips ({n}/{len(todo)})")
    finally:
        _CUTTING.clear()
    for split, k, *_ in plan:
        if (split, k) not in counts:
            counts[split, k] = _count(out / shard_name(split, k))
    previous = json.loads((out / INDEX).read_text()).get("skipped", {}) if (out / INDEX).exists() else {}
    index = {
        "format": FORMAT,
        "data": asdict(data),
        "frame_size": frame_size,
        "splits": {s: [[shard_name(s, k), counts[s, k]] for s2, k, *_ in plan if s2 == s] for s in splits},
        "skipped": merge_skips([previous, *skipped]),
    }
    tmp = out / f".{INDEX}.tmp"
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, out / INDEX)
    return index


@lru_cache(maxsize=64)
def _members(path: str) -> list[tuple[int, int, int, int]]:
    """A shard's clips: (frames offset, size, json offset, size), in order (read once per process and shard)."""
    with tarfile.open(path) as tar:
        found = {m.name: (m.offset_data, m.size) for m in tar}
    n = sum(1 for name in found if name.endswith(".json"))
    return [(*found[f"{j:06d}.frames.npy"], *found[f"{j:06d}.json"]) for j in range(n)]


def _read(path: str, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


class ShardClips(Dataset):
    """One split of a shard set -> the items every clip dataset yields."""

    def __init__(self, folder: Path, shards: list, count: int | None, skipped: Skips):
        self.files = [str(folder / name) for name, _ in shards]
        self.ends = np.cumsum([n for _, n in shards])
        total = int(self.ends[-1]) if len(shards) else 0
        self.count = min(count, total) if count else total
        self.skipped = skipped

    def __len__(self) -> int:
        return self.count

    def _where(self, i: int) -> tuple[str, tuple[int, int, int, int]]:
        s = int(np.searchsorted(self.ends, i, side="right"))
        start = int(self.ends[s - 1]) if s else 0
        return self.files[s], _members(self.files[s])[i - start]

    def meta(self, i: int) -> dict:
        path, (_, _, offset, size) = self._where(i)
        return json.loads(_read(path, offset, size))

    def key(self, i: int) -> str:
        return self.meta(i)["key"]

    def keys(self) -> list[str]:
        return [self.key(i) for i in range(len(self))]

    def __getitem__(self, i: int) -> dict:
        path, (offset, size, _, _) = self._where(i)
        frames = torch.from_numpy(np.load(io.BytesIO(_read(path, offset, size))))  # [T, 3, S, S] uint8
        meta = self.meta(i)
        return {"frames": frames, "caption": meta["caption"], "key": meta["key"], "index": i, "skips": []}


def read_index(folder: Path) -> dict:
    """shards.json, checked: a foveal index whose every shard file is there."""
    fix = f"cut the shards again with `foveal data shard --out {folder}` (it writes only what is missing)"
    try:
        index = json.loads((folder / INDEX).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"data.source: {folder / INDEX} is unreadable ({e}); {fix}") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT or "train" not in index.get("splits", {}):
        raise ConfigError(f"data.source: {folder / INDEX} is not a foveal shard index; {fix}")
    gone = [name for shards in index["splits"].values() for name, _ in shards if not (folder / name).is_file()]
    if gone:
        raise ConfigError(f"data.source: {folder} lacks {len(gone)} of its shards ({gone[0]}, ...); {fix}")
    return index


def shard_datasets(folder: Path, d: DataConfig, frame_size: int) -> tuple[ShardClips, ShardClips]:
    """(train, held-out) of a shard set; its clips must have been cut as this run reads them."""
    index = read_index(folder)
    cut = index.get("data", {})
    if index["frame_size"] != frame_size or cut.get("num_frames") != d.num_frames:
        raise ConfigError(
            f"data.source: the shards in {folder} hold {cut.get('num_frames')} frames at {index['frame_size']} px; "
            f"this run reads {d.num_frames} at {frame_size} px: set data.num_frames / model.frame_size to match, or "
            f"cut shards for this run (`foveal data shard --data <manifest> --out <folder>` with its config)"
        )
    skipped = Skips()
    for reason, names in index.get("skipped", {}).items():
        skipped.setdefault(reason, list(names))
    train = ShardClips(folder, index["splits"]["train"], d.train_clips, skipped)
    heldout = ShardClips(folder, index["splits"].get("heldout", []), None, skipped)
    if main_process():
        log.info(
            f"data: {folder}: {len(train)} train and {len(heldout)} held-out clips in shards (held-out split as cut; "
            f"{sum(len(n) for n in skipped.values())} clips skipped while cutting)"
        )
    return train, heldout
