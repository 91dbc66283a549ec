"""Several models at once on one machine: compare, bench-science and study hand their models to worker processes
(spawned: each a fresh interpreter that keeps its clip renderings and encoder cache across the models it trains),
`train.jobs` at a time, each on cores // jobs torch threads. The tiny presets' steps are bound by small kernels and
Python, which one thread runs about as fast as two (the look preset's FiLM step: 0.129 s on one thread, 0.125 s on
two; README, "Where researchers wait"). On two cores two models side by side slow each other (~1.5x each), so they
take ~1.34x the time of one (two look-preset mlp models 78.7 s, one 58.9 s): 1.5x the throughput, not 2x."""

from __future__ import annotations

import contextlib
import functools
import logging
import multiprocessing
import signal
import threading
from collections.abc import Callable, Sequence

from tqdm import tqdm

from foveal import log as logs
from foveal.train.hardware import DEFAULT_THREADS

# A model's process beside the encoder cache (one for all workers): the full preset's FiLM step peaks at 2.8 GiB on
# a CPU (README's performance section), the look preset's at ~0.6 GiB, clip renderings up to 0.5 GiB (data/dataset.py).
JOB_MIB = 3072


def available_mib(meminfo: str = "/proc/meminfo") -> float | None:
    """The memory the kernel could give without swapping (MemAvailable), or None where it does not say."""
    with contextlib.suppress(OSError, ValueError), open(meminfo) as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return None


def jobs_for(
    setting: int | str, models: int, cores: int, cpu: bool, world: int, free_mib, cache_mib: int, shared: bool = False
) -> int:
    """How many models train at once. A number is taken as given (never more than there are models); auto: one per
    core on a CPU while they fit in memory (JOB_MIB each and the encoder cache budget: each worker's, or once where
    `shared`, the workers mapping one), and one on a GPU (it has one device to share) or under torchrun (every rank
    takes part in every model)."""
    if world > 1:
        return 1
    if setting != "auto":
        return max(1, min(int(setting), models))
    if not cpu or free_mib is None:
        return 1
    fit = int((free_mib - cache_mib) // JOB_MIB) if shared else int(free_mib // (JOB_MIB + cache_mib))
    return max(1, min(models, cores, fit))


def worker_setup(quiet: bool) -> None:
    """A worker logs lines, not bars, and leaves Ctrl-C to the parent, which stops every worker at once."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logs.setup(quiet=quiet, bars=False)
    tqdm.set_lock(threading.RLock())  # not tqdm's default, a multiprocessing lock a terminated worker would leak


def run_all(fn: Callable, items: Sequence, jobs: int, before: tuple[Callable, Sequence] = (None, ())) -> None:
    """fn(item) for every item, `jobs` at a time in spawned processes (jobs == 1: here, in order). The first error
    (or Ctrl-C) stops the workers and is raised here; what they wrote stays: finished models, and checkpoints (atomic
    files) from which --resume goes on. `before` (fn0, items0): fn0(item) for each of items0 in the same workers,
    all done before the first fn starts, and their results handed to every fn (fn(item, made=[...]): what every
    item needs, made once and split between the workers, e.g. compare's VAE latents and encoder cache)."""
    if jobs == 1:
        for item in items:
            fn(item)
        return
    quiet = not logs.LOGGER.isEnabledFor(logging.INFO)
    context = multiprocessing.get_context("spawn")  # fork would copy the parent's OpenMP threads in a broken state
    with context.Pool(jobs, initializer=worker_setup, initargs=(quiet,)) as pool:  # leaving it terminates them
        task = fn
        if before[1]:
            task = functools.partial(fn, made=pool.map(before[0], before[1], chunksize=1))
        for _ in pool.imap_unordered(task, items):
            pass


def threads_per_job(jobs: int) -> int:
    return max(1, DEFAULT_THREADS // jobs)
