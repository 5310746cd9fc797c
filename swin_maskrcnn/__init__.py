"""swin_maskrcnn: a standalone Swin Transformer Mask R-CNN reproducing mmdetection's outputs."""
from .modeling.config import LossConfig, ModelConfig, RoIConfig, RPNConfig, tiny_model_config
from .checkpoint.loader import load_model
from .modeling.detector import SwinMaskRCNN

__all__ = ["SwinMaskRCNN", "ModelConfig", "LossConfig", "RPNConfig", "RoIConfig", "tiny_model_config", "load_model"]
__version__ = "0.1.0"
