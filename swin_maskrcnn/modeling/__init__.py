"""The network: preprocess -> Swin backbone -> FPN -> RPN -> RoI heads -> postprocess.

Imports only torch, torchvision and itself (never data, training, apps or Lightning), so loading a
model and predicting stays light.
"""
from .config import LossConfig, ModelConfig, RoIConfig, RPNConfig, tiny_model_config
from .detector import SwinMaskRCNN

__all__ = ["SwinMaskRCNN", "ModelConfig", "LossConfig", "RPNConfig", "RoIConfig", "tiny_model_config"]
