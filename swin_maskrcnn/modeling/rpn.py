"""Region Proposal Network: head, training targets and loss, and proposal generation (mmdet RPNHead).

One layout everywhere: the objectness map (B, A, H, W) and the delta map (B, 4A, H, W, channel
a*4+k) are flattened with ``permute(0, 2, 3, 1)`` to (H, W, A) order, the order of
``AnchorGenerator.grid_anchors``; the loss and the proposals both go through ``flatten_level``, so
every prediction is trained against, and decoded with, its own anchor (tests/modeling/test_anchors_layout.py
plants a logit and a delta at one position and reads them back at that anchor).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms

from .anchors import AnchorGenerator
from .assigner import MaxIoUAssigner
from .box_coder import DeltaXYWHBBoxCoder
from .config import LossConfig, RPNConfig
from .losses import box_regression_loss, sigmoid_bce, sigmoid_focal
from .sampler import ChoiceFn, RandomSampler


@dataclass
class AnchorTargets:
    """One image's RPN training targets over all N anchors of the batch's maps (anchor order)."""

    labels: Tensor  # (N,) 1.0 at sampled positives, 0.0 elsewhere
    label_weights: Tensor  # (N,) rpn_cls_pos_weight at positives, 1.0 at sampled negatives, 0.0 elsewhere
    bbox_targets: Tensor  # (N, 4) encoded deltas to the assigned GT box at positives, 0.0 elsewhere
    bbox_weights: Tensor  # (N, 4) 1.0 at positives
    num_pos: int
    num_neg: int
    avg_factor: int  # max(num_pos, 1) + max(num_neg, 1), mmdet's per-image normaliser


def flatten_level(cls: Tensor, reg: Tensor) -> tuple[Tensor, Tensor]:
    """(B, A, H, W), (B, 4A, H, W) -> (B, H*W*A), (B, H*W*A, 4) in anchor order."""
    b = cls.shape[0]
    return cls.permute(0, 2, 3, 1).reshape(b, -1), reg.permute(0, 2, 3, 1).reshape(b, -1, 4)


class RPNHead(nn.Module):
    """mmdet's RPNHead: a 3x3 conv + ReLU shared by all levels, then 1x1 objectness (A logits, sigmoid)
    and 1x1 deltas (4A) per position, A = len(anchor_scales) * len(anchor_ratios).

    Call (:meth:`forward`): the FPN maps P2..P6, (B, C, H_l, W_l) each, the images' sizes and padded
    sizes, and in training the GT boxes -> per image (K_i, 5) proposals [x1, y1, x2, y2, score]
    (detached, K_i <= max_per_img), the losses and the statistics. :meth:`maps` gives the raw
    per-level outputs (B, A, H_l, W_l) and (B, 4A, H_l, W_l).
    """

    def __init__(self, channels: int, cfg: RPNConfig, loss_cfg: LossConfig, choice: Optional[ChoiceFn] = None):
        super().__init__()
        self.cfg = cfg
        self.loss_cfg = loss_cfg
        self.anchor_generator = AnchorGenerator(cfg.anchor_strides, cfg.anchor_scales, cfg.anchor_ratios)
        a = self.anchor_generator.num_anchors
        self.rpn_conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.rpn_cls = nn.Conv2d(channels, a, 1)
        self.rpn_reg = nn.Conv2d(channels, 4 * a, 1)
        for m in (self.rpn_conv, self.rpn_cls, self.rpn_reg):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)
        self.coder = DeltaXYWHBBoxCoder()
        self.assigner = MaxIoUAssigner(cfg.pos_iou_thr, cfg.neg_iou_thr, cfg.min_pos_iou, ignore_iof_thr=cfg.ignore_iof_thr)
        self.sampler = RandomSampler(cfg.num_samples, cfg.pos_fraction, choice)

    def forward(
        self,
        feats: list[Tensor],
        image_sizes: list[tuple[int, int]],
        pad_shapes: list[tuple[int, int]],
        gt_boxes: Optional[list[Tensor]] = None,
        ignore_boxes: Optional[list[Optional[Tensor]]] = None,
    ) -> tuple[list[Tensor], dict[str, Tensor], dict[str, Tensor]]:
        """The whole RPN stage: maps, anchors, proposals and (in training) the losses.

        ``feats``: the FPN maps P2..P6, (B, C, H_l, W_l) each; ``image_sizes``: each image's (h, w)
        in the batch; ``pad_shapes``: each image's own size rounded up to the size divisor (decides
        which anchors may be sampled); ``gt_boxes``: per image (G_i, 4) xyxy, needed in training;
        ``ignore_boxes``: optional per image (K_i, 4) xyxy "don't care" regions (``cfg.ignore_iof_thr``).
        Returns per-image proposals (K_i, 5) = [x1, y1, x2, y2, score] (detached), the weighted
        losses ``loss_rpn_cls`` / ``loss_rpn_bbox`` and the statistics ``rpn_num_pos`` /
        ``rpn_num_neg``; the two dicts are empty in eval mode. The train/test proposal settings
        (``nms_pre``, ``max_per_img``) follow ``self.training``, as mmdet's train_cfg / test_cfg.
        """
        cls, reg = self.maps(feats)
        anchors = self.anchors(feats)
        losses: dict[str, Tensor] = {}
        stats: dict[str, Tensor] = {}
        if self.training:
            if gt_boxes is None or len(gt_boxes) != cls[0].shape[0]:
                raise ValueError("the RPN in training mode needs one gt_boxes tensor per image")
            losses, stats = self.loss(cls, reg, anchors, gt_boxes, pad_shapes, ignore_boxes)
        return self.proposals(cls, reg, anchors, image_sizes, training=self.training), losses, stats

    def maps(self, feats: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level: objectness logits (B, A, H, W) and deltas (B, 4A, H, W)."""
        cls, reg = [], []
        for f in feats:
            x = F.relu(self.rpn_conv(f), inplace=True)
            cls.append(self.rpn_cls(x))
            reg.append(self.rpn_reg(x))
        return cls, reg

    def anchors(self, feats: list[Tensor]) -> list[Tensor]:
        return self.anchor_generator.grid_anchors([f.shape[-2:] for f in feats], feats[0].device)

    # ------------------------------------------------------------------ training
    def anchor_targets(
        self, anchors: Tensor, valid: Tensor, gt_boxes: Tensor, ignore_boxes: Optional[Tensor] = None
    ) -> AnchorTargets:
        """One image's targets over all ``anchors`` (N, 4); only ``valid`` (N,) bool ones may be sampled.

        The valid anchors are assigned (MaxIoUAssigner 0.7 / 0.3 / 0.3, anchors inside
        ``ignore_boxes`` (K, 4) left out when ``ignore_iof_thr`` > 0) and 256 sampled at 0.5.
        Sampled positives get label 1, weight ``rpn_cls_pos_weight`` and the encoded deltas of their
        GT box; sampled negatives label 0 and weight 1; every other anchor weight 0.
        """
        valid_idx = torch.nonzero(valid).flatten()
        gt_labels = torch.zeros(gt_boxes.shape[0], dtype=torch.long, device=gt_boxes.device)  # one class
        assign = self.assigner.assign(anchors[valid_idx], gt_boxes, gt_labels, ignore_boxes)
        samp = self.sampler.sample(assign.gt_inds, assign.labels)
        n = anchors.shape[0]
        pos = valid_idx[samp.pos_inds]
        neg = valid_idx[samp.neg_inds]
        labels = anchors.new_zeros(n)
        label_weights = anchors.new_zeros(n)
        bbox_targets = anchors.new_zeros(n, 4)
        bbox_weights = anchors.new_zeros(n, 4)
        labels[pos] = 1.0
        label_weights[pos] = self.loss_cfg.rpn_cls_pos_weight
        label_weights[neg] = 1.0
        if pos.numel():
            bbox_targets[pos] = self.coder.encode(anchors[pos], gt_boxes[samp.pos_assigned_gt_inds].float())
            bbox_weights[pos] = 1.0
        return AnchorTargets(labels, label_weights, bbox_targets, bbox_weights, samp.num_pos, samp.num_neg, samp.avg_factor)

    def loss(
        self,
        cls: list[Tensor],
        reg: list[Tensor],
        anchors: list[Tensor],
        gt_boxes: list[Tensor],
        pad_shapes: list[tuple[int, int]],
        ignore_boxes: Optional[list[Optional[Tensor]]] = None,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Weighted ``loss_rpn_cls`` / ``loss_rpn_bbox`` and the sampling statistics.

        ``cls`` / ``reg``: the maps of :meth:`maps`; ``anchors``: per level (H*W*A, 4); ``gt_boxes``:
        per image (G, 4); ``pad_shapes``: per image, its own size rounded up to the size divisor
        (anchors on positions beyond it are never sampled). Targets per image come from
        :meth:`anchor_targets`. Both losses are summed over the batch and divided by ``avg_factor`` =
        sum over images of max(#pos, 1) + max(#neg, 1), the sampled count: the positive weight
        changes the numerator only, never the avg_factor (mmdet's ``pos_weight``).
        ``rpn_cls_loss='focal'`` swaps the BCE for a sigmoid focal loss on the same samples,
        weights and avg_factor.
        """
        lc = self.loss_cfg
        flat = [flatten_level(c, r) for c, r in zip(cls, reg)]
        cls_flat = torch.cat([f[0] for f in flat], dim=1)  # (B, N)
        reg_flat = torch.cat([f[1] for f in flat], dim=1)  # (B, N, 4)
        all_anchors = torch.cat(anchors, dim=0)
        sizes = [c.shape[-2:] for c in cls]
        ignores = [None] * len(gt_boxes) if ignore_boxes is None else list(ignore_boxes)
        per_image = [
            self.anchor_targets(
                all_anchors, torch.cat(self.anchor_generator.valid_flags(sizes, pad, all_anchors.device)), gt, ign
            )
            for gt, pad, ign in zip(gt_boxes, pad_shapes, ignores)
        ]
        labels = torch.stack([t.labels for t in per_image])
        label_weights = torch.stack([t.label_weights for t in per_image])
        avg_factor = sum(t.avg_factor for t in per_image)
        if lc.rpn_cls_loss == "focal":
            loss_cls = sigmoid_focal(
                cls_flat, labels, label_weights, lc.focal_alpha, lc.focal_gamma, "mean", avg_factor, lc.eps
            )
        else:
            loss_cls = sigmoid_bce(cls_flat, labels, label_weights, "mean", avg_factor, lc.eps)
        loss_bbox = box_regression_loss(
            reg_flat,
            torch.stack([t.bbox_targets for t in per_image]),
            torch.stack([t.bbox_weights for t in per_image]),
            lc.bbox_loss, lc.smooth_l1_beta, "mean", avg_factor, lc.eps,
        )
        losses = {
            "loss_rpn_cls": loss_cls * lc.rpn_loss_cls_weight,
            "loss_rpn_bbox": loss_bbox * lc.rpn_loss_bbox_weight,
        }
        stats = {
            "rpn_num_pos": torch.tensor(float(sum(t.num_pos for t in per_image))),
            "rpn_num_neg": torch.tensor(float(sum(t.num_neg for t in per_image))),
        }
        return losses, stats

    # ------------------------------------------------------------------ proposals
    @torch.no_grad()
    def proposals(
        self,
        cls: list[Tensor],
        reg: list[Tensor],
        anchors: list[Tensor],
        img_shapes: list[tuple[int, int]],
        training: bool,
    ) -> list[Tensor]:
        """Per image (K, 5) proposals [x1, y1, x2, y2, score], detached, at most ``max_per_img``.

        Per level: top ``nms_pre`` by sigmoid score; decode; clip to the image; drop boxes with
        w or h <= ``min_bbox_size``; NMS per level (``batched_nms`` with the level as the class);
        keep the best ``max_per_img``.
        """
        cfg = self.cfg
        nms_pre = cfg.nms_pre_train if training else cfg.nms_pre_test
        max_per_img = cfg.max_per_img_train if training else cfg.max_per_img_test
        # decoded and NMSed in fp32 (a no-op for fp32 maps; bf16 maps of a bf16 model are cast here)
        flat = [flatten_level(c.detach().float(), r.detach().float()) for c, r in zip(cls, reg)]
        results = []
        for img in range(cls[0].shape[0]):
            scores_l, deltas_l, anchors_l, levels_l = [], [], [], []
            for lvl, ((c, r), a) in enumerate(zip(flat, anchors)):
                scores = c[img].sigmoid()
                deltas = r[img]
                if 0 < nms_pre < scores.shape[0]:
                    scores, order = scores.sort(descending=True)
                    order = order[:nms_pre]
                    scores = scores[:nms_pre]
                    deltas = deltas[order]
                    a = a[order]
                scores_l.append(scores)
                deltas_l.append(deltas)
                anchors_l.append(a)
                levels_l.append(torch.full_like(scores, lvl, dtype=torch.long))
            scores = torch.cat(scores_l)
            boxes = self.coder.decode(torch.cat(anchors_l), torch.cat(deltas_l), max_shape=img_shapes[img])
            levels = torch.cat(levels_l)
            w = boxes[:, 2] - boxes[:, 0]
            h = boxes[:, 3] - boxes[:, 1]
            keep = (w > cfg.min_bbox_size) & (h > cfg.min_bbox_size)
            boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
            if boxes.numel():
                keep = batched_nms(boxes, scores, levels, cfg.nms_iou)[:max_per_img]
                boxes, scores = boxes[keep], scores[keep]
            results.append(torch.cat([boxes, scores[:, None]], dim=1))
        return results
