"""swin_maskrcnn: a standalone Swin Transformer Mask R-CNN reproducing mmdetection's outputs.

The public names load lazily (PEP 562), so ``import swin_maskrcnn.apps.onnx_runtime`` (numpy and
onnxruntime only) works where torch is not installed; ``from swin_maskrcnn import SwinMaskRCNN``
imports torch as before.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    from .apps.predict import Predictor
    from .checkpoint.loader import load_model
    from .errors import InputError
    from .modeling.config import LossConfig, ModelConfig, RoIConfig, RPNConfig, tiny_model_config
    from .modeling.detector import SwinMaskRCNN
    from .modeling.meta import ModelMeta

_LAZY = {
    "SwinMaskRCNN": ".modeling.detector",
    "ModelConfig": ".modeling.config",
    "LossConfig": ".modeling.config",
    "RPNConfig": ".modeling.config",
    "RoIConfig": ".modeling.config",
    "tiny_model_config": ".modeling.config",
    "load_model": ".checkpoint.loader",
    "Predictor": ".apps.predict",
    "InputError": ".errors",
    "ModelMeta": ".modeling.meta",
}

__all__ = ["SwinMaskRCNN", "ModelConfig", "LossConfig", "RPNConfig", "RoIConfig", "tiny_model_config", "load_model", "Predictor",
           "InputError", "ModelMeta"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
