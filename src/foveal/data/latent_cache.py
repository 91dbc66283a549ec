"""On-disk cache of per-clip tensors (VAE latents): each clip is encoded once per (pixels, encoder weights).

cache_dir/latents/<weights fingerprint>/: shard-*.safetensors + index.json (clip key hash -> shard). The clip key
names the clip *and* how it was sampled (frames, window, size), so an entry is reused only for the very same pixels.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file


class LatentCache:
    def __init__(self, cache_dir: str | Path, fingerprint: str):
        self.dir = Path(cache_dir) / "latents" / fingerprint
        self.dir.mkdir(parents=True, exist_ok=True)
        self.index_path = self.dir / "index.json"
        self.index: dict[str, str] = json.loads(self.index_path.read_text()) if self.index_path.exists() else {}

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
        os.replace(tmp, self.dir / name)
        self.index.update({e: name for e in entries})
        tmp_index = self.index_path.with_suffix(".tmp")
        tmp_index.write_text(json.dumps(self.index))
        os.replace(tmp_index, self.index_path)

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
