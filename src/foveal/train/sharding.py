"""FSDP2 (`torch.distributed.fsdp.fully_shard`) for train.parallel=fsdp2 under torchrun, and what the loop needs
to treat a DDP-wrapped, FSDP2-sharded or plain model alike.

Units, each all-gathered for its own compute and resharded after: every LLM decoder layer (called through its
forward), the vision encoder as one unit (its layers are run piece by piece so that each layer's K/V is kept, never
through their forward; `encode` and `attend` are registered as its forward methods), then the root: everything else
(embeddings, connector, head, target). Frozen and trained parameters may share a unit: FSDP2 shards per parameter
(DTensor) and reduces only the gradients that exist.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel as DDP

from foveal.train.distributed import Dist


def decoder_layers(llm: torch.nn.Module) -> list[torch.nn.Module]:
    """A causal LM's decoder layers (HF: llm.model.layers)."""
    return list(getattr(getattr(llm, "model", llm), "layers", []))


def shard(model: torch.nn.Module, dist: Dist) -> torch.nn.Module:
    """Shard model in place across the world's ranks (FSDP2); returns it, now an FSDPModule. Call it before the
    optimiser is built: fully_shard replaces every parameter with its DTensor shard."""
    mesh = init_device_mesh(dist.device.type, (dist.world,))
    # the model's outputs include views (a pass's slices); nothing writes into them in place, which is what it warns of
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    for layer in decoder_layers(model.llm):
        fully_shard(layer, mesh=mesh)
    fully_shard(model.encoder, mesh=mesh)
    for method in ("encode", "attend"):  # what the model calls instead of the encoder's forward
        register_fsdp_forward_method(model.encoder, method)
    fully_shard(model, mesh=mesh)
    return model


def sharded(model: torch.nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def wrap(model: torch.nn.Module, dist: Dist, parallel: str) -> torch.nn.Module:
    """What the loop calls forward on: DDP around the model, the FSDP2 model itself, or the plain model."""
    if dist.world > 1 and parallel == "ddp":
        return DDP(model, find_unused_parameters=True)
    return model


def sync_context(net: torch.nn.Module, sync: bool):
    """Gradient sync on this micro-batch or not (accumulated locally until the last one). DDP: its no_sync()
    context, which the forward reads. FSDP2: a flag its backward reads, so it is set here and stays set until the
    next micro-batch sets it again."""
    if isinstance(net, FSDPModule):
        net.set_requires_gradient_sync(sync)
    if sync or not isinstance(net, DDP):
        return contextlib.nullcontext()
    return net.no_sync()


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """Global gradient norm (over every rank's shards under FSDP2), then clipping to max_norm; returns the norm."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads)
    if isinstance(norm, DTensor):  # a partial norm per rank: reduce it to the global one
        norm = norm.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm


@contextlib.contextmanager
def full_params(model: torch.nn.Module):
    """Evaluation of a sharded model, which calls model methods besides forward: the root unit is all-gathered for
    the whole block (the other units gather themselves in their forwards). Every rank must enter it together."""
    if not sharded(model):
        yield
        return
    model.unshard()
    try:
        yield
    finally:
        model.reshard()
