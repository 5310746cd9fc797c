"""Batching: collate, mmdet's aspect-ratio grouped batch sampler, and the dataloader builder.

No padding happens here: ``collate`` returns lists of differently sized images and their targets;
the model pads each batch (bottom/right, to a multiple of 32) itself, after normalising.
"""
from __future__ import annotations

from typing import Any, Iterator, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

__all__ = ["collate", "AspectRatioGroupedBatchSampler", "build_dataloader", "dataset_aspect_ratios"]


def collate(batch: Sequence[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """[(image, target), ...] -> ([image, ...], [target, ...]). Images keep their own sizes (no
    padding: the model pads to 32)."""
    images = [item[0] for item in batch]
    targets = [item[1] for item in batch]
    return images, targets


def dataset_aspect_ratios(dataset: Dataset) -> list[float]:
    """w / h per index from ``dataset.aspect_ratios()``, following ``torch.utils.data.Subset``."""
    if isinstance(dataset, Subset):
        base = dataset_aspect_ratios(dataset.dataset)
        return [base[i] for i in dataset.indices]
    if hasattr(dataset, "aspect_ratios"):
        return list(dataset.aspect_ratios())
    raise TypeError(f"{type(dataset).__name__} has no aspect_ratios(); cannot group by aspect ratio")


class AspectRatioGroupedBatchSampler(Sampler[list[int]]):
    """mmdet's ``AspectRatioBatchSampler``: indices are visited in a (seeded) random order and put
    in one of two buckets, landscape-or-square (w >= h) and portrait (w < h); a bucket is yielded as a
    batch as soon as it holds ``batch_size`` indices.

    Difference from mmdet: at the end of an epoch mmdet yields the leftovers of both buckets
    mixed together; here each bucket's leftover is its own (smaller) batch, so EVERY batch is
    orientation-homogeneous (``drop_last=True`` drops the leftovers instead). With
    ``drop_last=False`` every index appears exactly once per epoch.

    The order of epoch ``e`` is a permutation drawn from ``torch.Generator().manual_seed(seed + e)``,
    so it is deterministic given the seed. Call :meth:`set_epoch` before each epoch (Lightning does);
    if it is never called, the epoch counter advances by one on every ``__iter__``.
    """

    def __init__(
        self,
        aspect_ratios: Sequence[float],
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.aspect_ratios = [float(a) for a in aspect_ratios]
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.epoch = 0
        self._buckets_of = [0 if a >= 1.0 else 1 for a in self.aspect_ratios]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _order(self, epoch: int) -> list[int]:
        n = len(self.aspect_ratios)
        if not self.shuffle:
            return list(range(n))
        g = torch.Generator()
        g.manual_seed(self.seed + epoch)
        return torch.randperm(n, generator=g).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.epoch
        self.epoch += 1
        buckets: list[list[int]] = [[], []]
        for idx in self._order(epoch):
            bucket = buckets[self._buckets_of[idx]]
            bucket.append(idx)
            if len(bucket) == self.batch_size:
                yield list(bucket)
                bucket.clear()
        if not self.drop_last:
            for bucket in buckets:
                if bucket:
                    yield list(bucket)

    def __len__(self) -> int:
        counts = [self._buckets_of.count(0), self._buckets_of.count(1)]
        if self.drop_last:
            return sum(c // self.batch_size for c in counts)
        return sum((c + self.batch_size - 1) // self.batch_size for c in counts)


def build_dataloader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int = 0,
    shuffle: bool = True,
    group_by_aspect_ratio: bool = True,
    seed: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
    persistent_workers: Optional[bool] = None,
) -> DataLoader:
    """A DataLoader yielding ``(list[image], list[target])``.

    ``group_by_aspect_ratio`` uses :class:`AspectRatioGroupedBatchSampler` (needs
    ``dataset.aspect_ratios()``, or a ``Subset`` of such a dataset). The loader's generator is
    seeded with ``seed``, which makes the worker seeds (and so the random augmentations, which use
    torch's RNG) reproducible.
    """
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    if persistent_workers is None:
        persistent_workers = num_workers > 0
    common: dict[str, Any] = dict(
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        generator=generator,
        persistent_workers=persistent_workers and num_workers > 0,
    )
    if group_by_aspect_ratio:
        batch_sampler = AspectRatioGroupedBatchSampler(
            dataset_aspect_ratios(dataset), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
        return DataLoader(dataset, batch_sampler=batch_sampler, **common)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, **common)
