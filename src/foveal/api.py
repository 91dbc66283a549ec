"""The Python API for notebooks and scripts (exported by `foveal`):

cfg = foveal.load_config("look", overrides=["train.steps=20"])   # preset, YAML file, key=value overrides
results = foveal.fit(cfg)                                         # a run folder, as `foveal train` writes
model = foveal.load(cfg.out_dir)                                  # a run folder, checkpoint or exported folder
model.caption(model.clip("synthetic:0"))                          # frames uint8 [T, 3, H, W] or [B, T, 3, H, W]
model.save_pretrained("exported/")                                # config.json + model.safetensors + tokenizer
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from foveal.analysis.inference import MODES, caption_clips, evaluate_modes, load_clip, load_run
from foveal.config import RunConfig, load_config
from foveal.model.pretrained import from_pretrained, is_pretrained, save_pretrained
from foveal.train.loop import train

__all__ = ["Model", "fit", "load", "load_config"]


def fit(cfg: RunConfig) -> dict:
    """Train one model as `foveal train` does; returns results.json's content (rank 0; {} on other ranks).
    (Not `foveal.train`: that name is the training package, `import foveal.train.loop` must keep working.)"""
    return train(cfg)


@dataclass
class Model:
    """A trained foveated VLM with its config and tokenizer."""

    cfg: RunConfig
    net: torch.nn.Module  # FoveatedVLM, in eval mode
    tokenizer: object

    def clip(self, spec: str) -> torch.Tensor:
        """'synthetic:<i>' (held-out synthetic clip i) or a video file -> frames uint8 [T, 3, H, W], sampled and
        resized as the model was trained."""
        return load_clip(spec, self.cfg)["frames"]

    def caption(self, frames: torch.Tensor, mode: str = "fine", max_new_tokens: int = 32, **sampling) -> list[str]:
        """One caption per clip; mode: coarse | fine | autoregressive; greedy unless temperature / top_p given."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        batch = frames[None] if frames.dim() == 4 else frames
        return caption_clips(self.net, self.tokenizer, batch, mode, max_new_tokens, **sampling)

    def evaluate(self) -> dict:
        """Held-out losses in every inference mode (the config's held-out clips), with intervals."""
        return evaluate_modes(self.cfg, self.net, self.tokenizer)

    def save_pretrained(self, folder: str | Path) -> Path:
        return save_pretrained(self.net, self.cfg, self.tokenizer, folder)


def load(path: str | Path, device: str = "cpu") -> Model:
    """A run folder (its newest valid checkpoint), a checkpoint file, or a folder save_pretrained wrote."""
    loaded = from_pretrained(path, device) if is_pretrained(path) else load_run(path, device)
    return Model(*loaded)
