"""Train one foveated model from a RunConfig. The same code runs on a laptop CPU and under torchrun (DDP).

Per optimiser step: grad_accum micro-batches (gradients synchronised on the last one only), a guard against
non-finite losses or gradients, global-norm clipping, AdamW, the LR schedule. Every step appends a line to
metrics.jsonl (and TensorBoard / W&B); every ckpt_every steps an atomic checkpoint that resumes bit-exactly.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from . import distributed, run_folder
from .backbones import build_vae, fingerprint, num_params
from .build import build_model
from .checkpoint import (
    latest,
    load_checkpoint,
    load_model_state,
    model_state,
    resume_target,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import RunConfig, TrainConfig
from .data.dataset import Collator, LatentCache, build_datasets, check_enough_clips, latents_for, micro_batch
from .data.loader import micro_batches
from .dino_target import frame_gap, prepare, reduction_info
from .encoder_cache import EncoderCache, cache_plan
from .evaluate import copy_last_features, evaluate, make_batch, summarize, summarize_copy_last
from .model import FoveatedVLM, Output, PassOutput
from .report import write_report

LAST_N = 100  # the seed's "final ratio": mean of the last 100 step ratios


class TrainingError(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------------------------------------
# objective, optimiser, schedule


def pass_loss(p: PassOutput, t: TrainConfig) -> torch.Tensor:
    if t.objective == "recon":
        return p.recon_loss
    if t.objective == "caption":
        return p.caption_loss
    return p.caption_loss + t.recon_weight * p.recon_loss


def fine_weights(n: int, mode: str) -> list[float]:
    if mode == "final":
        return [0.0] * (n - 1) + [1.0]
    if mode == "mean":
        return [1.0 / n] * n
    return [i / (n * (n + 1) / 2) for i in range(1, n + 1)]  # progressive: i / sum(i)


def pass_value(p: PassOutput, key: str) -> float:
    """What is logged per pass: an objective's loss (recon, caption), or the prediction's mse / cos(ine)."""
    if key == "mse":
        return p.mse.mean().item()
    if key == "cos":
        return p.cosine.mean().item()
    return getattr(p, f"{key}_loss").item()


def objective_loss(out: Output, t: TrainConfig) -> torch.Tensor:
    fine = sum(w * pass_loss(p, t) for w, p in zip(fine_weights(len(out.fine), t.fine_loss), out.fine) if w)
    return fine + t.coarse_weight * pass_loss(out.coarse, t) if t.coarse_weight else fine


def param_groups(model: FoveatedVLM, t: TrainConfig) -> list[dict]:
    """Backbone (DINOv2, LLM) at backbone_lr; everything newly initialised (the connector: projections, queries,
    mode tokens, blank latent, head) at lr. Weight decay on Linear/Conv weights only."""
    backbone = {id(p) for m in model.backbone_modules() for p in m.parameters()}
    decayed = {id(m.weight) for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    groups: dict[tuple[str, bool], list] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault(("backbone" if id(p) in backbone else "connector", id(p) in decayed), []).append(p)
    return [
        {
            "name": f"{part}{'' if decay else '_no_decay'}",
            "params": params,
            "lr": t.backbone_lr if part == "backbone" else t.lr,
            "weight_decay": t.weight_decay if decay else 0.0,
        }
        for (part, decay), params in sorted(groups.items())
    ]


def lr_factor(step: int, t: TrainConfig) -> float:
    if step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    if t.schedule == "constant":
        return 1.0
    progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
    return t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def make_optimizer(model: FoveatedVLM, t: TrainConfig, device: torch.device):
    # fused: one pass over each tensor, no temporaries; on CPU (torch >= 2.4) too, where foreach falls back to a loop of
    # single-tensor ops that each allocate a full-size result (foveal bench --compare-naive: "foreach AdamW")
    fused = device.type in ("cuda", "cpu")
    opt = torch.optim.AdamW(param_groups(model, t), fused=fused or None, foreach=None if fused else True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, t))
    return opt, sched


def autocast_for(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise TrainingError("train.precision: fp16 needs CUDA (it relies on a GradScaler); use bf16 on CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


# ---------------------------------------------------------------------------------------------------------------------
# logging


class Logger:
    """metrics.jsonl always; TensorBoard by default; W&B when asked (WANDB_MODE=offline works without network)."""

    def __init__(self, out: Path, cfg: RunConfig, start_step: int, enabled: bool):
        self.enabled = enabled
        self.path = out / "metrics.jsonl"
        self.tb = self.wandb = None
        if not enabled:
            return
        run_folder.repair_metrics(self.path, start_step)  # lines past the resumed checkpoint, torn lines: dropped
        if cfg.train.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=start_step)
        if cfg.train.wandb:
            try:
                import wandb
            except ImportError as e:
                raise TrainingError("train.wandb: install wandb first (pip install wandb)") from e
            id_file = out / "wandb_id"
            run_id = id_file.read_text() if id_file.exists() else wandb.util.generate_id()
            id_file.write_text(run_id)
            self.wandb = wandb.init(project="foveal", dir=str(out), id=run_id, resume="allow", config=cfg.to_dict())

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        for k, v in row.items():
            if self.tb and k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                self.tb.add_scalar(k, v, row["step"])
        if self.wandb:
            self.wandb.log(row, step=row["step"])

    def close(self) -> None:
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()


# ---------------------------------------------------------------------------------------------------------------------
# the run


def prepare_targets(cfg: RunConfig, datasets, dist, quiet: bool) -> list[torch.Tensor | None]:
    """VAE latents of every clip, encoded once into the cache (rank 0 encodes, the others read)."""
    if cfg.model.target != "vae":
        return [None for _ in datasets]
    vae = build_vae(cfg.model.vae, cfg.model.frame_size, cfg.train.seed)
    cache = LatentCache(cfg.cache_dir, fingerprint(vae))
    names = ["train clips", "held-out clips"] if len(datasets) == 2 else ["clips"] * len(datasets)
    if dist.main:
        out = [latents_for(d, vae, cache, name, quiet) for d, name in zip(datasets, names)]
    dist.barrier()
    if not dist.main:
        out = [
            latents_for(d, vae, LatentCache(cfg.cache_dir, cache.dir.name), n, True) for d, n in zip(datasets, names)
        ]
    return out


def resume_path(resume: bool | str, ckpt_dir: Path) -> Path | None:
    return resume_target(resume, ckpt_dir)  # verified; past a bad newest checkpoint to the newest valid one


RUN_FILES = ("checkpoints", "metrics.jsonl", "tensorboard", "results.json", "heldout_losses.pt", "resumes.jsonl")


def claim_run_folder(out: Path, fresh: bool, overwrite: bool) -> None:
    """A fresh run never mixes with (or silently destroys) an earlier run's checkpoints."""
    if fresh and latest(out / "checkpoints") is not None:
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


def train(cfg: RunConfig, quiet: bool = False) -> dict:
    dist = distributed.setup()
    cfg, resume_changes = run_folder.resume_config(cfg)  # the run's own config.yaml + safe changes; others refused
    t = cfg.train
    out = Path(cfg.out_dir)
    ckpt_dir = out / "checkpoints"
    train_set, heldout_set = build_datasets(cfg)  # inputs first: bad data fails before the folder or model exist
    check_enough_clips(train_set, cfg, dist.world)
    lock = run_folder.RunLock(out) if dist.main else None  # one writer; stale temp files removed
    resume_from = resume_path(cfg.resume, ckpt_dir)
    if dist.main:
        claim_run_folder(out, fresh=resume_from is None, overwrite=cfg.overwrite)
        cfg.save(out / "config.yaml")
        run_folder.record_resume(out, resume_from, resume_changes)
    torch.manual_seed(t.seed)
    if t.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

    model, tokenizer = build_model(cfg)
    model.to(dist.device)
    train_targets, heldout_targets = prepare_targets(cfg, [train_set, heldout_set], dist, quiet)
    collate = Collator(tokenizer, t.max_caption_tokens)
    caption = t.objective in ("caption", "joint")
    recon = t.objective in ("recon", "joint")
    kinds = [k for k, on in (("recon", recon), ("caption", caption)) if on]
    tracked = kinds + (["mse", "cos"] if recon else [])  # the prediction's MSE and cosine, whatever the loss
    paths = ("coarse", "fine") if t.fine_iterations else ("coarse",)  # fine_iterations 0: the coarse-only control
    if model.target is not None:  # dino target: the encoder's own features, reduced by a PCA if asked
        prepare(model, cfg, train_set, out, fit=resume_from is None, main=dist.main, quiet=quiet)

    epochs = t.steps * t.grad_accum * t.batch_size * dist.world / max(1, len(train_set))
    if epochs > 1 and dist.main and not quiet:  # the reference's multi-epoch results were invalid (overfitting)
        print(
            f"note: {t.steps} steps cover the {len(train_set)} training clips {epochs:.1f} times; trust the held-out"
            " numbers, or raise data.train_clips"
        )
    enc_cache = EncoderCache(t.encoder_cache_mib) if t.encoder_cache else None  # frozen encoder (validated)
    if enc_cache is not None and dist.main and not quiet:
        print(cache_plan(model, cfg, len(train_set)))
    opt, sched = make_optimizer(model, t, dist.device)
    scaler = torch.amp.GradScaler("cuda", enabled=t.precision == "fp16")
    history: dict = {"ratio": {k: [] for k in kinds}, "coarse": {k: [] for k in kinds}, "fine": {k: [] for k in kinds}}
    start, nonfinite_total, elapsed0 = 0, 0, 0.0
    if resume_from is not None:
        ckpt = load_checkpoint(resume_from)
        load_model_state(model, ckpt)
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        start, history, nonfinite_total, elapsed0 = ckpt["step"], ckpt["history"], ckpt["nonfinite"], ckpt["elapsed_s"]
        if dist.main and not quiet:
            print(f"resumed from {resume_from} at step {start}")

    net = DDP(model, find_unused_parameters=True) if dist.world > 1 else model
    params = [p for p in model.parameters() if p.requires_grad]
    logger = Logger(out, cfg, start, dist.main)
    autocast = autocast_for(t.precision, dist.device)
    t0 = time.time()

    def checkpoint(step: int, metric: float | None) -> None:
        if not dist.main:
            return
        state, frozen_fp = model_state(model)
        save_checkpoint(
            ckpt_dir,
            {
                "model": state,
                "frozen_fingerprint": frozen_fp,
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": rng_state(),
                "data_position": step * t.grad_accum,
                "history": history,
                "nonfinite": nonfinite_total,
                "elapsed_s": elapsed0 + time.time() - t0,
                "config": cfg.to_dict(),
            },
            step,
            t.keep_last,
            metric,
        )

    from tqdm import tqdm

    bar = tqdm(
        total=t.steps,
        initial=start,
        desc=f"{cfg.model.head}",
        disable=True if quiet or not dist.main else None,  # None: off when not a terminal
        dynamic_ncols=True,
        leave=False,
    )
    consecutive_bad, done = 0, start
    order = lambda k: micro_batch(k, len(train_set), t.batch_size, t.seed, dist.rank, dist.world)  # noqa: E731
    batches = micro_batches(train_set, collate, order, range(start * t.grad_accum, t.steps * t.grad_accum), cfg.data)
    model.train()
    for step in range(start, t.steps):
        if t.minutes is not None and dist.any(elapsed0 + time.time() - t0 > t.minutes * 60):
            break
        ts = time.time()
        sums = {f"{k}_{p}": 0.0 for k in tracked for p in paths}
        loss_sum, bad = 0.0, False
        for micro in range(t.grad_accum):
            idx, raw = next(batches)
            batch = make_batch(raw, None if train_targets is None else train_targets[idx], dist.device, caption)
            sync = micro == t.grad_accum - 1 or dist.world == 1
            with contextlib.nullcontext() if sync else net.no_sync(), autocast:
                patches = enc_cache.lookup(raw["keys"], batch.frames, model.encode) if enc_cache else None
                res = net(batch, recon=recon, caption=caption, fine_iterations=t.fine_iterations, cache=patches)
                loss = objective_loss(res, t)
            bad |= not torch.isfinite(loss).item()
            scaler.scale(loss / t.grad_accum).backward()
            loss_sum += loss.item() / t.grad_accum
            for k in tracked:
                sums[f"{k}_coarse"] += pass_value(res.coarse, k) / t.grad_accum
                if res.fine:
                    sums[f"{k}_fine"] += pass_value(res.fine[-1], k) / t.grad_accum
        scaler.unscale_(opt)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, t.grad_clip if t.grad_clip > 0 else float("inf"))
        bad |= not torch.isfinite(grad_norm).item()
        done = step + 1
        if dist.any(bad):  # skip the update on every rank; the weights stay the last good ones
            opt.zero_grad(set_to_none=True)
            scaler.update()
            consecutive_bad += 1
            nonfinite_total += 1
            logger.log({"step": step, "skipped_nonfinite": 1, "nonfinite_total": nonfinite_total})
            if consecutive_bad >= t.max_nonfinite:
                checkpoint(step, None)
                raise TrainingError(
                    f"{consecutive_bad} consecutive steps had a non-finite loss or gradient (last at step {step}); "
                    f"stopped with a checkpoint of the last good weights in {ckpt_dir}. Lower train.lr, use fp32, or "
                    f"check the data for NaNs."
                )
            continue
        consecutive_bad = 0
        scaler.step(opt)
        scaler.update()
        sched.step()
        opt.zero_grad(set_to_none=True)

        vals = dist.sum([loss_sum, *sums.values()])
        loss_mean, means = vals[0] / dist.world, {k: v / dist.world for k, v in zip(sums, vals[1:])}
        row = {
            "step": step,
            "loss": loss_mean,
            "lr": sched.get_last_lr()[-1],
            "grad_norm": float(grad_norm),
            "step_s": time.time() - ts,
            **means,
        }
        for k in kinds:
            history["coarse"][k].append(means[f"{k}_coarse"])
            if f"{k}_fine" in means:
                ratio = means[f"{k}_coarse"] / max(means[f"{k}_fine"], 1e-12)
                row[f"{k}_ratio"] = ratio
                history["ratio"][k].append(ratio)
                history["fine"][k].append(means[f"{k}_fine"])
        for k in tracked[len(kinds) :]:  # setdefault: a checkpoint from before these were tracked resumes too
            for p in paths:
                history[p].setdefault(k, []).append(means[f"{k}_{p}"])
        if t.eval_every and done % t.eval_every == 0 and done < t.steps and dist.main:
            ev = summarize(
                evaluate(
                    model,
                    heldout_set,
                    heldout_targets,
                    collate,
                    recon=recon,
                    caption=caption,
                    fine_iterations=t.fine_iterations,
                    autocast=autocast_for(t.precision, dist.device),
                )
            )
            row.update({f"heldout_{k}_ratio": ev[k].get("ratio", math.nan) for k in kinds})
        logger.log(row)
        bar.update(1)
        bar.set_postfix(
            {"loss": f"{loss_mean:.4g}", **{f"{k[:3]}_ratio": f"{row.get(f'{k}_ratio', math.nan):.4f}" for k in kinds}}
        )
        if done % t.ckpt_every == 0 and done < t.steps:
            checkpoint(done, loss_mean)
    bar.close()
    batches.close()  # stops any loader workers now
    last_hist = history[paths[-1]][kinds[0]]
    checkpoint(done, last_hist[-1] if last_hist else None)

    results = {}
    if dist.main:
        ev_arrays = evaluate(
            model,
            heldout_set,
            heldout_targets,
            collate,
            recon=recon,
            caption=caption,
            fine_iterations=t.fine_iterations,
            autocast=autocast_for(t.precision, dist.device),
        )
        results = summarize_run(
            cfg, model, history, summarize(ev_arrays, seed=t.seed), kinds, nonfinite_total, elapsed0 + time.time() - t0
        )
        skipped = {**getattr(heldout_set, "skipped", {}), **getattr(train_set, "skipped", {})}
        results["data_skipped"] = {reason: len(names) for reason, names in skipped.items()}  # bad input files
        results["data_skipped_files"] = skipped
        if model.target is not None and recon:  # the control every dino-target table shows
            copy = copy_last_features(model, heldout_set, cfg.model.target_loss)
            results["copy_last"] = summarize_copy_last(copy, ev_arrays, seed=t.seed)
            ev_arrays |= {f"copy_last_{k}": v for k, v in copy.items()}
        (out / "results.json").write_text(json.dumps(results, indent=1))
        torch.save({k: torch.from_numpy(v) for k, v in ev_arrays.items()}, out / "heldout_losses.pt")
        write_report(out, quiet=quiet)
    logger.close()
    if lock is not None:
        lock.release()
    dist.barrier()
    return results


def summarize_run(cfg: RunConfig, model, history, heldout: dict, kinds, nonfinite: int, wall_s: float) -> dict:
    """The seed's table numbers from the per-step history, plus the held-out ones."""
    primary = kinds[0]
    ratios = history["ratio"][primary]
    last = slice(-LAST_N, None)
    mean = lambda xs: float(sum(xs) / len(xs)) if xs else float("nan")  # noqa: E731
    row = {
        "head": cfg.model.head,
        "objective": cfg.train.objective,
        "preset": cfg.preset,
        "steps": len(history["coarse"][primary]),
        "final_ratio": mean(ratios[last]),
        "ratio_above_1": mean([float(r > 1) for r in ratios]),
        "min_ratio": min(ratios, default=float("nan")),
        "max_ratio": max(ratios, default=float("nan")),
        "loss_fine": mean(history["fine"][primary][last]),
        "loss_coarse": mean(history["coarse"][primary][last]),
        "params": num_params(model.head),
        "heldout_ratio": heldout.get(primary, {}).get("ratio", float("nan")),
        "coarse_weight": cfg.train.coarse_weight,
        "fine_iterations": cfg.train.fine_iterations,  # 0: the coarse-only control (no ratio)
        "seed": cfg.train.seed,
        "ratio_kind": primary,
        "nonfinite_steps": nonfinite,
        "wall_s": round(wall_s, 1),
        "heldout": heldout,
        "step_ratios": history["ratio"],
    }
    row["target"], row["target_loss"], row["frame_gap"] = cfg.model.target, cfg.model.target_loss, frame_gap(cfg)
    if model.target is not None:
        row["target_shape"], row["target_features"] = list(model.target_shape), reduction_info(model.target)
    for k in ("mse", "cos"):  # training-time (last 100 steps) MSE and cosine of the prediction, whatever the loss
        if k in history["fine"]:
            row[f"{k}_fine"], row[f"{k}_coarse"] = mean(history["fine"][k][last]), mean(history["coarse"][k][last])
    for k in kinds[1:]:
        row[f"final_{k}_ratio"] = mean(history["ratio"][k][last])
        row[f"heldout_{k}_ratio"] = heldout.get(k, {}).get("ratio", float("nan"))
    return row
