"""Held-out controls: per-batch measurements that say whether a ratio can be read at all.

Each control is a function of one evaluated batch (`Evaluated`) that returns named per-clip arrays; `CONTROLS`
lists them, and evaluate() runs every one. A control keeps what it needs from the previous batch in `state` (e.g.
the last clip's h, for "another clip's h"). Adding a control = one function + `@control("name")`.

  copy_last   each frame predicted as the previous frame's target: the loss of knowing nothing about motion;
  h_ablation  the trained head fed zeros, or another clip's states, instead of h: if the loss does not rise, h
              carries no information and coarse/fine (which differ only in h) cannot differ in any useful way;
  video_other (caption) each caption scored after another clip's frames: if its loss does not rise, the caption
              ignores the video and a caption ratio says nothing about where the model looked;
  attention   the entropy of each query's attention (1 = uniform: the query cannot look anywhere) and, where the
              dataset has ground truth (synthetic), the mass each query puts on the target's patches;
  oracle_look (ground truth) the trained model's fine pass read with attention forced onto the target's patches:
              does the model know what to do with a perfect look?
  shuffled_look  the fine pass read with the queries the model emitted for another clip: the floor of looking;
  target_region  (ground truth, recon) each path's MSE over the target grid cells the target covers.
The coarse-only, oracle-look (model.look=oracle), prev-only (model.prev_only) and dense reader (model.dense_tokens)
controls are separately trained models; compare pairs them with these arrays. The dense reader has no query: the
controls that need one (attention, the oracle and shuffled looks) skip it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from foveal.model.encoder import PatchCache, look_mask
from foveal.model.foveated import Batch, FoveatedVLM, Output, Pass
from foveal.objectives import Objective, Scores, score, score_passes


@dataclass
class Evaluated:
    """One held-out batch after the forward: what every control reads."""

    model: FoveatedVLM
    objective: Objective
    batch: Batch
    out: Output
    paths: dict[str, Scores]  # "coarse", "fine" (the final fine iteration; absent for a coarse-only model)
    fine_iterations: int
    on_target: torch.Tensor | None  # [B, T, G*G] the target's patches, where the dataset has ground truth
    state: dict = field(default_factory=dict)  # carried from batch to batch, one entry per control
    cache: PatchCache | None = None  # the batch's encoded frames (controls that re-read them)

    @property
    def learned_fine(self) -> bool:  # a fine pass steered by the LLM's own queries
        return bool(self.out.fine) and self.model.options.look == "learned"

    def rescore(self, name: str, p: Pass) -> dict[str, torch.Tensor]:
        """A control's pass `p` through the head / caption reader, scored like a path called `name`."""
        model, t = self.model, self.batch.frames.shape[1]
        if self.objective.recon:
            model.predict([p], self.out.targets, t)
        if self.objective.caption and self.batch.caption_ids is not None:
            model.caption_logits([p], t)
        (s,) = score_passes(model, [p], self.out.targets, self.batch, self.objective.kinds)
        out = {f"recon_{name}": s.recon} if s.recon is not None else {}
        out |= caption_arrays(name, s)
        if s.recon is not None and self.on_target is not None:
            out[f"region_{name}"] = region_mse(p.pred, self.out.targets, self.on_target)
        return out


def caption_arrays(name: str, s: Scores) -> dict[str, torch.Tensor]:
    """caption_<name> [B] (mean token CE) and caption_tokens_<name> [B, L+1] (each target's CE, for the per-slot
    diagnostic); none without caption scores."""
    if s.caption_sum is None:
        return {}
    return {f"caption_{name}": s.caption_per_clip, f"caption_tokens_{name}": s.caption_tokens}


CONTROLS: dict[str, Callable[[Evaluated], dict[str, torch.Tensor]]] = {}


def control(name: str):
    def add(fn):
        CONTROLS[name] = fn
        return fn

    return add


def passes(ev: Evaluated) -> dict:
    return {"coarse": ev.out.coarse} | ({"fine": ev.out.fine[-1]} if ev.out.fine else {})


@control("copy_last")
def copy_last(ev: Evaluated) -> dict[str, torch.Tensor]:
    if not ev.objective.recon or ev.out.targets is None:
        return {}
    c = ev.model.target.copy_last(ev.out.targets)  # [B, T-1] each
    return {"recon_copy_last": c.loss, "copy_last_loss": c.loss, "copy_last_mse": c.mse, "copy_last_cosine": c.cosine}


@control("h_ablation")
def h_ablation(ev: Evaluated) -> dict[str, torch.Tensor]:
    """The head's per-frame loss [B, T] with h replaced and everything else (head weights, previous targets, targets)
    as in the pass: h_zero = zeros; h_other = the previous clip's h (the batch rolled by one clip, the first clip
    taking the previous batch's last; with a one-clip first batch it is its own)."""
    targets = ev.out.targets
    if not ev.objective.recon or targets is None:
        return {}
    out = {}
    for name, p in passes(ev).items():
        h = p.hidden[:, : targets.shape[1]]  # [B, T, H]
        first = ev.state.get(f"h_{name}", h[-1:])
        other = torch.cat([first, h[:-1]])
        for kind, replaced in (("h_zero", torch.zeros_like(h)), ("h_other", other)):
            out[f"recon_{name}_{kind}"] = ev.model.target.losses(ev.model.predict_next(replaced, targets), targets).loss
        ev.state[f"h_{name}"] = h[-1:]
    return out


@control("video_other")
def video_other(ev: Evaluated) -> dict[str, torch.Tensor]:
    """The same captions after the previous clip's frames."""
    b = ev.batch
    if not ev.objective.caption or b.caption_ids is None:
        return {}
    first = ev.state.get("frames", b.frames[-1:])
    swapped = Batch(torch.cat([first, b.frames[:-1]]), None, b.caption_ids, b.caption_mask)
    other = ev.model(swapped, recon=False, caption=True, fine_iterations=ev.fine_iterations)
    coarse, fine = score(ev.model, other, swapped, ("caption",))
    ev.state["frames"] = b.frames[-1:]
    paths = {"coarse": coarse} | ({"fine": fine[-1]} if fine else {})
    return {k: v for name, s in paths.items() for k, v in caption_arrays(f"{name}_video_other", s).items()}


def target_mass(weights: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """Attention [B*T, 1, L, heads, P] (CLS first) and target patches [B, T, P-1] -> [B, T, L]: the mass the query
    put on the target's patches, per encoder layer, averaged over heads."""
    b, t = patches.shape[:2]
    on_target = torch.cat([torch.zeros_like(patches[..., :1]), patches], dim=-1).flatten(0, 1)  # [B*T, P]
    mass = (weights[:, 0].float() * on_target[:, None, None].float()).sum(-1).mean(-1)  # [B*T, L]
    return mass.view(b, t, -1)


def attention_entropy(weights: torch.Tensor, frames: int) -> torch.Tensor:
    """Attention [B*T, 1, L, heads, P] -> [B, T]: entropy over the P tokens / ln P, mean over layers and heads."""
    w = weights[:, 0].float()
    ent = -(w * w.clamp_min(1e-12).log()).sum(-1) / math.log(w.shape[-1])  # [B*T, L, heads]
    return ent.mean((1, 2)).view(-1, frames)


@control("attention")
def attention(ev: Evaluated) -> dict[str, torch.Tensor]:
    out = {}
    if ev.on_target is not None:
        out["attention_chance"] = ev.on_target.float().sum(-1) / (ev.on_target.shape[-1] + 1)  # +1: CLS
    for name, p in passes(ev).items():
        if p.attention is None:  # the dense reader: no query, no attention
            continue
        out[f"attention_{name}_entropy"] = attention_entropy(p.attention.weights, ev.batch.frames.shape[1])
        if ev.on_target is not None:
            out[f"attention_{name}"] = target_mass(p.attention.weights, ev.on_target)
    return out


def region_mse(pred: torch.Tensor, targets: torch.Tensor, on_target: torch.Tensor) -> torch.Tensor:
    """pred, targets [B, T, C, S, S], on_target [B, T, G*G] -> [B, T]: the MSE over the target grid's cells the
    target covers (the patch grid resized to the target grid, nearest); NaN where it covers none."""
    b, t, _, side, _ = targets.shape
    g = math.isqrt(on_target.shape[-1])
    mask = F.interpolate(on_target.float().view(b * t, 1, g, g), size=(side, side), mode="nearest").view(b, t, -1)
    err = (pred.float() - targets.float()).pow(2).mean(2).flatten(2)  # [B, T, S*S]
    cells = mask.sum(-1)
    return torch.where(cells > 0, (err * mask).sum(-1) / cells.clamp_min(1), torch.nan)


@control("tokens")
def tokens(ev: Evaluated) -> dict[str, torch.Tensor]:
    """Each path's frame tokens [B, T, H], for the linear probes of what a token says about the target (not the
    dense reader's k per frame)."""
    if ev.on_target is None or ev.model.dense_tokens:
        return {}
    return {f"tokens_{name}": p.tokens for name, p in passes(ev).items()}


@control("target_region")
def target_region(ev: Evaluated) -> dict[str, torch.Tensor]:
    if ev.on_target is None or not ev.objective.recon or ev.out.targets is None:
        return {}
    return {f"region_{name}": region_mse(p.pred, ev.out.targets, ev.on_target) for name, p in passes(ev).items()}


@control("oracle_look")
def oracle_look(ev: Evaluated) -> dict[str, torch.Tensor]:
    """The trained model's own fine pass, every fine read at the target (look_mask in every encoder layer)."""
    if ev.on_target is None or not ev.learned_fine:
        return {}
    b, t = ev.batch.frames.shape[:2]
    text = ev.batch if ev.objective.caption else None
    bias = look_mask(ev.on_target)
    p = ev.model.coarse_to_fine(ev.cache, b, t, ev.fine_iterations, text, fine_bias=bias)[-1]
    return ev.rescore("oracle_eval", p) | {"tokens_oracle_eval": p.tokens}


@control("shuffled_look")
def shuffled_look(ev: Evaluated) -> dict[str, torch.Tensor]:
    """The final fine pass re-read with the queries emitted for the previous clip (the batch rolled by one clip,
    as for h_other): the same frames, the same weights, someone else's looks."""
    if not ev.learned_fine:
        return {}
    queries = ev.out.fine[-1].queries  # [B, T, Q]
    first = ev.state.get("queries", queries[-1:])
    ev.state["queries"] = queries[-1:]
    text = ev.batch if ev.objective.caption else None
    p = ev.model.read_pass(torch.cat([first, queries[:-1]]), ev.cache, fine=True, text=text)
    return ev.rescore("shuffled", p)
