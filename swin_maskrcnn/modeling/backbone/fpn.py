"""Feature Pyramid Network as in mmdet's Swin Mask R-CNN config.

1x1 laterals and 3x3 outputs (bias, no norm, no activation), top-down nearest upsampling to the
lateral's size (at inference added in place through a broadcast view when the size is exactly twice
the coarser map's, as it is for inputs padded to 32: the upsampled map is never materialised), and
P6 = max_pool(P5, kernel 1, stride 2) (``add_extra_convs=False``).
Module names match mmdet's state_dict (``lateral_convs.{i}.conv``, ``fpn_convs.{i}.conv``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import ConvWrap


def add_upsampled(fine: Tensor, coarse: Tensor) -> Tensor:
    """``fine + F.interpolate(coarse, size=fine.shape[-2:], mode="nearest")``.

    When ``fine`` is exactly twice ``coarse`` per side, nearest upsampling repeats each coarse pixel
    in a 2 x 2 block, so without autograd the sum is a broadcast add on a ``(N, C, h, 2, w, 2)``
    view of ``fine`` (``(N, h, 2, w, 2, C)`` for channels_last maps), done in place (``fine`` is a
    fresh lateral output that nothing else holds).
    Other sizes, and autograd, take the interpolate path.
    """
    n, c, h, w = coarse.shape
    # Not while tracing: the TorchScript-based ONNX exporter does not carry an in-place write through
    # a view over to later uses of the base tensor. Not with autograd either: the backward of a
    # broadcast add (a sum over the strided 2 x 2 block dims) is ~2x slower than upsample's backward.
    exact_2x = fine.shape[-2:] == (2 * h, 2 * w) and fine.dtype == coarse.dtype
    grad = torch.is_grad_enabled() and (fine.requires_grad or coarse.requires_grad)
    if exact_2x and not grad and not torch.jit.is_tracing():
        if fine.is_contiguous():
            fine.view(n, c, h, 2, w, 2).add_(coarse[:, :, :, None, :, None])
            return fine
        if fine.is_contiguous(memory_format=torch.channels_last):  # the same add on the NHWC view
            fine.permute(0, 2, 3, 1).view(n, h, 2, w, 2, c).add_(coarse.permute(0, 2, 3, 1)[:, :, None, :, None, :])
            return fine
    return fine + F.interpolate(coarse, size=fine.shape[-2:], mode="nearest")


class FPN(nn.Module):
    """Input: the 4 backbone maps (B, in_channels[i], H/4/2^i, W/4/2^i). Output: 5 maps P2..P6 with
    ``out_channels`` each, strides 4, 8, 16, 32, 64 (P6 by subsampling P5)."""

    def __init__(self, in_channels: list[int], out_channels: int = 256) -> None:
        super().__init__()
        self.lateral_convs = nn.ModuleList([ConvWrap(c, out_channels, 1) for c in in_channels])
        self.fpn_convs = nn.ModuleList([ConvWrap(out_channels, out_channels, 3) for _ in in_channels])
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        """4 backbone maps (strides 4..32) -> 5 maps P2..P6 with ``out_channels`` each."""
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = add_upsampled(laterals[i - 1], laterals[i])
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals)]
        outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return outs
