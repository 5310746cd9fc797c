"""Run an exported OpenVINO IR (``export --format openvino``) with numpy only, like
:mod:`~swin_maskrcnn.apps.onnx_runtime` does with onnxruntime.

    from swin_maskrcnn.apps.openvino_runtime import OpenVinoPredictor
    predictor = OpenVinoPredictor("model.xml", threads=1, precision="bf16")
    result = predictor(image)   # (H, W, 3) uint8 RGB -> boxes, scores, labels, masks (N, H, W) bool

``precision`` is OpenVINO's ``INFERENCE_PRECISION_HINT`` on the CPU: ``fp32`` (``f32``) or ``bf16``
(needs a CPU with AMX-BF16 / AVX512-BF16, else OpenVINO itself falls back to f32); ``auto`` picks
bf16 where the CPU has them (:func:`~swin_maskrcnn.modeling.acceleration.cpu_has_native_bf16`).
Importing this module imports numpy only; openvino is imported when a predictor is built.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from .onnx_runtime import DEFAULT_MASK_THR, paste_masks

log = logging.getLogger(__name__)

__all__ = ["OpenVinoPredictor", "OV_PRECISION"]

#: our precision names -> OpenVINO's INFERENCE_PRECISION_HINT values
OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}
OUTPUTS = ("boxes", "scores", "labels", "masks")


def _cpu_bf16() -> bool:
    """Native bf16 from /proc/cpuinfo (without importing torch: the same flags as
    :func:`swin_maskrcnn.modeling.acceleration.cpu_has_native_bf16`)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return bool({"amx_bf16", "avx512_bf16"} & set(value.split()))
    return False


class OpenVinoPredictor:
    """An exported IR compiled for OpenVINO's CPU plugin: ``predictor(image)`` -> one image's detections.

    Same inputs and outputs as :class:`~swin_maskrcnn.apps.onnx_runtime.OnnxPredictor` (``image`` an
    (H, W, 3) uint8 RGB array at the size to detect at; ``boxes``, ``scores``, ``labels``,
    ``mask_probs`` (N, 28, 28) and pasted ``masks``); :attr:`metadata` is the JSON written beside the
    IR (``model.json``). ``threads``: ``INFERENCE_NUM_THREADS`` (default: OpenVINO's).
    """

    def __init__(self, path: Union[str, Path], threads: Optional[int] = None, precision: str = "fp32",
                 device: str = "CPU"):
        try:
            import openvino as ov
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("running an OpenVINO model needs openvino: pip install 'swin-maskrcnn[openvino]'") from e
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no OpenVINO model at {path}")
        if precision == "auto":
            precision = "bf16" if _cpu_bf16() else "fp32"
            log.info("precision auto -> %s for OpenVINO on %s", precision, device)
        if precision not in OV_PRECISION:
            raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
        self.precision = precision
        config: dict[str, str] = {"INFERENCE_PRECISION_HINT": OV_PRECISION[precision]}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = str(int(threads))
        self.core = ov.Core()
        self.compiled = self.core.compile_model(self.core.read_model(str(path)), device, config)
        self._outputs = [self.compiled.output(name) for name in OUTPUTS]
        meta = path.with_suffix(".json")
        self.metadata: dict[str, Any] = json.loads(meta.read_text()) if meta.is_file() else {}
        if not self.metadata:
            log.warning("%s has no metadata JSON beside it (%s): default mask threshold, no class names", path, meta.name)
        self.mask_thr = float(self.metadata.get("mask_thr", DEFAULT_MASK_THR))

    def raw(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """The graph's outputs for one (H, W, 3) uint8 RGB image (masks at 28x28)."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}")
        res = self.compiled({"image": np.ascontiguousarray(image.transpose(2, 0, 1))})
        boxes, scores, labels, masks = (np.asarray(res[o]) for o in self._outputs)
        return {"boxes": boxes, "scores": scores, "labels": labels, "mask_probs": masks}

    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        out = self.raw(image)
        out["masks"] = paste_masks(out["mask_probs"], out["boxes"], image.shape[0], image.shape[1], self.mask_thr)
        return out
