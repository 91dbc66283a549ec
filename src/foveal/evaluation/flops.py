"""Forward FLOPs per clip of a model as it trained: the foveated model's coarse and fine passes, or the dense
reader's one pass, the encoder included (and given apart: every reader pays it). Counted by FlopCounterMode on one
batch of held-out clips; the target (a VAE latent, ...) is made outside the count: it is not the reader's work."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from foveal.model.foveated import Batch, FoveatedVLM
from foveal.objectives import Objective

aten = torch.ops.aten

# FlopCounterMode has formulas for the CUDA SDPA kernels only; the CPU flash kernel does the same matmuls. The frozen
# encoder's fused linears (model/fused.py) are oneDNN ops it does not know: x [M, K] @ w [N, K]^T is 2 M K N.
CPU_FLOPS = {
    torch.ops.mkldnn._linear_pointwise: lambda x, w, *a, out_shape=None, **kw: 2 * x[0] * x[1] * w[0],  # shapes
    aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *a, out_shape=None, **kw: sdpa_flop_count(
        q, k, v
    ),
    aten._scaled_dot_product_flash_attention_for_cpu_backward: (
        lambda g, q, k, v, *a, out_shape=None, **kw: sdpa_backward_flop_count(g, q, k, v)
    ),
}


def counted(fn) -> tuple[object, int]:
    """fn()'s result and the FLOPs it took. With autograd on: under no_grad, FlopCounterMode's module tracker
    fails on a parameter passed straight into a module ("Expected gradient function to be set")."""
    with torch.enable_grad(), FlopCounterMode(display=False, custom_mapping=CPU_FLOPS) as counter:
        result = fn()
    return result, counter.get_total_flops()


def forward_flops(model: FoveatedVLM, batch: Batch, objective: Objective, fine_iterations: int) -> dict[str, float]:
    """-> {"forward": FLOPs per clip of the encode, every pass, the head and the caption logits, "encoder": the
    encode's share}."""
    was_training = model.training
    model.eval()
    cache, encoder = counted(lambda: model.encode(batch.frames))
    if objective.recon and batch.targets is None:
        batch.targets = model.target(batch, cache)  # [B, T, C, S, S]
    _, rest = counted(lambda: model(batch, objective.recon, objective.caption, fine_iterations, cache))
    model.train(was_training)
    clips = batch.frames.shape[0]
    return {"forward": (encoder + rest) / clips, "encoder": encoder / clips}
