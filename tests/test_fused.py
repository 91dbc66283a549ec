"""The frozen encoder's fused forward (model/fused.py): the same maths as the layers' own forwards."""

import pytest
import torch
from torch import nn

from foveal.model import fused
from test_encoder import make_encoder

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN in this torch build")


@needs_onednn
def test_the_fused_encode_is_the_hf_model_in_fp32():
    enc = make_encoder()
    frames = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert fused.fusable(frames)
        ours = enc.encode(frames)
        theirs = enc.dino(pixel_values=frames).last_hidden_state
    plain = enc.encode(frames)  # gradient mode: the layers' own forwards
    torch.testing.assert_close(ours.features, theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.keys, plain.keys, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.values, plain.values, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(
    not torch.backends.mkldnn.is_available() or not torch.ops.mkldnn._is_mkldnn_bf16_supported(),
    reason="no oneDNN bf16 kernels on this CPU",
)
def test_the_fused_bf16_encode_is_as_accurate_as_autocast():
    """Against the fp32 encode, the fused bf16 one errs no more than autocast's own bf16 layers (bias and GELU are
    applied before the output is rounded to bf16, not after)."""
    enc = make_encoder()
    frames = torch.randn(4, 3, 32, 32)
    exact = enc.encode(frames).features
    with torch.autocast("cpu", torch.bfloat16):
        plain = enc.encode(frames).features
        with torch.no_grad():
            ours = enc.encode(frames).features
    err_ours, err_plain = (ours - exact).norm() / exact.norm(), (plain - exact).norm() / exact.norm()
    assert 0 < err_ours <= 1.25 * err_plain, (err_ours, err_plain)


@needs_onednn
def test_changed_weights_are_cast_again():
    enc = make_encoder()
    frames = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = enc.encode(frames).features
        enc.dino.encoder.layer[0].mlp.fc1.weight.mul_(1.5)  # in place: same storage, new version
        after = enc.encode(frames).features
        theirs = enc.dino(pixel_values=frames).last_hidden_state
    assert (after - before).abs().max() > 1e-3
    torch.testing.assert_close(after, theirs, atol=1e-5, rtol=1e-5)


@needs_onednn
@pytest.mark.parametrize("gelu", [False, True])
def test_several_layers_are_one_product_of_their_stacked_weights(gelu):
    torch.manual_seed(0)
    layers = [nn.Linear(8, n) for n in (4, 6, 4)]
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        ours = fused.linear(x, *layers, gelu=gelu)
        theirs = torch.cat([layer(x) for layer in layers], -1)
    torch.testing.assert_close(ours, nn.functional.gelu(theirs) if gelu else theirs, atol=1e-5, rtol=1e-5)
