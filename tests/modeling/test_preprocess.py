"""Input conversion (swin_maskrcnn.modeling.preprocess.to_chw_255)."""
from __future__ import annotations

import warnings

import numpy as np
import torch
from PIL import Image

from swin_maskrcnn.modeling.preprocess import to_chw_255


def test_read_only_array_from_pil_converts_without_warning():
    rgb = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(rgb))  # the README's example: a read-only view of the PIL buffer
    assert not image.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "non-writable NumPy array" UserWarning would raise here
        out = to_chw_255(image)
    assert out.dtype == torch.float32 and out.shape == (3, 5, 7)
    assert torch.equal(out, torch.from_numpy(rgb.copy()).permute(2, 0, 1).float())
