"""Build a FoveatedVLM (and its tokenizer) from a RunConfig."""

from __future__ import annotations

from .backbones import build_dino, build_llm, build_tokenizer, seeded, vae_downsample
from .config import RunConfig
from .dino_target import FeatureTarget
from .encoder import FoveatedEncoder
from .heads import build_head
from .model import FoveatedVLM


def target_shape(cfg: RunConfig, encoder_width: int, patch_size: int) -> tuple[int, int, int]:
    """(C, S, S) of what each frame's prediction is scored against."""
    m = cfg.model
    if m.target == "dino":
        grid = m.frame_size // patch_size
        return (m.dino_target.pca or encoder_width * (2 if m.dino_target.cls else 1), grid, grid)
    side = m.frame_size // vae_downsample(m.vae)
    return (m.vae.latent_channels, side, side)


def build_model(cfg: RunConfig) -> tuple[FoveatedVLM, object]:
    """Backbones, connector and head; each seeded by (seed, its name) so every head starts from the same backbones."""
    m, seed = cfg.model, cfg.train.seed
    tokenizer = build_tokenizer(m.llm, cfg.cache_dir)
    dino = build_dino(m.dino, seed)
    llm = build_llm(m.llm, tokenizer, cfg.cache_dir, seed)
    shape = target_shape(cfg, dino.config.hidden_size, dino.config.patch_size)
    with seeded(seed, f"head:{m.head}"):
        head = build_head(m.head, llm.config.hidden_size, shape[0], shape[1])
    target = None  # vae: latents come with the batch; dino: the encoder's own features (no parameters, no RNG)
    if m.target == "dino":
        target = FeatureTarget(dino.config.hidden_size, shape[1], m.dino_target.cls, m.dino_target.pca)
    with seeded(seed, "connector"):
        encoder = FoveatedEncoder(dino, m.query_dim, deep=m.deep_query)
        model = FoveatedVLM(encoder, llm, head, m.query_dim, shape, m.visual_scale, target, m.target_loss)
    dino.requires_grad_(not m.dino.freeze)
    llm.requires_grad_(not m.llm.freeze)
    return model, tokenizer
