"""Load mmdetection Swin Mask R-CNN checkpoints (``{'state_dict', 'meta'}``) into SwinMaskRCNN.

Our module names equal mmdet's, and our patch merging uses mmdet's ``nn.Unfold`` channel order, so
published mmdet checkpoints load key for key with no value permutation. The architecture (Swin
width, depths, heads, window; FPN, RoI and mask widths; class count) is read from tensor shapes, so
T, S, B and narrowed models all load. A bare state_dict of our Swin V2 model (``logit_scale`` keys) is
recognised too: window and pretrained window come from its coordinate-table buffer. Any key that cannot be placed, or any missing key, is an error
listing the keys. Files are read by :mod:`.safe_load`; :func:`.loader.load_model` builds the model.
"""
from __future__ import annotations

import logging
import re
from typing import Any, Mapping, Optional

from torch import Tensor

from ..modeling.backbone.swin_v2 import coords_table_windows
from ..modeling.config import SWIN_VARIANTS, SWINV2_VARIANTS, LossConfig, ModelConfig
from .safe_load import CheckpointError

log = logging.getLogger(__name__)


def _strip_prefix(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Drop a DataParallel/DDP ``module.`` prefix if every key has it."""
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module.") :]: v for k, v in sd.items()}
    return dict(sd)


def infer_model_config(state_dict: Mapping[str, Tensor], **overrides: Any) -> ModelConfig:
    """Rebuild the ``ModelConfig`` of an mmdet-layout state_dict from its tensor shapes.

    Losses are mmdet's (:meth:`LossConfig.mmdet`), not the library's from-scratch defaults."""
    sd = state_dict
    # a bare state_dict of our Swin V2 model (no mmdet V2 exists) has the bias MLP's logit scales
    v2 = "backbone.stages.0.blocks.0.attn.w_msa.logit_scale" in sd
    pretrained_window: Optional[int] = None
    try:
        embed = sd["backbone.patch_embed.projection.weight"].shape[0]
        depths = []
        heads = []
        for s in range(4):
            blocks = {
                int(m.group(1))
                for k in sd
                if (m := re.match(rf"backbone\.stages\.{s}\.blocks\.(\d+)\.", k))
            }
            if not blocks:
                raise KeyError(f"backbone.stages.{s}.blocks.*")
            depths.append(max(blocks) + 1)
            attn = f"backbone.stages.{s}.blocks.0.attn.w_msa."
            heads.append(sd[attn + ("logit_scale" if v2 else "relative_position_bias_table")].shape[0 if v2 else 1])
        if v2:
            window, p = coords_table_windows(sd["backbone.stages.0.blocks.0.attn.w_msa.relative_coords_table"])
            pretrained_window = None if abs(p - window) < 1e-3 else round(p)
        else:
            table = sd["backbone.stages.0.blocks.0.attn.w_msa.relative_position_bias_table"].shape[0]
            window = (int(round(table**0.5)) + 1) // 2
        mlp_ratio = sd["backbone.stages.0.blocks.0.ffn.layers.0.0.weight"].shape[0] / embed
        fpn_ch = sd["neck.lateral_convs.0.conv.weight"].shape[0]
        fc = sd["roi_head.bbox_head.shared_fcs.0.weight"].shape[0]
        mask_ch = sd["roi_head.mask_head.convs.0.conv.weight"].shape[0]
        num_classes = sd["roi_head.bbox_head.fc_cls.weight"].shape[0] - 1
        n_anchors = sd["rpn_head.rpn_cls.weight"].shape[0]
    except KeyError as e:
        raise CheckpointError(f"not an mmdet Swin Mask R-CNN state_dict: missing {e}") from None
    variant = "custom"
    for name, spec in (SWINV2_VARIANTS if v2 else SWIN_VARIANTS).items():
        if spec["embed_dims"] == embed and tuple(spec["depths"]) == tuple(depths) and tuple(spec["num_heads"]) == tuple(heads):
            variant = name
    kwargs: dict[str, Any] = dict(
        variant=variant,
        **(dict(backbone_version=2, pretrained_window_size=pretrained_window) if v2 else {}),
        num_classes=num_classes,
        window_size=window,
        mlp_ratio=mlp_ratio,
        fpn_channels=fpn_ch,
        roi_fc_dims=fc,
        mask_head_channels=mask_ch,
    )
    if variant == "custom":
        kwargs.update(embed_dims=embed, depths=depths, num_heads=heads)
    # an mmdet checkpoint fine-tunes with mmdet's losses; a ``losses`` dict override is applied on top of them
    losses = overrides.pop("losses", None)
    kwargs["losses"] = losses if isinstance(losses, LossConfig) else LossConfig.mmdet(**(losses or {}))
    kwargs.update(overrides)
    cfg = ModelConfig(**kwargs)
    expected_anchors = len(cfg.rpn.anchor_scales) * len(cfg.rpn.anchor_ratios)
    if n_anchors != expected_anchors:
        raise CheckpointError(f"rpn_cls has {n_anchors} anchors per position, the config gives {expected_anchors}")
    return cfg


def mmdet_state_dict(obj: Any, source: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(state_dict, meta) of a loaded mmdet checkpoint ``{'state_dict', 'meta'}`` or a bare state_dict."""
    if isinstance(obj, Mapping) and "state_dict" in obj:
        sd, meta = obj["state_dict"], obj.get("meta") or {}
    elif isinstance(obj, Mapping) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        sd, meta = obj, {}
    else:
        raise CheckpointError(f"{source}: expected {{'state_dict', 'meta'}} or a plain state_dict")
    return _strip_prefix(sd), dict(meta) if isinstance(meta, Mapping) else {}


def class_names_from_meta(meta: Mapping[str, Any]) -> Optional[list[str]]:
    """Class names stored by mmdet 3 (``dataset_meta.classes``) or mmdet 2 (``CLASSES``)."""
    dm = meta.get("dataset_meta")
    if isinstance(dm, Mapping) and dm.get("classes") is not None:
        return list(dm["classes"])
    if meta.get("CLASSES") is not None:
        return list(meta["CLASSES"])
    return None
