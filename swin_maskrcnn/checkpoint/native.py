"""Our checkpoint formats (writing; :mod:`.loader` reads every format).

Own format (``save_checkpoint``), a ``torch.save`` of a plain dict that loads with
``torch.load(weights_only=True)``::

    {"format": "swin_maskrcnn.checkpoint", "version": 1,
     "state_dict": {...},                      # SwinMaskRCNN.state_dict(), CPU tensors
     "model_config": {...},                    # ModelConfig.model_dump(mode="json")
     "train_config": {...} | None,             # TrainConfig.model_dump(mode="json") when known
     "class_names": [...],                     # label i -> name
     "cat_id_to_label": {cat_id: label, ...},  # dataset category id -> contiguous label
     "global_step": int | None}

A Lightning ``.ckpt`` written by :class:`~swin_maskrcnn.training.module.DetectionModule` carries
the same metadata under the key ``"swin_maskrcnn"`` and the weights under ``state_dict`` with the
prefix ``model.``.

``save_safetensors`` writes the same weights as a ``.safetensors`` file (no pickle at all) with the
metadata as JSON strings under the same keys (``format`` = ``swin_maskrcnn.safetensors``).

Every write is atomic: the file is written next to the target, fsynced, then renamed over it, so a
crash never leaves a truncated checkpoint in place of a good one
(:class:`swin_maskrcnn.training.checkpoint_io.AtomicCheckpointIO` does the same for Lightning's).
This module imports no Lightning: loading weights for inference needs only torch.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from ..io_utils import atomic_write
from ..modeling.config import ModelConfig
from .format import FORMAT, META_KEY, SAFETENSORS_FORMAT, VERSION
from .safe_load import CheckpointError

log = logging.getLogger(__name__)

__all__ = [
    "FORMAT",
    "META_KEY",
    "CheckpointError",
    "build_meta",
    "save_checkpoint",
    "save_safetensors",
    "atomic_torch_save",
    "SAFETENSORS_FORMAT",
]

PathLike = Union[str, os.PathLike]


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    """``torch.save`` to a temporary file in the target folder, fsync, then rename over ``path``."""
    return atomic_write(path, lambda f: torch.save(obj, f), binary=True)


def build_meta(
    cfg: Any,
    class_names: Sequence[str],
    cat_id_to_label: Optional[Mapping[int, int]],
    global_step: Optional[int] = None,
) -> dict[str, Any]:
    """Metadata dict (plain types only). ``cfg`` is a TrainConfig or a ModelConfig."""
    if isinstance(cfg, ModelConfig):
        model_cfg, train_cfg = cfg, None
    else:
        model_cfg, train_cfg = cfg.model, cfg
    if len(class_names) != model_cfg.num_classes:
        raise ValueError(f"{len(class_names)} class names for model.num_classes={model_cfg.num_classes}")
    mapping = None if cat_id_to_label is None else {int(k): int(v) for k, v in cat_id_to_label.items()}
    if mapping is not None and sorted(mapping.values()) != list(range(model_cfg.num_classes)):
        raise ValueError(f"cat_id_to_label must map onto labels 0..{model_cfg.num_classes - 1}, got {mapping}")
    return {
        "format": FORMAT,
        "version": VERSION,
        "model_config": model_cfg.model_dump(mode="json"),
        "train_config": None if train_cfg is None else train_cfg.model_dump(mode="json"),
        "class_names": [str(c) for c in class_names],
        "cat_id_to_label": mapping,
        "global_step": None if global_step is None else int(global_step),
    }


def save_checkpoint(
    path: PathLike,
    model: nn.Module,
    cfg: Any,
    class_names: Sequence[str],
    cat_id_to_label: Optional[Mapping[int, int]],
    global_step: Optional[int] = None,
) -> Path:
    """Write ``model`` (a SwinMaskRCNN) in our format, atomically. Returns the path."""
    payload = build_meta(cfg, class_names, cat_id_to_label, global_step)
    payload["state_dict"] = {k: v.detach().cpu().clone(memory_format=torch.contiguous_format)
                             for k, v in model.state_dict().items()}
    out = atomic_torch_save(payload, path)
    log.info("saved checkpoint %s", out)
    return out


def save_safetensors(path: PathLike, model: nn.Module, meta: Mapping[str, Any]) -> Path:
    """Write ``model``'s weights as safetensors with ``meta`` (a :func:`build_meta` dict) as metadata.

    safetensors metadata is str -> str: every entry is stored as JSON and ``format`` becomes
    :data:`SAFETENSORS_FORMAT`. Written atomically."""
    from safetensors.torch import save as st_save

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {k: json.dumps(v) for k, v in meta.items() if k not in ("format", "state_dict")}
    metadata["format"] = SAFETENSORS_FORMAT
    data = st_save(tensors, metadata=metadata)
    out = atomic_write(path, lambda f: f.write(data), binary=True)
    log.info("saved safetensors %s (%d tensors)", out, len(tensors))
    return out
