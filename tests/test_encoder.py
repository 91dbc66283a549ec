import torch

from foveal.config import DinoSpec
from foveal.model.backbones import build_dino
from foveal.model.encoder import FoveatedEncoder


def make_encoder(deep=True, seed=0):
    dino = build_dino(DinoSpec(hidden_size=64, num_layers=3, num_heads=4, patch_size=8, image_size=32), seed)
    torch.manual_seed(seed)
    enc = FoveatedEncoder(dino, query_dim=16, deep=deep).eval()
    # LayerScale starts at 1.0 in the config; vary it so the test would catch a missing layer_scale
    for layer in dino.encoder.layer:
        layer.layer_scale1.lambda1.data.uniform_(0.5, 1.5)
        layer.layer_scale2.lambda1.data.uniform_(0.5, 1.5)
    return enc


def test_encode_matches_the_hf_model():
    enc = make_encoder()
    frames = torch.randn(3, 3, 32, 32)
    ours = enc.encode(frames).features
    theirs = enc.dino(pixel_values=frames).last_hidden_state
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_deep_attend_equals_hf_layers_with_a_one_way_mask():
    """The query token run through the HF layers on [patches + query], with a mask that hides the query from the
    patches and the query from itself, gives the same output as attend() over the cached keys/values."""
    enc = make_encoder()
    frames, q = torch.randn(2, 3, 32, 32), torch.randn(2, 16)
    z, _ = enc.attend(q, enc.encode(frames))

    h = enc.dino.embeddings(frames)  # [N, P, D]
    p = h.shape[1]
    seq = torch.cat([h, enc.query_input_proj(q)[:, None]], dim=1)  # [N, P+1, D]
    mask = torch.zeros(p + 1, p + 1)
    mask[:, p] = float("-inf")  # nobody attends to the query token: patches never see it; it reads patches only
    for layer in enc.dino.encoder.layer:
        seq = layer(seq, attention_mask=mask[None, None])
    expected = enc.query_output_proj(enc.dino.layernorm(seq)[:, p])
    torch.testing.assert_close(z, expected, atol=1e-5, rtol=1e-5)
    # and the patches were not disturbed by the query
    torch.testing.assert_close(enc.dino.layernorm(seq[:, :p]), enc.encode(frames).features, atol=1e-5, rtol=1e-5)


def test_batched_attend_equals_per_frame():
    enc = make_encoder()
    frames, q = torch.randn(5, 3, 32, 32), torch.randn(5, 16)
    cache = enc.encode(frames)
    batched, _ = enc.attend(q, cache)
    single = torch.cat([enc.attend(q[i : i + 1], cache.index([i]))[0] for i in range(5)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_several_queries_per_frame_are_independent():
    enc = make_encoder()
    cache = enc.encode(torch.randn(2, 3, 32, 32))
    q = torch.randn(2, 3, 16)
    together, _ = enc.attend(q, cache)
    alone = torch.stack([enc.attend(q[:, k], cache)[0] for k in range(3)], dim=1)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_attention_weights_are_the_ones_used():
    """With return_attention the forward uses explicit softmax weights; its output equals the SDPA path."""
    for deep in (True, False):
        enc = make_encoder(deep=deep)
        cache, q = enc.encode(torch.randn(2, 3, 32, 32)), torch.randn(2, 16)
        z_fast, none = enc.attend(q, cache)
        z_maps, att = enc.attend(q, cache, return_attention=True)
        assert none is None
        torch.testing.assert_close(z_fast, z_maps, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(att.weights.sum(-1), torch.ones_like(att.weights.sum(-1)))
        assert att.weights.shape[-1] == 1 + 16  # CLS + 4x4 patches


def test_different_queries_read_different_tokens():
    enc = make_encoder()
    cache = enc.encode(torch.randn(1, 3, 32, 32))
    a, _ = enc.attend(torch.randn(1, 16), cache)
    b, _ = enc.attend(torch.randn(1, 16), cache)
    assert (a - b).abs().max() > 1e-3


def test_query_projection_has_no_bias():
    assert make_encoder().query_input_proj.bias is None
