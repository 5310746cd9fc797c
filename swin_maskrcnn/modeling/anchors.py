"""Anchor generation with mmdet's exact semantics.

mmdet's ``AnchorGenerator`` (scale-major, ``center_offset=0``, no rounding): for a level of stride
``s`` the base anchors are centred on (0, 0) with width ``s * scale / sqrt(ratio)`` and height
``s * scale * sqrt(ratio)`` (ratio = h / w), ordered ratio-major then scale. They are shifted to
every feature-map position (x * s, y * s). The flattened order is (H, W, A) with the anchor index
innermost, which is exactly the order of ``head_output.permute(0, 2, 3, 1).reshape(B, -1)``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor


def base_anchors(stride: int, scales: Sequence[float], ratios: Sequence[float]) -> Tensor:
    """(A, 4) anchors centred on the origin, A = len(ratios) * len(scales), ratio-major."""
    ratios_t = torch.tensor(ratios, dtype=torch.float32)
    scales_t = torch.tensor(scales, dtype=torch.float32)
    h_ratios = torch.sqrt(ratios_t)
    w_ratios = 1.0 / h_ratios
    ws = (stride * w_ratios[:, None] * scales_t[None, :]).reshape(-1)
    hs = (stride * h_ratios[:, None] * scales_t[None, :]).reshape(-1)
    return torch.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], dim=-1)


class AnchorGenerator:
    """Anchors for every FPN level; one ``base_anchors`` set per stride."""

    def __init__(self, strides: Sequence[int], scales: Sequence[float], ratios: Sequence[float]) -> None:
        self.strides = list(strides)
        self.base = [base_anchors(s, scales, ratios) for s in self.strides]

    @property
    def num_anchors(self) -> int:
        """Anchors per feature-map position."""
        return self.base[0].shape[0]

    def grid_anchors(self, sizes: Sequence[tuple[int, int]], device: torch.device) -> list[Tensor]:
        """Per level, the (H * W * A, 4) anchors for a feature map of size (H, W)."""
        out = []
        for base, stride, (h, w) in zip(self.base, self.strides, sizes):
            shift_x = torch.arange(w, device=device, dtype=torch.float32) * stride
            shift_y = torch.arange(h, device=device, dtype=torch.float32) * stride
            yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")
            shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)
            out.append((shifts + base.to(device)[None]).reshape(-1, 4))
        return out

    def valid_flags(
        self, sizes: Sequence[tuple[int, int]], pad_shape: tuple[int, int], device: torch.device
    ) -> list[Tensor]:
        """Per level, which anchors lie on positions inside the image's own padded area.

        mmdet uses ``ceil(pad_h / stride) x ceil(pad_w / stride)`` positions, where ``pad_shape`` is
        the image's own size rounded up to the size divisor (not the batch's padded size).
        """
        out = []
        a = self.num_anchors
        for stride, (h, w) in zip(self.strides, sizes):
            vh = min(int(math.ceil(pad_shape[0] / stride)), h)
            vw = min(int(math.ceil(pad_shape[1] / stride)), w)
            vy = torch.zeros(h, dtype=torch.bool, device=device)
            vx = torch.zeros(w, dtype=torch.bool, device=device)
            vy[:vh] = True
            vx[:vw] = True
            valid = (vy[:, None] & vx[None, :]).reshape(-1, 1).expand(-1, a).reshape(-1)
            out.append(valid)
        return out
