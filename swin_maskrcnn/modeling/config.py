"""Typed model configuration (pydantic).

Every default is mmdetection's ``mask-rcnn_swin-t-p4-w7_fpn_1x_coco`` value unless the field's
description says otherwise. The one deliberate exception is :class:`LossConfig`: its defaults are the
design's preset (positive weights 5 / 3, gradient clipping at 10), which measured better than
mmdet's losses when training from scratch (docs/loss_ablation.md); ``LossConfig.mmdet()`` and
``configs/losses/mmdet.yaml`` give mmdet's losses exactly, and the COCO recipes and mmdet
checkpoints (``load_model``) use them. Unknown keys and out-of-range values are validation errors that name
the key (``extra="forbid"`` plus field constraints).
"""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

#: ``torch.compile`` modes accepted by :func:`swin_maskrcnn.modeling.acceleration.compile_dense`
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
COMPILE_MODES: tuple[str, ...] = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

SWIN_VARIANTS: dict[str, dict[str, tuple[int, ...] | int]] = {
    "swin_t": dict(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    "swin_s": dict(embed_dims=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    "swin_b": dict(embed_dims=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
}
#: Swin V2 widths (torchvision's ``swin_v2_t/s/b``; the same as V1's, with window 8)
SWINV2_VARIANTS: dict[str, dict[str, tuple[int, ...] | int]] = {
    "swinv2_t": dict(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    "swinv2_s": dict(embed_dims=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    "swinv2_b": dict(embed_dims=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
}
#: window size of each backbone version when ``window_size`` is not given (mmdet's V1 7, torchvision's V2 8)
DEFAULT_WINDOW = {1: 7, 2: 8}


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LossConfig(StrictModel):
    """Every loss control of the design.

    Defaults: the design's preset (``rpn_cls_pos_weight`` 5, ``roi_cls_pos_weight`` 3,
    ``clip_grad_norm`` 10), which beat mmdet's losses on every AP in the from-scratch nuclei
    ablation (two init seeds, docs/loss_ablation.md). Everything else is mmdet's.
    :meth:`mmdet` returns mmdet's losses exactly (pos weights 1, no clipping): the COCO recipes,
    ``load_model`` and the parity tests use it.

    Positive weights enter as per-sample classification weights (mmdet's ``train_cfg.*.pos_weight``):
    positives get ``*_pos_weight``, negatives 1.0, and the classification avg_factor stays the plain
    sample count, so a weight of 1.0 is mmdet's loss.
    """

    rpn_cls_pos_weight: float = Field(
        5.0, gt=0, description="weight of positive anchors in the RPN BCE (design preset; mmdet: 1.0)"
    )
    roi_cls_pos_weight: float = Field(
        3.0, gt=0, description="weight of foreground RoIs in the RoI CE (design preset; mmdet: 1.0)"
    )
    rpn_loss_cls_weight: float = Field(1.0, ge=0)
    rpn_loss_bbox_weight: float = Field(1.0, ge=0)
    roi_loss_cls_weight: float = Field(1.0, ge=0)
    roi_loss_bbox_weight: float = Field(1.0, ge=0)
    roi_loss_mask_weight: float = Field(1.0, ge=0)
    bbox_loss: Literal["l1", "smooth_l1"] = Field("l1", description="box regression loss (RPN and RoI)")
    smooth_l1_beta: float = Field(1.0, gt=0, description="beta of smooth_l1 (ignored for l1)")
    roi_bbox_avg_factor: Literal["all_samples", "positives"] = Field(
        "all_samples",
        description="RoI box loss divisor: mmdet's number of sampled RoIs, or the number of positives",
    )
    eps: float = Field(
        1.1920928955078125e-07,
        gt=0,
        le=1e-2,
        description="added to every avg_factor so divisions stay finite (mmdet: float32 machine eps)",
    )
    clip_grad_norm: Optional[float] = Field(
        10.0, gt=0, description="max global gradient norm for training; None = no clipping (design preset: 10; mmdet: none)"
    )
    # Options beyond mmdet's recipe (off by default; measured in docs/loss_ablation.md).
    rpn_cls_loss: Literal["bce", "focal"] = Field(
        "bce", description="RPN objectness loss on the sampled anchors: sigmoid BCE (mmdet) or sigmoid focal"
    )
    roi_cls_loss: Literal["softmax_ce", "sigmoid_focal"] = Field(
        "softmax_ce",
        description="RoI classification: softmax CE over C+1 (mmdet) or per-class sigmoid focal (background = all zeros)",
    )
    focal_alpha: float = Field(0.25, ge=0, le=1, description="focal loss alpha (weight of the positive term)")
    focal_gamma: float = Field(2.0, ge=0, description="focal loss gamma (down-weights easy samples)")
    roi_sampler: Literal["random", "ohem"] = Field(
        "random", description="RoI sampling: random (mmdet) or OHEM (hardest positives/negatives by current loss)"
    )
    learned_loss_weights: bool = Field(
        False,
        validation_alias=AliasChoices("learned_loss_weights", "dynamic_loss_weighting"),  # the older name
        description="learned uncertainty weights per loss component (Kendall et al. 2018): "
        "L = sum_i exp(-s_i) * w_i * L_i + s_i with learned s_i",
    )

    @classmethod
    def mmdet(cls, **overrides) -> "LossConfig":
        """mmdet's losses exactly: positive weights 1.0 and no gradient clipping (plus ``overrides``)."""
        return cls(**{**MMDET_LOSSES, **overrides})


#: the LossConfig fields whose mmdet values differ from our defaults (see LossConfig's docstring)
MMDET_LOSSES: dict[str, Optional[float]] = {"rpn_cls_pos_weight": 1.0, "roi_cls_pos_weight": 1.0, "clip_grad_norm": None}


class RPNConfig(StrictModel):
    """Anchors, assignment, sampling and proposal settings of the RPN (mmdet defaults)."""

    anchor_scales: list[float] = Field(default_factory=lambda: [8.0], min_length=1)
    anchor_ratios: list[float] = Field(default_factory=lambda: [0.5, 1.0, 2.0], min_length=1)
    anchor_strides: list[int] = Field(default_factory=lambda: [4, 8, 16, 32, 64], min_length=5, max_length=5)
    pos_iou_thr: float = Field(0.7, ge=0, le=1)
    neg_iou_thr: float = Field(0.3, ge=0, le=1)
    min_pos_iou: float = Field(0.3, ge=0, le=1)
    num_samples: int = Field(256, ge=1)
    pos_fraction: float = Field(0.5, gt=0, le=1)
    nms_pre_train: int = Field(2000, ge=1, description="per-level top-k before NMS, training")
    nms_pre_test: int = Field(1000, ge=1, description="per-level top-k before NMS, testing")
    max_per_img_train: int = Field(1000, ge=1)
    max_per_img_test: int = Field(1000, ge=1)
    nms_iou: float = Field(0.7, gt=0, le=1)
    min_bbox_size: float = Field(0.0, ge=0)
    auto_anchors: bool = Field(
        False,
        description="training fits anchor_scales / anchor_ratios to the training boxes before the first step "
        "(swin_maskrcnn.diagnostics.anchor_fit: the set with the best bpr and as many anchors per location) and "
        "writes them into the resolved config and every checkpoint; false keeps the configured anchors (mmdet)",
    )
    ignore_iof_thr: float = Field(
        -1.0,
        le=1,
        description="anchors whose intersection over their own area with an ignore box (targets' ignore_boxes, "
        "e.g. crowd regions with data.crowd=ignore) exceeds this are neither positive nor negative (mmdet's "
        "MaxIoUAssigner ignore_iof_thr); <= 0: off (mmdet default -1)",
    )


class RoIConfig(StrictModel):
    """RoI assignment, sampling and test-time post-processing (mmdet defaults)."""

    pos_iou_thr: float = Field(0.5, ge=0, le=1)
    neg_iou_thr: float = Field(0.5, ge=0, le=1)
    min_pos_iou: float = Field(0.5, ge=0, le=1)
    num_samples: int = Field(512, ge=1)
    pos_fraction: float = Field(0.25, gt=0, le=1)
    add_gt_as_proposals: bool = True
    ignore_iof_thr: float = Field(
        -1.0,
        le=1,
        description="proposals whose intersection over their own area with an ignore box exceeds this are never "
        "sampled (mmdet's MaxIoUAssigner ignore_iof_thr; GT added as proposals is unaffected); <= 0: off (mmdet -1)",
    )
    finest_scale: float = Field(56.0, gt=0)
    score_thr: float = Field(0.05, ge=0, le=1)
    score_thr_per_class: dict[str, float] = Field(
        default_factory=dict,
        description="deployment thresholds by class name (written by 'analyze --write-thresholds'): a class listed "
        "keeps detections with score >= its value; the others keep score > score_thr",
    )
    nms_iou: float = Field(0.5, gt=0, le=1)
    max_per_img: int = Field(100, ge=1, le=10000, description="detection cap per image (≥400 allowed)")
    mask_thr: float = Field(0.5, ge=0, le=1)
    mask_size: int = Field(
        28,
        ge=2,
        description="side of the mask head's output, its targets and the masks pasted from it; the mask RoIs "
        "are pooled at mask_size / 2 and upsampled x2, so it must be even (mmdet: 28)",
    )

    @field_validator("score_thr_per_class")
    @classmethod
    def _thresholds_in_range(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: t for k, t in v.items() if not 0.0 <= float(t) <= 1.0}
        if bad:
            raise ValueError(f"thresholds must be in [0, 1], got {bad}")
        return {str(k): float(t) for k, t in v.items()}

    @field_validator("mask_size")
    @classmethod
    def _even_mask_size(cls, v: int) -> int:
        if v % 2:
            raise ValueError(
                f"mask_size must be even (the mask head upsamples RoIs pooled at mask_size / 2 by 2), got {v}"
            )
        return v


class ModelConfig(StrictModel):
    """The whole detector. ``num_classes`` counts foreground classes only (background is index C)."""

    variant: Literal["swin_t", "swin_s", "swin_b", "swinv2_t", "swinv2_s", "swinv2_b", "custom"] = "swin_t"
    backbone_version: Optional[Literal[1, 2]] = Field(
        None,
        description="Swin V1 (mmdet's backbone) or V2 (torchvision's swin_v2 blocks); None = from the variant "
        "(2 for swinv2_*, else 1); set 2 for custom V2 widths",
    )
    num_classes: int = Field(80, ge=1)
    embed_dims: Optional[int] = Field(None, ge=1, description="override of the variant's width")
    depths: Optional[list[int]] = Field(None, min_length=4, max_length=4)
    num_heads: Optional[list[int]] = Field(None, min_length=4, max_length=4)
    window_size: int = Field(
        7, ge=1, description="attention window; when not given: 7 for V1 (mmdet), 8 for V2 (torchvision)"
    )
    pretrained_window_size: Optional[int] = Field(
        None,
        ge=2,
        description="Swin V2 only: the window the loaded weights were trained at, which normalises the "
        "log-spaced coordinate table of the position-bias MLP; None = window_size (torchvision's table)",
    )
    mlp_ratio: float = Field(4.0, gt=0)
    drop_path_rate: float = Field(0.2, ge=0, lt=1)
    frozen_stages: int = Field(-1, ge=-1, le=4)
    with_cp: bool = Field(False, description="gradient checkpointing in the Swin blocks")
    fpn_channels: int = Field(256, ge=1)
    roi_fc_dims: int = Field(1024, ge=1)
    mask_head_channels: int = Field(256, ge=1)
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    size_divisor: int = Field(32, ge=1)
    test_scale: Optional[tuple[int, int]] = Field(
        (1333, 800),
        description="test-time keep-ratio resize (long, short) with mmdet's rounding: predict's default and what "
        "evaluation and the validation pipeline resize to; null = images at their own size",
    )
    max_instances: Optional[int] = Field(
        None,
        ge=1,
        le=10000,
        description="objects per image the model must be able to return (dense scenes): sets roi.max_per_img, "
        "raises rpn.nms_pre_test and rpn.max_per_img_test to at least this, and 'evaluate' uses it as the largest "
        "COCOeval maxDets; null = the caps as configured",
    )
    rpn: RPNConfig = Field(default_factory=RPNConfig)
    roi: RoIConfig = Field(default_factory=RoIConfig)
    losses: LossConfig = Field(default_factory=LossConfig)

    @field_validator("test_scale")
    @classmethod
    def _positive_scale(cls, v: Optional[tuple[int, int]]) -> Optional[tuple[int, int]]:
        if v is not None and (v[0] < 1 or v[1] < 1):
            raise ValueError(f"both sides must be >= 1, got {list(v)}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _version_window(cls, data):
        """A V2 config without ``window_size`` gets torchvision's 8 (V1 keeps mmdet's 7)."""
        if isinstance(data, dict) and "window_size" not in data:
            version = data.get("backbone_version")
            if version == 2 or (version is None and str(data.get("variant", "")).startswith("swinv2")):
                data = {**data, "window_size": DEFAULT_WINDOW[2]}
        return data

    @model_validator(mode="after")
    def _apply_max_instances(self) -> "ModelConfig":
        """``max_instances`` sets the detection cap and lifts the RPN's test caps that would cut below it
        (new section objects: a section shared with another config is never changed in place)."""
        m = self.max_instances
        if m is None:
            return self
        if self.roi.max_per_img != m:
            self.__dict__["roi"] = self.roi.model_copy(update={"max_per_img": m})
        rpn_update = {k: m for k in ("nms_pre_test", "max_per_img_test") if getattr(self.rpn, k) < m}
        if rpn_update:
            self.__dict__["rpn"] = self.rpn.model_copy(update=rpn_update)
        return self

    def eval_max_dets(self) -> Optional[list[int]]:
        """COCOeval maxDets for ``max_instances`` (its value the largest): [1, 100, m] above 100, [1, 10, m]
        above 10; None when unset or at most 10 (the caller's defaults apply)."""
        m = self.max_instances
        if m is None or m <= 10:
            return None
        return [1, 100, m] if m > 100 else [1, 10, m]

    @model_validator(mode="after")
    def _check_arch(self) -> "ModelConfig":
        if self.variant.startswith("swinv2") and self.backbone_version == 1:
            raise ValueError(f"variant '{self.variant}' is a Swin V2 backbone; backbone_version 1 contradicts it")
        if self.variant.startswith("swin_") and self.backbone_version == 2:
            raise ValueError(
                f"variant '{self.variant}' is a Swin V1 backbone; use '{self.variant.replace('swin_', 'swinv2_')}' "
                "(or variant 'custom') for V2"
            )
        if self.resolved_backbone_version() == 1 and self.pretrained_window_size is not None:
            raise ValueError("pretrained_window_size applies to Swin V2 backbones only")
        if self.resolved_backbone_version() == 2 and self.window_size < 2:
            raise ValueError(f"Swin V2 needs window_size >= 2 (its coordinate table divides by w - 1), got {self.window_size}")
        if self.variant == "custom" and (self.embed_dims is None or self.depths is None or self.num_heads is None):
            raise ValueError("variant 'custom' needs embed_dims, depths and num_heads")
        heads = self.resolved_num_heads()
        dims = self.resolved_embed_dims()
        for i, h in enumerate(heads):
            if (dims * 2**i) % h:
                raise ValueError(f"num_heads[{i}]={h} does not divide stage width {dims * 2**i}")
        return self

    def resolved_backbone_version(self) -> int:
        """1 (V1, mmdet) or 2 (V2, torchvision): ``backbone_version``, else the variant's."""
        if self.backbone_version is not None:
            return int(self.backbone_version)
        return 2 if self.variant.startswith("swinv2") else 1

    def _variant_spec(self) -> dict[str, tuple[int, ...] | int]:
        return {**SWIN_VARIANTS, **SWINV2_VARIANTS}[self.variant]

    def resolved_embed_dims(self) -> int:
        if self.embed_dims is not None:
            return self.embed_dims
        return int(self._variant_spec()["embed_dims"])  # type: ignore[arg-type]

    def resolved_depths(self) -> tuple[int, ...]:
        if self.depths is not None:
            return tuple(self.depths)
        return tuple(self._variant_spec()["depths"])  # type: ignore[arg-type]

    def resolved_num_heads(self) -> tuple[int, ...]:
        if self.num_heads is not None:
            return tuple(self.num_heads)
        return tuple(self._variant_spec()["num_heads"])  # type: ignore[arg-type]

    def stage_channels(self) -> list[int]:
        d = self.resolved_embed_dims()
        return [d, 2 * d, 4 * d, 8 * d]


def tiny_model_config(num_classes: int = 3, **overrides) -> ModelConfig:
    """The small model used by the fast tests and the demo: embed 32, one block per stage."""
    base = dict(
        variant="custom",
        num_classes=num_classes,
        embed_dims=32,
        depths=[1, 1, 1, 1],
        num_heads=[1, 2, 4, 8],
        drop_path_rate=0.0,
        fpn_channels=64,
        roi_fc_dims=256,
        mask_head_channels=64,
    )
    base.update(overrides)
    return ModelConfig(**base)
