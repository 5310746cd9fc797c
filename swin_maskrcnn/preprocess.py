"""Image preprocessing inside the model: input conversion, mmdet's normalisation and batching
(pad bottom/right with zeros AFTER normalisation, to a multiple of 32). Resizing is a data transform
(``data.transforms.Resize``), also used by ``SwinMaskRCNN.predict``.
"""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch
from torch import Tensor

ImageLike = Union[np.ndarray, Tensor]


def to_chw_255(image: ImageLike) -> Tensor:
    """(H, W, 3) uint8 array or (3, H, W) tensor -> (3, H, W) float32 on the 0..255 scale.

    uint8 tensors/arrays are taken as 0..255, float tensors as 0..1 (torchvision's convention).
    """
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB array, got shape {image.shape}")
        t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
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
) -> tuple[Tensor, list[tuple[int, int]], list[tuple[int, int]]]:
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
    return batch, shapes, pad_shapes
