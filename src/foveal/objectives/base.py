"""The Objective component, and the per-pass scores objectives are made of.

A pass's scores: "recon" (the target's per-frame loss of each prediction, with its MSE and cosine) and "caption"
(summed token cross-entropy of each clip's caption + eos). An objective names the scores it needs (`kinds`, primary
first: the one its ratio is read on) and turns one pass's scores into that pass's loss; the run's loss weighs the
fine iterations (train.fine_loss) and adds train.coarse_weight x the coarse pass's loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from foveal.config import Registry, TrainConfig
from foveal.model.foveated import Batch, Output, Pass

OBJECTIVES = Registry("train.objective")
IGNORE = -100  # label of padding; eos is always a target so the model learns to stop


@dataclass
class Scores:
    """One pass's per-clip numbers."""

    recon: torch.Tensor | None = None  # [B, T] per-frame loss of the prediction (model.target_loss)
    mse: torch.Tensor | None = None  # [B, T]
    cosine: torch.Tensor | None = None  # [B, T]
    caption_sum: torch.Tensor | None = None  # [B] summed token CE of each clip's caption (+eos)
    caption_count: torch.Tensor | None = None  # [B] caption targets per clip
    caption_tokens: torch.Tensor | None = None  # [B, L+1] each caption target's CE, NaN past eos (per-slot loss)

    @property
    def recon_loss(self) -> torch.Tensor:
        return self.recon.mean()

    @property
    def caption_loss(self) -> torch.Tensor:  # mean over all caption tokens of the batch
        return self.caption_sum.sum() / self.caption_count.sum().clamp(min=1)

    @property
    def caption_per_clip(self) -> torch.Tensor:  # [B] mean token CE
        return self.caption_sum / self.caption_count


def score_passes(model, passes: list[Pass], targets, batch: Batch, kinds) -> list[Scores]:
    """Each pass's scores; the recon losses of all passes in one call, as the head ran them."""
    scores = [Scores() for _ in passes]
    if "recon" in kinds and targets is not None:
        n = len(passes)
        pred = torch.cat([p.pred for p in passes])  # [n*B, T, C, S, S]
        losses = model.target.losses(pred, targets.repeat(n, 1, 1, 1, 1))
        for s, loss, mse, cos in zip(scores, losses.loss.chunk(n), losses.mse.chunk(n), losses.cosine.chunk(n)):
            s.recon, s.mse, s.cosine = loss, mse, cos
    if "caption" in kinds and batch.caption_ids is not None:
        labels = batch.caption_ids.masked_fill(~batch.caption_mask, IGNORE)
        for s, p in zip(scores, passes):
            ce = F.cross_entropy(p.logits.float().transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
            s.caption_sum, s.caption_count = ce.sum(1), batch.caption_mask.sum(1)
            s.caption_tokens = ce.masked_fill(~batch.caption_mask, torch.nan)
    return scores


def score(model, out: Output, batch: Batch, kinds) -> tuple[Scores, list[Scores]]:
    """(coarse scores, one per fine iteration)."""
    scores = score_passes(model, out.passes, out.targets, batch, kinds)
    return scores[0], scores[1:]


def fine_weights(n: int, mode: str) -> list[float]:
    if mode == "final":
        return [0.0] * (n - 1) + [1.0]
    if mode == "mean":
        return [1.0 / n] * n
    return [i / (n * (n + 1) / 2) for i in range(1, n + 1)]  # progressive: i / sum(i)


class Objective:
    name = "objective"
    kinds: tuple[str, ...] = ()  # the scores it needs, primary first

    @property
    def recon(self) -> bool:
        return "recon" in self.kinds

    @property
    def caption(self) -> bool:
        return "caption" in self.kinds

    def pass_loss(self, s: Scores, t: TrainConfig) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, coarse: Scores, fine: list[Scores], t: TrainConfig) -> torch.Tensor:
        weighted = zip(fine_weights(len(fine), t.fine_loss), fine) if fine else []
        total = sum(w * self.pass_loss(s, t) for w, s in weighted if w)
        return total + t.coarse_weight * self.pass_loss(coarse, t) if t.coarse_weight else total


def build_objective(name: str) -> Objective:
    return OBJECTIVES.get_class(name)()
