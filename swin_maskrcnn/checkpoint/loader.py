"""The one loader: any checkpoint file a user may hold -> a ready ``SwinMaskRCNN``.

:func:`load_model` / :func:`load_checkpoint` detect the format by content (:mod:`.safe_load`, never
by the file name alone) and accept:

==============  ===============================================  ==========================================
source          file                                             model config
==============  ===============================================  ==========================================
``native``      ``model_final.pt`` (:func:`.native.save_checkpoint`)   restored exactly (anchors, thresholds,
``safetensors`` ``swin-maskrcnn export --format safetensors``           ``max_per_img``, test scale, class names,
``lightning``   ``*.ckpt`` written by ``swin-maskrcnn train``            dataset category ids)
``mmdet``       mmdet ``.pth`` (``{'state_dict', 'meta'}``) or a bare    inferred from tensor shapes (Swin-T/S/B or
                state_dict (also as safetensors)                         custom widths, class count); everything
                                                                         else mmdet's defaults, and it says so
==============  ===============================================  ==========================================

Keyword overrides (``roi={"score_thr": 0.3}``, ``num_classes`` is not one) are applied on top of the
restored or inferred config; a dict merges into its section.

Loading imports no Lightning, pycocotools or matplotlib: only torch, torchvision and safetensors.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Union

import torch
from torch import Tensor, nn

from ..modeling.config import ModelConfig
from ..modeling.meta import ModelMeta
from .compat import upgrade_model_config, upgrade_state_dict
from .format import FORMAT, LIGHTNING_PREFIX, META_KEY, SAFETENSORS_FORMAT, VERSION
from .mmdet import class_names_from_meta, infer_model_config, mmdet_state_dict
from .safe_load import CheckpointError, read_file
from .strict import load_state_dict_strict

log = logging.getLogger(__name__)

__all__ = ["read_checkpoint", "load_checkpoint", "load_model", "CheckpointError"]

PathLike = Union[str, os.PathLike]

#: meta entries every reader returns (None where the format does not carry them)
_META_KEYS = ("model_config", "train_config", "class_names", "cat_id_to_label", "global_step")


def _check_version(path: Path, version: Any) -> None:
    if int(version or 0) > VERSION:
        raise CheckpointError(f"{path}: format version {version} is newer than this code ({VERSION})")


def _from_safetensors(path: Path, tensors: dict[str, Tensor], md: Mapping[str, str]) -> tuple[dict[str, Tensor], dict]:
    if md.get("format") != SAFETENSORS_FORMAT:  # someone else's safetensors: a bare mmdet-layout state_dict
        sd, _ = mmdet_state_dict(tensors, str(path))
        return sd, {"source": "mmdet"}
    try:
        meta = {k: json.loads(v) for k, v in md.items() if k != "format"}
    except ValueError as e:
        raise CheckpointError(f"{path}: metadata entry is not JSON: {e}") from e
    _check_version(path, meta.get("version"))
    meta["source"] = "safetensors"
    return tensors, meta


def read_checkpoint(path: PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(state_dict in SwinMaskRCNN key layout, meta) of any supported checkpoint.

    ``meta`` has ``source`` ("native", "safetensors", "lightning" or "mmdet"), ``model_config``
    (dict; None for mmdet), ``train_config``, ``class_names`` (may be None for mmdet),
    ``cat_id_to_label`` (None when unknown) and ``global_step``. Ours are upgraded to today's key
    names (:mod:`.compat`, by the stored ``version``).
    """
    path = Path(path)
    container, content = read_file(path)
    if container == "safetensors":
        sd, meta = _from_safetensors(path, *content)
    elif not isinstance(content, Mapping):
        raise CheckpointError(f"{path}: not a checkpoint dict (got {type(content).__name__})")
    elif content.get("format") == FORMAT:
        _check_version(path, content.get("version"))
        sd = dict(content["state_dict"])
        meta = {k: v for k, v in content.items() if k != "state_dict"}
        meta["source"] = "native"
    elif META_KEY in content and "state_dict" in content:
        n = len(LIGHTNING_PREFIX)
        sd = {k[n:]: v for k, v in content["state_dict"].items() if k.startswith(LIGHTNING_PREFIX)}
        if not sd:
            raise CheckpointError(f"{path}: Lightning checkpoint without '{LIGHTNING_PREFIX}*' weights")
        meta = dict(content[META_KEY])
        meta["source"] = "lightning"
        meta["global_step"] = content.get("global_step", meta.get("global_step"))
    else:  # mmdet (or a bare state_dict): architecture from shapes, no category mapping
        sd, mm_meta = mmdet_state_dict(content, str(path))
        meta = {"source": "mmdet", "class_names": class_names_from_meta(mm_meta)}
    for k in _META_KEYS:
        meta.setdefault(k, None)
    if meta["source"] != "mmdet":
        sd = upgrade_state_dict(sd, meta.get("version"))
        if meta["model_config"] is not None:
            meta["model_config"] = upgrade_model_config(meta["model_config"], meta["train_config"], meta.get("version"))
    return sd, meta


def _apply_overrides(cfg: ModelConfig, overrides: Mapping[str, Any]) -> ModelConfig:
    """``cfg`` with ``overrides`` (a dict merges into its section), validated."""
    if not overrides:
        return cfg
    data = cfg.model_dump(mode="json")
    roi = overrides.get("roi")
    roi_cap = roi.get("max_per_img") if isinstance(roi, Mapping) else getattr(roi, "max_per_img", None)
    if roi_cap is not None and "max_instances" not in overrides:
        data["max_instances"] = None  # an explicit detection cap replaces max_instances (its RPN caps stay)
    for k, v in overrides.items():
        if isinstance(v, Mapping) and isinstance(data.get(k), dict):
            data[k] = {**data[k], **v}
        elif hasattr(v, "model_dump"):
            data[k] = v.model_dump(mode="json")
        else:
            data[k] = v
    return ModelConfig.model_validate(data)


def load_checkpoint(
    path: PathLike, map_location: Union[str, torch.device] = "cpu", **overrides: Any
) -> tuple[nn.Module, ModelConfig, dict[str, Any]]:
    """(model in eval mode, its ModelConfig, meta) from any checkpoint :func:`read_checkpoint` reads.

    ``model.meta`` (:class:`~swin_maskrcnn.modeling.meta.ModelMeta`) holds ``class_names`` (label i ->
    name; "0".."C-1" when the file has none) and ``label_to_cat_id`` (dataset category id of each
    label, None when unknown). The returned ``meta`` dict also gains ``label_to_cat_id``.
    """
    from ..modeling.detector import SwinMaskRCNN  # local: keeps this module importable without building models

    path = Path(path)
    sd, meta = read_checkpoint(path)
    if meta["model_config"] is None:
        cfg = infer_model_config(sd, **overrides)
        log.info(
            "%s: an mmdet checkpoint: the architecture is inferred from tensor shapes (%s, %d classes); anchors, "
            "thresholds, max_per_img, losses and the test scale are mmdet's defaults%s",
            path, cfg.variant, cfg.num_classes, f" plus the overrides {sorted(overrides)}" if overrides else "",
        )
    else:
        cfg = _apply_overrides(ModelConfig.model_validate(meta["model_config"]), overrides)
    mapping = meta.get("cat_id_to_label")
    meta["cat_id_to_label"] = None if mapping is None else {int(k): int(v) for k, v in mapping.items()}
    meta["label_to_cat_id"] = None if mapping is None else {v: k for k, v in meta["cat_id_to_label"].items()}
    if meta.get("class_names") is None:
        meta["class_names"] = [str(i) for i in range(cfg.num_classes)]
    if len(meta["class_names"]) != cfg.num_classes:
        raise CheckpointError(f"{path}: {len(meta['class_names'])} class names for {cfg.num_classes} classes")
    model = SwinMaskRCNN(cfg, meta=ModelMeta(list(meta["class_names"]), meta["label_to_cat_id"]))
    load_state_dict_strict(model, sd, source=str(path))
    try:
        model.score_thresholds()  # roi.score_thr_per_class must name the checkpoint's classes
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    log.info("loaded %s (%s checkpoint, %s, %d classes)", path, meta["source"], cfg.variant, cfg.num_classes)
    return model.to(map_location).eval(), cfg, meta


def load_model(path: PathLike, map_location: Union[str, torch.device] = "cpu", **overrides: Any) -> nn.Module:
    """A ``SwinMaskRCNN`` in eval mode from any checkpoint (see the module docstring).

    ``overrides`` set ModelConfig fields on top of the restored config (e.g. ``roi={"score_thr": 0.3}``).
    ``model.meta`` (also ``model.class_names`` and ``model.label_to_cat_id``) holds the checkpoint's classes
    and dataset ids."""
    return load_checkpoint(path, map_location, **overrides)[0]
