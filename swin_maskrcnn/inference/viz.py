"""Drawing sliced results at full resolution without full-image masks per detection.

The picture is the image downscaled so that its long side is at most ``max_side`` (huge images
give PNGs a viewer can open); each class's masks are composed into one mask at that size (the
colours are per class, so the overlay looks as with per-instance masks) and drawn with
torchvision's ``draw_segmentation_masks``; boxes, names and scores with
:func:`swin_maskrcnn.apps.visualize.draw_detections` (its palette and style).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["draw_crops", "VIZ_MAX_SIDE"]

#: long side of a --viz picture of a large image (larger images are downscaled for the PNG)
VIZ_MAX_SIDE = 4096


def draw_crops(image: Tensor, boxes: Tensor, labels: Tensor, class_names: Sequence[str], crops: Sequence[Tensor],
               windows: Tensor, scores: Any = None, max_side: int = VIZ_MAX_SIDE, score_thr: float = 0.3) -> Tensor:
    """(3, h, w) uint8 picture of detections with bool mask ``crops`` at ``windows`` on ``image``
    ((3, H, W) uint8), downscaled by ``max_side / max(H, W)`` when that is below 1."""
    from torchvision.utils import draw_segmentation_masks

    from ..apps.visualize import PALETTE, draw_detections

    h, w = int(image.shape[1]), int(image.shape[2])
    f = min(1.0, max_side / max(h, w))
    sh, sw = max(1, round(h * f)), max(1, round(w * f))
    small = image if f == 1.0 else F.interpolate(image[None].float(), size=(sh, sw), mode="area")[0].round().to(torch.uint8)
    labs = [int(v) for v in labels.tolist()]
    present = sorted(set(labs))
    if present:
        layers = torch.zeros(len(present), sh, sw, dtype=torch.bool)
        slot = {lab: i for i, lab in enumerate(present)}
        for lab, crop, win in zip(labs, crops, windows.tolist()):
            x0, y0, x1, y1 = win
            if crop.numel() == 0:
                continue
            if f == 1.0:
                layers[slot[lab], y0:y1, x0:x1] |= crop.bool()
                continue
            a0, b0 = int(x0 * f), int(y0 * f)
            a1, b1 = max(a0 + 1, round(x1 * f)), max(b0 + 1, round(y1 * f))
            part = F.interpolate(crop[None, None].float(), size=(b1 - b0, a1 - a0), mode="area")[0, 0] >= 0.5
            layers[slot[lab], b0:b1, a0:a1] |= part[: sh - b0, : sw - a0]
        colours = [PALETTE[lab % len(PALETTE)] for lab in present]
        small = draw_segmentation_masks(small, layers, alpha=0.5, colors=colours)
    return draw_detections(small, boxes.float() * f, labels, class_names, masks=None, scores=scores, score_thr=score_thr,
                           scale=1 if f < 1.0 else None)  # small images upscaled for legibility, huge ones not
