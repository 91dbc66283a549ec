"""`foveal bench`: time one training step, count its FLOPs, and set them against this machine's measured matmul peak.

A step is what training does for one micro-batch with grad_accum=1, built from its own pieces (make_optimizer,
autocast_for, the objective): forward of the coarse and fine passes, backward, gradient clipping, AdamW step. The
inputs are random frames and random targets of the config's shapes, made once (data loading is not timed); the
model has the config's architecture (random weights unless the config names real ones). Warm-up steps are not timed
(the first allocates AdamW's state); the last warm-up step measures peak memory: the process's peak RSS (the Linux
high-water mark, reset just before) on CPU, max allocated on CUDA.

FLOPs are those of one forward + backward (FlopCounterMode; AdamW's elementwise work is not counted). The peak is
measured in the same run: the best of a few square matmuls in the step's dtype. MFU = achieved / that peak.

--compare-naive times the same step with one optimisation undone at a time, interleaved step by step with the
optimised one so that both see the same load (other processes share the cores). All but fp32 compute the same loss
and gradients (tests/test_bench.py checks it); fp32 is the same step without bf16 autocast.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import statistics
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from foveal.config import ConfigError, RunConfig
from foveal.evaluation.flops import CPU_FLOPS
from foveal.model import encoder as encoder_module
from foveal.model import fused
from foveal.model.build import build_model
from foveal.model.encoder import PatchCache
from foveal.model.foveated import Batch, FoveatedVLM
from foveal.objectives import build_objective, score
from foveal.train import allocator
from foveal.train.encoder_cache import EncoderCache
from foveal.train.hardware import processor, slow_bf16
from foveal.train.optim import autocast_for, make_optimizer

MIB = 2**20


# ---------------------------------------------------------------------------------------------------------------------
# measuring


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_size(device: torch.device) -> int:
    """The square matmul the peak is measured on: 2048 on a CPU; 8192 on a GPU, where 2048^3 is too small to fill
    the chip (an H200 reaches ~790 TFLOP/s in bf16 at 8192^3, the device notes of this workplace)."""
    return 8192 if device.type == "cuda" else 2048


@torch.no_grad()
def matmul_peak(dtype: torch.dtype, device: torch.device, size: int = 2048, reps: int = 5) -> float:
    """Best FLOP/s of size^3 matmuls in dtype: the peak this machine's matmul kernels reach right now. On CPU the
    best of torch's BLAS and oneDNN's matmul (the fused encoder's kernel): on AMD EPYC, MKL's fp32 GEMM runs at
    about half of what oneDNN reaches (194 vs 430 GFLOP/s on 2 cores, 2026-12-02), so a BLAS-only peak would
    put fp32 steps above 100 %."""
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    kernels = [lambda: a @ b]
    if device.type == "cpu" and fused.fusable(a):
        kernels.append(lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], ""))  # a @ b^T
    best = math.inf
    for kernel in kernels:
        kernel()  # kernel selection, first-touch of the output
        for _ in range(reps):
            sync(device)
            t0 = time.perf_counter()
            kernel()
            sync(device)
            best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # Linux: the RSS high-water mark restarts from the current RSS


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / MIB
    with contextlib.suppress(OSError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # never reset: the whole process's peak
    return rss / MIB if sys.platform == "darwin" else rss / 1024


def count_flops(step: Step) -> int:
    """FLOPs of one forward + backward of the step (no optimiser update)."""
    with FlopCounterMode(display=False, custom_mapping=CPU_FLOPS) as counter:
        step.loss().backward()
    step.opt.zero_grad(set_to_none=True)
    return counter.get_total_flops()


# ---------------------------------------------------------------------------------------------------------------------
# the step


def random_batch(cfg: RunConfig, model: FoveatedVLM, device: torch.device, caption: bool) -> Batch:
    """Frames [B, T, 3, S, S] ~ N(0, 1) (ImageNet-normalised scale), targets [B, T, C, h, w] ~ N(0, 1), and for a
    caption objective full-length random captions."""
    b, t, s = cfg.train.batch_size, cfg.data.num_frames, cfg.model.frame_size
    g = torch.Generator().manual_seed(cfg.train.seed)
    frames = torch.randn(b, t, 3, s, s, generator=g)
    targets = torch.randn(b, t, *model.target_shape, generator=g)
    ids = mask = None
    if caption:
        ids = torch.randint(model.llm.config.vocab_size, (b, cfg.train.max_caption_tokens + 1), generator=g)
        mask = torch.ones_like(ids, dtype=torch.bool)
        ids, mask = ids.to(device), mask.to(device)
    return Batch(frames.to(device), targets.to(device), ids, mask, torch.arange(b))


class Step:
    """One training step of cfg's model on a fixed random batch, as train.py runs it (grad_accum=1)."""

    def __init__(self, cfg: RunConfig, device: torch.device):
        t = cfg.train
        self.cfg, self.device, self.precision = cfg, device, t.precision
        torch.manual_seed(t.seed)
        self.model, _ = build_model(cfg)
        self.model.to(device).train()
        if t.compile:  # compiled on the warm-up steps, which are not timed
            self.model.compile_parts()
        self.objective = build_objective(t.objective)
        self.batch = random_batch(cfg, self.model, device, self.objective.caption)
        self.opt, _ = make_optimizer(self.model, t, device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.cache = self.keys = None
        # only when asked (true, `--encoder-cache`): a preset's `auto` is for compare's models sharing clips
        if t.encoder_cache is True:  # steady state: every clip of the batch already held; the lookup itself is timed
            self.cache = EncoderCache(t.encoder_cache_mib)
            self.keys = [f"bench:{i}" for i in range(t.batch_size)]
            with torch.no_grad(), autocast_for(self.precision, device):
                self.cache.lookup(self.keys, self.batch.frames, self.model.encode)
            if len(self.cache) < len(self.keys):
                raise ConfigError(f"train.encoder_cache_mib={t.encoder_cache_mib} does not hold one batch of clips")

    def loss(self) -> torch.Tensor:
        t = self.cfg.train
        with autocast_for(self.precision, self.device):
            patches = (
                self.cache.lookup(self.keys, self.batch.frames, self.model.encode) if self.cache is not None else None
            )
            o = self.objective
            out = self.model(
                self.batch, recon=o.recon, caption=o.caption, fine_iterations=t.fine_iterations, cache=patches
            )
            coarse, fine = score(self.model, out, self.batch, o.kinds)
            return o.loss(coarse, fine, t)

    def __call__(self) -> tuple[float, float]:
        """One step; returns its wall-clock and process CPU seconds."""
        sync(self.device)
        t0, c0 = time.perf_counter(), time.process_time()
        self.loss().backward()
        clip = self.cfg.train.grad_clip
        torch.nn.utils.clip_grad_norm_(self.params, clip if clip > 0 else float("inf"))
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        sync(self.device)
        return time.perf_counter() - t0, time.process_time() - c0


# ---------------------------------------------------------------------------------------------------------------------
# naive variants: what the optimised step replaced, swapped in for a measurement (the model code is untouched)


def per_frame_read(model: FoveatedVLM, queries: torch.Tensor, cache: PatchCache, return_attention=False, bias=None):
    """The reference's loop: one attend call per frame position t, over that position's frames of every clip
    (strided views of the cache, as the reference's per-frame split)."""
    b, t, _ = queries.shape
    k, v = cache.keys.unflatten(1, (b, t)), cache.values.unflatten(1, (b, t))  # [L, B, T, heads, P, hd]
    features = cache.features.unflatten(0, (b, t))  # [B, T, P, D]
    frame_bias = [None] * t if bias is None else bias.unbind(1)  # [B, P] per frame
    caches = [PatchCache(k[:, :, i], v[:, :, i], features[:, i]) for i in range(t)]
    z = [model.encoder.attend(queries[:, i], caches[i], bias=frame_bias[i])[0] for i in range(t)]
    return model.project(torch.stack(z, dim=1)), None  # [B, T, H]


def sdpa_attend_deep(encoder, x: torch.Tensor, cache: PatchCache, return_attention=False, bias=None):
    """The deep query path through F.scaled_dot_product_attention instead of the written-out softmax."""
    mask = None if bias is None else bias[:, None].to(x.dtype)  # [N, 1, K|1, P], as the written-out path adds it
    for layer, k, v in zip(encoder.dino.encoder.layer, cache.keys, cache.values):
        attn = layer.attention
        a = F.scaled_dot_product_attention(encoder._split(attn.q_proj(layer.norm1(x))), k, v, attn_mask=mask)
        x = x + layer.layer_scale1(attn.o_proj(encoder._merge(a)))
        x = x + layer.layer_scale2(layer.mlp(layer.norm2(x)))
    return encoder.dino.layernorm(x), None


def softmax_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """F.scaled_dot_product_attention with the [.., Lq, Lk] score matrix materialised (no dropout: none is used)."""
    if enable_gqa:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
        v = v.repeat_interleave(q.shape[-3] // v.shape[-3], dim=-3)
    scores = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if is_causal:
        causal = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    return torch.softmax(scores, dim=-1).to(v.dtype) @ v


def predict_per_pass(model: FoveatedVLM, passes, targets, num_frames) -> None:
    """One head call per pass instead of one call over all passes."""
    for p in passes:
        FoveatedVLM.predict(model, [p], targets, num_frames)


@contextlib.contextmanager
def patched(obj, name: str, value):
    """obj.name = value inside the block (an instance attribute shadows the class's method)."""
    had, old = name in vars(obj), vars(obj).get(name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        if had:
            setattr(obj, name, old)
        else:
            delattr(obj, name)


@contextlib.contextmanager
def optimizer_flags(opt: torch.optim.Optimizer, **flags):
    saved = [{k: g[k] for k in flags} for g in opt.param_groups]
    for g in opt.param_groups:
        g.update(flags)
    try:
        yield
    finally:
        for g, s in zip(opt.param_groups, saved):
            g.update(s)


@dataclass
class Variant:
    name: str
    undoes: str  # the optimisation this variant takes away
    enter: Callable[[Step], contextlib.AbstractContextManager]
    applies: Callable[[Step], bool] = lambda step: True
    same_loss: bool = True
    precision: str | None = None  # the precision it runs at where not the step's own


NAIVE = [
    Variant(
        "per-frame attend",
        "one batched attend over all frames and clips",
        lambda s: patched(s.model, "read", types.MethodType(per_frame_read, s.model)),
    ),
    Variant(
        "SDPA query attend",
        "written-out softmax for the K=1 query over P patches",
        lambda s: patched(s.model.encoder, "_attend_deep", types.MethodType(sdpa_attend_deep, s.model.encoder)),
        applies=lambda s: s.model.encoder.deep,
    ),
    Variant(
        "SDPA encoder",
        "written-out softmax in the encoder's self-attention on CPU",
        lambda s: patched(encoder_module, "self_attention", F.scaled_dot_product_attention),
        applies=lambda s: s.device.type == "cpu" and s.cache is None,
    ),
    Variant(
        "unfused encoder linears",
        "the frozen encoder's q/k/v as one product, bias and GELU inside oneDNN's matmul",
        lambda s: patched(fused, "fusable", lambda x: False),
        applies=lambda s: s.device.type == "cpu" and s.cache is None and s.cfg.model.dino.freeze,
    ),
    Variant(
        "materialised attention",
        "SDPA in the LLM and heads",
        # every caller (encoder, heads, transformers' sdpa path, nn.MultiheadAttention) looks F's function up per call
        lambda s: patched(F, "scaled_dot_product_attention", softmax_attention),
    ),
    Variant(
        "head per pass",
        "one head call for the coarse and fine passes",
        lambda s: patched(s.model, "predict", types.MethodType(predict_per_pass, s.model)),
    ),
    Variant(
        "foreach AdamW",
        "fused AdamW",
        lambda s: optimizer_flags(s.opt, fused=False, foreach=True),
        applies=lambda s: any(g.get("fused") for g in s.opt.param_groups),
    ),
    Variant(
        "fp32",
        "bf16 autocast",
        lambda s: patched(s, "precision", "fp32"),
        applies=lambda s: s.precision == "bf16" and s.cache is None,  # cached K/V are bf16
        same_loss=False,
        precision="fp32",
    ),
]


def undo_all(step: Step, variants: list[Variant]) -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    for v in variants:
        stack.enter_context(v.enter(step))
    return stack


OPTIMISED = Variant("optimised", "", lambda s: contextlib.nullcontext())


# ---------------------------------------------------------------------------------------------------------------------
# the benchmark


def summary(times: list[tuple[float, float]]) -> dict:
    wall, cpu = zip(*times)
    return {
        "step_s_median": statistics.median(wall),
        "step_s_min": min(wall),
        "step_s_max": max(wall),
        "cpu_s_median": statistics.median(cpu),  # CPU time of all threads: the work, whatever the load
    }


def variants_for(step: Step, compare_naive: bool) -> list[Variant]:
    """The optimised step and, with compare_naive, each applicable naive variant, then everything undone at once
    (the step as a straightforward implementation runs it) at the step's precision and in fp32."""
    variants = [OPTIMISED] + ([v for v in NAIVE if v.applies(step)] if compare_naive else [])
    same = [v for v in variants[1:] if v.same_loss]
    if len(same) > 1:
        variants.append(Variant("all naive", "all of the above but precision", lambda s: undo_all(s, same)))
        both = [*same, *(v for v in variants if v.precision == "fp32")]
        if len(both) > len(same):  # the like-for-like pair at each precision
            variants.append(
                Variant("all naive, fp32", "all of the above", lambda s: undo_all(s, both), precision="fp32")
            )
    return variants


def warm_up(step: Step, variants: list[Variant], warmup: int, device: torch.device) -> dict[str, float]:
    """Untimed steps of each variant; the last one measures its peak memory (MiB)."""
    memory = {}
    for v in variants:
        with v.enter(step):
            for _ in range(warmup - 1):
                step()
            reset_peak_memory(device)
            step()
            memory[v.name] = peak_memory_mib(device)
    return memory


def timed(step: Step, variants: list[Variant], steps: int, log) -> dict[str, list[tuple[float, float]]]:
    """(wall, CPU) seconds of each variant's steps, interleaved so that every variant sees the same load."""
    times: dict[str, list[tuple[float, float]]] = {v.name: [] for v in variants}
    for i in range(steps):
        for v in variants:
            with v.enter(step):
                times[v.name].append(step())
        log(f"step {i + 1}/{steps}: " + ", ".join(f"{n} {ts[-1][0]:.3f} s" for n, ts in times.items()))
    return times


def measured_peaks(precision: str, fp32_too: bool, device: torch.device) -> dict[str, float]:
    """The matmul peak of the step's precision (and fp32's, for a variant that runs in it), measured now."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    peaks = {precision: matmul_peak(dtype, device, peak_size(device))}
    if fp32_too:
        peaks["fp32"] = matmul_peak(torch.float32, device, peak_size(device))
    return peaks


def bench(
    cfg: RunConfig,
    steps: int = 10,
    warmup: int = 2,
    compare_naive: bool = False,
    device: torch.device | None = None,
    log=print,
) -> dict:
    """Time `steps` training steps of cfg (after `warmup` untimed ones); returns the result dict (see module doc)."""
    if steps < 1 or warmup < 1:
        raise ConfigError(f"bench: --steps and --warmup must be >= 1, got {steps} and {warmup}")
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if warning := slow_bf16(cfg.train.precision, device):
        log(warning)
    load_before = os.getloadavg()[0]
    step = Step(cfg, device)
    variants = variants_for(step, compare_naive)
    memory = warm_up(step, variants, warmup, device)
    flops = count_flops(step)
    peaks = measured_peaks(cfg.train.precision, any(v.precision for v in variants), device)
    times = timed(step, variants, steps, log)

    b, t = cfg.train.batch_size, cfg.data.num_frames
    main = summary(times["optimised"])
    med, peak = main["step_s_median"], peaks[cfg.train.precision]
    result = {
        "preset": cfg.preset,
        "head": cfg.model.head,
        "precision": cfg.train.precision,
        "frozen_encoder": cfg.model.dino.freeze,
        "encoder_cache": step.cache is not None,
        "compiled": cfg.train.compile,
        "batch": b,
        "frames": t,
        "frame_size": cfg.model.frame_size,
        "device": device.type,
        "threads": torch.get_num_threads(),
        "malloc_tuned": allocator.tuned,  # allocator.py; FOVEAL_MALLOC=default measures without
        "cores": os.cpu_count(),
        "processor": processor(device),
        "peak_flops_per_s_by_precision": peaks,
        "peak_matmul_size": peak_size(device),
        "steps": steps,
        "warmup": warmup,
        **main,
        "peak_mem_mib": memory["optimised"],
        "flops_per_step": flops,
        "achieved_flops_per_s": flops / med,
        "peak_flops_per_s": peak,
        "mfu": flops / med / peak,
        "frames_per_s": b * t / med,
        "clips_per_s": b / med,
        "load_avg_before": load_before,
        "load_avg_after": os.getloadavg()[0],
    }
    if compare_naive:
        result["variants"] = [variant_row(v, cfg, times, memory, flops, peaks, med) for v in variants[1:]]
    return result


def variant_row(v: Variant, cfg: RunConfig, times: dict, memory: dict, flops: int, peaks: dict, med: float) -> dict:
    """One naive variant's figures; its MFU is against the measured peak of its own precision."""
    precision = v.precision or cfg.train.precision
    s = summary(times[v.name])
    return {
        "name": v.name,
        "undoes": v.undoes,
        "precision": precision,
        **s,
        "peak_mem_mib": memory[v.name],
        "slowdown": s["step_s_median"] / med,
        "mfu": flops / s["step_s_median"] / peaks[precision],
    }


def format_table(r: dict) -> str:
    peaks = ", ".join(f"{p} {f / 1e9:.0f} GFLOP/s" for p, f in r["peak_flops_per_s_by_precision"].items())
    enc = "frozen" if r["frozen_encoder"] else "trainable"
    enc += ", cached" if r["encoder_cache"] else ""
    precision = r["precision"] + (" + torch.compile" if r.get("compiled") else "")
    lines = [
        f"foveal bench: preset {r['preset']}, head {r['head']}, {precision}, {enc} encoder, batch {r['batch']} x "
        f"{r['frames']} frames of {r['frame_size']} px; {r['device']}, {r['threads']} threads, load average "
        f"{r['load_avg_before']:.1f} -> {r['load_avg_after']:.1f}; {r['steps']} timed steps after {r['warmup']}",
        "",
        "| step s (median) | min | max | CPU s | peak MiB | GFLOP/step | GFLOP/s | MFU | frames/s | clips/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {r['step_s_median']:.3f} | {r['step_s_min']:.3f} | {r['step_s_max']:.3f} | {r['cpu_s_median']:.2f} | "
        f"{r['peak_mem_mib']:.0f} | "
        f"{r['flops_per_step'] / 1e9:.1f} | {r['achieved_flops_per_s'] / 1e9:.1f} | {100 * r['mfu']:.1f}% | "
        f"{r['frames_per_s']:.1f} | {r['clips_per_s']:.2f} |",
        "",
        f"{r['processor']['name']} (bf16 matmul hardware: {r['processor']['bf16_hardware']}); measured matmul peak "
        f"({r.get('peak_matmul_size', 2048)}^3): {peaks}; glibc malloc "
        + ("tuned (allocator.py)" if r.get("malloc_tuned") else "as it was (FOVEAL_MALLOC=default or not glibc)"),
    ]
    if r["device"] == "cpu" and max(r["load_avg_before"], r["load_avg_after"]) > r["cores"]:
        lines.append(
            f"note: the load average exceeds the {r['cores']} cores: other processes share them, so wall-clock figures "
            "are pessimistic (CPU s is the step's work). OpenMP threads that spin-wait on a busy machine can slow "
            "a step many-fold: try OMP_WAIT_POLICY=PASSIVE or --threads 1."
        )
    if r.get("variants"):
        lines += [
            "",
            "| naive variant | undoes | precision | step s (median) | min | max | CPU s | peak MiB | MFU | "
            "optimisation's speed-up |",
            "|---|---|---|---|---|---|---|---|---|---|",
            f"| optimised | - | {r['precision']} | {r['step_s_median']:.3f} | {r['step_s_min']:.3f} | "
            f"{r['step_s_max']:.3f} | {r['cpu_s_median']:.2f} | {r['peak_mem_mib']:.0f} | {100 * r['mfu']:.1f}% | - |",
        ]
        for v in r["variants"]:
            lines.append(
                f"| {v['name']} | {v['undoes']} | {v['precision']} | {v['step_s_median']:.3f} | {v['step_s_min']:.3f} "
                f"| {v['step_s_max']:.3f} | {v['cpu_s_median']:.2f} | {v['peak_mem_mib']:.0f} | "
                f"{100 * v['mfu']:.1f}% | {v['slowdown']:.2f}x |"
            )
        lines.append("(MFU against the measured peak of the row's precision; compare rows of the same precision)")
    return "\n".join(lines)
