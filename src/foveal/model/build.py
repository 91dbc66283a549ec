"""Build a FoveatedVLM (and its tokenizer) from a RunConfig: every component from its registry."""

from __future__ import annotations

from foveal.config import RunConfig
from foveal.model.backbones import build_dino, build_llm, build_tokenizer, seeded
from foveal.model.encoder import FoveatedEncoder
from foveal.model.foveated import FoveatedVLM, HeadOptions
from foveal.model.glimpse import GlimpseLocation
from foveal.model.heads import build_head
from foveal.model.targets import TARGETS


def target_shape(cfg: RunConfig, encoder_width: int, patch_size: int) -> tuple[int, int, int]:
    """(C, S, S) of what each frame's prediction is scored against (cfg's target, before anything is built)."""
    return TARGETS.get_class(cfg.model.target).shape_for(cfg, encoder_width, patch_size)


def build_model(cfg: RunConfig) -> tuple[FoveatedVLM, object]:
    """Backbones, connector and head; each seeded by (seed, its name) so every head starts from the same backbones."""
    m, seed = cfg.model, cfg.train.seed
    tokenizer = build_tokenizer(m.llm, cfg.cache_path)
    dino = build_dino(m.dino, seed)
    llm = build_llm(m.llm, tokenizer, cfg.cache_path, seed)
    target = TARGETS.get_class(m.target)(cfg, dino.config.hidden_size, dino.config.patch_size)  # no RNG
    with seeded(seed, f"head:{m.head}"):
        head = build_head(m.head, llm.config.hidden_size, target.shape[0], target.shape[1])
    with seeded(seed, "connector"):
        encoder = FoveatedEncoder(dino, m.query_dim, deep=m.deep_query)
        options = HeadOptions(m.look, m.prev_only, m.predict, m.prev_noise, m.prev_drop)
        grid = encoder.grid(m.frame_size)
        glimpse = GlimpseLocation(grid, llm.config.hidden_size) if m.glimpse == "position" else None
        model = FoveatedVLM(encoder, llm, head, target, m.query_dim, m.visual_scale, options, glimpse, m.dense_tokens)
    dino.requires_grad_(not m.dino.freeze)
    llm.requires_grad_(not m.llm.freeze)
    if m.prev_only:  # the floor control's loss reaches only the head, the blank and the constant h: train just those
        model.requires_grad_(False)
        for part in (model.head, model.z_init, model.h_constant):
            part.requires_grad_(True)
    return model, tokenizer
