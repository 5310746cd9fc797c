"""Detections of one large image with their masks as box-sized crops in image coordinates.

Sliced prediction never holds a full-image mask per detection (``K x H x W`` booleans for a
10,000 x 10,000 image with 5,000 objects would be 500 GB). :class:`Instances` keeps, per detection,
its box, score and label, its paste window ``[x0, y0, x1, y1)`` in image pixels and the mask
probabilities over that window only (float32, ``(y1 - y0, x1 - x0)``), so memory grows with the
objects' areas, not with pixels x objects. Probabilities rather than bits are kept so that merging
can unite (maximum) or average (test-time augmentation) masks before the one threshold at the end.

:func:`paste_crops` resamples the model's ``M x M`` mask probabilities over each box exactly as
:func:`swin_maskrcnn.modeling.postprocess.paste_masks` does (same window, same ``grid_sample`` grid,
so thresholding a crop gives the same bits as the full-image paste), but writes each detection's
window only. :func:`crop_rle` encodes a crop as the COCO RLE of the whole image without building
the whole image.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..modeling.postprocess import size_groups

__all__ = ["Instances", "paste_crops", "crop_rle", "crops_to_dense"]


@dataclass
class Instances:
    """K detections of one image: ``boxes`` (K, 4) xyxy float32 image pixels, ``scores`` (K,),
    ``labels`` (K,) int64, ``windows`` (K, 4) int64 ``[x0, y0, x1, y1)``, ``crops`` K float32
    probability maps of each window's shape, ``cut`` (K,) bool: the detection touches a tile
    border inside the image, so it may be a part of an object (merging prefers uncut members), and
    ``source`` (K,) int64: the tile or view it came from (merging never matches two detections of
    one source: the model's own NMS already chose between them)."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    windows: Tensor
    crops: list[Tensor]
    cut: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))
    source: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))

    def __post_init__(self) -> None:
        k = int(self.boxes.shape[0])
        if self.cut.numel() == 0 and k:
            self.cut = torch.zeros(k, dtype=torch.bool)
        if self.source.numel() == 0 and k:
            self.source = torch.arange(k, dtype=torch.int64)  # by default every detection its own source
        if not (len(self.scores) == len(self.labels) == len(self.windows) == len(self.crops) == len(self.cut)
                == len(self.source) == k):
            raise ValueError(f"Instances: {k} boxes, {len(self.scores)} scores, {len(self.labels)} labels, "
                             f"{len(self.windows)} windows, {len(self.crops)} crops, {len(self.cut)} cut flags")

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @staticmethod
    def empty() -> "Instances":
        return Instances(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64),
                         torch.zeros(0, 4, dtype=torch.int64), [], torch.zeros(0, dtype=torch.bool),
                         torch.zeros(0, dtype=torch.int64))

    @staticmethod
    def cat(parts: Sequence["Instances"]) -> "Instances":
        parts = [p for p in parts if len(p)]
        if not parts:
            return Instances.empty()
        return Instances(torch.cat([p.boxes for p in parts]), torch.cat([p.scores for p in parts]),
                         torch.cat([p.labels for p in parts]), torch.cat([p.windows for p in parts]),
                         [c for p in parts for c in p.crops], torch.cat([p.cut for p in parts]),
                         torch.cat([p.source for p in parts]))

    def select(self, index: Sequence[int]) -> "Instances":
        idx = torch.as_tensor(list(index), dtype=torch.int64)
        return Instances(self.boxes[idx], self.scores[idx], self.labels[idx], self.windows[idx],
                         [self.crops[i] for i in idx.tolist()], self.cut[idx], self.source[idx])

    def with_source(self, source: int) -> "Instances":
        """The same detections, all from ``source``."""
        return Instances(self.boxes, self.scores, self.labels, self.windows, self.crops, self.cut,
                         torch.full((len(self),), int(source), dtype=torch.int64))

    def binary_crops(self, threshold: float) -> list[Tensor]:
        """Each crop thresholded (``>=``, as the model's mask threshold)."""
        return [c >= threshold for c in self.crops]

    def nbytes(self) -> int:
        """Bytes held by the crops (the part that grows with object area)."""
        return sum(c.numel() * c.element_size() for c in self.crops)


def paste_crops(mask_probs: Tensor, boxes: Tensor, regions: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Mask probabilities (K, M, M) resampled over their boxes (K, 4, image pixels): (windows, crops).

    ``regions`` (K, 4) int64 ``[x0, y0, x1, y1)`` bound each window (the tile or image the model saw):
    a window is mmdet's ``floor(x0) - 1 .. ceil(x1) + 1`` clipped to its region, and the crop is the
    ``grid_sample`` of :func:`~swin_maskrcnn.modeling.postprocess.paste_masks` over that window
    (probabilities, not yet thresholded; empty windows give empty crops)."""
    k = int(mask_probs.shape[0])
    if k == 0:
        return torch.zeros(0, 4, dtype=torch.int64), []
    b = boxes.float()
    reg = regions.to(torch.int64)
    xs = torch.maximum((torch.floor(b[:, 0]) - 1).long(), reg[:, 0])
    ys = torch.maximum((torch.floor(b[:, 1]) - 1).long(), reg[:, 1])
    xe = torch.minimum((torch.ceil(b[:, 2]) + 1).long(), reg[:, 2])
    ye = torch.minimum((torch.ceil(b[:, 3]) + 1).long(), reg[:, 3])
    xe, ye = torch.maximum(xe, xs), torch.maximum(ye, ys)
    win = torch.stack([xs, ys, xe, ye], 1)
    windows = win.tolist()
    heights = [w[3] - w[1] for w in windows]
    widths = [w[2] - w[0] for w in windows]
    crops: list[Optional[Tensor]] = [torch.zeros(h, w) for h, w in zip(heights, widths)]
    probs = mask_probs.float()
    for group in size_groups(heights, widths):
        idx = torch.tensor(group, device=probs.device)
        h_max, w_max = max(heights[i] for i in group), max(widths[i] for i in group)
        win_g = win[group].to(probs.device)
        bg = b[group].to(probs.device)
        xx = win_g[:, 0][:, None] + torch.arange(w_max, device=probs.device)
        yy = win_g[:, 1][:, None] + torch.arange(h_max, device=probs.device)
        gx = (xx.float() + 0.5 - bg[:, 0:1]) / (bg[:, 2:3] - bg[:, 0:1]) * 2 - 1
        gy = (yy.float() + 0.5 - bg[:, 1:2]) / (bg[:, 3:4] - bg[:, 1:2]) * 2 - 1
        gx = torch.where(torch.isinf(gx), torch.zeros_like(gx), gx)
        gy = torch.where(torch.isinf(gy), torch.zeros_like(gy), gy)
        grid = torch.stack([gx[:, None, :].expand(-1, h_max, -1), gy[:, :, None].expand(-1, -1, w_max)], dim=-1)
        pasted = F.grid_sample(probs[idx][:, None], grid, align_corners=False)[:, 0].cpu()
        for j, i in enumerate(group):
            crops[i] = pasted[j, : heights[i], : widths[i]].clone()
    return win, [c for c in crops]  # type: ignore[misc]


def crop_rle(crop: Tensor, window: Sequence[int], image_h: int, image_w: int) -> dict:
    """COCO compressed RLE (``counts`` str) of the ``image_h x image_w`` mask that is ``crop`` (bool,
    ``(y1 - y0, x1 - x0)``) at ``window`` and background elsewhere, built from the crop's runs only.
    Imports pycocotools."""
    from pycocotools import mask as mask_utils

    x0, y0, x1, y1 = (int(v) for v in window)
    m = np.asarray(crop.cpu().numpy() if isinstance(crop, Tensor) else crop, dtype=bool)
    if m.size == 0 or not m.any():
        counts = [image_h * image_w]
    else:
        # column-major pixel index of each crop pixel in the whole image; runs start where the value changes
        col = m.T.reshape(-1)  # the crop's columns one after the other, each top to bottom
        h = y1 - y0
        lin = ((np.arange(x0, x1)[:, None] * image_h) + np.arange(y0, y1)[None, :]).reshape(-1)
        prev = np.concatenate([[False], col[:-1]])
        # a new column of the crop starts after background rows of the image (unless the crop is full height)
        if h < image_h:
            prev[::h] = False
        nxt = np.concatenate([col[1:], [False]])
        if h < image_h:
            nxt[h - 1 :: h] = False
        starts = lin[col & ~prev]
        ends = lin[col & ~nxt] + 1
        # merge runs that continue across full-height columns (start == previous end)
        bounds = np.empty(2 * len(starts), dtype=np.int64)
        bounds[0::2], bounds[1::2] = starts, ends
        if len(starts) > 1:
            touch = starts[1:] == ends[:-1]
            if touch.any():
                keep = np.ones(len(bounds), dtype=bool)
                keep[1:-1:2][touch] = False  # the end of the earlier run
                keep[2::2][touch] = False  # the start of the later one
                bounds = bounds[keep]
        edges = np.concatenate([[0], bounds, [image_h * image_w]])
        counts = np.diff(edges).astype(np.int64).tolist()
        if counts[-1] == 0:  # the mask reaches the last pixel: no trailing background run
            counts.pop()
    rle = mask_utils.frPyObjects({"size": [int(image_h), int(image_w)], "counts": counts}, int(image_h), int(image_w))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def crops_to_dense(crops: Sequence[Tensor], windows: Tensor, image_h: int, image_w: int) -> Tensor:
    """(K, image_h, image_w) bool masks from bool crops (for small images and tests only)."""
    out = torch.zeros(len(crops), image_h, image_w, dtype=torch.bool)
    for i, (c, w) in enumerate(zip(crops, windows.tolist())):
        out[i, w[1] : w[3], w[0] : w[2]] = c.bool()
    return out
