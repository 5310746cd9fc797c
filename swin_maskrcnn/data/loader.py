"""Batching and data order: collate, the epoch order, mmdet's aspect-ratio grouped batch sampler,
the dataloader builder, and the training run's resumable order (:class:`RunBatchSampler`,
:class:`SeededSamples`).

No padding happens here: ``collate`` returns lists of differently sized images and their targets;
the model pads each batch (bottom/right, to a multiple of 32) itself, after normalising.

Data order. Training is iteration based: Lightning runs ONE epoch of ``max_steps x
accumulate_grad_batches`` batches, produced by :class:`RunBatchSampler`, which walks through
data epochs internally. Data epoch ``e``'s batches are mmdet's aspect-ratio grouped batches of the
permutation seeded by ``data.seed + e`` (:class:`AspectRatioGroupedBatchSampler`); rank ``r``
of ``W`` takes batches ``r, r + W, ...``. Every sample's augmentation is seeded from
(``data.seed``, epoch, index) (:class:`SeededSamples`), so it does not depend on workers or ranks.
On resume the sampler starts at batch ``global_step x accumulate_grad_batches`` of that stream, so
the resumed run sees exactly the batches, in the same order and with the same augmentations, as an
uninterrupted one (with Lightning's ``fit(ckpt_path=...)`` restoring model, optimiser, scheduler,
step and callbacks). Because the sampler shards across ranks itself, the Trainer runs with
``use_distributed_sampler=False`` (Lightning's DistributedSampler injection would not know our
batch sampler).

Repeat-factor sampling (``data.repeat_factor_threshold``, :mod:`swin_maskrcnn.data.repeat_factor`):
data epoch ``e`` first repeats each image as drawn for that epoch, then the repeated list goes through
the same permutation (of its length, seeded by ``data.seed + e``), grouping and sharding; the ``k``-th
copy of an image (``k >= 1``) gets its own augmentation seed. Epochs then differ in length, and the
resume position is found by walking the epochs' lengths, which depend only on the seed.
"""
from __future__ import annotations

import hashlib
from typing import Any, Iterator, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from .repeat_factor import epoch_repeats

__all__ = [
    "collate",
    "epoch_order",
    "AspectRatioGroupedBatchSampler",
    "build_dataloader",
    "build_train_loader",
    "dataset_aspect_ratios",
    "sample_seed",
    "SeededSamples",
    "RunBatchSampler",
]


def collate(batch: Sequence[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """[(image, target), ...] -> ([image, ...], [target, ...]). Images keep their own sizes (no
    padding: the model pads to 32)."""
    images = [item[0] for item in batch]
    targets = [item[1] for item in batch]
    return images, targets


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    """The visiting order of data epoch ``epoch``: a permutation of ``range(n)`` drawn from
    ``torch.Generator().manual_seed(seed + epoch)``, or ``range(n)`` without shuffling."""
    if not shuffle:
        return list(range(n))
    g = torch.Generator()
    g.manual_seed(int(seed) + int(epoch))
    return torch.randperm(n, generator=g).tolist()


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
        return epoch_order(len(self.aspect_ratios), self.seed, epoch, self.shuffle)

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


def build_train_loader(
    dataset: Dataset,
    sampler: "RunBatchSampler",
    num_workers: int,
    seed: int = 0,
    pin_memory: Optional[bool] = None,
    persistent_workers: bool = True,
    prefetch_factor: Optional[int] = None,
) -> DataLoader:
    """The training DataLoader: ``SeededSamples(dataset)`` batched by ``sampler`` (a :class:`RunBatchSampler`),
    :func:`collate`, the loader generator seeded with ``seed``. ``pin_memory`` None: pinned when CUDA is
    available (the host-to-GPU copy can then run asynchronously); workers persist across the loader's
    iterators (``persistent_workers``, with ``num_workers > 0``: a second iterator does not start them
    again; Lightning shuts them down at the end of ``fit``). Inside a worker the dataset writes each
    sample's image and masks into shared memory (``coco.output_tensor``), so only file descriptors travel."""
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    extra: dict[str, Any] = {}
    if num_workers > 0:
        extra["persistent_workers"] = bool(persistent_workers)
        if prefetch_factor is not None:
            extra["prefetch_factor"] = int(prefetch_factor)
    return DataLoader(
        SeededSamples(dataset),
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        generator=generator,
        pin_memory=bool(pin_memory),
        **extra,
    )


# ------------------------------------------------------------------------------------------------
# the training run's data order
# ------------------------------------------------------------------------------------------------
def sample_seed(seed: int, epoch: int, index: int, copy: int = 0) -> int:
    """Augmentation seed of dataset ``index`` in data epoch ``epoch`` (``copy``: which repetition,
    under repeat-factor sampling; copy 0 is the seed without repeats)."""
    key = f"sample:{seed}:{epoch}:{index}" + (f":{copy}" if copy else "")
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class SeededSamples(Dataset):
    """Wraps a dataset whose transforms use torch's global CPU generator: item ``(index, seed)`` is
    ``dataset[index]`` computed under ``seed``; the caller's RNG state is left untouched."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(int(seed))
            return self.dataset[int(index)]


class RunBatchSampler(Sampler[list[tuple[int, int]]]):
    """All training batches of one rank for the whole run (see the module docstring, "Data order").

    ``len()`` is ``num_batches`` (the whole run); iteration starts at ``start_batch`` (resume).
    Items are ``(dataset index, augmentation seed)`` pairs for :class:`SeededSamples`.
    ``repeat_factors`` (one per image, >= 1; None: off) turns on repeat-factor sampling;
    ``batches_per_epoch`` is then data epoch 0's count (later epochs differ; :meth:`data_epoch` walks them).
    """

    def __init__(
        self,
        aspect_ratios: Sequence[float],
        batch_size: int,
        num_batches: int,
        seed: int = 0,
        group_by_aspect_ratio: bool = True,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        start_batch: int = 0,
        repeat_factors: Optional[Sequence[float]] = None,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        self.aspect_ratios = [float(a) for a in aspect_ratios]
        self.batch_size = int(batch_size)
        self.num_batches = int(num_batches)
        self.seed = int(seed)
        self.group = bool(group_by_aspect_ratio)
        self.shuffle = bool(shuffle)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.start_batch = int(start_batch)
        self.repeat_factors: Optional[list[float]] = None
        if repeat_factors is not None:
            if len(repeat_factors) != len(self.aspect_ratios):
                raise ValueError(f"{len(repeat_factors)} repeat factors for {len(self.aspect_ratios)} images")
            if any(not float(r) >= 1.0 for r in repeat_factors):
                raise ValueError("repeat factors must be >= 1")
            self.repeat_factors = [float(r) for r in repeat_factors]
        self._rank_counts: dict[int, int] = {}
        total = len(self.epoch_batches(0))
        self.batches_per_epoch = len(range(self.rank, total, self.world_size))
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{len(self.aspect_ratios)} training images make {total} batches of {batch_size}: "
                f"not enough for {world_size} ranks"
            )

    def epoch_items(self, epoch: int) -> list[list[tuple[int, int]]]:
        """Every rank's batches of data epoch ``epoch`` as ``(dataset index, copy)`` pairs."""
        if self.repeat_factors is None:
            items = [(i, 0) for i in range(len(self.aspect_ratios))]
        else:
            counts = epoch_repeats(self.repeat_factors, self.seed, epoch)
            items = [(i, k) for i, c in enumerate(counts) for k in range(c)]
        if self.group:
            s = AspectRatioGroupedBatchSampler([self.aspect_ratios[i] for i, _ in items], self.batch_size,
                                               shuffle=self.shuffle, seed=self.seed)
            s.set_epoch(epoch)
            return [[items[j] for j in b] for b in s]
        order = epoch_order(len(items), self.seed, epoch, self.shuffle)
        return [[items[j] for j in order[i:i + self.batch_size]] for i in range(0, len(order), self.batch_size)]

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """Every rank's batches of data epoch ``epoch`` as dataset indices (identical on all ranks)."""
        return [[i for i, _ in b] for b in self.epoch_items(epoch)]

    def rank_batches_in(self, epoch: int) -> int:
        """How many batches this rank gets in data epoch ``epoch``."""
        if epoch not in self._rank_counts:
            n = len(range(self.rank, len(self.epoch_items(epoch)), self.world_size))
            if n == 0:
                raise ValueError(f"data epoch {epoch} has no batch for rank {self.rank} of {self.world_size}")
            self._rank_counts[epoch] = n
        return self._rank_counts[epoch]

    def position(self, batch: int) -> tuple[int, int]:
        """(data epoch, batch within this rank's share of the epoch) of run batch ``batch``."""
        if self.repeat_factors is None:
            return divmod(batch, self.batches_per_epoch)
        epoch = 0
        while batch >= self.rank_batches_in(epoch):
            batch -= self.rank_batches_in(epoch)
            epoch += 1
        return epoch, batch

    def data_epoch(self, batch: int) -> float:
        """Passes over the data after run batch ``batch`` (0-based) of this rank: data epoch + the fraction of
        its batches done, so 1.0 at the end of epoch 0 also when repeat factors make epochs differ in length."""
        epoch, offset = self.position(batch)
        n = self.batches_per_epoch if self.repeat_factors is None else self.rank_batches_in(epoch)
        return epoch + (offset + 1) / n

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        produced = self.start_batch
        epoch, offset = self.position(produced)
        while produced < self.num_batches:
            mine = self.epoch_items(epoch)[self.rank::self.world_size]
            for batch in mine[offset:]:
                if produced >= self.num_batches:
                    return
                yield [(i, sample_seed(self.seed, epoch, i, k)) for i, k in batch]
                produced += 1
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:
        return self.num_batches
