import pytest
import torch

from foveal.config import ConfigError
from foveal.model.heads import HEADS, build_head

# Reference counts at H=576, C=4, S=32 (the prediction-head study; verified by arithmetic in its spec).
REFERENCE_PARAMS = {"film": 1_300_612, "mlp": 22_167_552, "cross_attention": 1_325_572}


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_reference_parameter_counts(name):
    head = build_head(name, 576, 4, 32)
    assert sum(p.numel() for p in head.parameters()) == REFERENCE_PARAMS[name]


@pytest.mark.parametrize("name", sorted(HEADS))
@pytest.mark.parametrize("size", [8, 16])
def test_head_shape_finite_and_every_parameter_learns(name, size):
    torch.manual_seed(0)
    head = build_head(name, 32, 4, size)
    h, prev = torch.randn(2, 3, 32), torch.randn(2, 3, 4, size, size)
    out = head(h, prev)
    assert out.shape == (2, 3, 4, size, size)
    assert torch.isfinite(out).all()
    (out - prev).square().mean().backward()
    no_grad = [n for n, p in head.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


@pytest.mark.parametrize("name", sorted(HEADS))
def test_head_uses_h(name):
    """A head that ignored h could never show a coarse/fine difference."""
    torch.manual_seed(0)
    head = build_head(name, 32, 4, 8)
    prev = torch.randn(2, 4, 8, 8)
    a, b = head(torch.randn(2, 32), prev), head(torch.randn(2, 32), prev)
    assert not torch.allclose(a, b)


def test_registry_rejects_unknown_head():
    with pytest.raises(ConfigError, match="model.head: .* is not allowed"):
        build_head("nope", 8, 4, 8)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_passes_sharing_a_previous_frame_equal_one_call_per_pass(name):
    """h [P, B, T, H] against one prev [B, T, ...]: the work on the previous frame done once must give each pass
    what a call of its own gives (and the passes must differ, or the check would be empty)."""
    torch.manual_seed(0)
    head = build_head(name, 32, 4, 8)
    h, prev = torch.randn(2, 2, 3, 32), torch.randn(2, 3, 4, 8, 8)
    shared = head(h, prev)
    assert shared.shape == (2, 2, 3, 4, 8, 8)
    for p in range(2):
        torch.testing.assert_close(shared[p], head(h[p], prev), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(shared[0], shared[1])
