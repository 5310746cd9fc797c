"""Image preprocessing inside the model: input conversion, mmdet's test-time resize (keep-ratio with
mmcv's rounding), normalisation and batching (pad bottom/right with zeros AFTER normalisation, to a
multiple of 32). The data pipeline's ``Resize`` uses the same :func:`rescale_size`, so training,
evaluation and ``predict`` size images identically.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence, Union

import numpy as np
import torch
from torch import Tensor
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

ImageLike = Union[np.ndarray, Tensor]


class ImageBatch(NamedTuple):
    """A normalised, padded batch and the sizes the heads need (unpacks as a 3-tuple)."""

    tensor: Tensor  # (B, 3, H_pad, W_pad), normalised, zeros beyond each image
    image_sizes: list[tuple[int, int]]  # each image's own (h, w): boxes are clipped to it
    pad_shapes: list[tuple[int, int]]  # each (h, w) rounded up to the size divisor: valid anchors


def rescale_size(old_size: tuple[int, int], scale: Union[float, tuple[int, int]]) -> tuple[tuple[int, int], float]:
    """mmcv's ``rescale_size``: ``old_size`` is (w, h); returns ((new_w, new_h), scale_factor).

    With a tuple ``scale`` the order of its two numbers does not matter: the larger bounds the long
    side, the smaller the short side. New sizes are ``int(x * s + 0.5)`` (at least 1 px here).
    """
    w, h = int(old_size[0]), int(old_size[1])
    if w <= 0 or h <= 0:
        raise ValueError(f"invalid image size (w={w}, h={h})")
    if isinstance(scale, (int, float)):
        s = float(scale)
    else:
        if len(scale) != 2:
            raise ValueError(f"scale must be a number or a pair, got {scale!r}")
        long_edge, short_edge = max(scale), min(scale)
        s = min(long_edge / max(h, w), short_edge / min(h, w))
    if s <= 0:
        raise ValueError(f"invalid scale factor {s} from scale {scale!r}")
    return (max(1, int(w * s + 0.5)), max(1, int(h * s + 0.5))), s


def resize_keep_ratio(image_255: Tensor, scale: tuple[int, int]) -> Tensor:
    """mmdet's test ``Resize(scale, keep_ratio=True)`` of one (3, H, W) 0..255 image.

    Like mmdet's pipeline it resizes the uint8 image (bilinear, no antialias) and returns float32.
    """
    h, w = int(image_255.shape[1]), int(image_255.shape[2])
    (nw, nh), _ = rescale_size((w, h), scale)
    as_uint8 = image_255.round().clamp(0, 255).to(torch.uint8)
    if (nh, nw) == (h, w):
        return as_uint8.float()
    return TF.resize(as_uint8, [nh, nw], interpolation=InterpolationMode.BILINEAR, antialias=False).float()


def to_chw_255(image: ImageLike) -> Tensor:
    """(H, W, 3) uint8 array or (3, H, W) tensor -> (3, H, W) float32 on the 0..255 scale.

    uint8 tensors/arrays are taken as 0..255, float tensors as 0..1 (torchvision's convention).
    """
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB array, got shape {image.shape}")
        arr = np.ascontiguousarray(image)
        if not arr.flags.writeable:  # np.asarray(PIL image) is read-only: torch warns on sharing it
            arr = arr.copy()
        t = torch.from_numpy(arr).permute(2, 0, 1)
    elif isinstance(image, Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a (3, H, W) RGB tensor, got shape {tuple(image.shape)}")
        t = image
    else:
        raise TypeError(f"expected a numpy array or a torch tensor, got {type(image).__name__}")
    if t.dtype == torch.uint8:
        return t.float()
    return t.float() * 255.0


def normalize_and_pad(
    images: Sequence[Tensor], mean: Sequence[float], std: Sequence[float], size_divisor: int
) -> ImageBatch:
    """Stack 0..255 images into a normalised batch padded with zeros to a multiple of ``size_divisor``.

    Returns the batch, each image's own (h, w), and each image's own size rounded up to the divisor
    (mmdet's ``pad_shape``, which decides the valid anchors).
    """
    shapes = [(int(im.shape[1]), int(im.shape[2])) for im in images]
    div = size_divisor

    def up(x: int) -> int:
        return int(np.ceil(x / div)) * div

    bh = up(max(s[0] for s in shapes))
    bw = up(max(s[1] for s in shapes))
    device = images[0].device
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(3, 1, 1)
    batch = images[0].new_zeros(len(images), 3, bh, bw, dtype=torch.float32)
    for i, im in enumerate(images):
        batch[i, :, : shapes[i][0], : shapes[i][1]] = (im.float() - m) / s
    pad_shapes = [(up(h), up(w)) for h, w in shapes]
    return ImageBatch(batch, shapes, pad_shapes)
