"""Constants of our checkpoint formats, shared by the writer (:mod:`.native`), the reader
(:mod:`.loader`), the upgrades of older files (:mod:`.compat`) and the Lightning module."""
from __future__ import annotations

__all__ = ["FORMAT", "VERSION", "SAFETENSORS_FORMAT", "META_KEY", "LIGHTNING_PREFIX"]

#: ``format`` entry of our ``torch.save`` checkpoint
FORMAT = "swin_maskrcnn.checkpoint"
#: layout version written by this code; readers refuse newer files, :mod:`.compat` upgrades older ones
VERSION = 1
#: ``format`` entry of our safetensors metadata
SAFETENSORS_FORMAT = "swin_maskrcnn.safetensors"
#: key of our metadata inside a Lightning checkpoint
META_KEY = "swin_maskrcnn"
#: prefix of the SwinMaskRCNN weights inside a Lightning checkpoint's state_dict
LIGHTNING_PREFIX = "model."
