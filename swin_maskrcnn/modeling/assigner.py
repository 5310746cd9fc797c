"""mmdet's ``MaxIoUAssigner``: which ground-truth box, if any, each candidate box learns from.

Result per candidate: ``gt_inds`` with -1 = ignored, 0 = negative, k >= 1 = positive for GT k-1.
1. max IoU in [0, neg_iou_thr) -> negative; 2. max IoU >= pos_iou_thr -> its argmax GT;
3. low-quality matches: for each GT i in order whose best IoU >= min_pos_iou, EVERY candidate whose
   IoU with i equals that best IoU is assigned to i (overwriting step 2). This guarantees a positive
   for every GT whose best IoU reaches ``min_pos_iou``, so small or oddly shaped boxes that no
   anchor covers at 0.7 still train the RPN. torchvision's Matcher differs (no min_pos_iou, argmax
   GT of each candidate).

Ignore regions (mmdet's ``ignore_iof_thr``, ``ignore_wrt_candidates=True``): before step 1, every
candidate whose intersection over ITS OWN area with any ignore box exceeds ``ignore_iof_thr`` gets
IoU -1 with every GT, so it is neither negative (step 1 needs IoU >= 0) nor positive, and no GT's
low-quality match can pick it: it stays -1 and is never sampled. As in mmdet 3.3 the rule is off
when ``ignore_iof_thr <= 0`` (the default -1), when there are no ignore boxes, and when the image has
no GT box at all (mmdet then assigns every candidate to background before looking at the ignore
boxes). GT boxes added as proposals (RoI stage) are appended after assignment and are never ignored.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor
from torchvision.ops import box_iou


@dataclass
class AssignResult:
    gt_inds: Tensor  # (N,) int64: -1 ignore, 0 negative, k>0 -> GT k-1
    max_overlaps: Tensor  # (N,) float
    labels: Tensor  # (N,) int64, -1 where not positive


def box_iof(boxes: Tensor, regions: Tensor, eps: float = 1e-6) -> Tensor:
    """(N, K) intersection of each box with each region over the BOX's area (mmdet's
    ``bbox_overlaps(mode='iof')``, the area floored at ``eps``)."""
    lt = torch.max(boxes[:, None, :2], regions[None, :, :2])
    rb = torch.min(boxes[:, None, 2:], regions[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[:, None]
    return overlap / torch.max(area, area.new_tensor([eps]))


class MaxIoUAssigner:
    def __init__(
        self,
        pos_iou_thr: float,
        neg_iou_thr: float,
        min_pos_iou: float,
        match_low_quality: bool = True,
        ignore_iof_thr: float = -1.0,
    ):
        self.pos_iou_thr = pos_iou_thr
        self.neg_iou_thr = neg_iou_thr
        self.min_pos_iou = min_pos_iou
        self.match_low_quality = match_low_quality
        self.ignore_iof_thr = ignore_iof_thr

    def ignored(self, boxes: Tensor, ignore_boxes: Optional[Tensor]) -> Optional[Tensor]:
        """(N,) bool: candidates inside an ignore region (IoF > ``ignore_iof_thr``), or None when the
        rule is off (threshold <= 0, no ignore boxes or no candidates)."""
        if self.ignore_iof_thr <= 0 or ignore_boxes is None or ignore_boxes.numel() == 0 or boxes.numel() == 0:
            return None
        iof = box_iof(boxes.float(), ignore_boxes.to(boxes.device).float().reshape(-1, 4))
        return iof.max(dim=1).values > self.ignore_iof_thr

    def assign(
        self, boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor, ignore_boxes: Optional[Tensor] = None
    ) -> AssignResult:
        """Assign ``boxes`` (N, 4) to ``gt_boxes`` (G, 4) with labels (G,); ``ignore_boxes`` (K, 4)
        are "don't care" regions (see the module docstring)."""
        n = boxes.shape[0]
        if gt_boxes.shape[0] == 0 or n == 0:
            gt_inds = boxes.new_zeros(n, dtype=torch.long)
            return AssignResult(gt_inds, boxes.new_zeros(n), boxes.new_full((n,), -1, dtype=torch.long))
        overlaps = box_iou(gt_boxes.float(), boxes.float())  # (G, N)
        ignored = self.ignored(boxes, ignore_boxes)
        if ignored is not None:
            overlaps[:, ignored] = -1.0
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
