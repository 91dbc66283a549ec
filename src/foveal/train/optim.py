"""Optimiser, learning-rate schedule and mixed precision for training."""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from foveal.config import TrainConfig


class TrainingError(RuntimeError):
    pass


def decayed_weights(model: nn.Module) -> set[int]:
    """ids of the matrices weight decay applies to: every Linear and convolution weight (transposed ones too) and
    nn.MultiheadAttention's packed input projection; never biases, norms, embeddings of position or learned tokens."""
    out = set()
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
            out.add(id(m.weight))
        if isinstance(m, nn.MultiheadAttention) and m.in_proj_weight is not None:
            out.add(id(m.in_proj_weight))
    return out


def param_groups(model, t: TrainConfig) -> list[dict]:
    """Backbone (DINOv2, LLM) at backbone_lr; everything newly initialised (the connector: projections, queries,
    mode tokens, blank target, head) at lr. Weight decay on weight matrices only (decayed_weights), or on every
    parameter (train.decay=all: torch's AdamW over model.parameters(), as the seed study ran it)."""
    backbone = {id(p) for m in model.backbone_modules() for p in m.parameters()}
    decayed = decayed_weights(model) if t.decay == "matrices" else {id(p) for p in model.parameters()}
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


def make_optimizer(model, t: TrainConfig, device: torch.device):
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
