"""What the device computes bf16 with: the CPU's model name and its bf16 matmul hardware (AMX tiles, AVX-512 BF16 or
none), for the bench's figures and the warning that bf16 on a CPU without such hardware is emulated."""

from __future__ import annotations

import contextlib
import platform

import torch

DEFAULT_THREADS = torch.get_num_threads()  # torch's own choice at start-up (one per core): what train.threads=0 means


def processor(device: torch.device, cpuinfo: str = "/proc/cpuinfo") -> dict:
    """{"name", "bf16_hardware"}: the GPU's name and "cuda", or the CPU's model name and "AMX" / "AVX-512 BF16" /
    "none". A bf16 figure means little without it (AMX is ~2x AVX-512 BF16)."""
    if device.type == "cuda":
        return {"name": torch.cuda.get_device_name(device), "bf16_hardware": "cuda"}
    name, flags = platform.processor() or "unknown CPU", set()
    with contextlib.suppress(OSError), open(cpuinfo) as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    hardware = "AMX" if "amx_bf16" in flags else "AVX-512 BF16" if "avx512_bf16" in flags else "none"
    return {"name": name, "bf16_hardware": hardware}


def slow_bf16(precision: str, device: torch.device, cpuinfo: str = "/proc/cpuinfo") -> str | None:
    """The warning for bf16 on a CPU that has no bf16 matmul hardware, else None."""
    if precision != "bf16" or device.type != "cpu":
        return None
    cpu = processor(device, cpuinfo)
    if cpu["bf16_hardware"] != "none":
        return None
    # measured 2026-12-03 on an AMD EPYC with AVX2 only, 2 cores: the full FiLM step 5.1 s in fp32, over 200 s in
    # bf16 (the tiny FiLM head's forward and backward 0.10 s against 2.0 s)
    return (
        f"warning: train.precision=bf16 on a CPU without bf16 matmul hardware ({cpu['name']}: no AMX, no AVX-512 "
        "BF16), where bf16 is emulated and runs 20-40x slower than fp32; set train.precision=fp32"
    )
