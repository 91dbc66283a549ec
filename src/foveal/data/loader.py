"""Training micro-batches in the resumable `micro_batch` order, optionally decoded ahead by DataLoader workers.

The workers change when a batch is decoded, never which clips it holds or their order: micro-batch k is always
order(k), so a resumed run (ks starting at step x grad_accum) continues exactly where it stopped.
"""

from __future__ import annotations

import logging

from torch.utils.data import DataLoader

from foveal.config import DataConfig

log = logging.getLogger(__name__)

WORKER_TIMEOUT_S = 600  # a worker that delivers nothing for this long counts as failed


class _Order:
    """The batch sampler: order(k) for k in ks, computed lazily."""

    def __init__(self, order, ks: range):
        self.order, self.ks = order, ks

    def __iter__(self):
        return (self.order(k) for k in self.ks)

    def __len__(self) -> int:
        return len(self.ks)


def micro_batches(dataset, collate, order, ks: range, data: DataConfig):
    """Yields (dataset indices, collated batch) of micro-batch k for k in ks; order(k) -> the dataset indices.

    With data.num_workers > 0 the clips are decoded ahead in worker processes. If a worker dies (a crash inside a
    video decoder, the out-of-memory killer) or stalls, the run goes on: the remaining micro-batches are loaded in
    this process, the same clips in the same order."""
    done = 0
    if data.num_workers > 0 and len(ks):
        loader = DataLoader(
            dataset,
            batch_sampler=_Order(order, ks),
            num_workers=data.num_workers,
            collate_fn=collate,
            timeout=WORKER_TIMEOUT_S,
        )
        try:
            for raw in loader:
                for skip in raw["skips"]:  # what a worker found unreadable, counted in this process too
                    dataset.skipped.add(*skip)
                yield order(ks[done]), raw
                done += 1
        except Exception as e:
            log.warning(
                f"warning: a data loader worker failed at micro-batch {ks[done]} ({type(e).__name__}: {e}); "
                f"loading the remaining micro-batches in the main process"
            )
    for k in ks[done:]:
        idx = order(k)
        yield idx, collate([dataset[i] for i in idx])
