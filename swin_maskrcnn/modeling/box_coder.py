"""mmdet's ``DeltaXYWHBBoxCoder``: boxes <-> (dx, dy, dw, dh) regression targets.

Width is ``x2 - x1`` (no +1), the centre is the midpoint, targets are normalised by ``(means, stds)``.
Decoding clamps dw, dh at ``|log(16 / 1000)|`` (so ``exp`` cannot overflow, also in fp16) and clips
the boxes to the image when a ``max_shape`` (h, w) is given.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

WH_RATIO_CLIP = 16 / 1000
MAX_DELTA = abs(math.log(WH_RATIO_CLIP))


class DeltaXYWHBBoxCoder:
    def __init__(
        self,
        means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
        stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    ) -> None:
        self.means = tuple(float(m) for m in means)
        self.stds = tuple(float(s) for s in stds)

    def encode(self, boxes: Tensor, gt: Tensor) -> Tensor:
        """Deltas that move ``boxes`` (N, 4) onto ``gt`` (N, 4)."""
        boxes = boxes.float()
        gt = gt.float()
        pw = boxes[:, 2] - boxes[:, 0]
        ph = boxes[:, 3] - boxes[:, 1]
        px = (boxes[:, 0] + boxes[:, 2]) * 0.5
        py = (boxes[:, 1] + boxes[:, 3]) * 0.5
        gw = gt[:, 2] - gt[:, 0]
        gh = gt[:, 3] - gt[:, 1]
        gx = (gt[:, 0] + gt[:, 2]) * 0.5
        gy = (gt[:, 1] + gt[:, 3]) * 0.5
        deltas = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], dim=-1)
        means = deltas.new_tensor(self.means)
        stds = deltas.new_tensor(self.stds)
        return (deltas - means) / stds

    def decode(self, boxes: Tensor, deltas: Tensor, max_shape: Optional[tuple[int, int]] = None) -> Tensor:
        """Apply ``deltas`` (N, 4) to ``boxes`` (N, 4); clip to ``max_shape`` = (h, w) if given."""
        means = deltas.new_tensor(self.means)
        stds = deltas.new_tensor(self.stds)
        d = deltas * stds + means
        pxy = (boxes[:, :2] + boxes[:, 2:]) * 0.5
        pwh = boxes[:, 2:] - boxes[:, :2]
        dxy = d[:, :2]
        dwh = d[:, 2:].clamp(min=-MAX_DELTA, max=MAX_DELTA)
        gxy = pxy + pwh * dxy
        gwh = pwh * dwh.exp()
        out = torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], dim=-1)
        if max_shape is not None:
            h, w = max_shape
            out = torch.stack(
                [out[:, 0].clamp(0, w), out[:, 1].clamp(0, h), out[:, 2].clamp(0, w), out[:, 3].clamp(0, h)],
                dim=-1,
            )
        return out
