"""Training and test transforms that keep image, boxes, masks and labels aligned.

Every transform is a callable ``t(image, target) -> (image, target)``:

* ``image`` is a ``tv_tensors.Image`` (or plain tensor) of shape (3, H, W), uint8 or float. The
  transforms never change the value range and never normalise; the dataset converts uint8 to
  float in [0, 1] once, after the transforms, and the model normalises (mean/std) itself.
* ``target`` is a dict with the per-instance keys ``boxes`` (N, 4) xyxy in pixels, ``labels``
  (N,) and ``masks`` (N, H, W) uint8, plus the bookkeeping keys ``orig_size`` (h0, w0),
  ``img_size`` (h, w) of the current image and ``scale_factor`` (w_scale, h_scale), the
  cumulative resize factor *relative to the original image* (a crop does not change it; at test
  time, with a single resize, it is exactly new / original per axis). Missing bookkeeping keys
  are initialised from the image the first time a transform sees the target.
* optionally ``ignore_boxes`` (K, 4) xyxy: "don't care" regions (crowds, ``data.crowd: ignore``).
  They follow every geometric transform like ``boxes`` (resized, flipped, cropped and clipped to
  the image) and one that becomes empty (zero width or height) is dropped; they are not instances
  (no label, no mask), so dropping an instance never touches them.

The geometric work is done by ``torchvision.transforms.v2.functional`` on ``tv_tensors``
(``Image``, ``BoundingBoxes``, ``Mask``); only the parameters are computed here, where mmdet's
exact semantics need it:

* keep-ratio resize uses mmcv's ``rescale_size`` (scale = min(long_max / long, short_max / short),
  new size = ``int(x * scale + 0.5)``), the image bilinear (no antialias, like cv2's
  INTER_LINEAR), masks nearest (``floor`` source index, like cv2's INTER_NEAREST), boxes scaled by
  the actual per-axis ratios new_w / w and new_h / h, then clipped to the image.
* :class:`RandomAbsoluteCrop` is mmdet's ``RandomCrop(crop_type='absolute_range')``; unlike mmdet
  it also drops instances whose *mask* becomes empty, always removing box, mask, label together.
  Resizing does the same for a mask that a downscale empties (a 1-px sliver left by a crop at
  the border); mmdet keeps such an instance with an all-zero mask target.

Masks may also come as :class:`~.lazy_masks.LazyMasks` (what the COCO dataset passes to a pipeline of
these transforms): resize, flip, crop and instance selection then only compose index maps, and the
dataset writes the dense masks once at the end, bit for bit equal to the dense chain
(``Compose.supports_lazy_masks`` says whether every step of a pipeline handles them).

Randomness comes from torch's global generator (seeded per DataLoader worker by PyTorch), so a run
is reproducible given ``torch.manual_seed`` and the loader seed.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from ..modeling.preprocess import rescale_size
from .lazy_masks import LazyMasks

__all__ = [
    "INSTANCE_KEYS",
    "rescale_size",
    "Compose",
    "Resize",
    "resize_boxes",
    "RandomChoiceResize",
    "RandomHorizontalFlip",
    "RandomAbsoluteCrop",
    "RandomChoice",
    "MMDET_MS_SCALES",
    "MMDET_CROP_PRE_SCALES",
    "build_train_transforms",
    "build_test_transforms",
    "to_float_image",
    "unwrap_target",
]

Target = dict[str, Any]
Transform = Callable[[torch.Tensor, Target], tuple[torch.Tensor, Target]]

#: keys whose first dimension indexes instances; they are filtered together whenever an
#: instance is removed.
INSTANCE_KEYS = ("boxes", "labels", "masks", "ann_ids", "iscrowd", "area")

#: mmdet's multi-scale short sides 480..800 (step 32) with long side <= 1333.
MMDET_MS_SCALES: list[tuple[int, int]] = [(1333, s) for s in range(480, 801, 32)]
#: mmdet's pre-crop short sides of the ms-crop pipeline.
MMDET_CROP_PRE_SCALES: list[tuple[int, int]] = [(1333, 400), (1333, 500), (1333, 600)]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _hw(image: torch.Tensor) -> tuple[int, int]:
    return int(image.shape[-2]), int(image.shape[-1])


def _prepare(image: torch.Tensor, target: Optional[Target]) -> tuple[tv_tensors.Image, Target]:
    """Wraps the inputs as tv_tensors with the current canvas size and fills bookkeeping keys."""
    target = dict(target) if target is not None else {}
    h, w = _hw(image)
    if not isinstance(image, tv_tensors.Image):
        image = tv_tensors.Image(image)
    boxes = target.get("boxes")
    if boxes is None:
        boxes = torch.zeros((0, 4), dtype=torch.float32)
    n = int(boxes.shape[0])
    if not isinstance(boxes, tv_tensors.BoundingBoxes) or tuple(boxes.canvas_size) != (h, w):
        boxes = tv_tensors.BoundingBoxes(
            torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4).as_subclass(torch.Tensor),
            format=tv_tensors.BoundingBoxFormat.XYXY,
            canvas_size=(h, w),
        )
    target["boxes"] = boxes
    masks = target.get("masks")
    if masks is None:
        masks = torch.zeros((n, h, w), dtype=torch.uint8)
    if not isinstance(masks, (tv_tensors.Mask, LazyMasks)):
        masks = tv_tensors.Mask(masks)
    if tuple(masks.shape[-2:]) != (h, w) or masks.shape[0] != n:
        raise ValueError(f"masks of shape {tuple(masks.shape)} do not match {n} boxes on a {h}x{w} image")
    target["masks"] = masks
    if "labels" not in target:
        target["labels"] = torch.zeros((n,), dtype=torch.int64)
    if len(target["labels"]) != n:
        raise ValueError(f"{len(target['labels'])} labels for {n} boxes")
    ignore = target.get("ignore_boxes")
    if ignore is not None and (
        not isinstance(ignore, tv_tensors.BoundingBoxes) or tuple(ignore.canvas_size) != (h, w)
    ):
        target["ignore_boxes"] = tv_tensors.BoundingBoxes(
            torch.as_tensor(ignore, dtype=torch.float32).reshape(-1, 4).as_subclass(torch.Tensor),
            format=tv_tensors.BoundingBoxFormat.XYXY,
            canvas_size=(h, w),
        )
    target.setdefault("orig_size", (h, w))
    target.setdefault("scale_factor", (1.0, 1.0))
    target["img_size"] = (h, w)
    return image, target


def _nonempty_ignore(target: Target) -> Target:
    """Drops the ignore boxes a crop or a clip left with zero width or height."""
    ignore = target.get("ignore_boxes")
    if ignore is not None and ignore.shape[0]:
        keep = ((ignore[:, 2] > ignore[:, 0]) & (ignore[:, 3] > ignore[:, 1])).as_subclass(torch.Tensor)
        if not bool(keep.all()):
            target["ignore_boxes"] = ignore[keep]
    return target


def _select(target: Target, keep: torch.Tensor) -> Target:
    """Keeps the instances where ``keep`` is True, in every per-instance key at once."""
    for key in INSTANCE_KEYS:
        if key in target and target[key] is not None:
            value = target[key]
            if isinstance(value, (torch.Tensor, LazyMasks)):
                target[key] = value[keep]
            else:  # lists (e.g. ann ids kept as python lists)
                idx = keep.nonzero().flatten().tolist()
                target[key] = [value[i] for i in idx]
    return target


def to_float_image(image: torch.Tensor) -> torch.Tensor:
    """uint8 (3,H,W) -> float32 in [0, 1] (divide by 255 exactly once); float input is returned as
    float32 unchanged. Never normalises by mean/std: the model does that."""
    image = image.as_subclass(torch.Tensor) if isinstance(image, tv_tensors.TVTensor) else image
    if image.dtype == torch.uint8:
        return image.to(torch.float32).div_(255.0)
    if image.is_floating_point():
        return image.to(torch.float32)
    raise TypeError(f"unsupported image dtype {image.dtype}")


def unwrap_target(target: Target) -> Target:
    """Returns the target with plain tensors (tv_tensors unwrapped), ``boxes`` float32,
    ``labels`` int64 and ``masks`` uint8, and the bookkeeping values as python tuples."""
    out = dict(target)
    for key, value in target.items():
        if isinstance(value, tv_tensors.TVTensor):
            out[key] = value.as_subclass(torch.Tensor)
    if "boxes" in out:
        out["boxes"] = out["boxes"].to(torch.float32).reshape(-1, 4)
    if out.get("ignore_boxes") is not None:
        out["ignore_boxes"] = out["ignore_boxes"].to(torch.float32).reshape(-1, 4)
    if "labels" in out:
        out["labels"] = out["labels"].to(torch.int64)
    if isinstance(out.get("masks"), LazyMasks):
        out["masks"] = out["masks"].dense()
    if "masks" in out:
        out["masks"] = out["masks"].to(torch.uint8)
    for key in ("orig_size", "img_size"):
        if key in out:
            out[key] = (int(out[key][0]), int(out[key][1]))
    if "scale_factor" in out:
        out["scale_factor"] = (float(out["scale_factor"][0]), float(out["scale_factor"][1]))
    return out


# --------------------------------------------------------------------------------------------
# transforms
# --------------------------------------------------------------------------------------------
class Compose:
    """Applies transforms in order."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def supports_lazy_masks(self) -> bool:
        """Whether every step takes :class:`LazyMasks` (the transforms of this module do; other callables
        get dense masks)."""
        return all(_lazy_ok(t) for t in self.transforms)

    def __call__(self, image: torch.Tensor, target: Optional[Target] = None):
        image, target = _prepare(image, target)
        for t in self.transforms:
            image, target = t(image, target)
        return image, target

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


def _lazy_ok(t: Any) -> bool:
    if isinstance(t, (Compose, RandomChoice)):
        return t.supports_lazy_masks()
    return bool(getattr(t, "lazy_masks", False))


def resize_boxes(boxes: tv_tensors.BoundingBoxes, new_h: int, new_w: int) -> tv_tensors.BoundingBoxes:
    """Boxes (xyxy ``BoundingBoxes`` on their canvas) resized to a (new_h, new_w) canvas as the
    pipeline resizes them: x * new_w / w, y * new_h / h, then clipped to the new image (mmdet's
    ``clip_object_border=True``). The one box rule of :func:`resize_to`; the anchor fit
    (:mod:`swin_maskrcnn.diagnostics.anchor_fit`) calls it without touching any pixel."""
    return F.clamp_bounding_boxes(F.resize(boxes, [new_h, new_w]))


def resize_to(image: torch.Tensor, target: Optional[Target], new_h: int, new_w: int):
    """Resizes image (bilinear, no antialias), masks (nearest) and boxes (per-axis ratio, then
    clipped) to exactly (new_h, new_w), updating ``img_size`` and the cumulative ``scale_factor``."""
    image, target = _prepare(image, target)
    h, w = _hw(image)
    if (new_h, new_w) == (h, w):
        return image, target
    image = F.resize(image, [new_h, new_w], interpolation=InterpolationMode.BILINEAR, antialias=False)
    target["boxes"] = resize_boxes(target["boxes"], new_h, new_w)
    if target.get("ignore_boxes") is not None:
        target["ignore_boxes"] = resize_boxes(target["ignore_boxes"], new_h, new_w)
        target = _nonempty_ignore(target)
    masks = target["masks"]
    if isinstance(masks, LazyMasks):
        resized = masks.resized(new_h, new_w)
        target["masks"] = resized
        if len(masks):  # the same rule as below, on the index maps
            vanished = masks.nonempty() & ~resized.nonempty()
            if bool(vanished.any()):
                target = _select(target, ~vanished)
    elif masks.shape[0] == 0:
        target["masks"] = tv_tensors.Mask(torch.zeros((0, new_h, new_w), dtype=masks.dtype))
    else:
        had_pixels = masks.as_subclass(torch.Tensor).flatten(1).ne(0).any(dim=1)
        target["masks"] = F.resize(masks, [new_h, new_w], interpolation=InterpolationMode.NEAREST)
        # a downscale can miss every pixel of a 1-px sliver (nearest samples floor(j * w / new_w));
        # such an instance would train the mask head on an all-background target: drop it whole
        vanished = had_pixels & ~target["masks"].as_subclass(torch.Tensor).flatten(1).ne(0).any(dim=1)
        if bool(vanished.any()):
            target = _select(target, ~vanished)
    sw, sh = target["scale_factor"]
    target["scale_factor"] = (float(sw) * new_w / w, float(sh) * new_h / h)
    target["img_size"] = (new_h, new_w)
    return image, target


class Resize:
    """mmdet ``Resize``. With ``keep_ratio`` the image is rescaled so that it fits in ``scale``
    (long side <= max(scale), short side <= min(scale)) with mmcv's rounding; without it the image
    is resized to exactly ``scale`` = (w, h)."""

    lazy_masks = True  # takes LazyMasks (Compose.supports_lazy_masks)

    def __init__(self, scale: tuple[int, int] = (1333, 800), keep_ratio: bool = True):
        if len(scale) != 2 or min(scale) <= 0:
            raise ValueError(f"scale must be two positive numbers, got {scale!r}")
        self.scale = (int(scale[0]), int(scale[1]))
        self.keep_ratio = keep_ratio

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """(new_h, new_w) for an input of (h, w)."""
        if self.keep_ratio:
            (nw, nh), _ = rescale_size((w, h), self.scale)
            return nh, nw
        return self.scale[1], self.scale[0]

    def __call__(self, image, target=None):
        h, w = _hw(image)
        nh, nw = self.output_size(h, w)
        return resize_to(image, target, nh, nw)

    def __repr__(self) -> str:
        return f"Resize(scale={self.scale}, keep_ratio={self.keep_ratio})"


class RandomChoiceResize:
    """mmdet ``RandomChoiceResize``: picks one of ``scales`` uniformly, then :class:`Resize`."""

    lazy_masks = True  # takes LazyMasks (Compose.supports_lazy_masks)

    def __init__(self, scales: Sequence[tuple[int, int]], keep_ratio: bool = True):
        if len(scales) == 0:
            raise ValueError("RandomChoiceResize needs at least one scale")
        self.resizes = [Resize(s, keep_ratio=keep_ratio) for s in scales]

    def __call__(self, image, target=None):
        idx = int(torch.randint(len(self.resizes), (1,)).item())
        return self.resizes[idx](image, target)

    def __repr__(self) -> str:
        return f"RandomChoiceResize(scales={[r.scale for r in self.resizes]})"


class RandomHorizontalFlip:
    """Flips image, masks and boxes (x1' = W - x2, x2' = W - x1) with probability ``p``."""

    lazy_masks = True  # takes LazyMasks (Compose.supports_lazy_masks)

    def __init__(self, p: float = 0.5):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"flip probability must be in [0, 1], got {p}")
        self.p = float(p)

    def __call__(self, image, target=None):
        image, target = _prepare(image, target)
        if self.p > 0 and torch.rand(1).item() < self.p:
            image, target = self.flip(image, target)
        return image, target

    @staticmethod
    def flip(image, target=None):
        """Deterministic horizontal flip."""
        image, target = _prepare(image, target)
        image = F.horizontal_flip(image)
        target["boxes"] = F.horizontal_flip(target["boxes"])
        masks = target["masks"]
        target["masks"] = masks.flipped() if isinstance(masks, LazyMasks) else F.horizontal_flip(masks)
        if target.get("ignore_boxes") is not None:
            target["ignore_boxes"] = F.horizontal_flip(target["ignore_boxes"])
        return image, target

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class RandomAbsoluteCrop:
    """mmdet ``RandomCrop(crop_type='absolute_range')``.

    Crop height is a uniform integer in [min(h, lo), min(h, hi)] and width in [min(w, lo),
    min(w, hi)] with ``crop_size = (lo, hi)``; the offset is uniform over the valid positions.
    Boxes are translated and clipped to the crop. An instance disappears (box, mask, label and any
    other per-instance key together) when its clipped box is empty or its cropped mask has no
    pixel left. ``recompute_bbox`` replaces the clipped boxes by the tight boxes of the cropped
    masks (mmdet default: False).

    If ``allow_negative_crop`` is False and an image with instances would lose all of them, mmdet
    discards the sample; here the crop is redrawn up to ``max_tries`` times and, failing that, the
    input is returned uncropped.
    """

    lazy_masks = True  # takes LazyMasks (Compose.supports_lazy_masks)

    def __init__(
        self,
        crop_size: tuple[int, int] = (384, 600),
        allow_negative_crop: bool = True,
        recompute_bbox: bool = False,
        max_tries: int = 10,
    ):
        lo, hi = int(crop_size[0]), int(crop_size[1])
        if lo <= 0 or hi < lo:
            raise ValueError(f"crop_size must be (lo, hi) with 0 < lo <= hi, got {crop_size!r}")
        self.crop_size = (lo, hi)
        self.allow_negative_crop = allow_negative_crop
        self.recompute_bbox = recompute_bbox
        self.max_tries = max(1, int(max_tries))

    def sample_window(self, h: int, w: int) -> tuple[int, int, int, int]:
        """Draws (top, left, height, width) of a crop window."""
        lo, hi = self.crop_size
        ch = int(torch.randint(min(h, lo), min(h, hi) + 1, (1,)).item())
        cw = int(torch.randint(min(w, lo), min(w, hi) + 1, (1,)).item())
        top = int(torch.randint(0, max(h - ch, 0) + 1, (1,)).item())
        left = int(torch.randint(0, max(w - cw, 0) + 1, (1,)).item())
        return top, left, ch, cw

    def __call__(self, image, target=None):
        image, target = _prepare(image, target)
        h, w = _hw(image)
        n = len(target["labels"])
        for _ in range(self.max_tries):
            top, left, ch, cw = self.sample_window(h, w)
            out_image, out_target = self.crop(image, target, top, left, ch, cw)
            if self.allow_negative_crop or n == 0 or len(out_target["labels"]) > 0:
                return out_image, out_target
        return image, target

    def crop(self, image, target, top: int, left: int, height: int, width: int):
        """Deterministic crop of the window (top, left, height, width), which must lie inside
        the image."""
        image, target = _prepare(image, target)
        target = dict(target)
        h, w = _hw(image)
        if top < 0 or left < 0 or top + height > h or left + width > w or height <= 0 or width <= 0:
            raise ValueError(f"crop window {(top, left, height, width)} outside a {h}x{w} image")
        image = F.crop(image, top, left, height, width)
        boxes = F.crop(target["boxes"], top, left, height, width)  # translate + clip to the crop
        masks = target["masks"]
        if isinstance(masks, LazyMasks):
            masks = masks.cropped(top, left, height, width)
            mask_ok = masks.nonempty()
        else:
            masks = F.crop(masks, top, left, height, width)
            mask_ok = (masks.as_subclass(torch.Tensor).flatten(1) != 0).any(dim=1)
        box_ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        keep = box_ok.as_subclass(torch.Tensor).bool() & mask_ok
        target["boxes"], target["masks"] = boxes, masks
        target = _select(target, keep)
        if target.get("ignore_boxes") is not None:
            target["ignore_boxes"] = F.crop(target["ignore_boxes"], top, left, height, width)
            target = _nonempty_ignore(target)
        if self.recompute_bbox and target["masks"].shape[0]:
            if isinstance(target["masks"], LazyMasks):
                target["masks"] = tv_tensors.Mask(target["masks"].dense())
            target["boxes"] = tv_tensors.BoundingBoxes(
                masks_to_boxes(target["masks"]), format="XYXY", canvas_size=(height, width)
            )
        target["img_size"] = (height, width)
        return image, target

    def __repr__(self) -> str:
        return (
            f"RandomAbsoluteCrop(crop_size={self.crop_size}, allow_negative_crop={self.allow_negative_crop}, "
            f"recompute_bbox={self.recompute_bbox})"
        )


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight pixel-edge boxes (x1, y1, x2 + 1, y2 + 1) of binary masks (N, H, W); empty masks
    give (0, 0, 0, 0)."""
    masks = masks.as_subclass(torch.Tensor) if isinstance(masks, tv_tensors.TVTensor) else masks
    n = masks.shape[0]
    out = torch.zeros((n, 4), dtype=torch.float32)
    if n == 0:
        return out
    m = masks.bool()
    rows, cols = m.any(dim=2), m.any(dim=1)  # (N, H), (N, W)
    nonempty = rows.any(dim=1)
    h, w = m.shape[-2:]
    ar_h = torch.arange(h).expand(n, h)
    ar_w = torch.arange(w).expand(n, w)
    big = max(h, w) + 1
    y1 = torch.where(rows, ar_h, big).amin(dim=1)
    y2 = torch.where(rows, ar_h, -1).amax(dim=1) + 1
    x1 = torch.where(cols, ar_w, big).amin(dim=1)
    x2 = torch.where(cols, ar_w, -1).amax(dim=1) + 1
    out[nonempty] = torch.stack([x1, y1, x2, y2], dim=1)[nonempty].float()
    return out


class RandomChoice:
    """mmcv ``RandomChoice``: applies one of ``transforms`` (each a transform or a list of them,
    composed in order), chosen with probabilities ``p`` (uniform by default)."""

    def __init__(self, transforms: Sequence[Union[Transform, Sequence[Transform]]], p: Optional[Sequence[float]] = None):
        if len(transforms) == 0:
            raise ValueError("RandomChoice needs at least one option")
        self.options: list[Transform] = [
            Compose(t) if isinstance(t, (list, tuple)) else t for t in transforms  # type: ignore[arg-type]
        ]
        if p is not None:
            if len(p) != len(self.options) or any(x < 0 for x in p) or sum(p) <= 0:
                raise ValueError(f"invalid probabilities {p!r} for {len(self.options)} options")
            self.p = torch.tensor([float(x) for x in p], dtype=torch.float64)
        else:
            self.p = None

    def supports_lazy_masks(self) -> bool:
        return all(_lazy_ok(t) for t in self.options)

    def __call__(self, image, target=None):
        if self.p is None:
            idx = int(torch.randint(len(self.options), (1,)).item())
        else:
            idx = int(torch.multinomial(self.p, 1).item())
        return self.options[idx](image, target)

    def __repr__(self) -> str:
        return f"RandomChoice({self.options!r}, p={None if self.p is None else self.p.tolist()})"


# --------------------------------------------------------------------------------------------
# presets
# --------------------------------------------------------------------------------------------
def build_train_transforms(
    kind: str = "1x",
    scale: tuple[int, int] = (1333, 800),
    flip_prob: float = 0.5,
    ms_scales: Optional[Sequence[tuple[int, int]]] = None,
    crop_pre_scales: Optional[Sequence[tuple[int, int]]] = None,
    crop_size: tuple[int, int] = (384, 600),
    allow_negative_crop: bool = True,
    crop_recompute_bbox: bool = False,
) -> Compose:
    """The training pipelines of mmdet's Swin Mask R-CNN configs.

    * ``"1x"``: Resize(scale, keep_ratio) -> RandomFlip(flip_prob).
    * ``"ms_crop_3x"``: RandomFlip(flip_prob) -> RandomChoice of
      (a) RandomChoiceResize(ms_scales) or (b) RandomChoiceResize(crop_pre_scales) ->
      RandomAbsoluteCrop(crop_size, allow_negative_crop) -> RandomChoiceResize(ms_scales).
      Defaults: ms_scales = short side 480..800 step 32 with long side <= 1333,
      crop_pre_scales = short side 400/500/600 with long side <= 1333 (``scale`` is not used).
      As in mmdet, a cropped instance keeps its CLIPPED annotation box, which can be looser than
      the cropped mask for non-convex objects; ``crop_recompute_bbox=True`` uses the tight box of
      the cropped mask instead (mmdet's ``recompute_bbox``).
    * ``"none"``: identity: no resize and no random augmentation (``flip_prob`` is ignored); the
      images go to the model at their own size.
    """
    if kind == "1x":
        return Compose([Resize(scale, keep_ratio=True), RandomHorizontalFlip(flip_prob)])
    if kind == "ms_crop_3x":
        ms = list(ms_scales) if ms_scales is not None else list(MMDET_MS_SCALES)
        pre = list(crop_pre_scales) if crop_pre_scales is not None else list(MMDET_CROP_PRE_SCALES)
        return Compose(
            [
                RandomHorizontalFlip(flip_prob),
                RandomChoice(
                    [
                        [RandomChoiceResize(ms)],
                        [
                            RandomChoiceResize(pre),
                            RandomAbsoluteCrop(
                                crop_size, allow_negative_crop=allow_negative_crop, recompute_bbox=crop_recompute_bbox
                            ),
                            RandomChoiceResize(ms),
                        ],
                    ]
                ),
            ]
        )
    if kind == "none":
        return Compose([])
    raise ValueError(f"unknown train transform kind {kind!r}; expected '1x', 'ms_crop_3x' or 'none'")


def build_test_transforms(scale: Optional[tuple[int, int]] = (1333, 800)) -> Compose:
    """mmdet's test pipeline: Resize(scale, keep_ratio), no flip. ``scale=None``: no resize."""
    if scale is None:
        return Compose([])
    return Compose([Resize(scale, keep_ratio=True)])
