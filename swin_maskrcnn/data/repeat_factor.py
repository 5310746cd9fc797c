"""Class-balanced repeat-factor sampling (LVIS; detectron2's ``RepeatFactorTrainingSampler``).

With threshold ``t``, class ``c`` has repeat factor ``r(c) = max(1, sqrt(t / f(c)))``, where ``f(c)``
is the fraction of training images containing ``c`` (non-crowd instances); image ``I`` has
``r(I) = max over its classes of r(c)`` (1 for an image without instances). In every data epoch,
image ``I`` appears ``floor(r(I))`` times plus once more with probability ``r(I) - floor(r(I))``,
drawn per epoch from (data seed, epoch), so the expected number of visits is ``r(I)``.
:class:`swin_maskrcnn.data.loader.RunBatchSampler` puts the repeated list through its usual
shuffle, aspect-ratio grouping, rank sharding and resume.
"""
from __future__ import annotations

import hashlib
import math
from typing import Iterable, Sequence

import torch

__all__ = ["class_repeat_factors", "image_repeat_factors", "epoch_repeats"]


def class_repeat_factors(image_labels: Sequence[Iterable[int]], threshold: float) -> dict[int, float]:
    """``{class: max(1, sqrt(threshold / f(class)))}`` over the classes present in ``image_labels``
    (one iterable of class labels per training image; duplicates inside an image count once)."""
    if not threshold > 0:
        raise ValueError(f"repeat_factor_threshold must be > 0, got {threshold}")
    n = len(image_labels)
    counts: dict[int, int] = {}
    for labels in image_labels:
        for c in set(int(x) for x in labels):
            counts[c] = counts.get(c, 0) + 1
    return {c: max(1.0, math.sqrt(threshold / (k / n))) for c, k in sorted(counts.items())}


def image_repeat_factors(image_labels: Sequence[Iterable[int]], threshold: float) -> list[float]:
    """``r(I)`` of every image: the largest repeat factor of its classes, 1 for images without any."""
    labels = [set(int(x) for x in ls) for ls in image_labels]
    per_class = class_repeat_factors(labels, threshold)
    return [max((per_class[c] for c in ls), default=1.0) for ls in labels]


def epoch_repeats(factors: Sequence[float], seed: int, epoch: int) -> list[int]:
    """How often each image appears in data epoch ``epoch``: ``floor(r) + (u < r - floor(r))`` with
    ``u`` uniform, drawn from a generator seeded by (``seed``, ``epoch``) (stochastic rounding)."""
    digest = hashlib.blake2b(f"repeat:{seed}:{epoch}".encode(), digest_size=8).digest()
    g = torch.Generator()
    g.manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))
    r = torch.tensor([float(f) for f in factors], dtype=torch.float64)
    whole = torch.floor(r)
    u = torch.rand(len(r), generator=g, dtype=torch.float64)
    return (whole + (u < r - whole).to(torch.float64)).to(torch.int64).tolist()
