"""Test-time augmentation settings (``--tta``, ``--tta-scales``): which views of an image to predict.

A view is the image resized by a factor and optionally mirrored left-right. ``--tta`` adds the
mirrored view of every scale; ``--tta-scales F ...`` lists the factors (1.0 is the image as plain
prediction sees it: the model's test resize, or with ``--slice`` the image's own resolution; list
1.0 to keep it). Each view's detections are mapped back to the image (boxes un-mirrored and divided
by the view's per-axis scale, mask probabilities mirrored back and pasted at the image's resolution)
and fused with :func:`~swin_maskrcnn.inference.merge.merge_instances` (``fuse``: weighted box fusion,
mask probabilities averaged per merged instance before thresholding). Cost: one forward pass per
view (``len(scales) x (2 if hflip else 1)``, each scale's pass costing about its factor squared).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from .tiling import SliceConfigError

__all__ = ["TTAConfig", "View"]


class View(NamedTuple):
    scale: float
    hflip: bool


@dataclass(frozen=True)
class TTAConfig:
    """``hflip``: add mirrored views; ``scales``: resize factors; ``merge_iou`` / ``merge_metric``: how
    views' detections are matched (mask IoU >= 0.5 by default, class-aware)."""

    hflip: bool = True
    scales: tuple[float, ...] = (1.0,)
    merge_iou: float = 0.5
    merge_metric: str = "iou"

    def __post_init__(self) -> None:
        if not self.scales:
            raise SliceConfigError("--tta-scales needs at least one factor")
        bad = [s for s in self.scales if not float(s) > 0]
        if bad:
            raise SliceConfigError(f"--tta-scales factors must be positive, got {bad}")
        if len(set(self.scales)) != len(self.scales):
            raise SliceConfigError(f"--tta-scales lists a factor twice: {list(self.scales)}")
        if not 0.0 < float(self.merge_iou) <= 1.0:
            raise SliceConfigError(f"TTA merge threshold must be in (0, 1], got {self.merge_iou}")

    def views(self) -> list[View]:
        """The views, plain before mirrored, in the order of ``scales``."""
        return [View(float(s), f) for s in self.scales for f in ((False, True) if self.hflip else (False,))]
