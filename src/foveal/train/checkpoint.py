"""Checkpoints: safetensors files that verify themselves, atomic writes, keep-last-K + best, prefix-agnostic loading.

A checkpoint is one safetensors file, `step-NNNNNNN.safetensors`: every tensor (trainable weights and buffers,
optimiser moments, RNG states) as a tensor, and everything else (step, scheduler, optimiser hyper-parameters, data
position, history, config) as JSON in the file's metadata. Frozen backbone weights are rebuilt from the config and
checked against a stored fingerprint. Nothing is ever unpickled: a pickle (`torch.save`) file is refused, whatever
its name. The metadata holds a sha256 over the JSON and every tensor's name, dtype, shape and bytes; loading
recomputes it, so a flipped byte is caught. A truncated or corrupt newest checkpoint is reported and the newest valid
one is used instead (`newest_valid`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import random
import re
import struct
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from foveal.model.backbones import fingerprint

log = logging.getLogger(__name__)

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


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or trusted; the message names the file and what to do."""


class NonFiniteWeights(CheckpointError):
    pass


FORMAT = "foveal-checkpoint/1"
SUFFIX = ".safetensors"
_DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


# ---------------------------------------------------------------------------------------------------------------------
# plain data <-> JSON + tensors (exact round trip of dicts with int keys, tuples, numpy arrays, nan/inf)


def _encode(obj, tensors: dict, path: str):
    if isinstance(obj, torch.Tensor):
        name = path or "tensor"
        while name in tensors:
            name += "#"
        tensors[name] = obj
        return {"__tensor__": name}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, (bool, str, type(None))):
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj)
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors, f"{path}.{k}" if path else k) for k, v in obj.items()}
        return {"__items__": [[_encode(k, {}, ""), _encode(v, tensors, f"{path}.{k}")] for k, v in obj.items()]}
    raise CheckpointError(f"checkpoint: cannot store a {type(obj).__name__} at {path} (plain data and tensors only)")


def _decode(obj, tensors: dict):
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return np.array(obj["__ndarray__"], dtype=obj["dtype"])
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__items__"]}
    return {k: _decode(v, tensors) for k, v in obj.items()}


def _raw(t: torch.Tensor) -> memoryview:
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


def _digest(state_json: str, tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(state_json.encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"|{name}|{_DTYPES[t.dtype]}|{list(t.shape)}|".encode())
        h.update(_raw(t))
    return h.hexdigest()


def _prepared(tensors: dict) -> dict[str, torch.Tensor]:
    """CPU, contiguous, no two sharing memory (tied weights are stored twice), a dtype safetensors knows."""
    out, seen = {}, set()
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        if t.dtype not in _DTYPES:
            raise CheckpointError(f"checkpoint: tensor {name} has dtype {t.dtype}, which safetensors cannot store")
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen and t.numel():
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out


def _write_file(f, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """The safetensors format, streamed (no second copy of the bytes): u64 header size, JSON header, raw data."""
    header, offset = {"__metadata__": metadata}, 0
    for name in sorted(tensors):
        t = tensors[name]
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for name in sorted(tensors):
        if tensors[name].numel():
            f.write(_raw(tensors[name]))


def disk_error(e: OSError, path: Path) -> CheckpointError:
    """One line for a failed write (disk full or otherwise), naming the file and the folder to free."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return CheckpointError(
            f"disk full (ENOSPC) while writing {path}: free space in {path.parent} (or lower train.keep_last) and "
            f"rerun with --resume; the partial temp file was removed, the earlier checkpoints are intact"
        )
    return CheckpointError(f"could not write {path}: {e.strerror or e}; the partial temp file was removed")


def atomic_save(state: dict, path: str | Path) -> None:
    """Write state (plain data and tensors) as a verified safetensors file: temp file in the same folder, fsync,
    rename. A crash leaves the old file or the new, never half; a failed write removes its temp file."""
    path = Path(path)
    tensors: dict = {}
    state_json = json.dumps(_encode(state, tensors, ""), separators=(",", ":"))
    tensors = _prepared(tensors)
    meta = {"format": FORMAT, "state": state_json, "sha256": _digest(state_json, tensors)}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            _write_file(f, tensors, meta)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise disk_error(e, path) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _sniff(path: Path) -> str:
    """'safetensors' | 'pickle' | 'other', from the first bytes."""
    with open(path, "rb") as f:
        head = f.read(9)
    size = path.stat().st_size
    # safetensors first: its u64 header length can start with any byte, 0x80 (a pickle's first byte) included
    if len(head) == 9 and head[8:9] == b"{" and 8 + struct.unpack("<Q", head[:8])[0] <= size:
        return "safetensors"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch.save's zip archive, or a raw pickle
        return "pickle"
    return "other"


_MEMO: dict = {}  # (path, size, mtime) -> state: `newest_valid` checks a file, the caller then loads it once more


def _remember(path: Path, state: dict) -> None:
    stat = path.stat()
    _MEMO.clear()
    _MEMO[(str(path.resolve()), stat.st_size, stat.st_mtime_ns)] = state


def load_checkpoint(path: str | Path) -> dict:
    """A verified checkpoint as plain data and tensors. Never unpickles: raises CheckpointError (one line naming the
    file) for a pickle, a truncated or unreadable file, or a checksum mismatch."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    stat = path.stat()
    memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if memo in _MEMO:
        return _MEMO.pop(memo)
    kind = _sniff(path)
    if kind == "pickle":
        raise CheckpointError(
            f"refusing to load {path}: it is a pickle (torch.save) file, and unpickling can run arbitrary code; "
            f"foveal checkpoints are safetensors (step-*.safetensors). Nothing was loaded"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    except Exception as e:
        if path.suffix.lower() in (".yaml", ".yml", ".json"):
            raise CheckpointError(
                f"{path} is a config, not a checkpoint: pass a run folder or its checkpoints/step-*.safetensors "
                f"(a config goes to --config)"
            ) from None
        reason = "truncated or corrupt" if kind == "safetensors" else "not a safetensors file"
        raise CheckpointError(f"checkpoint {path} is unreadable ({reason}: {str(e).splitlines()[0][:120]})") from None
    if meta.get("format") != FORMAT or "state" not in meta:
        raise CheckpointError(f"{path} is a safetensors file but not a foveal checkpoint (no '{FORMAT}' metadata)")
    if _digest(meta["state"], tensors) != meta.get("sha256"):
        raise CheckpointError(
            f"checkpoint {path} fails its sha256 check: its bytes changed after it was written (disk or copy error, "
            f"or an edit); not loaded"
        )
    try:
        return _decode(json.loads(meta["state"]), tensors)
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint {path}: its metadata does not decode ({e})") from None


def nonfinite_tensors(tensors: dict) -> list[str]:
    return [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]


# ---------------------------------------------------------------------------------------------------------------------
# a folder of checkpoints


def checkpoints(folder: str | Path) -> list[Path]:
    """Step checkpoints in folder, oldest first."""
    pattern = re.compile(r"step-(\d+)\.safetensors$")
    found = [(int(m.group(1)), p) for p in Path(folder).glob("step-*.safetensors") if (m := pattern.search(p.name))]
    return [p for _, p in sorted(found)]


def latest(folder: str | Path) -> Path | None:
    found = checkpoints(folder)
    return found[-1] if found else None


def warn(msg: str) -> None:
    if os.environ.get("RANK", "0") == "0":
        log.warning(msg)


def newest_valid(folder: str | Path) -> Path | None:
    """The newest checkpoint in folder that loads and verifies; each bad newer one is named with its reason, and the
    fallback is said. None when the folder holds none; CheckpointError when it holds only bad ones."""
    folder = Path(folder)
    for p in sorted(folder.glob("step-*.pt")):
        warn(f"warning: ignoring {p}: foveal never loads .pt (pickle) files, which can run code when unpickled")
    found = checkpoints(folder)
    bad = []
    for path in reversed(found):
        try:
            state = load_checkpoint(path)
        except CheckpointError as e:
            warn(f"warning: {e}")
            bad.append(path.name)
            continue
        if bad:
            warn(f"warning: falling back to {path} (newest valid checkpoint; skipped {', '.join(bad)})")
        _remember(path, state)
        return path
    if found:
        raise CheckpointError(
            f"none of the {len(found)} checkpoints in {folder} is valid (see the warnings above); start afresh with "
            f"--overwrite or restore a checkpoint"
        )
    return None


def save_checkpoint(folder: str | Path, state: dict, step: int, keep_last: int, metric: float | None) -> Path:
    """step-XXXXXXX.safetensors; prune to the last keep_last; best.safetensors follows the lowest metric (a hard link
    when possible). Refuses (NonFiniteWeights) weights that are not all finite: a checkpoint is always good weights."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:07d}{SUFFIX}"
    bad = nonfinite_tensors(state.get("model", {}))
    if bad:
        good = latest(folder)
        raise NonFiniteWeights(
            f"the weights at step {step} are not finite ({len(bad)} of {len(state['model'])} tensors, e.g. {bad[0]}): "
            f"not saved as a checkpoint; the newest good checkpoint is {good or 'none'}. Lower train.lr, use fp32, "
            f"or check the data for NaNs"
        )
    state = {**state, "step": step, "metric": metric}
    atomic_save(state, path)
    best, best_info = folder / f"best{SUFFIX}", folder / "best.json"
    best_metric = json.loads(best_info.read_text())["metric"] if best_info.exists() and best.exists() else None
    if metric is not None and (best_metric is None or metric <= best_metric):
        tmp = folder / f".best{SUFFIX}.tmp-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        try:
            os.link(path, tmp)  # same bytes, no extra space
        except OSError:
            atomic_save(state, tmp)
        os.replace(tmp, best)
        info_tmp = folder / f".best.json.tmp-{os.getpid()}"
        try:
            info_tmp.write_text(json.dumps({"metric": metric, "step": step}))
            os.replace(info_tmp, best_info)
        except OSError as e:
            info_tmp.unlink(missing_ok=True)
            raise disk_error(e, best_info) from None
    for old in checkpoints(folder)[:-keep_last]:
        old.unlink()
    return path


def resume_target(resume: bool | str, ckpt_dir: Path) -> Path | None:
    """cfg.resume -> the checkpoint to continue from: the newest valid one in ckpt_dir (falling back past bad ones,
    saying so), a named file (verified, no fallback), or None (a fresh start)."""
    if resume in (False, None, "", "false", "no"):
        return None
    if resume in (True, "latest", "true", "yes"):
        return newest_valid(ckpt_dir)  # nothing yet: a fresh start, so `--resume` is safe in every launch script
    path = Path(resume)
    if not path.exists():
        raise CheckpointError(f"resume: checkpoint {resume} does not exist")
    _remember(path, load_checkpoint(path))  # verified now (pickles and corrupt files refused), kept for the caller
    return path


def find_checkpoint(checkpoint: str | Path) -> Path:
    """A checkpoint file, or a run folder (its newest valid checkpoint, in checkpoints/ or the folder itself)."""
    path = Path(checkpoint)
    if path.is_dir():
        found = newest_valid(path / "checkpoints") if (path / "checkpoints").is_dir() else None
        found = found or newest_valid(path)
        if found is None:
            raise CheckpointError(f"no checkpoint (step-*{SUFFIX}) in {path} or {path / 'checkpoints'}")
        return found
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path
