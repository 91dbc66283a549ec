"""Pixels -> model inputs: uint8 frames resized to the model's frame size, normalised for the encoder or the VAE."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_frames(frames: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """uint8 [T, 3, h, w] -> [T, 3, size, size]: 'crop' resizes the short side then centre-crops; 'squash' stretches."""
    t, _, h, w = frames.shape
    if mode == "crop":
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    else:
        nh = nw = size
    out = F.interpolate(frames.float(), size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    return out[:, :, top : top + size, left : left + size].round().clamp(0, 255).to(torch.uint8)


def encoder_input(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> float, ImageNet-normalised (the encoder's input)."""
    mean = torch.tensor(IMAGENET_MEAN, device=frames.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=frames.device).view(3, 1, 1)
    return (frames.float() / 255 - mean) / std


def vae_input(frames: torch.Tensor) -> torch.Tensor:
    """uint8 -> float in [-1, 1] (the VAE's input)."""
    return frames.float() / 127.5 - 1
