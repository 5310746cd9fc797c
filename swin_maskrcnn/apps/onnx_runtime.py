"""Run an exported model without PyTorch: numpy mask pasting and a small onnxruntime wrapper.

Importing this module imports numpy only (onnxruntime is imported when an :class:`OnnxPredictor` is
built), so a deployment needs ``numpy`` and ``onnxruntime``, not torch::

    from swin_maskrcnn.apps.onnx_runtime import OnnxPredictor
    predictor = OnnxPredictor("model.onnx")
    result = predictor(image)   # (H, W, 3) uint8 RGB -> boxes, scores, labels, masks (N, H, W) bool

:func:`paste_masks` is the numpy twin of the model's own pasting (mmdet's ``_do_paste_mask``, CPU
path): each 28x28 probability map is resampled bilinearly over its box with pixel centres at +0.5
(``grid_sample(align_corners=False)`` with zero padding), only inside the box grown by one pixel,
and thresholded with ``>=``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

DEFAULT_MASK_THR = 0.5


def _bilinear_zero_padded(mask: np.ndarray, ix: np.ndarray, iy: np.ndarray) -> np.ndarray:
    """``mask`` (M, M) sampled at source coordinates ``iy[:, None]``, ``ix[None, :]``; outside = 0.

    The same corner weights as PyTorch's ``grid_sample`` (bilinear, zeros padding), in float32.
    """
    h, w = mask.shape
    x0 = np.floor(ix)
    y0 = np.floor(iy)
    x0i, y0i = x0.astype(np.int64), y0.astype(np.int64)
    wx1, wy1 = (ix - x0).astype(np.float32), (iy - y0).astype(np.float32)
    wx0, wy0 = np.float32(1) - wx1, np.float32(1) - wy1
    out = np.zeros((iy.shape[0], ix.shape[0]), dtype=np.float32)
    for yi, wy in ((y0i, wy0), (y0i + 1, wy1)):
        vy = (yi >= 0) & (yi < h)
        for xi, wx in ((x0i, wx0), (x0i + 1, wx1)):
            vx = (xi >= 0) & (xi < w)
            vals = mask[np.clip(yi, 0, h - 1)[:, None], np.clip(xi, 0, w - 1)[None, :]]
            vals = np.where(vy[:, None] & vx[None, :], vals, np.float32(0))
            out += (wy[:, None] * wx[None, :]) * vals
    return out


def paste_masks(
    masks: np.ndarray, boxes: np.ndarray, height: int, width: int, threshold: float = DEFAULT_MASK_THR
) -> np.ndarray:
    """Paste (N, M, M) mask probabilities at (N, 4) xyxy ``boxes`` into (N, height, width) bool masks.

    Matches ``model.predict``'s masks (``modeling.postprocess.paste_masks``): pixels more than
    one pixel outside a box stay background, and a pixel is foreground when its resampled probability
    is ``>= threshold``.
    """
    masks = np.asarray(masks, dtype=np.float32)
    boxes = np.asarray(boxes, dtype=np.float32)
    if masks.ndim != 3 or boxes.shape != (masks.shape[0], 4):
        raise ValueError(f"expected masks (N, M, M) and boxes (N, 4), got {masks.shape} and {boxes.shape}")
    n, mh, mw = masks.shape
    out = np.zeros((n, height, width), dtype=bool)
    for i in range(n):
        bx0, by0, bx1, by1 = boxes[i]
        xs = max(int(math.floor(bx0)) - 1, 0)
        ys = max(int(math.floor(by0)) - 1, 0)
        xe = min(int(math.ceil(bx1)) + 1, width)
        ye = min(int(math.ceil(by1)) + 1, height)
        if xe <= xs or ye <= ys:
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            gx = (np.arange(xs, xe, dtype=np.float32) + np.float32(0.5) - bx0) / (bx1 - bx0) * np.float32(2) - np.float32(1)
            gy = (np.arange(ys, ye, dtype=np.float32) + np.float32(0.5) - by0) / (by1 - by0) * np.float32(2) - np.float32(1)
        gx = np.where(np.isinf(gx), np.float32(0), gx)
        gy = np.where(np.isinf(gy), np.float32(0), gy)
        # grid_sample's unnormalisation with align_corners=False: ((g + 1) * size - 1) / 2
        ix = (gx + np.float32(1)) * np.float32(mw / 2) - np.float32(0.5)
        iy = (gy + np.float32(1)) * np.float32(mh / 2) - np.float32(0.5)
        out[i, ys:ye, xs:xe] = _bilinear_zero_padded(masks[i], ix, iy) >= threshold
    return out


class OnnxPredictor:
    """An exported model in an onnxruntime session: ``predictor(image)`` -> one image's detections.

    ``image`` is an (H, W, 3) uint8 RGB array at the size it should be detected at (no resize).
    Returns ``boxes`` (N, 4) xyxy, ``scores`` (N,), ``labels`` (N,) 0-based, ``mask_probs``
    (N, 28, 28) and ``masks`` (N, H, W) bool pasted with the model's mask threshold. The threshold,
    class names and category ids the exporter stored in the model's metadata are in
    :attr:`metadata`.
    """

    def __init__(self, path: Union[str, Path], threads: Optional[int] = None, providers: Optional[list[str]] = None):
        try:
            import onnxruntime as ort
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("running an ONNX model needs onnxruntime: pip install onnxruntime") from e
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no ONNX model at {path}")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        self.metadata: dict[str, Any] = {k: json.loads(v) for k, v in meta.items()}
        self.mask_thr = float(self.metadata.get("mask_thr", DEFAULT_MASK_THR))

    def raw(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """The graph's outputs for one (H, W, 3) uint8 RGB image (masks at 28x28)."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}")
        boxes, scores, labels, masks = self.session.run(
            ["boxes", "scores", "labels", "masks"], {"image": np.ascontiguousarray(image.transpose(2, 0, 1))}
        )
        return {"boxes": boxes, "scores": scores, "labels": labels, "mask_probs": masks}

    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        out = self.raw(image)
        out["masks"] = paste_masks(out["mask_probs"], out["boxes"], image.shape[0], image.shape[1], self.mask_thr)
        return out
