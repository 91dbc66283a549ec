"""A trained model as a folder in the Hugging Face style, to take away: config.json (the run's full config),
model.safetensors (every weight, frozen backbones included), the tokenizer's files, and for pretrained backbones
their architecture (dino/config.json, llm/config.json) and a pretrained VAE target's weights (vae/: the frozen VAE is
no part of the model's state).

Loading needs nothing but the folder: a pretrained backbone is built from its architecture there (random weights,
no hub, no GGUF conversion), the VAE and tokenizer are read from the folder, and every weight is then set from
model.safetensors, strictly: a folder that does not fit its config is refused. config.json keeps the sources the
weights first came from, as a record.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from foveal.config import ConfigError, RunConfig, config_from_dict, replace
from foveal.model.backbones import ARCHITECTURE
from foveal.model.build import build_model

CONFIG, WEIGHTS = "config.json", "model.safetensors"


class PretrainedError(RuntimeError):
    pass


def is_pretrained(folder: str | Path) -> bool:
    folder = Path(folder)
    return (folder / CONFIG).is_file() and (folder / WEIGHTS).is_file()


def save_pretrained(model, cfg: RunConfig, tokenizer, folder: str | Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG).write_text(json.dumps(cfg.to_dict(), indent=1))
    save_model(model, str(folder / WEIGHTS))  # shared tensors (tied embeddings) stored once
    tokenizer.save_pretrained(str(folder))
    m = cfg.model
    if m.dino.source != "random":
        model.encoder.dino.config.save_pretrained(str(folder / "dino"))
    if m.llm.source != "random":
        model.llm.config.save_pretrained(str(folder / "llm"))
    if m.target == "vae" and m.vae.source != "random":
        model.target.build_vae().save_pretrained(str(folder / "vae"))
    return folder


def portable(cfg: RunConfig, folder: Path) -> RunConfig:
    """cfg with every source that save_pretrained stored in the folder pointed there."""
    model: dict = {}
    for name in ("dino", "llm"):
        if (folder / name / "config.json").is_file():
            model[name] = {"source": f"{ARCHITECTURE}{folder / name}"}
    if cfg.model.llm.tokenizer != "words":
        model.setdefault("llm", {})["tokenizer"] = str(folder)
    if (folder / "vae").is_dir():
        model["vae"] = {"source": str(folder / "vae")}
    return replace(cfg, model=model) if model else cfg


def from_pretrained(folder: str | Path, device: str = "cpu"):
    """folder (save_pretrained's) -> (config, model in eval mode, tokenizer)."""
    folder = Path(folder)
    if not is_pretrained(folder):
        raise PretrainedError(f"{folder} is not an exported model: it needs {CONFIG} and {WEIGHTS} (foveal export)")
    try:
        cfg = portable(config_from_dict(json.loads((folder / CONFIG).read_text())), folder)
    except (json.JSONDecodeError, ConfigError) as e:
        raise PretrainedError(f"{folder / CONFIG}: {e}") from None
    model, tokenizer = build_model(cfg)
    try:
        load_model(model, str(folder / WEIGHTS), strict=True)
    except (SafetensorError, RuntimeError, OSError) as e:
        first = str(e).strip().splitlines()[0][:300]
        raise PretrainedError(f"{folder / WEIGHTS} does not fit {folder / CONFIG}: {first}") from None
    return cfg, model.to(device).eval(), tokenizer
