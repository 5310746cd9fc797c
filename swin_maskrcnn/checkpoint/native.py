"""Our checkpoint format, and reading every checkpoint a user may hold.

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
prefix ``model.``; :func:`load_checkpoint` reads both, and also mmdet checkpoints (architecture
inferred from the tensor shapes, no category mapping), so ``evaluate``/``predict`` need nothing else.

Every write is atomic: the file is written next to the target, fsynced, then renamed over it, so a
crash never leaves a truncated checkpoint in place of a good one
(:class:`swin_maskrcnn.training.checkpoint_io.AtomicCheckpointIO` does the same for Lightning's).
This module imports no Lightning: loading weights for inference needs only torch.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..io_utils import atomic_write
from ..modeling.config import ModelConfig
from .mmdet import CheckpointError, class_names_from_meta, infer_model_config, load_state_dict_strict

log = logging.getLogger(__name__)

__all__ = [
    "FORMAT",
    "META_KEY",
    "CheckpointError",
    "build_meta",
    "save_checkpoint",
    "read_checkpoint",
    "load_checkpoint",
    "atomic_torch_save",
]

FORMAT = "swin_maskrcnn.checkpoint"
VERSION = 1
#: key of our metadata inside a Lightning checkpoint
META_KEY = "swin_maskrcnn"
_LIGHTNING_PREFIX = "model."

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
    payload["state_dict"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    out = atomic_torch_save(payload, path)
    log.info("saved checkpoint %s", out)
    return out


def read_checkpoint(path: PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(state_dict in SwinMaskRCNN key layout, meta) of any supported checkpoint.

    ``meta`` has ``source`` ("native", "lightning" or "mmdet"), ``model_config`` (dict or None for
    mmdet), ``train_config``, ``class_names`` (may be None for mmdet), ``cat_id_to_label`` (None when
    unknown) and ``global_step``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised naming the file
        raise CheckpointError(f"{path}: cannot be read with torch.load(weights_only=True): {e}") from e
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: not a checkpoint dict (got {type(obj).__name__})")
    if obj.get("format") == FORMAT:
        if int(obj.get("version", 0)) > VERSION:
            raise CheckpointError(f"{path}: format version {obj.get('version')} is newer than this code ({VERSION})")
        meta = {k: v for k, v in obj.items() if k != "state_dict"}
        meta["source"] = "native"
        return dict(obj["state_dict"]), meta
    if META_KEY in obj and "state_dict" in obj:
        sd = {k[len(_LIGHTNING_PREFIX):]: v for k, v in obj["state_dict"].items() if k.startswith(_LIGHTNING_PREFIX)}
        if not sd:
            raise CheckpointError(f"{path}: Lightning checkpoint without '{_LIGHTNING_PREFIX}*' weights")
        meta = dict(obj[META_KEY])
        meta["source"] = "lightning"
        meta["global_step"] = obj.get("global_step", meta.get("global_step"))
        return sd, meta
    # mmdet (or a bare state_dict): architecture from shapes, no category mapping
    from .mmdet import read_mmdet_checkpoint

    sd, mm_meta = read_mmdet_checkpoint(path)
    return sd, {
        "source": "mmdet",
        "model_config": None,
        "train_config": None,
        "class_names": class_names_from_meta(mm_meta),
        "cat_id_to_label": None,
        "global_step": None,
    }


def load_checkpoint(
    path: PathLike, map_location: Union[str, torch.device] = "cpu", **model_overrides: Any
) -> tuple[nn.Module, ModelConfig, dict[str, Any]]:
    """(model in eval mode, its ModelConfig, meta) from any checkpoint :func:`read_checkpoint` reads.

    ``model_overrides`` replace ModelConfig fields (e.g. ``roi={"score_thr": 0.3}``, merged into the
    section). ``meta`` gains ``label_to_cat_id`` (None when the mapping is unknown).
    """
    from ..modeling.detector import SwinMaskRCNN  # local: keeps this module importable without building models

    sd, meta = read_checkpoint(path)
    if meta["model_config"] is None:
        cfg = infer_model_config(sd)
    else:
        cfg = ModelConfig.model_validate(meta["model_config"])
    if model_overrides:
        data = cfg.model_dump(mode="json")
        for k, v in model_overrides.items():
            if isinstance(v, Mapping) and isinstance(data.get(k), dict):
                data[k] = {**data[k], **v}
            else:
                data[k] = v
        cfg = ModelConfig.model_validate(data)
    model = SwinMaskRCNN(cfg)
    load_state_dict_strict(model, sd, source=str(path))
    mapping = meta.get("cat_id_to_label")
    meta["cat_id_to_label"] = None if mapping is None else {int(k): int(v) for k, v in mapping.items()}
    meta["label_to_cat_id"] = None if mapping is None else {v: k for k, v in meta["cat_id_to_label"].items()}
    if meta.get("class_names") is None:
        meta["class_names"] = [str(i) for i in range(cfg.num_classes)]
    model.class_names = list(meta["class_names"])
    log.info("loaded %s (%s checkpoint, %s, %d classes)", path, meta["source"], cfg.variant, cfg.num_classes)
    return model.to(map_location).eval(), cfg, meta
