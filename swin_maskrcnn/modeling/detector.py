"""SwinMaskRCNN: the whole detector, from a list of RGB images to a loss dict or detections.

One image's path, each stage one call (as torchvision's ``generalized_rcnn.py``):
``preprocess`` (normalise, pad to 32) -> ``backbone`` (Swin, 4 stage maps) -> ``neck`` (FPN, P2..P6)
-> ``rpn_head`` (proposals, RPN losses) -> ``roi_head`` (detections or box/mask losses)
-> ``postprocess`` (boxes back to the original size, masks pasted).
Module names equal mmdet's, so an mmdet state_dict loads key for key (``checkpoint.mmdet``).
"""
from __future__ import annotations

import contextlib
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from .config import ModelConfig
from .backbone.fpn import FPN
from .loss_weighting import LearnedLossWeights
from .meta import ModelMeta
from .preprocess import ImageBatch, ImageLike, normalize_and_pad, resize_keep_ratio, to_chw_255
from .postprocess import postprocess_detections
from .roi_heads.roi_head import RoIHead
from .rpn import RPNHead
from .sampler import ChoiceFn
from .backbone.swin import SwinTransformer
from .backbone.swin_v2 import SwinTransformerV2

LossDict = dict[str, Tensor]
StatDict = dict[str, Tensor]


class SwinMaskRCNN(nn.Module):
    """Swin Transformer Mask R-CNN with mmdet's semantics.

    Train mode: ``model(images, targets)`` -> the loss dict (torchvision's convention): exactly the
    already-weighted losses ``loss_rpn_cls``, ``loss_rpn_bbox``, ``loss_cls``, ``loss_bbox``,
    ``loss_mask`` (with graph), so ``sum(model(images, targets).values())`` is the training loss.
    :meth:`losses_and_stats` returns the same dict plus the detached training statistics apart:
    ``acc``, ``acc_fg`` (RoI classification accuracy, all / foreground, in %), ``rpn_num_pos``,
    ``rpn_num_neg``, ``roi_num_pos``, ``roi_num_neg`` (sampled per batch) and, with learned loss
    weights, ``weight_<loss>``.
    Eval mode: ``model(images, original_sizes=None)`` -> one dict per image with ``boxes`` (K, 4),
    ``scores``, ``labels`` (0..C-1), ``masks`` (K, h, w) bool, at ``original_sizes`` if given
    (boxes rescaled, masks pasted at that size) or else at the input image's size.
    ``images`` are (3, H, W) float RGB in [0, 1]; targets have ``boxes`` (N, 4) xyxy in the image's
    pixels, ``labels`` (N,) in 0..C-1 and ``masks`` (N, H, W), and optionally ``ignore_boxes`` (K, 4)
    xyxy "don't care" regions (crowds): anchors / proposals inside them are never sampled when
    ``rpn.ignore_iof_thr`` / ``roi.ignore_iof_thr`` > 0 (mmdet's ignore_iof_thr).
    ``meta`` (:class:`~swin_maskrcnn.modeling.meta.ModelMeta`): class names and dataset category ids,
    by default "0".."C-1" and none; ``class_names`` / ``label_to_cat_id`` read it.
    """

    def __init__(self, cfg: ModelConfig, sample_choice: Optional[ChoiceFn] = None,
                 meta: Optional[ModelMeta] = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.meta = ModelMeta.default(cfg.num_classes) if meta is None else meta
        self.meta.check(cfg.num_classes)
        backbone_cls = SwinTransformerV2 if cfg.resolved_backbone_version() == 2 else SwinTransformer
        self.backbone = backbone_cls.from_config(cfg)
        self.neck = FPN(cfg.stage_channels(), cfg.fpn_channels)
        self.rpn_head = RPNHead(cfg.fpn_channels, cfg.rpn, cfg.losses, sample_choice)
        self.roi_head = RoIHead(cfg, sample_choice)
        self.learned_loss_weights = LearnedLossWeights() if cfg.losses.learned_loss_weights else None

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    @property
    def class_names(self) -> list[str]:
        """Label i -> name (``meta.class_names``)."""
        return self.meta.class_names

    @property
    def label_to_cat_id(self) -> Optional[dict[int, int]]:
        """Label i -> the data set's category id, None when unknown (``meta.label_to_cat_id``)."""
        return self.meta.label_to_cat_id

    def score_thresholds(self) -> Optional[Tensor]:
        """(C,) float32 test-time thresholds, a detection of class c kept when its score >= entry c,
        from ``cfg.roi.score_thr_per_class`` (by name: ``self.class_names``); classes without one get the float32 just above ``roi.score_thr``,
        so that they keep mmdet's ``score > score_thr``. None when no class has its own threshold
        (mmdet's test, unchanged). An unknown class name is a ValueError naming it."""
        per_class = self.cfg.roi.score_thr_per_class
        if not per_class:
            return None
        names = list(self.class_names)
        unknown = sorted(set(per_class) - set(names))
        if unknown:
            raise ValueError(f"roi.score_thr_per_class names classes the model does not have: {unknown} "
                             f"(its classes: {names[:20]})")
        base = torch.tensor(self.cfg.roi.score_thr, dtype=torch.float32)
        above = torch.nextafter(base, torch.tensor(float("inf")))
        thrs = torch.full((self.num_classes,), float(above), dtype=torch.float32)
        for i, name in enumerate(names):
            if name in per_class:
                thrs[i] = per_class[name]
        return thrs

    def preprocess(self, images_255: Sequence[Tensor]) -> ImageBatch:
        """Normalised, zero-padded batch plus each image's (h, w) and padded (h, w)."""
        return normalize_and_pad(images_255, self.cfg.pixel_mean, self.cfg.pixel_std, self.cfg.size_divisor)

    def forward(
        self,
        images: Sequence[Tensor],
        targets: Optional[Sequence[dict[str, Tensor]]] = None,
        original_sizes: Optional[Sequence[tuple[int, int]]] = None,
    ) -> LossDict | list[dict[str, Tensor]]:
        if self.training:
            losses, _ = self.losses_and_stats(images, targets)
            return losses
        return self._run(self._inputs(images), None, original_sizes)[0]

    def losses_and_stats(
        self, images: Sequence[Tensor], targets: Optional[Sequence[dict[str, Tensor]]]
    ) -> tuple[LossDict, StatDict]:
        """Training: the loss dict (what ``forward`` returns) and the detached statistics apart."""
        images_255 = self._inputs(images)
        if targets is None or len(targets) != len(images_255):
            raise ValueError("training needs one target dict per image (boxes, labels, masks)")
        for i, (im, t) in enumerate(zip(images_255, targets)):
            check_target(i, im, t, self.num_classes)
        _, losses, stats = self._run(images_255, targets, None)
        if self.learned_loss_weights is not None:
            losses, weights = self.learned_loss_weights(losses)
            stats.update(weights)
        device = next(iter(losses.values())).device
        return losses, {k: v.detach().to(device) for k, v in stats.items()}

    def _run(
        self,
        images_255: list[Tensor],
        targets: Optional[Sequence[dict[str, Tensor]]],
        original_sizes: Optional[Sequence[tuple[int, int]]],
        paste: bool = True,
    ) -> tuple[list[dict[str, Tensor]], LossDict, StatDict]:
        """preprocess -> backbone -> neck -> rpn -> roi_heads -> postprocess, in either mode.

        Eval mode runs without autograd and returns detections (losses and stats empty); training
        returns no detections. ``paste=False`` skips postprocess (see :meth:`detect_raw`).
        """
        with contextlib.nullcontext() if self.training else torch.no_grad():
            batch = self.preprocess(images_255)
            feats = self.neck(self.backbone(batch.tensor))
            gt_boxes = None if targets is None else [t["boxes"].float().to(batch.tensor.device) for t in targets]
            ignore = None if targets is None else [t.get("ignore_boxes") for t in targets]
            proposals, rpn_losses, rpn_stats = self.rpn_head(
                feats, batch.image_sizes, batch.pad_shapes, gt_boxes, ignore
            )
            thrs = None if self.training else self.score_thresholds()
            detections, roi_losses, roi_stats = self.roi_head(feats, proposals, batch.image_sizes, targets, thrs)
            if not self.training and paste:
                detections = self.postprocess(detections, batch.image_sizes, original_sizes)
        return detections, {**rpn_losses, **roi_losses}, {**rpn_stats, **roi_stats}

    def postprocess(
        self,
        detections: list[dict[str, Tensor]],
        image_sizes: list[tuple[int, int]],
        original_sizes: Optional[Sequence[tuple[int, int]]] = None,
    ) -> list[dict[str, Tensor]]:
        """Boxes divided by the per-axis scale (input / original size, mmdet's scale_factor) and the
        masks pasted at the original size (``original_sizes``, default: the input sizes)."""
        out_sizes = list(image_sizes) if original_sizes is None else [(int(h), int(w)) for h, w in original_sizes]
        if len(out_sizes) != len(image_sizes):
            raise ValueError(f"{len(out_sizes)} original sizes for {len(image_sizes)} images")
        thr = self.cfg.roi.mask_thr
        return [
            postprocess_detections(d["boxes"], d["scores"], d["labels"], d["mask_probs"], in_hw, out_hw, thr)
            for d, in_hw, out_hw in zip(detections, image_sizes, out_sizes)
        ]

    @torch.no_grad()
    def detect_raw(self, images_255: Sequence[Tensor]) -> list[dict[str, Tensor]]:
        """Eval-mode detections before postprocess, for callers that place masks themselves (sliced
        prediction): per image ``boxes`` (K, 4) in the input image's pixels, ``scores``, ``labels`` and
        ``mask_probs`` (K, M, M), the mask probabilities of each detection's class over its box.
        ``images_255`` are (3, H, W) float 0..255 tensors fed as they are (no resize)."""
        if self.training:
            raise RuntimeError("detect_raw needs eval mode (model.eval())")
        return self._run(list(images_255), None, None, paste=False)[0]

    @staticmethod
    def _inputs(images: Sequence[ImageLike]) -> list[Tensor]:
        if len(images) == 0:
            raise ValueError("model called with an empty list of images")
        return [to_chw_255(im) for im in images]

    @torch.no_grad()
    def predict(
        self, images: Sequence[ImageLike], resize: bool = True, scale: Optional[tuple[int, int]] = None
    ) -> list[dict[str, Tensor]]:
        """Detect on images of any size: uint8 RGB (H, W, 3) arrays or (3, H, W) tensors.

        With ``resize=True`` mmdet's test pipeline is applied (keep-ratio resize to ``scale``, by
        default the model's ``cfg.test_scale``, with mmdet's rounding; normalise; pad to 32) and
        results come back in the original image's coordinates; with ``resize=False`` (or no scale
        at all) images go in at their own size.
        """
        scale = self.cfg.test_scale if scale is None else scale
        was_training = self.training
        self.eval()
        try:
            device = next(self.parameters()).device
            originals = [t.to(device) for t in self._inputs(images)]
            sizes = [(int(im.shape[1]), int(im.shape[2])) for im in originals]
            inputs = [resize_keep_ratio(im, scale) for im in originals] if resize and scale is not None else originals
            return self._run(inputs, None, sizes)[0]
        finally:
            self.train(was_training)


def check_target(index: int, image: Tensor, target: dict[str, Tensor], num_classes: int) -> None:
    """Clear errors for malformed targets instead of a crash deep inside the heads."""
    for key in ("boxes", "labels", "masks"):
        if key not in target:
            raise ValueError(f"target {index} has no '{key}' (needs boxes, labels, masks)")
    boxes, labels, masks = target["boxes"], target["labels"], target["masks"]
    n = boxes.shape[0]
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"target {index}: boxes must be (N, 4), got {tuple(boxes.shape)}")
    if labels.shape != (n,):
        raise ValueError(f"target {index}: labels must be ({n},), got {tuple(labels.shape)}")
    if masks.ndim != 3 or masks.shape[0] != n or tuple(masks.shape[1:]) != tuple(image.shape[1:]):
        raise ValueError(
            f"target {index}: masks must be ({n}, {image.shape[1]}, {image.shape[2]}), got {tuple(masks.shape)}"
        )
    ignore = target.get("ignore_boxes")
    if ignore is not None and (ignore.ndim != 2 or ignore.shape[1] != 4):
        raise ValueError(f"target {index}: ignore_boxes must be (K, 4) xyxy, got {tuple(ignore.shape)}")
    if n and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"target {index}: labels must be in 0..{num_classes - 1} (background is not a label), "
            f"got {labels.min().item()}..{labels.max().item()}"
        )
