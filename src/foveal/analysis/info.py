"""`foveal info`: what a config builds, component by component: where the weights come from, parameter counts,
dimensions, frame size, latent shape and patch grid. It builds the model with the same code as training."""

from __future__ import annotations

import time
from pathlib import Path

from foveal.config import RunConfig
from foveal.model.backbones import build_vae, gguf_folder, num_params, resolve_llm_folder, smollm2_gguf_path
from foveal.model.build import build_model


def _source(source: str, what: str) -> str:
    if source == "random":
        return f"random init ({what} architecture, sizes from the config)"
    if Path(source).expanduser().is_dir():
        return f"local folder {source}"
    return f"hub id {source} (Hugging Face cache, else the hub)"


def _llm_source(source: str, cache_dir: str) -> tuple[str, float]:
    """Where the LLM comes from, and the seconds its GGUF conversion (or the cache look-up) took."""
    if source != "smollm2-gguf" and not source.endswith(".gguf"):
        return _source(source, "Llama"), 0.0
    gguf = smollm2_gguf_path() if source == "smollm2-gguf" else Path(source)
    cached = (gguf_folder(gguf, cache_dir) / "model.safetensors").exists()
    t0 = time.time()
    folder = resolve_llm_folder(source, cache_dir)
    seconds = time.time() - t0
    how = "converted earlier" if cached else f"dequantised now in {seconds:.1f} s"
    return f"{source}: GGUF {gguf}, {how}; loaded from the safetensors folder {folder}", seconds


def describe(cfg: RunConfig) -> str:
    m, d = cfg.model, cfg.data
    llm_text, _ = _llm_source(m.llm.source, cfg.cache_path)
    t0 = time.time()
    model, tokenizer = build_model(cfg)
    build_s = time.time() - t0
    dino, llm, head = model.encoder.dino, model.llm, model.head
    vae = build_vae(m.vae, m.frame_size, cfg.train.seed)

    dc, lc, vc = dino.config, llm.config, vae.config
    grid = m.frame_size // dc.patch_size
    cropped = m.frame_size - grid * dc.patch_size
    tied = llm.get_input_embeddings().weight.data_ptr() == llm.get_output_embeddings().weight.data_ptr()
    factor = 2 ** (len(vc.block_out_channels) - 1)
    side = m.frame_size // factor
    c, s, _ = model.target_shape
    backbone = num_params(dino) + num_params(llm) + num_params(head)
    total, trainable = num_params(model), sum(p.numel() for p in model.parameters() if p.requires_grad)
    tok_source = "built-in word vocabulary" if m.llm.tokenizer == "words" else m.llm.tokenizer
    lines = [
        f"preset {cfg.preset}: frames {m.frame_size}x{m.frame_size} px, {d.num_frames} per clip; "
        f"model built in {build_s:.1f} s",
        f"cache {cfg.cache_path}" + ("" if cfg.cache_dir else " (the user cache: $FOVEAL_CACHE to move it)"),
        "dino (vision encoder)",
        f"  source      {_source(m.dino.source, 'DINOv2')}",
        f"  parameters  {num_params(dino):,}" + ("  (frozen)" if m.dino.freeze else ""),
        f"  dims        hidden {dc.hidden_size}, {dc.num_hidden_layers} layers, {dc.num_attention_heads} heads, "
        f"patch {dc.patch_size}",
        f"  patch grid  {grid}x{grid} patches + CLS = {grid * grid + 1} tokens per frame"
        + (f" (the last {cropped} px row/column fall outside the grid)" if cropped else ""),
        "llm (language model)",
        f"  source      {llm_text}",
        f"  parameters  {num_params(llm):,}" + ("  (frozen)" if m.llm.freeze else ""),
        f"  dims        hidden {lc.hidden_size}, {lc.num_hidden_layers} layers, {lc.num_attention_heads} heads "
        f"({lc.num_key_value_heads} kv), ffn {lc.intermediate_size}, vocab {lc.vocab_size}, "
        f"{'tied' if tied else 'untied'} embeddings",
        f"  tokenizer   {tok_source}: {len(tokenizer):,} tokens, eos {tokenizer.eos_token!r}",
        "vae (prediction target)" if m.target == "vae" else "vae (unused: model.target is dino)",
        f"  source      {_source(m.vae.source, 'SD-VAE')}",
        f"  parameters  {num_params(vae):,} (encoder {num_params(vae.encoder) + num_params(vae.quant_conv):,})",
        f"  dims        channels {list(vc.block_out_channels)}, downsampling {factor}, "
        f"scaling factor {vc.scaling_factor:g}",
        f"  latent      {vc.latent_channels}x{side}x{side} per frame",
        f"head {m.head}",
        f"  parameters  {num_params(head):,}",
        f"  predicts    {c}x{s}x{s} ({m.target} target) from the LLM state and the previous frame's target",
        "connector (projections, queries, mode tokens, blank latent)",
        f"  parameters  {total - backbone:,}",
        f"model total   {total:,} parameters, {trainable:,} trainable (the VAE is separate and frozen)",
        f"data          {d.source}: {d.num_frames} frames per clip, window {d.window}, resize {d.resize}",
    ]
    return "\n".join(lines)
