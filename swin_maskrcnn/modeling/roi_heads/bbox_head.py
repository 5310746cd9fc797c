"""Box head (mmdet Shared2FCBBoxHead): classification and class-specific box regression of RoIs.

Background is the LAST class: ``fc_cls`` has C + 1 outputs with column C = background, foreground
labels are 0..C-1. ``fc_reg`` has 4C outputs viewed as (C, 4). Regression targets use the
DeltaXYWH coder with stds (0.1, 0.1, 0.2, 0.2).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms

from ..box_coder import DeltaXYWHBBoxCoder
from ..config import LossConfig
from ..losses import box_regression_loss, sigmoid_focal, softmax_ce


def top_first_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou: float, k: int) -> Tensor:
    """``batched_nms(boxes, scores, labels, iou)[:k]``, computed on the best-scoring candidates first.

    NMS keeps a box iff no kept box of its class with a higher score overlaps it, so the boxes kept
    among all candidates scoring >= t are exactly those kept among all candidates that score >= t.
    With at least ``k`` of them kept, they are the first ``k``; else the threshold is lowered (4x
    the candidates) down to all of them. Every call sees more than 1000 boxes, where torchvision's
    CPU ``batched_nms`` runs one ``nms`` per class, as on all candidates; the result can differ only
    in the order of equal scores (its final sort is not stable). At ``score_thr 0`` (80 classes x
    1000 RoIs) this is one NMS over ~1000 instead of 80 000 candidates."""
    n = scores.numel()
    m = max(4 * k, 1001)
    while m < n:
        t = scores.topk(m).values[-1]
        sel = torch.nonzero(scores >= t).flatten()  # every candidate at or above the m-th score
        keep = batched_nms(boxes[sel], scores[sel], labels[sel], iou)
        if keep.numel() >= k:
            return sel[keep[:k]]
        m *= 4
    return batched_nms(boxes, scores, labels, iou)[:k]


class BBoxHead(nn.Module):
    """Two shared FCs + ReLU, then class logits and class-specific deltas.

    Input: RoI features (K, C, S, S), S = ``roi_size`` (7). Output: ``cls_score`` (K, C_fg + 1), column
    C_fg = background, and ``bbox_pred`` (K, 4 * C_fg), the (dx, dy, dw, dh) of class c in columns
    4c..4c+3, normalised by stds (0.1, 0.1, 0.2, 0.2).
    """

    def __init__(self, in_channels: int, roi_size: int, fc_dims: int, num_classes: int, loss_cfg: LossConfig):
        super().__init__()
        self.num_classes = num_classes
        self.loss_cfg = loss_cfg
        self.shared_fcs = nn.ModuleList([nn.Linear(in_channels * roi_size * roi_size, fc_dims), nn.Linear(fc_dims, fc_dims)])
        self.fc_cls = nn.Linear(fc_dims, num_classes + 1)
        self.fc_reg = nn.Linear(fc_dims, 4 * num_classes)
        for fc in self.shared_fcs:
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.fc_cls.weight, std=0.01)
        nn.init.zeros_(self.fc_cls.bias)
        nn.init.normal_(self.fc_reg.weight, std=0.001)
        nn.init.zeros_(self.fc_reg.bias)
        self.coder = DeltaXYWHBBoxCoder(stds=(0.1, 0.1, 0.2, 0.2))

    def forward(self, roi_feats: Tensor) -> tuple[Tensor, Tensor]:
        """(K, C, 7, 7) -> class logits (K, C+1) and deltas (K, 4C)."""
        x = roi_feats.flatten(1)
        for fc in self.shared_fcs:
            x = F.relu(fc(x), inplace=True)
        return self.fc_cls(x), self.fc_reg(x)

    def loss(
        self,
        cls_score: Tensor,
        bbox_pred: Tensor,
        labels: Tensor,
        label_weights: Tensor,
        bbox_targets: Tensor,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Weighted ``loss_cls`` and ``loss_bbox`` over all sampled RoIs of the batch.

        ``loss_cls``: softmax CE weighted per RoI (foreground RoIs by ``roi_cls_pos_weight``,
        background by 1) and divided by the number of sampled RoIs (the weights do not enter the
        avg_factor). ``loss_bbox``: L1 (or smooth-L1) on the GT class's 4 deltas of positive RoIs,
        divided by the number of sampled RoIs (mmdet) or, with ``roi_bbox_avg_factor='positives'``,
        by the number of positives. With no positive the loss is a zero that stays in the graph.
        ``roi_cls_loss='sigmoid_focal'`` trains the C foreground columns as independent sigmoids with a
        focal loss (same weights and avg_factor); ``class_scores`` then reads them as sigmoids.
        """
        lc = self.loss_cfg
        n = labels.shape[0]
        avg = max(float((label_weights > 0).sum().item()), 1.0)
        if lc.roi_cls_loss == "sigmoid_focal":
            # Per-class sigmoid on the C foreground columns; background RoIs have all-zero targets.
            onehot = F.one_hot(labels, self.num_classes + 1)[:, : self.num_classes].float()
            loss_cls = sigmoid_focal(
                cls_score[:, : self.num_classes], onehot, label_weights[:, None], lc.focal_alpha, lc.focal_gamma,
                "mean", avg, lc.eps,
            )
        else:
            loss_cls = softmax_ce(cls_score, labels, label_weights, "mean", avg, lc.eps)
        pos = (labels >= 0) & (labels < self.num_classes)
        num_pos = int(pos.sum())
        if num_pos:
            pred = bbox_pred.view(n, -1, 4)[pos, labels[pos]]
            box_avg = float(n) if lc.roi_bbox_avg_factor == "all_samples" else float(num_pos)
            loss_bbox = box_regression_loss(
                pred, bbox_targets[pos], None, lc.bbox_loss, lc.smooth_l1_beta, "mean", box_avg, lc.eps
            )
        else:
            loss_bbox = bbox_pred[pos].sum()
        with torch.no_grad():
            pred_labels = self.class_scores(cls_score).argmax(dim=1)
            correct = pred_labels == labels
            acc = correct.float().mean() * 100 if n else cls_score.new_zeros(())
            acc_fg = correct[pos].float().mean() * 100 if num_pos else cls_score.new_zeros(())
        losses = {"loss_cls": loss_cls * lc.roi_loss_cls_weight, "loss_bbox": loss_bbox * lc.roi_loss_bbox_weight}
        return losses, {"acc": acc.detach(), "acc_fg": acc_fg.detach()}

    def class_scores(self, cls_score: Tensor) -> Tensor:
        """Per-class probabilities (K, C+1): softmax (mmdet) or sigmoids for the focal variant."""
        if self.loss_cfg.roi_cls_loss == "sigmoid_focal":
            fg = cls_score[:, : self.num_classes].float().sigmoid()
            return torch.cat([fg, 1 - fg.max(dim=1, keepdim=True).values], dim=1)
        return F.softmax(cls_score.float(), dim=-1)

    @torch.no_grad()
    def predict(
        self,
        rois: Tensor,
        cls_score: Tensor,
        bbox_pred: Tensor,
        img_shape: tuple[int, int],
        score_thr: float,
        nms_iou: float,
        max_per_img: int,
        score_thrs: Optional[Tensor] = None,
        top_first: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One image's detections: boxes (K, 4) in input pixels, scores (K,), labels (K,).

        Softmax, class-specific decode, clip; every (box, class) pair with score > ``score_thr``
        enters a per-class NMS at ``nms_iou``; the best ``max_per_img`` are kept (mmdet multiclass_nms).
        ``score_thrs`` (C,), when given, replaces that test by score >= ``score_thrs[class]``
        (:meth:`SwinMaskRCNN.score_thresholds`). ``top_first`` (a bf16 model's, ``RoIHead.predict``)
        runs the NMS by :func:`top_first_nms`: the same detections, except possibly the order of
        equal scores (the fp32 path keeps torchvision's ``batched_nms`` bit for bit).
        """
        c = self.num_classes
        scores = self.class_scores(cls_score)
        k = rois.shape[0]
        boxes = self.coder.decode(
            rois[:, 1:5].repeat_interleave(c, dim=0), bbox_pred.reshape(-1, 4), max_shape=img_shape
        ).view(k, c, 4)
        fg = scores[:, :c]
        labels = torch.arange(c, device=fg.device).view(1, -1).expand_as(fg)
        boxes, fg, labels = boxes.reshape(-1, 4), fg.reshape(-1), labels.reshape(-1)
        valid = fg > score_thr if score_thrs is None else fg >= score_thrs.to(fg)[labels]
        boxes, fg, labels = boxes[valid], fg[valid], labels[valid]
        if boxes.numel() == 0:
            return boxes.new_zeros(0, 4), fg.new_zeros(0), labels.new_zeros(0)
        if top_first:
            keep = top_first_nms(boxes, fg, labels, nms_iou, max_per_img)
        else:
            keep = batched_nms(boxes, fg, labels, nms_iou)[:max_per_img]
        return boxes[keep], fg[keep], labels[keep]
