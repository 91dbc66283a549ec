"""On-disk cache of per-clip tensors (VAE latents): each clip is encoded once per (pixels, encoder weights).

cache_dir/latents/<weights fingerprint>/: shard-*.safetensors (read memory-mapped, one clip at a time) and, per
writing process (torchrun rank), an append-only index-<rank>.jsonl with one line per shard naming its entries. A
write costs its shard, not the whole index (a rewritten index.json grew with the cache: quadratic at millions of
clips), and ranks never write the same file. The clip key names the clip *and* how it was sampled (frames, window,
size), so an entry is reused only for the very same pixels. A line cut short by a crash is ignored: its clips are
encoded again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def writer_rank() -> str:
    return os.environ.get("RANK", "0")  # under torchrun each rank appends to its own index


class LatentCache:
    def __init__(self, cache_dir: str | Path, fingerprint: str, writer: str | None = None):
        self.dir = Path(cache_dir) / "latents" / fingerprint
        self.writer = writer  # the index this process appends to (compare's workers: jobN); None: its rank's
        self.dir.mkdir(parents=True, exist_ok=True)
        self.index: dict[str, str] = {}  # entry -> shard file
        legacy = self.dir / "index.json"  # caches written before the append-only index
        if legacy.exists():
            self.index.update(json.loads(legacy.read_text()))
        for part in sorted(self.dir.glob("index-*.jsonl")):
            self.index.update(_read_index(part))

    @staticmethod
    def entry(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()[:24]

    def missing(self, keys: list[str]) -> list[int]:
        return [i for i, k in enumerate(keys) if self.entry(k) not in self.index]

    def put(self, tensors: dict[str, torch.Tensor]) -> None:
        entries = {self.entry(k): v.contiguous() for k, v in tensors.items()}
        name = f"shard-{hashlib.sha256(''.join(sorted(entries)).encode()).hexdigest()[:12]}.safetensors"
        tmp = self.dir / (name + ".tmp")
        save_file(entries, str(tmp))
        os.replace(tmp, self.dir / name)  # the shard exists whole before any index names it
        with open(self.dir / f"index-{self.writer or writer_rank()}.jsonl", "a") as f:
            f.write(json.dumps({"shard": name, "entries": sorted(entries)}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.index.update({e: name for e in entries})

    def get(self, keys: list[str]) -> torch.Tensor:
        """The entries of keys, stacked [N, ...] in the order asked."""
        entries = [self.entry(k) for k in keys]
        by_shard: dict[str, list[int]] = {}
        for i, e in enumerate(entries):
            by_shard.setdefault(self.index[e], []).append(i)
        out: list[torch.Tensor | None] = [None] * len(keys)
        for shard, rows in by_shard.items():
            with safe_open(str(self.dir / shard), framework="pt") as f:
                for i in rows:
                    out[i] = f.get_tensor(entries[i])
        return torch.stack(out)


def _read_index(path: Path) -> dict[str, str]:
    index = {}
    for line in path.read_text().splitlines():
        try:
            shard = json.loads(line)
            index.update(dict.fromkeys(shard["entries"], shard["shard"]))
        except (json.JSONDecodeError, KeyError, TypeError):  # the last line of a write cut short
            continue
    return index
