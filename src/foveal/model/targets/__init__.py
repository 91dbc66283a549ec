"""Prediction targets: what each frame's prediction is scored against, [B, T, C, S, S]. One file per target, each
registered by name (`model.target`); the imports below register them."""

from foveal.model.targets import dino, pixels, vae  # noqa: E402, F401  (registration)
from foveal.model.targets.base import TARGETS, FrameLosses, Target, frame_losses

__all__ = ["TARGETS", "FrameLosses", "Target", "frame_losses"]
