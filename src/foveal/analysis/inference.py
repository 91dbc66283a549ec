"""Using a trained run: load a checkpoint back into a model, read clips, caption them, evaluate every mode."""

from __future__ import annotations

from pathlib import Path

import torch

from foveal.config import ConfigError, RunConfig, config_from_dict
from foveal.data.dataset import HELDOUT_OFFSET, Collator, SyntheticClips, build_datasets
from foveal.data.frames import encoder_input
from foveal.data.video import read_clip
from foveal.evaluation.evaluate import evaluate
from foveal.evaluation.summary import summarize
from foveal.model.build import build_model
from foveal.objectives import build_objective
from foveal.train.checkpoint import find_checkpoint, load_checkpoint, load_model_state

MODES = ("coarse", "fine", "autoregressive")


def load_run(checkpoint: str | Path, device: str = "cpu") -> tuple[RunConfig, torch.nn.Module, object]:
    """A checkpoint file (or a run folder: its newest checkpoint) -> (config, model in eval mode, tokenizer)."""
    path = find_checkpoint(checkpoint)  # a run folder: its newest valid checkpoint (bad newer ones named)
    ckpt = load_checkpoint(path)
    cfg = config_from_dict(ckpt["config"])
    model, tokenizer = build_model(cfg)
    load_model_state(model, ckpt)
    return cfg, model.to(device).eval(), tokenizer


def load_clip(spec: str, cfg: RunConfig) -> dict:
    """'synthetic:<i>' (held-out synthetic clip i, with ground truth) or a video file -> a dataset item."""
    if spec.startswith("synthetic:"):
        index = spec.split(":", 1)[1]
        if not index.isdigit():
            raise ConfigError(f"--video {spec}: expected synthetic:<held-out clip number>, e.g. synthetic:3")
        clips = SyntheticClips(cfg.data, cfg.model.frame_size, int(index) + 1, offset=HELDOUT_OFFSET)
        item = clips[len(clips) - 1]
        return {**item, "truth": clips.clip(len(clips) - 1)}
    return read_clip(spec, cfg.data, cfg.model.frame_size)


@torch.no_grad()
def caption_clips(
    model,
    tokenizer,
    frames: torch.Tensor,
    mode: str,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
) -> list[str]:
    """frames uint8 [B, T, 3, H, W] -> one caption per clip."""
    ids = model.generate(
        encoder_input(frames),
        mode=mode,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        eos_id=tokenizer.eos_token_id,
    )
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids]


def evaluate_modes(cfg: RunConfig, model, tokenizer, batch_size: int = 8) -> dict:
    """Held-out caption (and recon) losses in every inference mode, and the train/inference gap."""
    _, heldout = build_datasets(cfg)
    model.target.prepare(model, [heldout], fresh=False)  # VAE latents of these clips; a PCA comes with the model
    collate = Collator(tokenizer, cfg.train.max_caption_tokens)
    arrays = evaluate(
        model,
        heldout,
        collate,
        build_objective("joint"),  # both losses, whatever the run trained
        fine_iterations=cfg.train.fine_iterations,
        batch_size=batch_size,
        autoregressive=True,
    )
    model.target.flush()
    return summarize(arrays, seed=cfg.train.seed, word=collate.word)
