"""SwinMaskRCNN: the whole detector, from a list of RGB images to a loss dict or detections.

Data flow (one file per step): ``preprocess`` (normalise, pad to 32) -> ``swin.SwinTransformer``
(4 stage maps) -> ``fpn.FPN`` (P2..P6) -> ``rpn.RPNHead`` (objectness, deltas, proposals) ->
``roi_head.RoIHead`` (box head, mask head) -> losses or detections.
Module names equal mmdet's, so an mmdet state_dict loads key for key (see ``mmdet_checkpoint``).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from .config import ModelConfig
from .backbone.fpn import FPN
from .loss_weighting import UncertaintyWeighting
from .preprocess import ImageLike, normalize_and_pad, resize_keep_ratio, to_chw_255
from .roi_heads.roi_head import RoIHead
from .rpn import RPNHead
from .sampler import ChoiceFn
from .backbone.swin import SwinTransformer

LossDict = dict[str, Tensor]


class SwinMaskRCNN(nn.Module):
    """Swin Transformer Mask R-CNN with mmdet's semantics.

    Train mode: ``model(images, targets)`` -> dict with the already-weighted losses ``loss_rpn_cls``,
    ``loss_rpn_bbox``, ``loss_cls``, ``loss_bbox``, ``loss_mask`` (with graph) and detached
    statistics ``acc``, ``acc_fg`` (RoI classification accuracy, all / foreground, in %),
    ``rpn_num_pos``, ``rpn_num_neg``, ``roi_num_pos``, ``roi_num_neg``.
    Eval mode: ``model(images, original_sizes=None)`` -> one dict per image with ``boxes`` (K, 4),
    ``scores``, ``labels`` (0..C-1), ``masks`` (K, h, w) bool, at ``original_sizes`` if given
    (boxes rescaled, masks pasted at that size) or else at the input image's size.
    ``images`` are (3, H, W) float RGB in [0, 1]; targets have ``boxes`` (N, 4) xyxy in the image's
    pixels, ``labels`` (N,) in 0..C-1 and ``masks`` (N, H, W).
    """

    def __init__(self, cfg: ModelConfig, sample_choice: Optional[ChoiceFn] = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = SwinTransformer.from_config(cfg)
        self.neck = FPN(cfg.stage_channels(), cfg.fpn_channels)
        self.rpn_head = RPNHead(cfg.fpn_channels, cfg.rpn, cfg.losses, sample_choice)
        self.roi_head = RoIHead(cfg, sample_choice)
        self.loss_balancer = UncertaintyWeighting() if cfg.losses.dynamic_loss_weighting else None

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    def preprocess(self, images_255: Sequence[Tensor]) -> tuple[Tensor, list[tuple[int, int]], list[tuple[int, int]]]:
        """Normalised, zero-padded batch plus each image's (h, w) and padded (h, w)."""
        return normalize_and_pad(images_255, self.cfg.pixel_mean, self.cfg.pixel_std, self.cfg.size_divisor)

    def extract_features(self, batch: Tensor) -> list[Tensor]:
        """FPN maps P2..P6 of a normalised, padded batch."""
        return self.neck(self.backbone(batch))

    def forward(
        self,
        images: Sequence[Tensor],
        targets: Optional[Sequence[dict[str, Tensor]]] = None,
        original_sizes: Optional[Sequence[tuple[int, int]]] = None,
    ):
        if len(images) == 0:
            raise ValueError("model called with an empty list of images")
        images_255 = [to_chw_255(im) for im in images]
        if self.training:
            if targets is None or len(targets) != len(images):
                raise ValueError("training needs one target dict per image (boxes, labels, masks)")
            return self._losses(images_255, targets)
        return self._detect(images_255, original_sizes)

    def _losses(self, images_255: list[Tensor], targets: Sequence[dict[str, Tensor]]) -> LossDict:
        for i, (im, t) in enumerate(zip(images_255, targets)):
            check_target(i, im, t, self.num_classes)
        batch, shapes, pad_shapes = self.preprocess(images_255)
        feats = self.extract_features(batch)
        cls, reg = self.rpn_head(feats)
        anchors = self.rpn_head.anchors(feats)
        gt_boxes = [t["boxes"].float().to(batch.device) for t in targets]
        rpn_losses, rpn_stats = self.rpn_head.loss(cls, reg, anchors, gt_boxes, pad_shapes)
        proposals = self.rpn_head.proposals(cls, reg, anchors, shapes, training=True)
        roi_losses, roi_stats = self.roi_head.loss(feats[:4], proposals, targets)
        out: LossDict = {**rpn_losses, **roi_losses}
        if self.loss_balancer is not None:
            out, weights = self.loss_balancer(out)
            roi_stats.update(weights)
        out.update({k: v.detach().to(batch.device) for k, v in {**rpn_stats, **roi_stats}.items()})
        return out

    @torch.no_grad()
    def _detect(
        self, images_255: list[Tensor], original_sizes: Optional[Sequence[tuple[int, int]]]
    ) -> list[dict[str, Tensor]]:
        batch, shapes, _ = self.preprocess(images_255)
        feats = self.extract_features(batch)
        cls, reg = self.rpn_head(feats)
        proposals = self.rpn_head.proposals(cls, reg, self.rpn_head.anchors(feats), shapes, training=False)
        out_sizes = [tuple(int(v) for v in s) for s in original_sizes] if original_sizes is not None else shapes
        if len(out_sizes) != len(shapes):
            raise ValueError(f"{len(out_sizes)} original sizes for {len(shapes)} images")
        return self.roi_head.predict(feats[:4], proposals, shapes, out_sizes)

    @torch.no_grad()
    def predict(
        self, images: Sequence[ImageLike], resize: bool = True, scale: tuple[int, int] = (1333, 800)
    ) -> list[dict[str, Tensor]]:
        """Detect on images of any size: uint8 RGB (H, W, 3) arrays or (3, H, W) tensors.

        With ``resize=True`` mmdet's test pipeline is applied (keep-ratio resize to ``scale`` with
        mmdet's rounding, normalise, pad to 32) and results come back in the original image's
        coordinates; with ``resize=False`` images go in at their own size.
        """
        was_training = self.training
        self.eval()
        try:
            device = next(self.parameters()).device
            originals = [to_chw_255(im).to(device) for im in images]
            sizes = [(int(im.shape[1]), int(im.shape[2])) for im in originals]
            inputs = [resize_keep_ratio(im, scale) for im in originals] if resize else originals
            return self._detect(inputs, sizes)
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
    if n and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"target {index}: labels must be in 0..{num_classes - 1} (background is not a label), "
            f"got {labels.min().item()}..{labels.max().item()}"
        )
