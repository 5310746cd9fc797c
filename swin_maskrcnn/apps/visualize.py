"""Drawing detections over an image: ``predict --viz`` and the demo's overlays use this one function.

Masks are blended with :func:`torchvision.utils.draw_segmentation_masks`, boxes and ``name score``
labels drawn with :func:`torchvision.utils.draw_bounding_boxes`, each class in its own colour.
Imports torch, torchvision and PIL only.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

__all__ = ["PALETTE", "draw_detections", "add_title", "save_png"]

#: class colours (RGB), label i uses PALETTE[i % len(PALETTE)]
PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]


def _as_chw_uint8(image: Union[np.ndarray, Tensor]) -> Tensor:
    t = torch.as_tensor(np.asarray(image)) if not isinstance(image, Tensor) else image
    if t.ndim != 3:
        raise ValueError(f"expected an image (H, W, 3) or (3, H, W), got shape {tuple(t.shape)}")
    if t.shape[0] != 3 and t.shape[-1] == 3:
        t = t.permute(2, 0, 1)
    if t.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 image, got {t.dtype}")
    return t.contiguous().cpu()


def draw_detections(
    image: Union[np.ndarray, Tensor],
    boxes: Any,
    labels: Any,
    class_names: Sequence[str],
    masks: Optional[Any] = None,
    scores: Optional[Any] = None,
    scale: int = 1,
    alpha: float = 0.5,
) -> Tensor:
    """(3, H*scale, W*scale) uint8 image with the detections drawn.

    ``boxes`` (K, 4) xyxy in image pixels, ``labels`` (K,) indices into ``class_names``, ``masks``
    (K, H, W) bool or None, ``scores`` (K,) or None (labels then show only the name). ``scale``
    enlarges the picture (nearest) before drawing, so small images stay legible."""
    img = _as_chw_uint8(image)
    image_hw = (int(img.shape[1]), int(img.shape[2]))
    boxes_t = torch.as_tensor(np.asarray(boxes, dtype=np.float32)).reshape(-1, 4)
    labels_l = [int(v) for v in np.asarray(labels).reshape(-1)]
    k = len(labels_l)
    if boxes_t.shape[0] != k:
        raise ValueError(f"{boxes_t.shape[0]} boxes for {k} labels")
    if scale != 1:
        img = img.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
        boxes_t = boxes_t * scale
    if k == 0:
        return img
    colours = [PALETTE[lab % len(PALETTE)] for lab in labels_l]
    if masks is not None:
        m = (masks if isinstance(masks, Tensor) else torch.as_tensor(np.asarray(masks))).cpu().bool()
        if m.ndim != 3 or m.shape[0] != k or tuple(m.shape[1:]) != tuple(image_hw):
            raise ValueError(f"masks must be ({k}, {image_hw[0]}, {image_hw[1]}), got {tuple(m.shape)}")
        if scale != 1:
            m = m.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
        img = draw_segmentation_masks(img, m, alpha=alpha, colors=colours)
    texts = [str(class_names[lab]) if 0 <= lab < len(class_names) else str(lab) for lab in labels_l]
    if scores is not None:
        texts = [f"{t} {float(s):.2f}" for t, s in zip(texts, np.asarray(scores).reshape(-1))]
    # labels on a filled patch of the class colour, in black or white, whichever reads better
    text_colours = [(0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255) for r, g, b in colours]
    return draw_bounding_boxes(img, boxes_t, labels=texts, colors=colours, width=2, fill_labels=True,
                               label_background_colors=colours, label_colors=text_colours)


def add_title(image: Tensor, title: str, height: int = 14) -> Tensor:
    """``image`` (3, H, W uint8) with a white band of ``height`` px on top holding ``title``."""
    from PIL import Image, ImageDraw

    h, w = int(image.shape[1]), int(image.shape[2])
    out = Image.new("RGB", (w, h + height), (255, 255, 255))
    out.paste(Image.fromarray(image.permute(1, 2, 0).numpy()), (0, height))
    ImageDraw.Draw(out).text((3, 1), title, fill=(0, 0, 0))
    return torch.from_numpy(np.asarray(out)).permute(2, 0, 1).contiguous()


def save_png(image: Tensor, path: Union[str, Path]) -> Path:
    """Write a (3, H, W) uint8 image as PNG (folders created)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(path)
    return path
