"""Optional speed-ups that change nothing in the model's definition: ``torch.compile`` of the dense
part and bf16 autocast for inference.

* :func:`compile_dense` compiles the backbone and the FPN in place (``nn.Module.compile``: the
  state_dict keys stay the same, so checkpoints are unaffected). Only the dense part is compiled:
  proposals, NMS, RoI sampling and mask pasting have data-dependent shapes and would recompile or
  break the graph on every image. Compilation happens on the first forward of each input size
  (``dynamic=None``: a second size makes the graph shape-generic); its cost and measured effect
  are in ``docs/performance.md``.
* :func:`inference_autocast` is ``torch.autocast`` with bf16 on the model's device, or a no-op.
"""
from __future__ import annotations

import contextlib
import logging
from typing import ContextManager, Literal, Optional

import torch
from torch import nn

from .config import COMPILE_MODES

log = logging.getLogger(__name__)


def compile_dense(model: nn.Module, mode: Optional[str] = "default") -> nn.Module:
    """``torch.compile`` the ``backbone`` and ``neck`` of a :class:`SwinMaskRCNN` in place (a no-op
    for ``mode=None``); returns the model."""
    if mode is None:
        return model
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown torch.compile mode {mode!r}; one of {', '.join(COMPILE_MODES)}")
    for name in ("backbone", "neck"):
        part = getattr(model, name, None)
        if not isinstance(part, nn.Module):
            raise TypeError(f"compile_dense needs a model with a '{name}' module, got {type(model).__name__}")
        part.compile(mode=mode)
    log.info("torch.compile(mode=%r) of backbone and neck: compiled on the first forward of each input size", mode)
    return model


def inference_autocast(device: torch.device | str, precision: Literal["fp32", "bf16"] = "fp32") -> ContextManager:
    """bf16 autocast on ``device``'s type for ``precision='bf16'``, else a no-op context."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
