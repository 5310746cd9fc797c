"""mmdet's ``MaxIoUAssigner``: which ground-truth box, if any, each candidate box learns from.

Result per candidate: ``gt_inds`` with -1 = ignored, 0 = negative, k >= 1 = positive for GT k-1.
1. max IoU in [0, neg_iou_thr) -> negative; 2. max IoU >= pos_iou_thr -> its argmax GT;
3. low-quality matches: for each GT i in order whose best IoU >= min_pos_iou, EVERY candidate whose
   IoU with i equals that best IoU is assigned to i (overwriting step 2). This guarantees a positive
   for every GT whose best IoU reaches ``min_pos_iou``, so small or oddly shaped boxes that no
   anchor covers at 0.7 still train the RPN. torchvision's Matcher differs (no min_pos_iou, argmax
   GT of each candidate).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import box_iou


@dataclass
class AssignResult:
    gt_inds: Tensor  # (N,) int64: -1 ignore, 0 negative, k>0 -> GT k-1
    max_overlaps: Tensor  # (N,) float
    labels: Tensor  # (N,) int64, -1 where not positive


class MaxIoUAssigner:
    def __init__(self, pos_iou_thr: float, neg_iou_thr: float, min_pos_iou: float, match_low_quality: bool = True):
        self.pos_iou_thr = pos_iou_thr
        self.neg_iou_thr = neg_iou_thr
        self.min_pos_iou = min_pos_iou
        self.match_low_quality = match_low_quality

    def assign(self, boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor) -> AssignResult:
        """Assign ``boxes`` (N, 4) to ``gt_boxes`` (G, 4) with labels (G,)."""
        n = boxes.shape[0]
        if gt_boxes.shape[0] == 0 or n == 0:
            gt_inds = boxes.new_zeros(n, dtype=torch.long)
            return AssignResult(gt_inds, boxes.new_zeros(n), boxes.new_full((n,), -1, dtype=torch.long))
        overlaps = box_iou(gt_boxes.float(), boxes.float())  # (G, N)
        return self.assign_from_overlaps(overlaps, gt_labels)

    def assign_from_overlaps(self, overlaps: Tensor, gt_labels: Tensor) -> AssignResult:
        """The assignment rule on a (G, N) IoU matrix (separate so tests can hand-build matrices)."""
        num_gts, n = overlaps.shape
        if num_gts == 0:
            return AssignResult(
                overlaps.new_zeros(n, dtype=torch.long), overlaps.new_zeros(n), overlaps.new_full((n,), -1).long()
            )
        max_overlaps, argmax_overlaps = overlaps.max(dim=0)
        gt_max_overlaps, _ = overlaps.max(dim=1)
        gt_inds = overlaps.new_full((n,), -1, dtype=torch.long)
        gt_inds[(max_overlaps >= 0) & (max_overlaps < self.neg_iou_thr)] = 0
        pos = max_overlaps >= self.pos_iou_thr
        gt_inds[pos] = argmax_overlaps[pos] + 1
        if self.match_low_quality:
            # For GT i in order, every candidate tied at i's best IoU goes to i; later GTs overwrite
            # earlier ones, so each candidate takes the LAST such GT (vectorised form of mmdet's loop).
            tied = (overlaps == gt_max_overlaps[:, None]) & (gt_max_overlaps[:, None] >= self.min_pos_iou)
            order = torch.arange(1, num_gts + 1, device=overlaps.device)[:, None]
            last = (tied * order).max(dim=0).values
            gt_inds = torch.where(last > 0, last, gt_inds)
        labels = gt_inds.new_full((n,), -1)
        pos_idx = gt_inds > 0
        labels[pos_idx] = gt_labels[gt_inds[pos_idx] - 1].long()
        return AssignResult(gt_inds, max_overlaps, labels)
