"""Train one foveated model from a RunConfig. The same code runs on a laptop CPU and under torchrun (DDP).

Per optimiser step: grad_accum micro-batches (gradients synchronised on the last one only), a guard against
non-finite losses or gradients, global-norm clipping, AdamW, the LR schedule. Every step appends a line to
metrics.jsonl (and TensorBoard / W&B); every ckpt_every steps an atomic checkpoint that resumes bit-exactly.
The loop reads top to bottom: set_up -> (train_step -> after_step)* -> finish, around one `Run` state.
train() returns the results; its caller writes the report.
"""

from __future__ import annotations

import logging
import math
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch

from foveal.config import RunConfig, encoder_cache_on
from foveal.data.dataset import Collator, build_datasets, check_enough_clips, micro_batch, target_looks
from foveal.data.loader import micro_batches
from foveal.data.video import merge_skips
from foveal.evaluation.controls import target_mass
from foveal.evaluation.evaluate import evaluate, make_batch
from foveal.evaluation.flops import forward_flops
from foveal.evaluation.pictures import analyse, dataset_clip, grid_figure
from foveal.evaluation.plotting import figure_pixels
from foveal.evaluation.summary import summarize
from foveal.jsonio import strict_json
from foveal.log import progress
from foveal.model.build import build_model
from foveal.model.encoder import look_mask
from foveal.objectives import Objective, Scores, build_objective, score
from foveal.train import distributed, sharding
from foveal.train.checkpoint import (
    frozen_names,
    load_checkpoint,
    load_model_state,
    model_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from foveal.train.encoder_cache import EncoderCache, cache_plan, shared_cache
from foveal.train.hardware import DEFAULT_THREADS, slow_bf16
from foveal.train.logger import MetricsLogger, check_wandb, scalars
from foveal.train.optim import TrainingError, autocast_for, make_optimizer
from foveal.train.results import step_ratio, summarize_run
from foveal.train.run_folder import RunLock, claim_run_folder, record_resume, resume_config, resume_path
from foveal.train.sharded_checkpoint import SUFFIX as DCP_SUFFIX
from foveal.train.sharded_checkpoint import full_model_state, load_sharded, save_sharded

log = logging.getLogger(__name__)
__all__ = ["TrainingError", "train"]


@dataclass
class Run:
    """Everything one training run holds, and where it stands."""

    cfg: RunConfig
    dist: distributed.Dist
    out: Path
    model: torch.nn.Module
    objective: Objective
    train_set: object
    heldout_set: object
    collate: Collator
    opt: torch.optim.Optimizer
    sched: object
    scaler: torch.amp.GradScaler
    enc_cache: EncoderCache | None
    lock: RunLock | None = None  # rank 0 holds the run folder's lock
    history: dict = field(default_factory=dict)
    step: int = 0  # optimiser steps done
    data_position: int = 0  # micro-batches consumed
    nonfinite: int = 0  # skipped steps, in all
    consecutive_bad: int = 0
    elapsed0: float = 0.0  # wall seconds of the runs this one resumes
    t0: float = field(default_factory=time.time)
    first_step: int = 0  # the step this process started at (a resumed run: its checkpoint's)
    last_loss: float | None = None  # the last completed step's training loss (what best.pt follows)
    startup: dict = field(default_factory=dict)  # this process's start to the first step: seconds, peak RSS

    @property
    def kinds(self) -> tuple[str, ...]:
        return self.objective.kinds

    @property
    def tracked(self) -> list[str]:  # the prediction's MSE and cosine too, whatever the loss
        return [*self.kinds, *(["mse", "cos"] if self.objective.recon else [])]

    @property
    def paths(self) -> tuple[str, ...]:  # fine_iterations 0: the coarse-only control
        return ("coarse", "fine") if self.cfg.train.fine_iterations else ("coarse",)

    def elapsed(self) -> float:
        return self.elapsed0 + time.time() - self.t0


# ---------------------------------------------------------------------------------------------------------------------
# set-up


def set_up(cfg: RunConfig) -> Run:
    """Inputs first (bad data fails before the run folder or the model exist), then the folder (locked: one
    writer), the model, the target's preparation, the optimiser and, on --resume, the checkpoint."""
    check_wandb(cfg)
    dist = distributed.setup()
    cfg, resume_changes = resume_config(cfg)  # the run's own config.yaml + safe changes; others refused
    t, out = cfg.train, Path(cfg.out_dir)
    train_set, heldout_set = build_datasets(cfg)
    check_enough_clips(train_set, cfg, dist.world)
    lock = RunLock(out) if dist.main else None  # stale temp files of killed runs are removed once it is held
    shard = t.parallel == "fsdp2" and dist.world > 1
    resume_from = resume_path(cfg.resume, out / "checkpoints", sharded=shard)
    if dist.main:
        claim_run_folder(out, fresh=resume_from is None, overwrite=cfg.overwrite)
        cfg.save(out / "config.yaml")
        record_resume(out, resume_from, resume_changes)
    torch.set_num_threads(t.threads or DEFAULT_THREADS)  # before anything runs: a run's numbers depend on it
    torch.manual_seed(t.seed)
    if t.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if dist.main:  # start-up is a few silent seconds to minutes: say what is happening
        log.info(f"{cfg.model.head}: {len(train_set)} training + {len(heldout_set)} held-out clips; building the model")
    model, tokenizer = build_model(cfg)
    model.to(dist.device)
    if t.compile:
        model.compile_parts()
    unread = cfg.model.frame_size % model.encoder.patch_size
    if unread and dist.main:  # allowed (the full preset: 256 px at patch 14), but never silent
        log.warning(
            f"note: model.frame_size {cfg.model.frame_size} is not a multiple of the encoder's patch size "
            f"{model.encoder.patch_size}: the last {unread} px rows and columns of every frame are never read"
        )
    if dist.main and (warning := slow_bf16(t.precision, dist.device)):
        log.warning(warning)
    objective = build_objective(t.objective)
    if dist.main:
        log.info(f"{cfg.model.head}: preparing the {cfg.model.target} target")
    prep = dict(main=dist.main, barrier=dist.barrier, out=out, fresh=resume_from is None)
    model.target.prepare(model, [train_set, heldout_set], **prep)  # VAE latents, a PCA, ...
    epochs = t.steps * t.grad_accum * t.batch_size * dist.world / max(1, len(train_set))
    if epochs > 1 and dist.main:  # the reference's multi-epoch results were invalid (overfitting)
        log.info(
            f"note: {t.steps} steps cover the {len(train_set)} training clips {epochs:.1f} times; trust the held-out"
            " numbers, or raise data.train_clips"
        )
    enc_cache = shared_cache(model.encoder.dino, t.precision, t.encoder_cache_mib) if encoder_cache_on(cfg) else None
    if enc_cache is not None and dist.main:
        log.info(cache_plan(model, cfg, len(train_set)))
    if shard:  # before the optimiser: fully_shard replaces the parameters with their shards
        sharding.shard(model, dist)
    opt, sched = make_optimizer(model, t, dist.device)
    scaler = torch.amp.GradScaler("cuda", enabled=t.precision == "fp16")
    collate = Collator(tokenizer, t.max_caption_tokens)
    run = Run(cfg, dist, out, model, objective, train_set, heldout_set, collate, opt, sched, scaler, enc_cache, lock)
    run.history = {p: {k: [] for k in objective.kinds} for p in ("ratio", "coarse", "fine")}
    if resume_from is not None:
        restore(run, resume_from)
    run.startup = {"seconds": round(time.time() - psutil.Process().create_time(), 2), "peak_rss_mib": peak_rss_mib()}
    return run


def peak_rss_mib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024  # Linux: KiB


def restore(run: Run, path: Path) -> None:
    if path.suffix == DCP_SUFFIX:  # FSDP2: every rank reads its own shards of the model and optimiser
        ckpt = load_sharded(path, run.model, run.opt)
    else:
        ckpt = load_checkpoint(path)
        load_model_state(run.model, ckpt)
        run.opt.load_state_dict(ckpt["optimizer"])
    run.sched.load_state_dict(ckpt["scheduler"])
    run.scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    run.step, run.history, run.nonfinite, run.elapsed0 = (
        ckpt["step"],
        ckpt["history"],
        ckpt["nonfinite"],
        ckpt["elapsed_s"],
    )
    run.data_position = ckpt.get("data_position", run.step * run.cfg.train.grad_accum)
    if run.dist.main:
        log.info(f"resumed from {path} at step {run.step}")


def run_state(run: Run) -> dict:
    """What a checkpoint holds besides the model and optimiser (rank 0's RNG states: every rank resumes with them)."""
    return {
        "scheduler": run.sched.state_dict(),
        "scaler": run.scaler.state_dict(),
        "rng": rng_state(),
        "data_position": run.data_position,
        "history": run.history,
        "nonfinite": run.nonfinite,
        "elapsed_s": run.elapsed(),
        "config": run.cfg.to_dict(),
    }


def save(run: Run, step: int, metric: float | None, final: bool = False) -> None:
    """Every rank calls it. DDP / one process: rank 0 writes step-N.safetensors. FSDP2: every rank writes its shards
    into step-N.dcp; the final save also gathers the whole weights for the usual safetensors file (no optimiser:
    that is in the .dcp)."""
    folder, keep_last = run.out / "checkpoints", run.cfg.train.keep_last
    if sharding.sharded(run.model):
        save_sharded(folder, run.model, run.opt, run_state(run), step, keep_last, run.dist)
        if not final:
            return
        (state, frozen_fp), optimizer = full_model_state(run.model, frozen_names(run.model)), None
    elif run.dist.main:
        (state, frozen_fp), optimizer = model_state(run.model), run.opt.state_dict()
    if run.dist.main:
        checkpoint = {"model": state, "frozen_fingerprint": frozen_fp, "optimizer": optimizer, **run_state(run)}
        save_checkpoint(folder, checkpoint, step, keep_last, metric)


# ---------------------------------------------------------------------------------------------------------------------
# one optimiser step


def pass_value(s: Scores, key: str) -> float:
    """What is logged per pass: an objective's loss (recon, caption), or the prediction's mse / cos(ine)."""
    if key == "mse":
        return s.mse.mean().item()
    if key == "cos":
        return s.cosine.mean().item()
    return getattr(s, f"{key}_loss").item()


CURRICULUM_OUTSIDE = -10.0  # the curriculum's first outside logit: e^-10 of a patch's weight, as good as forced


def fine_bias(run: Run, looks: torch.Tensor) -> torch.Tensor | None:
    """The fine reads' attention bias this step: the ceiling reads at the target; the oracle curriculum starts there
    and fades linearly to no bias over its share of the steps, so the head learns to use a clean target token
    before the LLM's own queries have to find it."""
    if run.model.options.look == "oracle":
        return look_mask(looks)
    fade = run.cfg.train.oracle_curriculum * run.cfg.train.steps
    if run.step >= fade:
        return None
    return look_mask(looks, CURRICULUM_OUTSIDE * (1 - run.step / fade))


def micro_step(run: Run, net, raw: dict, sync: bool, autocast) -> tuple[torch.Tensor, Scores, list[Scores]]:
    """Forward and backward of one micro-batch; returns its loss and scores."""
    t, model, objective = run.cfg.train, run.model, run.objective
    batch = make_batch(raw, run.dist.device, objective.caption)
    with sharding.sync_context(net, sync), autocast:
        patches = run.enc_cache.lookup(raw["keys"], batch.frames, model.encode) if run.enc_cache is not None else None
        looks, bias = None, None
        if model.options.look == "oracle" or t.look_supervision or t.oracle_curriculum:
            looks = target_looks(run.train_set, raw["index"], model.encoder.patch_size).to(batch.frames.device)
            bias = fine_bias(run, looks)
        res = net(
            batch,
            recon=objective.recon,
            caption=objective.caption,
            fine_iterations=t.fine_iterations,
            cache=patches,
            return_attention=bool(t.look_supervision),
            fine_bias=bias,
        )
        coarse, fine = score(model, res, batch, objective.kinds)
        loss = objective.loss(coarse, fine, t)
        if t.look_supervision and res.fine:  # an auxiliary signal that tells the LLM's queries where to look
            mass = target_mass(res.fine[-1].attention.weights, looks)[:, 1:]  # [B, T-1, L] frames read by the LLM
            loss = loss + t.look_supervision * -mass.clamp_min(1e-6).log().mean()
    run.scaler.scale(loss / t.grad_accum).backward()
    return loss, coarse, fine


def train_step(run: Run, net, batches, params, autocast) -> dict | None:
    """grad_accum micro-batches, then the update; the step's row, or None when it was skipped (non-finite)."""
    t, dist = run.cfg.train, run.dist
    ts = time.time()
    sums = {f"{k}_{p}": 0.0 for k in run.tracked for p in run.paths}
    loss_sum, bad = 0.0, False
    for micro in range(t.grad_accum):
        _, raw = next(batches)
        loss, coarse, fine = micro_step(run, net, raw, micro == t.grad_accum - 1 or dist.world == 1, autocast)
        bad |= not torch.isfinite(loss).item()
        loss_sum += loss.item() / t.grad_accum
        for k in run.tracked:
            sums[f"{k}_coarse"] += pass_value(coarse, k) / t.grad_accum
            if fine:
                sums[f"{k}_fine"] += pass_value(fine[-1], k) / t.grad_accum
    run.data_position += t.grad_accum
    run.scaler.unscale_(run.opt)
    grad_norm = sharding.clip_grad_norm(params, t.grad_clip if t.grad_clip > 0 else float("inf"))
    bad |= not torch.isfinite(grad_norm).item()
    if dist.any(bad):  # skip the update on every rank; the weights stay the last good ones
        skip(run)
        return None
    run.consecutive_bad = 0
    run.scaler.step(run.opt)
    run.scaler.update()
    run.sched.step()
    run.opt.zero_grad(set_to_none=True)
    vals = dist.sum([loss_sum, *sums.values()])
    means = {k: v / dist.world for k, v in zip(sums, vals[1:])}
    lr = run.sched.get_last_lr()[-1]
    return {
        "step": run.step,
        "loss": vals[0] / dist.world,
        "lr": lr,
        "grad_norm": float(grad_norm),
        "step_s": time.time() - ts,
        **means,
    }


def skip(run: Run) -> None:
    """A non-finite loss or gradient: no update, the schedule still advances; too many in a row stop the run."""
    t = run.cfg.train
    run.opt.zero_grad(set_to_none=True)
    run.scaler.update()
    run.sched.step()
    run.consecutive_bad += 1
    run.nonfinite += 1
    if run.consecutive_bad >= t.max_nonfinite:
        save(run, run.step, None)
        raise TrainingError(
            f"{run.consecutive_bad} consecutive steps had a non-finite loss or gradient (last at step {run.step}); "
            f"stopped with a checkpoint of the last good weights in {run.out / 'checkpoints'}. Lower train.lr, use "
            f"fp32, or check the data for NaNs."
        )


def record(run: Run, row: dict) -> None:
    """The step's ratios into the history (the reference's per-step ratio, from the micro-batch means)."""
    for k in run.kinds:
        run.history["coarse"][k].append(row[f"{k}_coarse"])
        if f"{k}_fine" in row:
            ratio = step_ratio(row[f"{k}_coarse"], row[f"{k}_fine"])
            row[f"{k}_ratio"] = ratio
            run.history["ratio"][k].append(ratio)
            run.history["fine"][k].append(row[f"{k}_fine"])
    for k in run.tracked[len(run.kinds) :]:  # setdefault: a checkpoint from before these were tracked resumes too
        for p in run.paths:
            run.history[p].setdefault(k, []).append(row[f"{k}_{p}"])


def heldout(run: Run, autoregressive: bool = False) -> dict:
    """The held-out arrays. FSDP2: every rank calls it (the sharded units gather across ranks)."""
    t = run.cfg.train
    with sharding.full_params(run.model):
        return evaluate(
            run.model,
            run.heldout_set,
            run.collate,
            run.objective,
            fine_iterations=t.fine_iterations,
            autoregressive=autoregressive,
            autocast=autocast_for(t.precision, run.dist.device),
        )


def clip_flops(run: Run) -> dict | None:
    """Forward FLOPs per clip on the first held-out batch (what compare weighs the dense reader by); None where the
    model is sharded (rank 0 cannot run it alone) or nothing is held out."""
    if sharding.sharded(run.model) or not len(run.heldout_set):
        return None
    idx = range(min(run.cfg.train.batch_size, len(run.heldout_set)))
    batch = make_batch(run.collate([run.heldout_set[i] for i in idx]), run.dist.device, run.objective.caption)
    return forward_flops(run.model, batch, run.objective, run.cfg.train.fine_iterations)


# ---------------------------------------------------------------------------------------------------------------------
# the run


def train(cfg: RunConfig) -> dict:
    """Train cfg's model; returns the results (also written to results.json). Under torchrun, non-zero ranks
    return {}."""
    run = set_up(cfg)
    try:
        return run_loop(run)
    finally:
        if run.lock is not None:
            run.lock.release()


def run_loop(run: Run) -> dict:
    cfg = run.cfg
    t, dist = cfg.train, run.dist
    net = sharding.wrap(run.model, dist, t.parallel)  # DDP, or the FSDP2-sharded model itself
    params = [p for p in run.model.parameters() if p.requires_grad]
    logger = MetricsLogger(run.out, cfg, run.step, dist.main)
    autocast = autocast_for(t.precision, dist.device)
    run.t0, run.first_step = time.time(), run.step
    bar = progress(total=t.steps, initial=run.step, desc=cfg.model.head, show=dist.main)
    order = lambda k: micro_batch(k, len(run.train_set), t.batch_size, t.seed, dist.rank, dist.world)  # noqa: E731
    ks = range(run.data_position, t.steps * t.grad_accum)
    batches = micro_batches(run.train_set, run.collate, order, ks, cfg.data)
    run.model.train()
    while run.step < t.steps:
        if t.minutes is not None and dist.any(run.elapsed() > t.minutes * 60):
            break
        row = train_step(run, net, batches, params, autocast)
        run.step += 1
        if row is None:
            logger.log({"step": run.step - 1, "skipped_nonfinite": 1, "nonfinite_total": run.nonfinite})
            continue
        after_step(run, row, logger, bar)
    bar.close()
    batches.close()  # stops any loader workers now
    save(run, run.step, run.last_loss, final=True)
    mine = [getattr(run.heldout_set, "skipped", {}), getattr(run.train_set, "skipped", {})]
    skipped = merge_skips(dist.gather(merge_skips(mine)))  # each rank found its own bad clips
    startup = dist.gather(run.startup)
    if dist.main:
        log.info(f"{cfg.model.head}: held-out evaluation on {len(run.heldout_set)} clips")
    arrays = heldout(run) if dist.main or sharding.sharded(run.model) else None  # FSDP2: on every rank
    results = finish(run, arrays, skipped, startup) if dist.main else {}
    logger.finish(results)
    logger.close()
    dist.barrier()
    return results


def after_step(run: Run, row: dict, logger: MetricsLogger, bar) -> None:
    """History, held-out evaluation every train.eval_every steps, the log line, the progress bar, checkpoints."""
    t = run.cfg.train
    record(run, row)
    run.last_loss = row["loss"]
    evaluating = run.dist.main or sharding.sharded(run.model)  # FSDP2: every rank evaluates, rank 0 logs
    if t.eval_every and run.step % t.eval_every == 0 and run.step < t.steps and evaluating:
        evaluate_now(run, row, logger)
    logger.log(row)
    bar.update(1)
    bar.set_postfix(
        {
            "loss": f"{row['loss']:.4g}",
            **{f"{k[:3]}_ratio": f"{row.get(f'{k}_ratio', math.nan):.4f}" for k in run.kinds},
        }
    )
    if bar.disable and t.log_every and run.step % t.log_every == 0 and run.dist.main:
        log.info(progress_line(run, row))
    if run.step % t.ckpt_every == 0 and run.step < t.steps:
        save(run, run.step, row["loss"])


def evaluate_now(run: Run, row: dict, logger: MetricsLogger) -> None:
    """The held-out numbers at this step into the row (eval/...: ratios with intervals, controls, attention on the
    target) and, for the dashboards, held-out clip 0 drawn as `foveal viz` draws it. The RNG states are put back
    after it: a run with evaluations trains exactly as one without."""
    state = rng_state()
    ev = summarize(heldout(run), seed=run.cfg.train.seed, word=run.collate.word)
    row.update({f"heldout_{k}_ratio": ev[k].get("ratio", math.nan) for k in run.kinds})  # report.html's curve
    row.update(scalars(ev, "eval"))
    draw = bool(logger.tb or logger.wandb) and not run.model.dense_tokens  # the dense reader has no look to draw
    if sharding.sharded(run.model):
        draw = run.dist.any(draw)  # rank 0 decides; every rank runs the model
    if draw:
        clip = dataset_clip(run.heldout_set, 0, "held-out clip 0")
        with sharding.full_params(run.model):
            pixels = figure_pixels(grid_figure(analyse(run.model, run.cfg, clip)))
        logger.image("eval/attention", pixels, row["step"])
    set_rng_state(state)


def progress_line(run: Run, row: dict) -> str:
    """What the progress bar shows, as one line (a log file has no bar)."""
    t, per_step = run.cfg.train, (time.time() - run.t0) / max(1, run.step - run.first_step)
    ratios = ", ".join(f"{k} ratio {row[f'{k}_ratio']:.4f}" for k in run.kinds if f"{k}_ratio" in row)
    return (
        f"{run.cfg.model.head}: step {run.step}/{t.steps}, loss {row['loss']:.4g}" + (f", {ratios}" if ratios else "")
        + f", {per_step:.2f} s/step, {per_step * (t.steps - run.step):.0f} s to go"
    )  # fmt: skip


def finish(run: Run, arrays: dict, skipped: dict[str, list[str]], startup: list[dict]) -> dict:
    """results.json and the per-clip arrays heldout_losses.pt from the held-out evaluation of the trained model
    (arrays). skipped: the bad input files every rank found (reason -> names); startup: each rank's Run.startup."""
    cfg = run.cfg
    run.model.target.flush()  # lazily computed targets (VAE latents) into the cache
    summary = summarize(arrays, seed=cfg.train.seed, word=run.collate.word)
    results = summarize_run(cfg, run.model, run.history, summary, run.kinds, run.nonfinite, run.elapsed())
    results["startup"] = {k: [rank[k] for rank in startup] for k in ("seconds", "peak_rss_mib")}  # per rank
    results["data_skipped"] = {reason: len(names) for reason, names in skipped.items()}  # bad input files
    results["data_skipped_files"] = skipped
    results["flops_per_clip"] = clip_flops(run)  # {"forward", "encoder"}
    results["threads"] = torch.get_num_threads()  # the numbers are reproducible on this many (train.threads)
    (run.out / "results.json").write_text(strict_json(results))  # null for a missing number
    torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, run.out / "heldout_losses.pt")
    return results
