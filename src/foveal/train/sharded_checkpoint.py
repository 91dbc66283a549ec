"""Checkpoints of an FSDP2-sharded run: `step-NNNNNNN.dcp/`, a torch.distributed.checkpoint folder beside the
`step-N.safetensors` files.

Every rank writes its own shards of the model and optimiser (`get_state_dict` / `dcp.save`) into a temp folder;
after a barrier rank 0 adds `run.safetensors` (what the safetensors checkpoints hold besides those tensors: step,
data position, scheduler, scaler, RNG states, history; verified as they are) and renames the folder. A crash leaves
the old checkpoints and a temp folder, which the next run removes. Loading reads each rank's shards back into the
sharded model and optimiser (`dcp.load`, then `set_model_state_dict` / `set_optimizer_state_dict`). The final
weights are also gathered whole into a safetensors checkpoint (`full_model_state`) for whatever reads a trained
model.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from foveal.model.backbones import fingerprint
from foveal.train.checkpoint import CheckpointError, atomic_save, load_checkpoint
from foveal.train.distributed import Dist

SUFFIX = ".dcp"
RUN_STATE = "run.safetensors"  # inside the folder: everything that is not a model or optimiser tensor


def dcp_checkpoints(folder: str | Path) -> list[Path]:
    """Complete step-N.dcp folders in folder, oldest first (a temp folder is never one: it is renamed last)."""
    pattern = re.compile(r"step-(\d+)\.dcp$")
    found = [(int(m.group(1)), p) for p in Path(folder).glob(f"step-*{SUFFIX}") if (m := pattern.search(p.name))]
    return [p for _, p in sorted(found) if (p / RUN_STATE).is_file()]


def latest_dcp(folder: str | Path) -> Path | None:
    found = dcp_checkpoints(folder)
    return found[-1] if found else None


def save_sharded(folder: Path, model, opt, run_state: dict, step: int, keep_last: int, dist: Dist) -> Path:
    """Every rank: its shards into a temp folder; rank 0, after a barrier: the run state, the rename, the pruning
    to the last keep_last. Returns step-N.dcp once it exists for every rank."""
    path = folder / f"step-{step:07d}{SUFFIX}"
    tmp = folder / f".{path.name}.tmp"  # one name for all ranks; a stale one is cleared first
    if dist.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    model_sd, optim_sd = get_state_dict(model, opt)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp)
    dist.barrier()
    if dist.main:
        atomic_save({**run_state, "step": step}, tmp / RUN_STATE)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
        for old in dcp_checkpoints(folder)[:-keep_last]:
            shutil.rmtree(old)
    dist.barrier()
    return path


def load_sharded(path: Path, model, opt) -> dict:
    """The shards of step-N.dcp into this rank's model and optimiser; returns the run state (every rank)."""
    if not (path / RUN_STATE).is_file():
        raise CheckpointError(f"{path} is not a complete sharded checkpoint (no {RUN_STATE}); not loaded")
    model_sd, optim_sd = get_state_dict(model, opt)  # this rank's shards: the layout to read into
    # a fresh optimiser's layout has moments for every parameter (get_state_dict makes them); the run's own only for
    # those that had a gradient by then: read those alone, so the others start without moments, as in the run
    saved = dcp.FileSystemReader(path).read_metadata().state_dict_metadata
    has = {k.removeprefix("optim.state.").rsplit(".", 1)[0] for k in saved if k.startswith("optim.state.")}
    optim_sd["state"] = {name: v for name, v in optim_sd["state"].items() if name in has}
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=path)
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, opt, state["optim"], options=StateDictOptions(strict=False))  # see above
    return load_checkpoint(path / RUN_STATE)


def full_model_state(model, frozen: set[str]) -> tuple[dict, str]:
    """model_state() of a sharded model: (trainable parameters + buffers, fingerprint of the frozen parameters),
    gathered whole onto rank 0's CPU (other ranks: ({}, "")). A collective: every rank calls it."""
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not full:
        return {}, ""
    kept = {k: v for k, v in full.items() if k not in frozen}
    frozen_params = {k.replace(".", "/"): torch.nn.Parameter(v, requires_grad=False) for k, v in full.items()}
    frozen_module = torch.nn.ParameterDict({k: v for k, v in frozen_params.items() if k.replace("/", ".") in frozen})
    return kept, fingerprint(frozen_module)
