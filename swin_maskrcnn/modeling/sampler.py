"""mmdet's ``RandomSampler``: a fixed-size, positive-capped random subset of assigned candidates.

Up to ``int(num * pos_fraction)`` positives are drawn at random, negatives fill the rest up to
``num``. Indices are returned sorted (mmdet applies ``unique()``). ``choice`` is injectable so tests
and parity fixtures can replace the random draw with a deterministic one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

ChoiceFn = Callable[[Tensor, int], Tensor]


def random_choice(gallery: Tensor, num: int) -> Tensor:
    """``num`` distinct elements of ``gallery`` drawn uniformly (torch's global RNG)."""
    perm = torch.randperm(gallery.numel(), device=gallery.device)[:num]
    return gallery[perm]


def even_choice(gallery: Tensor, num: int) -> Tensor:
    """Deterministic stand-in for ``random_choice``: evenly spaced elements (mmdet fixtures use it)."""
    idx = (torch.arange(num, device=gallery.device) * gallery.numel()) // num
    return gallery[idx]


@dataclass
class SamplingResult:
    pos_inds: Tensor  # indices into the candidate list
    neg_inds: Tensor
    pos_assigned_gt_inds: Tensor  # 0-based GT index of each positive
    pos_labels: Tensor

    @property
    def num_pos(self) -> int:
        return int(self.pos_inds.numel())

    @property
    def num_neg(self) -> int:
        return int(self.neg_inds.numel())

    @property
    def avg_factor(self) -> int:
        """mmdet's per-image sample count for normalisation: max(pos, 1) + max(neg, 1)."""
        return max(self.num_pos, 1) + max(self.num_neg, 1)


class RandomSampler:
    def __init__(self, num: int, pos_fraction: float, choice: Optional[ChoiceFn] = None) -> None:
        self.num = num
        self.pos_fraction = pos_fraction
        self.choice = choice or random_choice

    def sample(self, gt_inds: Tensor, labels: Tensor) -> SamplingResult:
        """Sample from an assignment (``gt_inds``: -1 ignore, 0 negative, k>0 positive)."""
        pos = torch.nonzero(gt_inds > 0).flatten()
        num_pos_expected = int(self.num * self.pos_fraction)
        if pos.numel() > num_pos_expected:
            pos = self.choice(pos, num_pos_expected)
        pos = pos.unique()
        neg = torch.nonzero(gt_inds == 0).flatten()
        num_neg_expected = self.num - pos.numel()
        if neg.numel() > num_neg_expected:
            neg = self.choice(neg, num_neg_expected)
        neg = neg.unique()
        return SamplingResult(pos, neg, gt_inds[pos] - 1, labels[pos])
