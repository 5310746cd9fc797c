"""Drawing detections over an image: ``predict --viz``, the demo's overlays, ``inspect``'s gallery
and ``analyze``'s worst images and report use these functions.

Masks are blended with :func:`torchvision.utils.draw_segmentation_masks` and boxes drawn with
:func:`torchvision.utils.draw_bounding_boxes`, each class in its own colour. Small images are drawn
upscaled (nearest) to at least :data:`MIN_LONG_SIDE` px on the long side, and labels are written
with a scalable font on a patch of the box's colour, moved down when they would cover an earlier
label, so that names and scores stay legible on 128 px images. Only detections scoring at least the
display threshold (:data:`DISPLAY_SCORE_THR`, 0.3; the ``--display-thr`` option) are drawn; the JSON
files keep every detection. Imports torch, torchvision and PIL only.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

__all__ = ["PALETTE", "DISPLAY_SCORE_THR", "MIN_LONG_SIDE", "display_scale", "draw_detections", "draw_labels",
           "add_title", "save_png"]

#: class colours (RGB), label i uses PALETTE[i % len(PALETTE)]
PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]
#: detections below this score are not drawn (predict --viz, the analyze report); the JSON keeps them
DISPLAY_SCORE_THR = 0.3
#: images whose long side is shorter are drawn upscaled by an integer factor to at least this size
MIN_LONG_SIDE = 512
#: label text height in px of the drawn picture
FONT_SIZE = 15


def display_scale(height: int, width: int, min_long_side: int = MIN_LONG_SIDE) -> int:
    """Integer upscaling factor that brings the long side to at least ``min_long_side`` (1 for large images)."""
    return max(1, math.ceil(min_long_side / max(1, height, width)))


def _as_chw_uint8(image: Union[np.ndarray, Tensor]) -> Tensor:
    t = torch.as_tensor(np.asarray(image)) if not isinstance(image, Tensor) else image
    if t.ndim != 3:
        raise ValueError(f"expected an image (H, W, 3) or (3, H, W), got shape {tuple(t.shape)}")
    if t.shape[0] != 3 and t.shape[-1] == 3:
        t = t.permute(2, 0, 1)
    if t.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 image, got {t.dtype}")
    return t.contiguous().cpu()


def _text_colour(rgb: Sequence[int]) -> tuple[int, int, int]:
    r, g, b = rgb[:3]
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def draw_labels(image: Tensor, boxes: Tensor, texts: Sequence[str], colours: Sequence[Sequence[int]],
                font_size: int = FONT_SIZE, max_shift: int = 2) -> Tensor:
    """``texts`` written at the boxes' top-left corners (above the box when there is room) on
    patches of ``colours``; a label that would overlap an earlier one moves down below it, by at most
    ``max_shift`` label heights: labels never cover each other, and in a dense scene a label with no
    free place near its box is left out (earlier texts, i.e. higher scores when sorted, win)."""
    from PIL import Image, ImageDraw, ImageFont

    if not texts:
        return image
    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    draw = ImageDraw.Draw(pil)
    font = ImageFont.load_default(size=font_size)
    h, w = int(image.shape[1]), int(image.shape[2])
    placed: list[tuple[int, int, int, int]] = []
    for (x0, y0, _, _), text, colour in zip(boxes.tolist(), texts, colours):
        if not text:
            continue
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left + 4, bottom - top + 4
        x = int(min(max(0, x0), max(0, w - tw)))
        y = int(y0 - th if y0 - th >= 0 else max(0, y0))
        y_first = y
        for _ in range(len(placed) + 1):
            hit = next((p for p in placed if x < p[2] and p[0] < x + tw and y < p[3] and p[1] < y + th), None)
            if hit is None:
                break
            y = hit[3]
        y = min(y, max(0, h - th))
        if y - y_first > max_shift * th or any(
            x < p[2] and p[0] < x + tw and y < p[3] and p[1] < y + th for p in placed
        ):
            continue  # dense scene: no free place near its box; the box and mask colour still show it
        placed.append((x, y, x + tw, y + th))
        draw.rectangle((x, y, x + tw - 1, y + th - 1), fill=tuple(colour[:3]))
        draw.text((x + 2 - left, y + 2 - top), text, fill=_text_colour(colour), font=font)
    return torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1).contiguous()


def draw_detections(
    image: Union[np.ndarray, Tensor],
    boxes: Any,
    labels: Any,
    class_names: Sequence[str],
    masks: Optional[Any] = None,
    scores: Optional[Any] = None,
    scale: Optional[int] = None,
    alpha: float = 0.5,
    score_thr: float = DISPLAY_SCORE_THR,
    texts: Optional[Sequence[str]] = None,
    colours: Optional[Sequence[Sequence[int]]] = None,
    width: int = 2,
) -> Tensor:
    """(3, H*scale, W*scale) uint8 image with the detections drawn.

    ``boxes`` (K, 4) xyxy in image pixels, ``labels`` (K,) indices into ``class_names``, ``masks``
    (K, H, W) bool or None, ``scores`` (K,) or None (labels then show only the name, and nothing is
    filtered). Detections with a score below ``score_thr`` are left out. ``scale`` enlarges the
    picture (nearest) before drawing; None picks :func:`display_scale`. ``texts`` / ``colours``
    replace the ``name score`` labels / class colours (one per detection)."""
    img = _as_chw_uint8(image)
    image_hw = (int(img.shape[1]), int(img.shape[2]))
    boxes_t = torch.as_tensor(np.asarray(boxes, dtype=np.float32)).reshape(-1, 4)
    labels_l = [int(v) for v in np.asarray(labels).reshape(-1)]
    k = len(labels_l)
    if boxes_t.shape[0] != k:
        raise ValueError(f"{boxes_t.shape[0]} boxes for {k} labels")
    m = None
    if masks is not None:
        m = (masks if isinstance(masks, Tensor) else torch.as_tensor(np.asarray(masks))).cpu().bool()
        if m.ndim != 3 or m.shape[0] != k or tuple(m.shape[1:]) != tuple(image_hw):
            raise ValueError(f"masks must be ({k}, {image_hw[0]}, {image_hw[1]}), got {tuple(m.shape)}")
    score_l = None if scores is None else [float(s) for s in np.asarray(scores, dtype=np.float64).reshape(-1)]
    keep = list(range(k)) if score_l is None else [i for i in range(k) if score_l[i] >= score_thr]
    scale = display_scale(*image_hw) if scale is None else int(scale)
    if scale != 1:
        img = img.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    if not keep:
        return img
    boxes_t = boxes_t[keep] * scale
    cols = [tuple(colours[i]) if colours is not None else PALETTE[labels_l[i] % len(PALETTE)] for i in keep]
    if m is not None:
        mk = m[keep]
        if scale != 1:
            mk = mk.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
        img = draw_segmentation_masks(img, mk, alpha=alpha, colors=cols)
    if texts is not None:
        txt = [texts[i] for i in keep]
    else:
        txt = [str(class_names[labels_l[i]]) if 0 <= labels_l[i] < len(class_names) else str(labels_l[i]) for i in keep]
        if score_l is not None:
            txt = [f"{t} {score_l[i]:.2f}" for t, i in zip(txt, keep)]
    img = draw_bounding_boxes(img, boxes_t, colors=cols, width=width)
    return draw_labels(img, boxes_t, txt, cols)


def add_title(image: Tensor, title: str, height: Optional[int] = None) -> Tensor:
    """``image`` (3, H, W uint8) with a white band on top holding ``title``."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=FONT_SIZE)
    height = FONT_SIZE + 8 if height is None else height
    h, w = int(image.shape[1]), int(image.shape[2])
    out = Image.new("RGB", (w, h + height), (255, 255, 255))
    out.paste(Image.fromarray(image.permute(1, 2, 0).numpy()), (0, height))
    ImageDraw.Draw(out).text((4, 3), title, fill=(0, 0, 0), font=font)
    return torch.from_numpy(np.asarray(out).copy()).permute(2, 0, 1).contiguous()


def save_png(image: Tensor, path: Union[str, Path]) -> Path:
    """Write a (3, H, W) uint8 image as PNG (folders created)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(path)
    return path
