"""Keep glibc from returning the step's large buffers to the OS after every use.

glibc serves allocations above its mmap threshold with fresh mmap'd pages and unmaps them on free, so every step of a
CPU training loop page-faults its activations (e.g. the 16-frame encoder MLP's [5200, 1536] buffers) back in. Raising
the threshold to its maximum (32 MiB on 64-bit) and never trimming the heap top keeps those pages mapped and reused.
Switching back within one process does not undo the effect (the heap stays grown), so the comparison takes two
processes: `FOVEAL_MALLOC=default foveal bench ...` leaves glibc as it is.
A no-op where libc is not glibc, with FOVEAL_MALLOC=default, or when the user set MALLOC_* thresholds themselves.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # mallopt parameter numbers (glibc malloc.h)
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit; larger values are rejected
TUNED = {M_MMAP_THRESHOLD: MMAP_THRESHOLD_MAX, M_TRIM_THRESHOLD: 2**31 - 1, M_TOP_PAD: 256 << 20}

tuned = False  # whether keep_large_buffers() changed the allocator in this process


def _set(values: dict[int, int]) -> bool:
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all([mallopt(k, v) == 1 for k, v in values.items()])


def keep_large_buffers() -> bool:
    """Tune the allocator for this process (once); returns whether it is tuned."""
    global tuned
    user_set = {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"} & set(os.environ)
    if not tuned and not user_set and os.environ.get("FOVEAL_MALLOC") != "default":
        tuned = _set(TUNED)
    return tuned
