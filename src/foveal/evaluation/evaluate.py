"""Held-out evaluation: per-clip, per-frame scores of each path and every control (controls.py), as arrays.

summary.py turns the arrays into the statistics a reviewer asks for.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from foveal.data.dataset import target_looks
from foveal.data.frames import encoder_input
from foveal.evaluation.controls import CONTROLS, Evaluated, caption_arrays
from foveal.model.encoder import look_mask
from foveal.model.foveated import Batch, FoveatedVLM
from foveal.objectives import Objective, score, score_passes


def make_batch(raw: dict, device, caption: bool) -> Batch:
    """Collated dict -> model Batch on device."""
    return Batch(
        frames=encoder_input(raw["frames"].to(device)),
        caption_ids=raw["caption_ids"].to(device) if caption else None,
        caption_mask=raw["caption_mask"].to(device) if caption else None,
        index=raw["index"],
        keys=raw["keys"],
        pixels=raw["frames"],
    )


def path_arrays(name: str, s) -> dict[str, torch.Tensor]:
    out = {}
    if s.recon is not None:
        out |= {f"recon_{name}": s.recon, f"mse_{name}": s.mse, f"cosine_{name}": s.cosine}
    return out | caption_arrays(name, s)


RAGGED = ("caption_tokens_", "caption_ids")  # [B, L_b]: each batch padded to its own longest caption


def concat(key: str, values: list[torch.Tensor]) -> torch.Tensor:
    """One array's batches -> [N, ...]; a per-token caption array right-padded with NaN to the widest batch."""
    if not key.startswith(RAGGED):
        return torch.cat(values)
    width = max(v.shape[1] for v in values)
    return torch.cat([F.pad(v, (0, width - v.shape[1]), value=torch.nan) for v in values])


@torch.no_grad()
def evaluate(
    model: FoveatedVLM,
    dataset,
    collator,
    objective: Objective,
    *,
    fine_iterations: int = 1,
    batch_size: int = 8,
    autoregressive: bool = False,
    device=None,
    autocast=None,
) -> dict[str, np.ndarray]:
    """Per-clip arrays over the whole dataset. Paths: coarse, fine (the final fine iteration; absent for a
    coarse-only model), autoregressive when asked.
      recon_<path> [N, T], mse_<path>, cosine_<path> [N, T], caption_<path> [N] (mean token CE),
      caption_tokens_<path> [N, L+1] (each caption target's CE) and caption_ids [N, L+1] (the targets), NaN past eos
      and every control's arrays (controls.py), e.g. recon_copy_last [N, T-1], recon_<path>_h_zero [N, T]
    A model built with model.look=oracle reads its fine pass at the target here too (the dataset's ground truth).
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: dict[str, list] = {}
    state: dict = {}
    for start in range(0, len(dataset), batch_size):
        idx = list(range(start, min(start + batch_size, len(dataset))))
        batch = make_batch(collator([dataset[i] for i in idx]), device, objective.caption)
        on_target = target_looks(dataset, idx, model.encoder.patch_size)  # [B, T, G*G] where there is ground truth
        on_target = None if on_target is None else on_target.to(device)
        with autocast or torch.autocast(device.type, enabled=False):
            cache = model.encode(batch.frames)
            bias = look_mask(on_target) if model.options.look == "oracle" else None  # a ceiling model's own look
            res = model(batch, objective.recon, objective.caption, fine_iterations, cache, True, fine_bias=bias)
            coarse, fine = score(model, res, batch, objective.kinds)
            paths = {"coarse": coarse} | ({"fine": fine[-1]} if fine else {})
            ev = Evaluated(model, objective, batch, res, paths, fine_iterations, on_target, state, cache)
            arrays = {k: v for name, s in paths.items() for k, v in path_arrays(name, s).items()}
            if objective.caption:  # the per-slot diagnostic's chance; ids as floats are exact below 2^24
                arrays["caption_ids"] = batch.caption_ids.float().masked_fill(~batch.caption_mask, torch.nan)
            for fn in CONTROLS.values():
                arrays |= fn(ev)
            if autoregressive and res.fine:
                p, targets = model.forward_autoregressive(batch, recon=objective.recon, caption=objective.caption)
                arrays |= path_arrays("autoregressive", score_passes(model, [p], targets, batch, objective.kinds)[0])
        if hasattr(dataset, "target_attributes"):  # what the probes should find: [B, T, 2] centres, [B, T] colours
            truth = [dataset.target_attributes(i) for i in idx]
            arrays |= {f"truth_{k}": torch.stack([a[k] for a in truth]) for k in truth[0]}
        for key, value in arrays.items():
            out.setdefault(key, []).append(value.float().cpu())
    model.train(was_training)
    return {k: concat(k, v).numpy() for k, v in out.items()}
