"""A trained model as a folder in the Hugging Face style, to take away: config.json (the run's full config),
model.safetensors (every weight, frozen backbones included) and the tokenizer's files.

Loading rebuilds the architecture from the config (the backbones from their configured sources, as a checkpoint
does) and then sets every weight from model.safetensors, strictly: a folder that does not fit its config is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from foveal.config import ConfigError, RunConfig, config_from_dict
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
    return folder


def from_pretrained(folder: str | Path, device: str = "cpu"):
    """folder (save_pretrained's) -> (config, model in eval mode, tokenizer)."""
    folder = Path(folder)
    if not is_pretrained(folder):
        raise PretrainedError(f"{folder} is not an exported model: it needs {CONFIG} and {WEIGHTS} (foveal export)")
    try:
        cfg = config_from_dict(json.loads((folder / CONFIG).read_text()))
    except (json.JSONDecodeError, ConfigError) as e:
        raise PretrainedError(f"{folder / CONFIG}: {e}") from None
    model, tokenizer = build_model(cfg)
    try:
        load_model(model, str(folder / WEIGHTS), strict=True)
    except (SafetensorError, RuntimeError, OSError) as e:
        first = str(e).strip().splitlines()[0][:300]
        raise PretrainedError(f"{folder / WEIGHTS} does not fit {folder / CONFIG}: {first}") from None
    return cfg, model.to(device).eval(), tokenizer
