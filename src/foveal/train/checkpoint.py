"""Checkpoints: atomic writes, keep-last-K + best, prefix-agnostic loading.

A checkpoint is one torch file: trainable weights and buffers (frozen backbone weights are rebuilt from the config
and checked against a stored fingerprint), optimiser, scheduler, step, data position, RNG states, config and the
per-step history the final results need.
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import numpy as np
import torch

from foveal.model.backbones import fingerprint

WRAPPERS = ("module", "_orig_mod")  # DDP and torch.compile wrap a model under these names


def strip_prefixes(state: dict) -> dict:
    """Drop the DDP `module.` and torch.compile `_orig_mod.` path components wherever they occur."""
    return {".".join(p for p in k.split(".") if p not in WRAPPERS): v for k, v in state.items()}


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def frozen_names(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if not p.requires_grad}


def model_state(model: torch.nn.Module) -> tuple[dict, str]:
    """(trainable parameters + buffers, fingerprint of the frozen parameters)."""
    model = unwrap(model)
    frozen = frozen_names(model)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items() if k not in frozen}
    frozen_module = torch.nn.ParameterDict({k.replace(".", "/"): p for k, p in model.named_parameters() if k in frozen})
    return state, fingerprint(frozen_module)


def load_model_state(model: torch.nn.Module, ckpt: dict, check_frozen: bool = True) -> None:
    model = unwrap(model)
    state = strip_prefixes(ckpt["model"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    frozen = frozen_names(model)
    really_missing = [k for k in missing if k not in frozen]
    if really_missing or unexpected:
        raise RuntimeError(
            f"checkpoint does not fit the model: missing {really_missing[:5]}, unexpected {unexpected[:5]}"
        )
    if check_frozen and ckpt.get("frozen_fingerprint"):
        _, now = model_state(model)
        if now != ckpt["frozen_fingerprint"]:
            raise RuntimeError(
                "the frozen backbone weights differ from those the checkpoint was trained with (config sources or "
                "seed changed); rebuild with the checkpoint's own config.yaml"
            )


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj, path: str | Path) -> None:
    """Write to a temp file in the same folder, fsync, rename: a crash leaves the old file or the new, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def checkpoints(folder: str | Path) -> list[Path]:
    """Step checkpoints in folder, oldest first."""
    pattern = re.compile(r"step-(\d+)\.pt$")
    found = [(int(m.group(1)), p) for p in Path(folder).glob("step-*.pt") if (m := pattern.search(p.name))]
    return [p for _, p in sorted(found)]


def latest(folder: str | Path) -> Path | None:
    found = checkpoints(folder)
    return found[-1] if found else None


def save_checkpoint(folder: str | Path, state: dict, step: int, keep_last: int, metric: float | None) -> Path:
    """step-XXXXXXX.pt; prune to the last keep_last; best.pt follows the lowest metric (a hard link when possible)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:07d}.pt"
    state = {**state, "step": step, "metric": metric}
    atomic_save(state, path)
    best, best_info = folder / "best.pt", folder / "best.json"
    best_metric = json.loads(best_info.read_text())["metric"] if best_info.exists() and best.exists() else None
    if metric is not None and (best_metric is None or metric <= best_metric):
        tmp = folder / ".best.pt.tmp"
        tmp.unlink(missing_ok=True)
        try:
            os.link(path, tmp)  # same bytes, no extra space
        except OSError:
            atomic_save(state, tmp)
        os.replace(tmp, best)
        best_info.write_text(json.dumps({"metric": metric, "step": step}))
    for old in checkpoints(folder)[:-keep_last]:
        old.unlink()
    return path


def load_checkpoint(path: str | Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)
