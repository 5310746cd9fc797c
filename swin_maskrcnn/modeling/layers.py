"""Small blocks shared by the neck and the heads."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class ConvWrap(nn.Module):
    """A bare conv living at ``<name>.conv`` so the state_dict keys match mmdet's ConvModule."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, relu: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2)
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        return F.relu(x, inplace=True) if self.relu else x  # in place on the fresh conv output, as mmdet's ReLU(inplace=True)
