"""One run folder, one writer, one record: the folder lock, stale temp files, metrics.jsonl repair, and a resume
that continues from the run's own config.yaml.

* `RunLock(out)`: an OS lock (fcntl.flock) on `out/.lock` for the whole run. A second process training into the
  same folder fails at once, naming the holder's pid; a lock left by a dead process is free (flock locks die with
  their process) and is taken over with a message. Stale temp files of killed runs are removed once it is held.
* `repair_metrics(path, start)`: metrics.jsonl keeps its complete lines with step < start, up to the first torn one.
* `resume_config(cfg)`: on --resume, the saved config.yaml with the requested changes that cannot break the
  checkpoint applied (more steps, logging); any other change is refused naming the key. `record_resume` writes what
  was changed to resumes.jsonl.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import time
from pathlib import Path

import yaml
from safetensors import safe_open

from foveal.config import ConfigError, RunConfig, config_from_dict, leaves, replace
from foveal.train.checkpoint import CheckpointError, checkpoints, latest, resume_target
from foveal.train.optim import TrainingError
from foveal.train.sharded_checkpoint import SUFFIX as DCP_SUFFIX
from foveal.train.sharded_checkpoint import dcp_checkpoints, latest_dcp

LOCK_NAME = ".lock"
# on --resume these may change (they decide how long the run goes on and what it logs, not what it computes)
SAFE_ON_RESUME = (
    "train.steps",
    "train.minutes",
    "train.tensorboard",
    "train.wandb",
    "train.wandb_project",
    "train.wandb_entity",
    "train.wandb_name",
    "train.wandb_group",
    "train.wandb_tags",
    "train.ckpt_every",
    "train.keep_last",
    "train.eval_every",
    "train.report_clips",
    "train.max_nonfinite",
    "train.encoder_cache_mib",
    "train.compile",
    "train.threads",
    "train.jobs",
    "data.num_workers",
    "cache_dir",
)
NOT_COMPARED = ("resume", "overwrite", "out_dir", "preset")
log = logging.getLogger(__name__)


class RunFolderError(RuntimeError):
    """The run folder is in use or cannot be read; the message says by whom and what to do."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_HELD: dict[str, int] = {}  # resolved folder -> fd of this process's lock (a later run in the process re-takes it)


class RunLock:
    """An exclusive flock on out/.lock, held until release() or the process ends. The file holds the holder's pid."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.path = self.out / LOCK_NAME
        key = str(self.path.resolve())
        if key in _HELD:  # this process's earlier run into the same folder (e.g. it raised): its lock is ours
            os.close(_HELD.pop(key))
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise RunFolderError(
                f"{self.out} is in use: another process (pid {self._pid() or '?'}) is training into it; wait for it "
                f"to finish, or choose another --out"
            ) from None
        old = self._pid(fd)
        if old and old != os.getpid():
            state = "no longer running" if not _alive(old) else "no longer holding it"
            log.warning(f"note: took over the lock of {self.out} left by pid {old} ({state})")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        _HELD[key] = fd
        clean_stale_temps(self.out)

    def _pid(self, fd: int | None = None) -> int | None:
        try:
            text = os.pread(fd, 32, 0).decode() if fd is not None else self.path.read_text()
            return int(text.strip() or 0) or None
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self.fd is not None:
            _HELD.pop(str(self.path.resolve()), None)
            os.close(self.fd)  # closes the flock; the pid stays in the file (a stale one is harmless)
            self.fd = None


def clean_stale_temps(out: Path) -> list[Path]:
    """Temp files of interrupted writes (`.<name>.tmp-<pid>`), removed: with the lock held, no other writer owns
    them; a sharded checkpoint's temp folder (`.step-N.dcp.tmp/`) too. Says how many and how much space came back."""
    found = [p for d in (out, out / "checkpoints") if d.is_dir() for p in d.glob(".*.tmp*")]
    files = [p for p in found if p.is_file()] + [f for p in found if p.is_dir() for f in p.rglob("*") if f.is_file()]
    size = sum(f.stat().st_size for f in files)
    for p in found:
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    if found:
        mib = size / 2**20
        log.warning(
            f"note: removed {len(found)} stale temp file(s) ({mib:.1f} MiB) left by an interrupted run in {out}"
        )
    return found


def repair_metrics(path: Path, start: int) -> int:
    """Keep the complete JSON lines with step < start, stopping at the first torn or unparsable one (a write cut by
    a kill or a full disk); rewritten atomically. Returns the number of dropped lines."""
    if not path.exists():
        return 0
    kept, dropped, torn = [], 0, False
    for line in path.read_bytes().split(b"\n"):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            ok = not torn and isinstance(row, dict) and isinstance(row.get("step"), int)
        except ValueError:
            ok = False
        if not ok:
            if not torn:
                log.warning(f"note: {path}: dropped a torn line and everything after it (an interrupted write)")
            torn = True
            dropped += 1
            continue
        if row["step"] < start:
            kept.append(line + b"\n")
        else:
            dropped += 1
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(b"".join(kept))
    os.replace(tmp, path)
    return dropped


# ---------------------------------------------------------------------------------------------------------------------
# resume: the run's own record first


def _saved_config(out: Path) -> tuple[dict | None, Path | None]:
    path = out / "config.yaml"
    if path.exists():
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise RunFolderError(f"{path} is not valid YAML ({e}); restore it from a checkpoint's config") from None
        return data, path
    found = checkpoints(out / "checkpoints")
    if found:  # config.yaml lost: the newest checkpoint carries the config too (metadata only, no tensors read)
        try:
            with safe_open(str(found[-1]), framework="pt") as f:
                return json.loads((f.metadata() or {})["state"])["config"], found[-1]
        except Exception:
            return None, None
    return None, None


def resume_config(cfg: RunConfig) -> tuple[RunConfig, dict]:
    """(config to run, {key: [saved, now]} of the changes allowed). Without --resume or a checkpoint to resume from,
    cfg as it is. Otherwise the saved config with the keys the command line (or config file, preset) asked for: a
    change of a key in SAFE_ON_RESUME is applied, any other is refused with a ConfigError naming it."""
    out = Path(cfg.out_dir)
    if cfg.resume in (False, None, "", "false", "no") or not any_checkpoint(out / "checkpoints"):
        return cfg, {}
    data, where = _saved_config(out)
    if data is None:
        return cfg, {}
    try:
        saved = config_from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{where}: the run's saved config no longer validates: {e}") from None
    now, before = leaves(cfg.to_dict()), leaves(saved.to_dict())
    requested = getattr(cfg, "requested", None)  # keys the user named; a RunConfig built in code: every key
    keys = [k for k in (sorted(requested) if requested is not None else now) if k in now and k not in NOT_COMPARED]
    changed = {k: [before.get(k), now[k]] for k in keys if before.get(k) != now[k]}
    refused = [k for k in changed if k not in SAFE_ON_RESUME]
    if refused:
        k = refused[0]
        raise ConfigError(
            f"resume: {k}={changed[k][1]!r} differs from the run's own {where.name} ({changed[k][0]!r}) and would not "
            f"fit its checkpoints; start a new run (another --out, or --overwrite) to change it. On --resume only "
            f"these may change: {', '.join(SAFE_ON_RESUME)}"
        )
    sections: dict = {}
    for k, (_, value) in changed.items():
        *parents, last = k.split(".")
        node = sections
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    extra = {"resume": cfg.resume, "overwrite": cfg.overwrite, "out_dir": cfg.out_dir}
    return replace(saved, **sections, **extra), changed


def record_resume(out: Path, resume_from: Path | None, changes: dict) -> None:
    """One line per resume in out/resumes.jsonl: when, from which checkpoint, and what changed."""
    if resume_from is None:
        return
    row = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "from": resume_from.name, "changes": changes}
    with open(out / "resumes.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    if changes:
        log.warning("resume: applied " + ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items()))


def os_error_line(e: OSError) -> str | None:
    """One line for a full disk (ENOSPC / EDQUOT), else None (let it raise)."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" while writing {e.filename}" if e.filename else ""
        return f"disk full (ENOSPC){where}: free space and rerun with --resume (checkpoints written before are intact)"
    return None


RUN_FILES = ("checkpoints", "metrics.jsonl", "tensorboard", "results.json", "heldout_losses.pt", "resumes.jsonl")


def any_checkpoint(folder: Path) -> bool:
    """Whether folder holds a checkpoint: step-N.safetensors or (FSDP2) step-N.dcp."""
    return latest(folder) is not None or bool(dcp_checkpoints(folder))


def claim_run_folder(out: Path, fresh: bool, overwrite: bool) -> None:
    """A fresh run never mixes with (or silently destroys) an earlier run's checkpoints."""
    if fresh and any_checkpoint(out / "checkpoints"):
        if not overwrite:
            raise TrainingError(
                f"{out} already holds a run with checkpoints: add --resume to continue it, --overwrite to start "
                f"afresh (its checkpoints are deleted), or choose another --out"
            )
        for name in RUN_FILES:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def resume_path(resume: bool | str, ckpt_dir: Path, sharded: bool = False) -> Path | None:
    """The checkpoint to resume from (verified; past a bad newest checkpoint to the newest valid one), or None.
    sharded (FSDP2): the newest complete step-N.dcp folder, or the one named."""
    if not sharded or resume in (False, None, "", "false", "no"):
        return resume_target(resume, ckpt_dir)
    if resume in (True, "latest", "true", "yes"):
        return latest_dcp(ckpt_dir)
    path = Path(resume)
    if path.suffix != DCP_SUFFIX or not path.is_dir():
        raise CheckpointError(
            f"resume: {resume} is not a step-N{DCP_SUFFIX} folder (train.parallel=fsdp2 resumes from one)"
        )
    return path
