"""Loaders over in-memory tensors: batches are one fancy-index each.

A real ``torch.utils.data.DataLoader(dataset, batch_size, sampler=RandomSampler | SequentialSampler)``
over a ``TensorDataset`` subclass with ``__getitems__``: the loader's stock ``BatchSampler`` yields
lists of indices and the fetcher hands each whole list to ``__getitems__``, so a batch costs one index
operation per tensor instead of ``batch_size`` ``__getitem__`` calls and a collate. Lightning can
still swap in a ``DistributedSampler`` (DDP), a ``SequentialSampler`` (``overfit_batches``) or its
index-tracking wrapper (``predict``) and the batches stay whole. (A ``sampler=BatchSampler(...)``
with ``batch_size=None`` would be as fast but would not survive those swaps: Lightning would rebuild
it as a one-sample-per-batch loader.)
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler, TensorDataset


class BatchTensorDataset(TensorDataset):
    """A ``TensorDataset`` that serves a list of indices with one index operation per tensor."""

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, ...]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return tuple(t.index_select(0, index) for t in self.tensors)


def _whole_batch(batch: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """collate_fn for batches that ``__getitems__`` already assembled (module level: picklable)."""
    return list(batch)


def make_loader(
    dataset: TensorDataset,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
    generator: Optional[torch.Generator] = None,
    pin_memory: bool = False,
) -> DataLoader:
    """A fast DataLoader over an in-memory ``TensorDataset``; yields ``[x, y, ...]`` lists of whole batches.

    ``shuffle=True`` draws the order from ``generator`` (or a fresh one seeded with ``seed``): the same
    seed gives the same sequence of epochs, and each new epoch of the same loader a new order.
    """
    if not isinstance(dataset, TensorDataset):
        raise TypeError(f"make_loader needs a TensorDataset, got {type(dataset).__name__}")
    if not isinstance(dataset, BatchTensorDataset):
        dataset = BatchTensorDataset(*dataset.tensors)
    if shuffle:
        if generator is None:
            generator = torch.Generator().manual_seed(int(seed))
        sampler = RandomSampler(dataset, generator=generator)
    else:
        sampler = SequentialSampler(dataset)
    # batch_size + sampler: the DataLoader builds BatchSampler(sampler, batch_size, drop_last) itself and
    # hands each list of indices to dataset.__getitems__; built this way (not batch_sampler=...), the
    # loader keeps its batch_size attribute, which Lightning reuses when it swaps the sampler.
    return DataLoader(
        dataset,
        batch_size=int(batch_size),
        sampler=sampler,
        drop_last=drop_last,
        collate_fn=_whole_batch,
        num_workers=int(num_workers),
        persistent_workers=int(num_workers) > 0,
        pin_memory=pin_memory,
    )
