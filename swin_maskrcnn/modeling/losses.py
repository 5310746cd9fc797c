"""Loss functions with explicit weights, reductions and avg_factor, as mmdet computes them.

Every function returns an element-wise loss multiplied by ``weight`` and reduced
(:func:`weight_reduce_loss`):
``"none"`` keeps the elements, ``"sum"`` sums them, ``"mean"`` divides the sum by
``avg_factor + eps`` when an avg_factor is given (mmdet's ``weight_reduce_loss``) or by the element
count otherwise. ``eps`` keeps the division finite when a batch samples nothing.
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

Reduction = Literal["none", "sum", "mean"]


def reduce_loss(loss: Tensor, reduction: Reduction, avg_factor: Optional[float], eps: float) -> Tensor:
    """mmdet's ``weight_reduce_loss`` after the weights have been applied."""
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        if avg_factor is None:
            return loss.mean() if loss.numel() else loss.sum()
        return loss.sum() / (avg_factor + eps)
    raise ValueError(f"unknown reduction {reduction!r}; expected 'none', 'sum' or 'mean'")


def weight_reduce_loss(loss: Tensor, weight: Optional[Tensor], reduction: Reduction, avg_factor: Optional[float],
                       eps: float) -> Tensor:
    """mmdet's ``weight_reduce_loss``: ``loss * weight`` (when given), then :func:`reduce_loss`."""
    if weight is not None:
        loss = loss * weight
    return reduce_loss(loss, reduction, avg_factor, eps)


def sigmoid_bce(
    logits: Tensor,
    targets: Tensor,
    weight: Optional[Tensor] = None,
    reduction: Reduction = "mean",
    avg_factor: Optional[float] = None,
    eps: float = 1e-6,
) -> Tensor:
    """Binary cross-entropy on logits; ``weight`` is per element (e.g. positive-sample weights)."""
    loss = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
    return weight_reduce_loss(loss, weight, reduction, avg_factor, eps)


def softmax_ce(
    logits: Tensor,
    labels: Tensor,
    weight: Optional[Tensor] = None,
    reduction: Reduction = "mean",
    avg_factor: Optional[float] = None,
    eps: float = 1e-6,
) -> Tensor:
    """Softmax cross-entropy over classes; ``weight`` is per sample."""
    loss = F.cross_entropy(logits.float(), labels.long(), reduction="none")
    return weight_reduce_loss(loss, weight, reduction, avg_factor, eps)


def box_regression_loss(
    pred: Tensor,
    target: Tensor,
    weight: Optional[Tensor] = None,
    kind: Literal["l1", "smooth_l1"] = "l1",
    beta: float = 1.0,
    reduction: Reduction = "mean",
    avg_factor: Optional[float] = None,
    eps: float = 1e-6,
) -> Tensor:
    """L1 (mmdet's Swin config) or smooth-L1 with ``beta`` on regression deltas."""
    diff = (pred.float() - target.float()).abs()
    if kind == "l1":
        loss = diff
    elif kind == "smooth_l1":
        loss = torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)
    else:
        raise ValueError(f"unknown box loss {kind!r}; expected 'l1' or 'smooth_l1'")
    return weight_reduce_loss(loss, weight, reduction, avg_factor, eps)


def sigmoid_focal(
    logits: Tensor,
    targets: Tensor,
    weight: Optional[Tensor] = None,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: Reduction = "mean",
    avg_factor: Optional[float] = None,
    eps: float = 1e-6,
) -> Tensor:
    """Sigmoid focal loss (Lin et al. 2017) per element, via ``torchvision.ops.sigmoid_focal_loss``."""
    loss = sigmoid_focal_loss(logits.float(), targets.float(), alpha=alpha, gamma=gamma, reduction="none")
    return weight_reduce_loss(loss, weight, reduction, avg_factor, eps)
