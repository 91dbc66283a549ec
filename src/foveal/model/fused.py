"""Fused linear layers for the frozen encoder's forward on CPU.

An `nn.Linear` on CPU writes its bias into the output before the matrix product accumulates onto it, and the GELU
after it is a pass of its own; for the encoder's [B*T*P, D] activations those two memory passes cost about as much as
a third of the product (fc1 of the full preset, bf16, [5200, 384] x [384, 1536]: 26 ms with bias and GELU against
20 ms for the product alone, `foveal bench` measures the whole step). oneDNN's matmul applies bias and GELU while
the output tile is still in registers (`mkldnn._linear_pointwise`, the kernel torch.compile's CPU backend emits).
It has no backward, so it serves only forward passes without gradient: the frozen encoder's `encode`.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> (key, weight, bias) in the run's dtype


def fusable(x: torch.Tensor) -> bool:
    """A forward without gradient on a CPU with oneDNN (bf16: with its bf16 kernels); not under torch.compile,
    which fuses the layers itself (and cannot trace the cached weights)."""
    if torch.is_grad_enabled() or x.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    if torch.compiler.is_compiling():  # inductor fuses the layers itself
        return False
    return compute_dtype(x) != torch.bfloat16 or torch.ops.mkldnn._is_mkldnn_bf16_supported()


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """What autocast would run a linear in: its dtype inside a CPU autocast region, else the input's."""
    return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype


def weights(layers: tuple[nn.Linear, ...], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The layers' weights and biases in `dtype`, stacked along the outputs (q, k and v as one product), cast once
    and kept until any of them changes (their versions)."""
    key = (dtype, *((p.data_ptr(), p._version) for layer in layers for p in layer.parameters()))
    held = _COPIES.get(layers[0])
    if held is None or held[0] != key:
        w = torch.cat([layer.weight.detach() for layer in layers]).to(dtype)  # [sum D_out, D_in]
        biased = all(layer.bias is not None for layer in layers)
        b = torch.cat([layer.bias.detach() for layer in layers]).to(dtype) if biased else None
        held = (key, w, b)
        _COPIES[layers[0]] = held
    return held[1], held[2]


def linear(x: torch.Tensor, *layers: nn.Linear, gelu: bool = False) -> torch.Tensor:
    """The layers applied to x, their outputs concatenated (one layer: layer(x)), then the exact (erf) GELU if
    asked; one fused product where `fusable`, else the layers' own forwards."""
    if not fusable(x) or any(layer.bias is None for layer in layers[1:]) != (layers[0].bias is None):
        y = torch.cat([layer(x) for layer in layers], -1) if len(layers) > 1 else layers[0](x)
        return F.gelu(y) if gelu else y
    dtype = compute_dtype(x)
    w, b = weights(layers, dtype)
    flat = x.reshape(-1, x.shape[-1]).to(dtype)  # [M, D_in]
    y = torch.ops.mkldnn._linear_pointwise(flat, w, b, "gelu" if gelu else "none", [], "none" if gelu else "")
    return y.view(*x.shape[:-1], -1)  # [..., sum D_out]
