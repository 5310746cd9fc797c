"""Multi-level RoIAlign with mmdet's level mapping (SingleRoIExtractor).

Each RoI goes to level floor(log2(sqrt(w*h) / finest_scale + 1e-6)) clamped to the available levels
(P2..P5), and is pooled with ``torchvision.ops.roi_align(aligned=True, sampling_ratio=0)`` at that
level's ``1 / stride``. Output rows follow the input RoI order (not grouped by level), and each
RoI keeps its batch index. channels_last maps (a bf16 copy's, ``acceleration.bf16_copy``) are pooled
by :func:`~.roi_align_nhwc.roi_align_nhwc`, the same function in the maps' dtype and layout.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import roi_align

from .roi_align_nhwc import roi_align_nhwc


def map_roi_levels(rois: Tensor, num_levels: int, finest_scale: float = 56.0) -> Tensor:
    """Level index (0-based) of each RoI (K, 5) = [batch_idx, x1, y1, x2, y2]."""
    scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
    lvls = torch.floor(torch.log2(scale / finest_scale + 1e-6))
    return lvls.clamp(min=0, max=num_levels - 1).long()


def pools_nhwc(feat: Tensor) -> bool:
    """Whether :class:`RoIExtractor` pools ``feat`` with :func:`~.roi_align_nhwc.roi_align_nhwc`: a
    channels_last map on the CPU (a bf16 copy's), where torchvision's kernel has no bf16 and reads
    NCHW, at inference (its per-RoI matmuls would make a slow backward: training takes torchvision's)."""
    training = torch.is_grad_enabled() and feat.requires_grad
    return (not training and feat.device.type == "cpu"
            and feat.is_contiguous(memory_format=torch.channels_last) and not feat.is_contiguous())


def boxes_to_rois(boxes: list[Tensor]) -> Tensor:
    """Per-image (K_i, 4) boxes -> (sum K_i, 5) RoIs with the image index in column 0."""
    rois = [torch.cat([b.new_full((b.shape[0], 1), float(i)), b[:, :4]], dim=1) for i, b in enumerate(boxes)]
    return torch.cat(rois, dim=0) if rois else torch.zeros(0, 5)


class RoIExtractor:
    """Pools each RoI at its level. RoIs are sorted by level once (one host read of the per-level
    counts instead of one ``nonzero`` per level, which synchronises a GPU each time), each level's
    contiguous slice goes through one ``roi_align`` call whose result is copied into its rows of the
    output (peak: the output plus one level's part)."""

    def __init__(self, output_size: int, strides: list[int], finest_scale: float = 56.0) -> None:
        self.output_size = output_size
        self.strides = list(strides)
        self.finest_scale = finest_scale

    def __call__(self, feats: list[Tensor], rois: Tensor) -> Tensor:
        """(K, C, S, S) features of ``rois`` pooled from ``feats`` (one map per stride)."""
        n_lvls = len(self.strides)
        if rois.shape[0] == 0:
            out = feats[0].new_zeros(0, feats[0].shape[1], self.output_size, self.output_size)
            # Keep the graph (zero contribution) so an empty batch still back-propagates.
            return out + sum(f.sum() * 0 for f in feats[:n_lvls])
        lvls = map_roi_levels(rois, n_lvls, self.finest_scale)
        order = torch.argsort(lvls, stable=True)
        counts = torch.bincount(lvls, minlength=n_lvls).tolist()  # the one host read
        # Each level's pooled features are written straight into their rows of the one output
        # (mmdet's ``roi_feats[inds] = roi_feats_t``): no concatenated copy, no reordering copy.
        out = feats[0].new_empty(rois.shape[0], feats[0].shape[1], self.output_size, self.output_size)
        nhwc = pools_nhwc(feats[0])
        boxes = rois.to(feats[0].dtype)
        unused = []
        for lvl, idx in enumerate(order.split(counts)):
            if counts[lvl] == 0:
                unused.append(lvl)
                continue
            if nhwc:  # a bf16 copy's channels_last maps: pooled in their dtype, written into out's rows
                roi_align_nhwc(feats[lvl], rois[idx].float(), out, idx, 1.0 / self.strides[lvl])
                continue
            pooled = roi_align(
                feats[lvl], boxes[idx], self.output_size, spatial_scale=1.0 / self.strides[lvl], sampling_ratio=0,
                aligned=True,
            )
            out.index_copy_(0, idx, pooled.to(out.dtype))
        if unused and torch.is_grad_enabled() and any(feats[lvl].requires_grad for lvl in unused):
            # every level stays in the graph (a zero contribution), as mmdet's extractor keeps it
            out = out + sum(feats[lvl].sum() * 0 for lvl in unused)
        return out
