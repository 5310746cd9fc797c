"""Region Proposal Network: head, training targets and loss, and proposal generation (mmdet RPNHead).

Layouts (the predecessor's bugs B1/B2): the objectness map (B, A, H, W) and the delta map
(B, 4A, H, W, channel a*4+k) are flattened with ``permute(0, 2, 3, 1)`` to (H, W, A) order, the order
of ``AnchorGenerator.grid_anchors``. Loss, proposals and anchors all use ``flatten_level`` below.
"""
from __future__ import annotations

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


def flatten_level(cls: Tensor, reg: Tensor) -> tuple[Tensor, Tensor]:
    """(B, A, H, W), (B, 4A, H, W) -> (B, H*W*A), (B, H*W*A, 4) in anchor order."""
    b = cls.shape[0]
    return cls.permute(0, 2, 3, 1).reshape(b, -1), reg.permute(0, 2, 3, 1).reshape(b, -1, 4)


class RPNHead(nn.Module):
    """3x3 conv + ReLU, then 1x1 objectness (A, sigmoid) and 1x1 deltas (4A)."""

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
        self.assigner = MaxIoUAssigner(cfg.pos_iou_thr, cfg.neg_iou_thr, cfg.min_pos_iou)
        self.sampler = RandomSampler(cfg.num_samples, cfg.pos_fraction, choice)

    def forward(
        self,
        feats: list[Tensor],
        image_sizes: list[tuple[int, int]],
        pad_shapes: list[tuple[int, int]],
        gt_boxes: Optional[list[Tensor]] = None,
    ) -> tuple[list[Tensor], dict[str, Tensor], dict[str, Tensor]]:
        """The whole RPN stage: maps, anchors, proposals and (in training) the losses.

        ``feats``: the FPN maps P2..P6, (B, C, H_l, W_l) each; ``image_sizes``: each image's (h, w)
        in the batch; ``pad_shapes``: each image's own size rounded up to the size divisor (decides
        which anchors may be sampled); ``gt_boxes``: per image (G_i, 4) xyxy, needed in training.
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
            losses, stats = self.loss(cls, reg, anchors, gt_boxes, pad_shapes)
        return self.proposals(cls, reg, anchors, image_sizes, training=self.training), losses, stats

    def maps(self, feats: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level: objectness logits (B, A, H, W) and deltas (B, 4A, H, W)."""
        cls, reg = [], []
        for f in feats:
            x = F.relu(self.rpn_conv(f))
            cls.append(self.rpn_cls(x))
            reg.append(self.rpn_reg(x))
        return cls, reg

    def anchors(self, feats: list[Tensor]) -> list[Tensor]:
        return self.anchor_generator.grid_anchors([f.shape[-2:] for f in feats], feats[0].device)

    # ------------------------------------------------------------------ training
    def loss(
        self,
        cls: list[Tensor],
        reg: list[Tensor],
        anchors: list[Tensor],
        gt_boxes: list[Tensor],
        pad_shapes: list[tuple[int, int]],
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Weighted ``loss_rpn_cls`` / ``loss_rpn_bbox`` and sampling statistics.

        Per image: anchors on positions inside the image's own padded area are assigned and
        sampled (256 at 0.5). Positives get target 1 and weight ``rpn_cls_pos_weight``, sampled
        negatives target 0 and weight 1, everything else weight 0. Both losses are summed and
        divided by ``avg_factor`` = sum over images of max(#pos, 1) + max(#neg, 1), i.e. the sampled
        count: the positive weight changes the numerator only, never the avg_factor (mmdet's
        ``pos_weight``). ``rpn_cls_loss='focal'`` swaps the BCE for a sigmoid focal loss on the same
        samples, weights and avg_factor.
        """
        lc = self.loss_cfg
        flat = [flatten_level(c, r) for c, r in zip(cls, reg)]
        cls_flat = torch.cat([f[0] for f in flat], dim=1)  # (B, N)
        reg_flat = torch.cat([f[1] for f in flat], dim=1)  # (B, N, 4)
        all_anchors = torch.cat(anchors, dim=0)
        sizes = [c.shape[-2:] for c in cls]
        labels_t, weights_t, box_t, box_w = [], [], [], []
        avg_factor = 0
        num_pos = num_neg = 0
        for img, gt in enumerate(gt_boxes):
            valid = torch.cat(self.anchor_generator.valid_flags(sizes, pad_shapes[img], all_anchors.device))
            valid_idx = torch.nonzero(valid).flatten()
            assign = self.assigner.assign(all_anchors[valid_idx], gt, torch.zeros(gt.shape[0], dtype=torch.long, device=gt.device))
            samp = self.sampler.sample(assign.gt_inds, assign.labels)
            n = all_anchors.shape[0]
            target = all_anchors.new_zeros(n)
            weight = all_anchors.new_zeros(n)
            bt = all_anchors.new_zeros(n, 4)
            bw = all_anchors.new_zeros(n, 4)
            pos = valid_idx[samp.pos_inds]
            neg = valid_idx[samp.neg_inds]
            target[pos] = 1.0
            weight[pos] = lc.rpn_cls_pos_weight
            weight[neg] = 1.0
            if pos.numel():
                bt[pos] = self.coder.encode(all_anchors[pos], gt[samp.pos_assigned_gt_inds].float())
                bw[pos] = 1.0
            labels_t.append(target)
            weights_t.append(weight)
            box_t.append(bt)
            box_w.append(bw)
            avg_factor += samp.avg_factor
            num_pos += samp.num_pos
            num_neg += samp.num_neg
        target = torch.stack(labels_t)
        weight = torch.stack(weights_t)
        if lc.rpn_cls_loss == "focal":
            loss_cls = sigmoid_focal(
                cls_flat, target, weight, lc.focal_alpha, lc.focal_gamma, "mean", avg_factor, lc.eps
            )
        else:
            loss_cls = sigmoid_bce(cls_flat, target, weight, "mean", avg_factor, lc.eps)
        loss_bbox = box_regression_loss(
            reg_flat, torch.stack(box_t), torch.stack(box_w), lc.bbox_loss, lc.smooth_l1_beta, "mean", avg_factor, lc.eps
        )
        losses = {
            "loss_rpn_cls": loss_cls * lc.rpn_loss_cls_weight,
            "loss_rpn_bbox": loss_bbox * lc.rpn_loss_bbox_weight,
        }
        stats = {
            "rpn_num_pos": torch.tensor(float(num_pos)),
            "rpn_num_neg": torch.tensor(float(num_neg)),
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
        flat = [flatten_level(c.detach(), r.detach()) for c, r in zip(cls, reg)]
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
