"""One image -> merged :class:`~swin_maskrcnn.inference.instances.Instances`, sliced and/or augmented.

:func:`predict_instances` is what ``Predictor``, ``predict`` and ``evaluate`` call with ``--slice``
or ``--tta``. Per view (:mod:`.tta`; one plain view without TTA):

- sliced (``slicing`` given): the view's image is cut into the tiles of :func:`~.tiling.tile_grid`
  at its own resolution, tiles go through the model ``slicing.batch`` at a time, without resize;
  a tile of a mirrored view is the mirrored tile of the image (no mirrored copy of the whole image);
  each detection is mapped to image coordinates and pasted as a crop clipped to its tile; the tiles'
  detections (with ``with_full_image``, also the resized whole-image prediction's) are merged with
  ``slicing.merge`` / ``merge_metric`` / ``merge_iou`` (class-aware unless ``class_agnostic``);
- not sliced: the view is the image resized to ``test_scale`` x the view's factor, as plain
  prediction does (with no TTA and no slicing, callers use the model's own path instead).

The views' results are then fused (:func:`~.merge.merge_instances` ``fuse``). The image is held as
uint8 (3, H, W); only tiles are converted to float, so a 10,000 x 10,000 image costs its 300 MB
of bytes plus one batch of tiles plus the detections' crops.
"""
from __future__ import annotations

import logging
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import Tensor
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from ..modeling.preprocess import rescale_size
from .instances import Instances, paste_crops
from .merge import merge_instances
from .tiling import SliceConfig, SliceConfigError, Tile, tile_grid
from .tta import TTAConfig, View

log = logging.getLogger(__name__)

__all__ = ["predict_instances", "as_uint8_chw"]


def as_uint8_chw(image: Union[np.ndarray, Tensor]) -> Tensor:
    """(3, H, W) uint8 view of an (H, W, 3) uint8 array or a (3, H, W) uint8 / 0..1 float tensor."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB array, got shape {image.shape}")
        t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    elif isinstance(image, Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a (3, H, W) RGB tensor, got shape {tuple(image.shape)}")
        t = image.detach().cpu()
    else:
        raise TypeError(f"expected a numpy array or a torch tensor, got {type(image).__name__}")
    if t.dtype != torch.uint8:
        t = (t.float() * 255.0).round().clamp(0, 255).to(torch.uint8)
    if t.shape[1] < 1 or t.shape[2] < 1:
        raise SliceConfigError(f"cannot predict an image of size {tuple(t.shape[1:])}")
    return t


def _resize(image: Tensor, h: int, w: int) -> Tensor:
    if (h, w) == (int(image.shape[1]), int(image.shape[2])):
        return image
    return TF.resize(image, [h, w], interpolation=InterpolationMode.BILINEAR, antialias=False)


def _to_image(raw: dict[str, Tensor], view_hw: tuple[int, int], image_hw: tuple[int, int], hflip: bool,
              offset: tuple[int, int], region: tuple[int, int, int, int], inner: tuple[bool, bool, bool, bool]
              ) -> Instances:
    """One model output (boxes in the pixels of the input it saw at ``offset`` of a view of
    ``view_hw``) -> Instances in the image's pixels, crops clipped to ``region`` (view pixels)."""
    boxes = raw["boxes"].detach().float().cpu()
    k = int(boxes.shape[0])
    if k == 0:
        return Instances.empty()
    probs = raw["mask_probs"].detach().float().cpu()
    ox, oy = offset
    rx0, ry0, rx1, ry1 = region
    vh, vw = view_hw
    h, w = image_hw
    # cut: the box reaches a tile edge that lies inside the view (the object may continue beyond it)
    lx, ly, rx, ry = (boxes[:, 0] + ox <= rx0 + 1) & inner[0], (boxes[:, 1] + oy <= ry0 + 1) & inner[1], \
        (boxes[:, 2] + ox >= rx1 - 1) & inner[2], (boxes[:, 3] + oy >= ry1 - 1) & inner[3]
    cut = lx | ly | rx | ry
    b = boxes + boxes.new_tensor([ox, oy, ox, oy])
    reg = [float(rx0), float(ry0), float(rx1), float(ry1)]
    if hflip:
        b = torch.stack([vw - b[:, 2], b[:, 1], vw - b[:, 0], b[:, 3]], 1)
        probs = probs.flip(-1)
        reg = [vw - reg[2], reg[1], vw - reg[0], reg[3]]
    sx, sy = vw / w, vh / h
    b = b / b.new_tensor([sx, sy, sx, sy])  # rescale_boxes' division
    r = torch.tensor([[int(np.floor(reg[0] / sx)), int(np.floor(reg[1] / sy)),
                       min(w, int(np.ceil(reg[2] / sx))), min(h, int(np.ceil(reg[3] / sy)))]], dtype=torch.int64)
    windows, crops = paste_crops(probs, b, r.expand(k, 4))
    return Instances(b, raw["scores"].detach().float().cpu(), raw["labels"].detach().cpu().long(), windows, crops, cut)


def _run_model(model: Any, images: list[Tensor], precision: str) -> list[dict[str, Tensor]]:
    """``detect_raw`` of ``model``, which ``predict_instances`` has made the module of ``precision``."""
    device = next(model.parameters()).device
    with torch.no_grad():
        return model.detect_raw([im.to(device).float() for im in images])


def _tile_pixels(image: Tensor, view_w: int, tile: Tile, hflip: bool) -> Tensor:
    if not hflip:
        return image[:, tile.y0 : tile.y1, tile.x0 : tile.x1]
    return image[:, tile.y0 : tile.y1, view_w - tile.x1 : view_w - tile.x0].flip(-1)


def _sliced_view(model: Any, view_image: Tensor, image_hw: tuple[int, int], view: View, cfg: SliceConfig,
                 precision: str, bar: Any) -> Instances:
    vh, vw = int(view_image.shape[1]), int(view_image.shape[2])
    tiles = tile_grid(vh, vw, cfg.height, cfg.width, cfg.overlap)
    parts = []
    for start in range(0, len(tiles), cfg.batch):
        batch = tiles[start : start + cfg.batch]
        outs = _run_model(model, [_tile_pixels(view_image, vw, t, view.hflip) for t in batch], precision)
        for n, (t, out) in enumerate(zip(batch, outs)):
            inner = (t.x0 > 0, t.y0 > 0, t.x1 < vw, t.y1 < vh)
            inst = _to_image(out, (vh, vw), image_hw, view.hflip, (t.x0, t.y0), tuple(t), inner)
            parts.append(inst.with_source(start + n))
        if bar is not None:
            bar.update(len(batch))
    return Instances.cat(parts)


def _resized_view(model: Any, image: Tensor, image_hw: tuple[int, int], scale: tuple[int, int], factor: float,
                  hflip: bool, precision: str) -> Instances:
    h, w = image_hw
    target = (max(1, int(round(scale[0] * factor))), max(1, int(round(scale[1] * factor))))
    (nw, nh), _ = rescale_size((w, h), target)
    view = _resize(image, nh, nw)
    if hflip:
        view = view.flip(-1)
    (out,) = _run_model(model, [view], precision)
    return _to_image(out, (nh, nw), image_hw, hflip, (0, 0), (0, 0, nw, nh), (False, False, False, False))


def predict_instances(
    model: Any,
    image: Union[np.ndarray, Tensor],
    slicing: Optional[SliceConfig] = None,
    tta: Optional[TTAConfig] = None,
    test_scale: Optional[tuple[int, int]] = None,
    precision: str = "fp32",
    progress: bool = False,
) -> Instances:
    """Merged detections of one image (see the module docstring), sorted by score.

    ``test_scale`` is the (long, short) resize of the whole-image views (unsliced TTA views and
    ``with_full_image``; default the model's ``cfg.test_scale``, else mmdet's 1333 x 800).
    ``progress`` shows a bar over the tiles (or views). ``precision='bf16'`` runs a bf16 copy of
    ``model`` (:func:`~swin_maskrcnn.modeling.acceleration.inference_model`; pass a bf16 model, e.g.
    one from it, when predicting many images, so that it is converted once)."""
    if slicing is None and tta is None:
        raise SliceConfigError("predict_instances needs slicing and/or tta settings")
    from ..modeling.acceleration import inference_model

    model = inference_model(model, precision)  # bf16: a bf16 copy (the model itself when already bf16)
    img = as_uint8_chw(image)
    h, w = int(img.shape[1]), int(img.shape[2])
    mask_thr = float(model.cfg.roi.mask_thr)
    scale = test_scale or getattr(model.cfg, "test_scale", None) or (1333, 800)
    views = tta.views() if tta is not None else [View(1.0, False)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        total = len(views)
        if slicing is not None:
            total = 0
            for v in views:
                vh, vw = (h, w) if v.scale == 1.0 else (max(1, round(h * v.scale)), max(1, round(w * v.scale)))
                total += len(tile_grid(vh, vw, slicing.height, slicing.width, slicing.overlap))
        bar = tqdm(total=total, desc="tiles" if slicing is not None else "views", unit="tile" if slicing else "view",
                   leave=False)
    per_view = []
    try:
        for v in views:
            if slicing is None:
                per_view.append(_resized_view(model, img, (h, w), scale, v.scale, v.hflip, precision))
                if bar is not None:
                    bar.update(1)
                continue
            vimg = img if v.scale == 1.0 else _resize(img, max(1, round(h * v.scale)), max(1, round(w * v.scale)))
            inst = _sliced_view(model, vimg, (h, w), v, slicing, precision, bar)
            if slicing.with_full_image:
                full = _resized_view(model, img, (h, w), scale, 1.0, v.hflip, precision).with_source(-1)
                inst = Instances.cat([inst, full])
            per_view.append(merge_instances(inst, slicing.merge, slicing.merge_iou, slicing.merge_metric,
                                            slicing.class_agnostic, mask_thr))
    finally:
        if bar is not None:
            bar.close()
    if len(per_view) == 1:
        return per_view[0]
    assert tta is not None
    return merge_instances(Instances.cat([p.with_source(n) for n, p in enumerate(per_view)]), "fuse", tta.merge_iou, tta.merge_metric,
                           slicing.class_agnostic if slicing is not None else False, mask_thr, views=len(views))
