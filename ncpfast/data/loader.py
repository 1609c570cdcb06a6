"""Stage 1's batches, assembled off the training thread.

The order is a function of (seed, epoch) and the batch of step s is fixed by it:
step s is batch s % steps_per_epoch of epoch s // steps_per_epoch, this rank's
share of a permutation keyed by (seed, epoch). So a run resumed at step s reads
exactly the batches an uninterrupted run reads from step s on, however many
workers either uses.

With num_workers > 0, torch's DataLoader runs the reads in worker processes (in
order, prefetch_factor batches ahead per worker, across epoch boundaries). The
workers return uint8 batches as numpy arrays, pickled through the worker's pipe:
for batches of 16 CelebA-64 images that measured 21-43k images/s against 13-23k
for tensors handed over in shared memory (a new segment per batch; 1 and 2
workers, 2-core EPYC VM, a one-off comparison outside bench/). The training
process pins each batch for an asynchronous copy to a CUDA device; conversion to
float and dynamic binarisation happen on the device, from the training process's
own random stream (ncpfast.data.to_device). num_workers = 0 reads in the
training thread, as ncpfast always did: for data in memory (or memory-mapped, a
prepared set) that is faster than any hand-over between processes.
"""
import os
from dataclasses import dataclass
from typing import Optional

import torch

from .errors import DataError

AUTO = -1
MAX_AUTO_WORKERS = 4


def epoch_order(num_images: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1,
                per_rank: Optional[int] = None) -> torch.Tensor:
    """This rank's image indices for an epoch: a permutation keyed by (seed, epoch),
    dealt round-robin to the ranks, each share cut to per_rank."""
    g = torch.Generator().manual_seed(seed * 100003 + epoch)
    order = torch.randperm(num_images, generator=g)
    return order[rank::world_size][:per_rank]


@dataclass(frozen=True)
class TrainingOrder:
    """Which images each step of one rank reads."""
    num_images: int
    seed: int
    batch_size: int
    steps_per_epoch: int
    rank: int = 0
    world_size: int = 1

    def epoch(self, epoch: int) -> torch.Tensor:
        return epoch_order(self.num_images, self.seed, epoch, self.rank, self.world_size,
                           self.steps_per_epoch * self.batch_size)

    def step_indices(self, step: int, epoch_indices: Optional[torch.Tensor] = None) -> torch.Tensor:
        epoch, b = divmod(step, self.steps_per_epoch)
        indices = self.epoch(epoch) if epoch_indices is None else epoch_indices
        return indices[b * self.batch_size:(b + 1) * self.batch_size]


class _Failure:
    """A worker's DataError, returned as a value: the training process raises it
    again as a one-line DataError (DataLoader would wrap it in a worker traceback)."""

    def __init__(self, message: str):
        self.message = message


class _StepBatches(torch.utils.data.Dataset):
    """Item s: the uint8 batch of step s (the epoch's permutation cached per process)."""

    def __init__(self, split, order: TrainingOrder):
        self.split, self.order = split, order
        self._epoch, self._indices = None, None

    def __getitem__(self, step: int):
        epoch = step // self.order.steps_per_epoch
        if epoch != self._epoch:
            self._epoch, self._indices = epoch, self.order.epoch(epoch)
        try:
            return self.split.uint8_batch(self.order.step_indices(step, self._indices)).numpy()
        except DataError as error:
            return _Failure(str(error))


def _as_is(item):
    return item


def auto_workers(split, processes_per_node: int = 1) -> int:
    """The --num-workers default: none for a split held in memory (a batch is one
    gather, cheaper than handing it between processes), else the cores this rank
    has beside its training thread, at most MAX_AUTO_WORKERS (docs/benchmarks.md)."""
    if getattr(split, "in_memory", True):
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_AUTO_WORKERS, cores // max(1, processes_per_node) - 1))


class BatchLoader:
    """batches(start, stop): the uint8 batches of steps start..stop-1, in order."""

    def __init__(self, split, order: TrainingOrder, num_workers: int = 0, pin_memory: bool = False,
                 prefetch_factor: int = 4):
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0 (or {AUTO} for auto), got {num_workers}")
        self.split, self.order = split, order
        self.num_workers, self.pin_memory, self.prefetch_factor = num_workers, pin_memory, prefetch_factor

    def batches(self, start: int, stop: int):
        dataset = _StepBatches(self.split, self.order)
        if self.num_workers == 0 or stop <= start:
            return self._in_thread(dataset, start, stop)
        # A generator of its own: without one, DataLoader draws its workers' base seed from
        # the global RNG, which would shift the training noise (binarisation, z) and break
        # the exact resume. The workers draw no random numbers.
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=None, sampler=range(start, stop), num_workers=self.num_workers,
            collate_fn=_as_is, prefetch_factor=self.prefetch_factor, persistent_workers=False,
            generator=torch.Generator().manual_seed(0))
        return self._received(iter(loader))

    def _in_thread(self, dataset, start: int, stop: int):
        for step in range(start, stop):
            yield self._tensor(dataset[step])

    def _tensor(self, batch) -> torch.Tensor:
        if isinstance(batch, _Failure):
            raise DataError(batch.message)
        batch = torch.from_numpy(batch)
        return batch.pin_memory() if self.pin_memory else batch

    def _received(self, iterator):
        try:
            for batch in iterator:
                yield self._tensor(batch)
        finally:
            # Shuts the workers down now rather than when the iterator is collected.
            shutdown = getattr(iterator, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
