"""Clips from files, checked when first read (data.validate=lazy): start-up reads the manifest and nothing else.

Eager validation (video.py) probes every clip before step 0; at WebVid's 10M clips that is days of decoding, and
one Clip object per row is gigabytes on every rank. Here the listing is one streamed pass over the manifest that
keeps each row as its own bytes in one buffer, plus its id's 64-bit hash, which de-duplicates ids and files and
decides the held-out split (the same sha256 as eager mode: both modes hold out the same videos). A training clip
is probed by the process (rank, DataLoader worker) that first reads it; a bad one is skipped and counted under
eager mode's reasons, and the next clip stands in. Held-out clips are few and probed at start-up, so held-out
numbers are over exactly the clips named. Without file-system calls at listing, one file reached through a
symlink under two names is not recognised as one (ids stay unique).
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import logging
import os
from array import array
from pathlib import Path

import numpy as np

from foveal.config import ConfigError, DataConfig
from foveal.data.video import (
    BadClip,
    Clip,
    Skips,
    VideoClips,
    check_columns,
    find_video,
    list_folder,
    main_process,
    manifest_lines,
    manifest_rows,
    probe,
    probe_all,
    source_path,
)

log = logging.getLogger(__name__)

LAZY_ABOVE = 10_000  # data.validate=auto: listings longer than this are validated lazily
SEP = "\x00"  # between a row's fields (no manifest value holds a NUL)


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")  # video.id_hash(text) x 2^64


class Rows:
    """Listed clips as bytes: name, path (as listed: relative to the root or absolute; "" for a videoid row),
    caption and page_dir of each row in one buffer with its end offset, ~the row's text + 24 bytes (a Clip object
    is ~1 kB)."""

    def __init__(self, root: Path):
        self.root, self.root_abs = root, os.path.abspath(root)
        self._buf, self._ends = bytearray(), array("q")
        self.ids, self.files = array("Q"), array("q")  # hashes of each row's id (sha256: the split) and file

    def __len__(self) -> int:
        return len(self._ends)

    def add(self, name: str, path: str, caption: str, page_dir: str) -> None:
        self.ids.append(_hash64(name))
        file = path if path.startswith("/") else f"{self.root_abs}/{path}" if path else f"{page_dir}/{name}"
        self.files.append(hash(file))  # Python's hash: stable within this process, all dedup needs
        self._buf += SEP.join((name, path, caption, page_dir)).encode()
        self._ends.append(len(self._buf))

    def clip(self, i: int) -> Clip:
        start = self._ends[i - 1] if i else 0
        name, path, caption, page_dir = self._buf[start : self._ends[i]].decode().split(SEP)
        where = self.root / path if path else find_video(self.root, name, page_dir)  # a videoid row
        return Clip(name, where, caption)

    def unique(self, skipped: Skips) -> np.ndarray:
        """Row indices of the first row of each id, then of each file among them (eager listing's rule)."""
        ids = np.frombuffer(self.ids, np.uint64)
        keep = _firsts(ids, np.arange(len(self)))
        keep = _firsts(np.frombuffer(self.files, np.int64)[keep], keep)
        dropped = np.ones(len(self), bool)
        dropped[keep] = False
        for i in np.flatnonzero(dropped):  # few: each is named
            clip = self.clip(int(i))
            reason = "duplicate clip id" if (ids[keep] == ids[i]).any() else "duplicate file"
            skipped.add(reason, clip.name, str(clip.path))
        return keep


def _firsts(hashes: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """rows of the first occurrence of each hash, in order (a stable sort: np.unique's hash table is 5x slower)."""
    order = np.argsort(hashes, kind="stable")
    ranked = hashes[order]
    first = np.concatenate([[True], ranked[1:] != ranked[:-1]])
    return rows[np.sort(order[first])]


FIELDS = ("videoid", "path", "caption", "name", "page_dir")


def _records(manifest: Path):
    """(where, [videoid, path, caption, name, page_dir] or None for a line that is no JSON object), streamed; csv
    rows as lists (a dict per row costs more than the rest of the listing)."""
    if manifest.suffix.lower() != ".csv":
        for where, row in manifest_rows(manifest):
            row = None if row is None else {str(k).strip().lower(): v for k, v in row.items() if k is not None}
            yield where, None if row is None else ["" if row.get(c) is None else str(row[c]).strip() for c in FIELDS]
        return
    lines = manifest_lines(manifest)
    _, first = next(lines, (0, ""))
    reader = csv.reader(itertools.chain([first], (text for _, text in lines)))
    header = [c.strip().lower() for c in next(reader, [])]
    check_columns(manifest, header, first)
    at = [header.index(c) if c in header else len(header) + 10**9 for c in FIELDS]
    for row in reader:
        if row:  # csv.DictReader's rule: a blank line is no row
            yield f"{manifest.name}:{reader.line_num}", [row[i].strip() if i < len(row) else "" for i in at]


def list_rows(source: str, skipped: Skips) -> Rows:
    """One streamed pass over the manifest (or the folder's entries), no file-system call per row. A path keeps its
    spelling (normalised); a videoid's file is found when the clip is first read."""
    src = source_path(source)
    rows = Rows(src if src.is_dir() else src.parent)
    if src.is_dir():
        for clip in list_folder(src):
            rows.add(clip.name, clip.path.name, clip.caption, "")
        return rows
    for where, values in _records(src):
        if values is None:
            skipped.add("unreadable manifest row", where, "not a JSON object")
            continue
        videoid, path, caption, name, page_dir = values
        if not (path or videoid):
            skipped.add("manifest row without a path", where, "needs a 'path' or 'videoid' column value")
            continue
        if path and (path[0] in "~." or "/." in path or "//" in path or path[-1] == "/"):  # else normpath keeps it
            path = os.path.normpath(os.path.expanduser(path))
        named = os.path.relpath(path, rows.root_abs) if path.startswith("/") else path  # eager mode's name for it
        rows.add(videoid or named, path, caption or name, page_dir)
    return rows


def count_listed(source: str) -> int:
    """Rows of a manifest (lines, less the csv header) or entries of a folder, for data.validate=auto."""
    src = source_path(source)
    if src.is_dir():
        return sum(1 for p in src.iterdir() if not p.name.startswith("."))
    with src.open("rb") as f:
        return sum(1 for line in f if line.strip()) - (src.suffix.lower() == ".csv")


class LazyClips(VideoClips):
    """Training clips of listed rows, each probed when it is read: clip j is window j % W of row index[j // W]."""

    def __init__(self, rows: Rows, index: np.ndarray, d: DataConfig, frame_size: int, skipped: Skips):
        super().__init__([], frame_size, d.resize, skipped)
        self.rows, self.index, self.data = rows, index, d
        self.count = len(index) * d.windows if not d.train_clips else min(d.train_clips, len(index) * d.windows)

    def __len__(self) -> int:
        return self.count

    def name(self, j: int) -> str:
        return self.rows.clip(int(self.index[j // self.data.windows])).name

    def clip(self, j: int) -> Clip:
        windows = probe(self.rows.clip(int(self.index[j // self.data.windows])), self.data, self.frame_size, False)
        if j % self.data.windows >= len(windows):  # a short video: fewer distinct windows than data.windows
            raise BadClip("fewer windows", f"{len(windows)} distinct windows of the {self.data.windows} asked")
        return windows[j % self.data.windows]


def held_out(hashes: np.ndarray, d: DataConfig) -> np.ndarray:
    """bool per row: held out iff hash / 2^64 < data.heldout_fraction, else the data.heldout_clips lowest hashes
    (video.heldout_names' rule, on the same hash)."""
    if d.heldout_fraction is not None:
        return hashes.astype(np.float64) / 2.0**64 < d.heldout_fraction
    held = np.zeros(len(hashes), bool)
    held[np.argsort(hashes, kind="stable")[: d.heldout_clips]] = True
    return held


def lazy_datasets(d: DataConfig, frame_size: int) -> tuple[LazyClips, VideoClips]:
    """(train, held-out): the training rows unprobed, the held-out ones probed now."""
    skipped = Skips()
    rows = list_rows(d.source, skipped)
    keep = rows.unique(skipped)
    if d.heldout_fraction is None and d.heldout_clips >= len(keep):
        raise ConfigError(
            f"data.heldout_clips: {d.heldout_clips} held-out videos leave none of the {len(keep)} listed videos of "
            f"{d.source} for training; lower it"
        )
    held = held_out(np.frombuffer(rows.ids, np.uint64)[keep], d)
    if held.all():
        raise ConfigError(
            f"data.heldout_fraction: {d.heldout_fraction} holds out all {len(keep)} listed clips; lower it"
        )
    heldout = probe_all([rows.clip(int(i)) for i in keep[held]], d, frame_size, skipped)
    if not heldout and held.any():
        raise ConfigError(f"data: none of the {int(held.sum())} held-out clips of {d.source} reads; see the warnings")
    train = LazyClips(rows, keep[~held], d, frame_size, skipped)
    if main_process():
        log.info(
            f"data: {d.source}: {len(keep)} listed videos ({len(train)} train clips, checked when first read; "
            f"{len(heldout)} held-out clips, checked); skipped so far {sum(skipped.counts().values())}"
        )
    return train, VideoClips(heldout, frame_size, d.resize, skipped)
