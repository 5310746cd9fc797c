"""RoI stage (mmdet StandardRoIHead): sample proposals, train box and mask heads, or detect.

Training per image: assign the proposals to the GT (0.5 / 0.5 / 0.5, low-quality matches), then
prepend the GT boxes as proposals assigned to themselves, sample 512 at 0.25 (randomly, or the
hardest by current loss with ``roi_sampler='ohem'``), and build labels
(background = C), per-RoI class weights and box targets. The mask head trains on the positive RoIs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..assigner import MaxIoUAssigner
from .bbox_head import BBoxHead
from ..config import ModelConfig
from .mask_head import MaskHead
from .roi_extractor import RoIExtractor, boxes_to_rois, pools_nhwc
from ..sampler import ChoiceFn, RandomSampler, SamplingResult

ROI_STRIDES = [4, 8, 16, 32]


@dataclass
class RoITargets:
    """One image's sampled RoIs and what each learns; positives first, then negatives."""

    boxes: Tensor  # (P + N, 4) sampled RoIs in network-input pixels
    labels: Tensor  # (P + N,) GT class (0..C-1) of positives, C (background) for negatives
    label_weights: Tensor  # (P + N,) roi_cls_pos_weight for positives, 1.0 for negatives
    bbox_targets: Tensor  # (P + N, 4) encoded deltas to the assigned GT box; zeros for negatives
    mask_targets: Tensor  # (P, M, M) binary mask targets of the positives (M = mask_size)
    num_pos: int

    @property
    def num_neg(self) -> int:
        return self.boxes.shape[0] - self.num_pos

    @property
    def pos_boxes(self) -> Tensor:
        return self.boxes[: self.num_pos]

    @property
    def pos_labels(self) -> Tensor:
        return self.labels[: self.num_pos]


def roi_align_inputs(feats: list[Tensor]) -> list[Tensor]:
    """The maps RoIAlign pools at inference: fp32 copies of bf16 maps that torchvision's
    ``roi_align`` would pool (NCHW ones under autocast: its CPU kernel has no bf16; on a GPU the RoI
    coordinates would be rounded to bf16 with them), made once for the box and the mask extractor
    (the pooled features go back to the heads' dtype); else ``feats`` themselves (fp32 maps, and a
    bf16 copy's channels_last CPU maps, which ``RoIExtractor`` pools in bf16, ``pools_nhwc``)."""
    f = feats[0] if feats else None
    if f is not None and f.dtype == torch.bfloat16 and not pools_nhwc(f):
        return [m.float() for m in feats]
    return feats


class RoIHead(nn.Module):
    """Box and mask heads on the proposals (mmdet StandardRoIHead).

    Call: ``roi_head(feats, proposals, image_sizes, targets=None)`` with ``feats`` the FPN maps
    (B, C, H_l, W_l) of which P2..P5 are pooled, ``proposals`` per image (K_i, 5) or (K_i, 4) boxes in
    network-input pixels, ``image_sizes`` each image's (h, w) and, in training, one target dict per
    image (``boxes`` (G, 4), ``labels`` (G,), ``masks`` (G, H, W), optionally ``ignore_boxes`` (K, 4)). Returns (detections, losses,
    stats): in training, no detections and the weighted ``loss_cls``, ``loss_bbox``, ``loss_mask``
    with the statistics ``acc``, ``acc_fg``, ``roi_num_pos``, ``roi_num_neg``; in eval mode, empty
    dicts and per image ``boxes`` (D, 4) in input pixels, ``scores`` (D,), ``labels`` (D,) in 0..C-1
    and ``mask_probs`` (D, M, M), the mask probabilities of each detection's class (M = mask_size).
    """

    def __init__(self, cfg: ModelConfig, choice: Optional[ChoiceFn] = None) -> None:
        super().__init__()
        self.cfg = cfg.roi
        self.num_classes = cfg.num_classes
        ch = cfg.fpn_channels
        self.bbox_roi_extractor = RoIExtractor(7, ROI_STRIDES, cfg.roi.finest_scale)
        # The mask head upsamples x2, so RoIs pooled at mask_size / 2 give mask_size logits (28 <- 14).
        self.mask_roi_extractor = RoIExtractor(cfg.roi.mask_size // 2, ROI_STRIDES, cfg.roi.finest_scale)
        self.bbox_head = BBoxHead(ch, 7, cfg.roi_fc_dims, cfg.num_classes, cfg.losses)
        self.mask_head = MaskHead(ch, cfg.mask_head_channels, cfg.num_classes, cfg.losses)
        self.assigner = MaxIoUAssigner(
            cfg.roi.pos_iou_thr, cfg.roi.neg_iou_thr, cfg.roi.min_pos_iou, ignore_iof_thr=cfg.roi.ignore_iof_thr
        )
        self.sampler = RandomSampler(cfg.roi.num_samples, cfg.roi.pos_fraction, choice)
        self.loss_cfg = cfg.losses

    def candidates(
        self, proposals: Tensor, gt_boxes: Tensor, gt_labels: Tensor, ignore_boxes: Optional[Tensor] = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Assigned candidates: boxes, ``gt_inds`` (-1/0/k) and labels, GT prepended when configured.

        As mmdet: the proposals are assigned first (those inside ``ignore_boxes`` set to -1 when
        ``roi.ignore_iof_thr`` > 0), then the GT boxes are prepended, each assigned to itself (so
        every GT is a positive candidate, whatever the ignore regions).
        """
        boxes = proposals[:, :4]
        assign = self.assigner.assign(boxes, gt_boxes, gt_labels, ignore_boxes)
        gt_inds, labels = assign.gt_inds, assign.labels
        if self.cfg.add_gt_as_proposals and gt_boxes.shape[0] > 0:
            g = gt_boxes.shape[0]
            boxes = torch.cat([gt_boxes.to(boxes.dtype), boxes], dim=0)
            gt_inds = torch.cat([torch.arange(1, g + 1, device=boxes.device), gt_inds])
            labels = torch.cat([gt_labels.long().to(boxes.device), labels])
        return boxes, gt_inds, labels

    def sample(
        self,
        proposals: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor,
        feats: Optional[list[Tensor]] = None,
        image_index: int = 0,
        ignore_boxes: Optional[Tensor] = None,
    ) -> tuple[Tensor, SamplingResult]:
        """Candidates and the sampling result over them (random, or OHEM when configured)."""
        boxes, gt_inds, labels = self.candidates(proposals, gt_boxes, gt_labels, ignore_boxes)
        if self.loss_cfg.roi_sampler == "ohem":
            if feats is None:
                raise ValueError("OHEM sampling needs the feature maps")
            hardness = self.hardness(feats, image_index, boxes, labels)
            sampler = RandomSampler(
                self.sampler.num, self.sampler.pos_fraction, lambda g, n: g[hardness[g].topk(n).indices]
            )
            return boxes, sampler.sample(gt_inds, labels)
        return boxes, self.sampler.sample(gt_inds, labels)

    @torch.no_grad()
    def hardness(self, feats: list[Tensor], image_index: int, boxes: Tensor, labels: Tensor) -> Tensor:
        """OHEM score of every candidate: its current classification loss (mmdet OHEMSampler)."""
        target = torch.where(labels >= 0, labels, torch.full_like(labels, self.num_classes))
        rois = torch.cat([boxes.new_full((boxes.shape[0], 1), float(image_index)), boxes], dim=1)
        cls_score, _ = self.bbox_head(self.bbox_roi_extractor(feats, rois))
        return F.cross_entropy(cls_score.float(), target, reduction="none")

    def forward(
        self,
        feats: list[Tensor],
        proposals: list[Tensor],
        image_sizes: list[tuple[int, int]],
        targets: Optional[Sequence[dict[str, Tensor]]] = None,
        score_thrs: Optional[Tensor] = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor], dict[str, Tensor]]:
        """The whole RoI stage; see the class docstring for what each mode returns (``score_thrs``:
        per-class score thresholds at test time, see ``BBoxHead.predict``)."""
        feats = feats[: len(ROI_STRIDES)]
        if self.training:
            if targets is None or len(targets) != len(proposals):
                raise ValueError("the RoI heads in training mode need one target dict per image")
            losses, stats = self.loss(feats, proposals, targets)
            return [], losses, stats
        return self.predict(feats, proposals, image_sizes, score_thrs), {}, {}

    def targets(
        self, proposals: Tensor, target: dict[str, Tensor], feats: list[Tensor], image_index: int
    ) -> RoITargets:
        """One image's sampled RoIs and their targets (see :meth:`candidates` and :meth:`sample`)."""
        gt_boxes = target["boxes"].float().to(proposals.device)
        gt_labels = target["labels"].long().to(proposals.device)
        ignore_boxes = target.get("ignore_boxes")
        boxes, samp = self.sample(proposals, gt_boxes, gt_labels, feats, image_index, ignore_boxes)
        pos_boxes = boxes[samp.pos_inds]
        p, n = samp.num_pos, samp.num_neg
        labels = torch.full((p + n,), self.num_classes, dtype=torch.long, device=boxes.device)
        labels[:p] = samp.pos_labels
        label_weights = boxes.new_ones(p + n)
        label_weights[:p] = self.loss_cfg.roi_cls_pos_weight
        bbox_targets = boxes.new_zeros(p + n, 4)
        if p:
            bbox_targets[:p] = self.bbox_head.coder.encode(pos_boxes, gt_boxes[samp.pos_assigned_gt_inds])
        mask_targets = MaskHead.targets(pos_boxes, target["masks"], samp.pos_assigned_gt_inds, self.cfg.mask_size)
        return RoITargets(
            torch.cat([pos_boxes, boxes[samp.neg_inds]], 0), labels, label_weights, bbox_targets, mask_targets, p
        )

    def loss(
        self, feats: list[Tensor], proposals: list[Tensor], targets: Sequence[dict[str, Tensor]]
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Weighted ``loss_cls``, ``loss_bbox``, ``loss_mask`` and the sampling statistics.

        The box head sees every sampled RoI of the batch, the mask head the positive ones; the
        losses' normalisers are in :meth:`BBoxHead.loss` and :meth:`MaskHead.loss`.
        """
        per_image = [self.targets(props, tgt, feats, img) for img, (props, tgt) in enumerate(zip(proposals, targets))]
        rois = boxes_to_rois([t.boxes for t in per_image])
        cls_score, bbox_pred = self.bbox_head(self.bbox_roi_extractor(feats, rois))
        losses, stats = self.bbox_head.loss(
            cls_score,
            bbox_pred,
            torch.cat([t.labels for t in per_image]),
            torch.cat([t.label_weights for t in per_image]),
            torch.cat([t.bbox_targets for t in per_image]),
        )
        pos_labels = torch.cat([t.pos_labels for t in per_image])
        mask_rois = boxes_to_rois([t.pos_boxes for t in per_image])
        mask_logits = self.mask_head(self.mask_roi_extractor(feats, mask_rois), pos_labels)  # GT-class channel only
        losses.update(self.mask_head.loss(mask_logits, torch.cat([t.mask_targets for t in per_image]), pos_labels))
        stats["roi_num_pos"] = torch.tensor(float(sum(t.num_pos for t in per_image)))
        stats["roi_num_neg"] = torch.tensor(float(sum(t.num_neg for t in per_image)))
        return losses, stats

    @torch.no_grad()
    def predict(
        self, feats: list[Tensor], proposals: list[Tensor], image_sizes: list[tuple[int, int]],
        score_thrs: Optional[Tensor] = None,
    ) -> list[dict[str, Tensor]]:
        """Detections per image in network-input pixels, with their class's mask probabilities.

        Box head on every proposal, per-class NMS (``BBoxHead.predict``), then the mask head on the
        kept boxes; rescaling to the original image and pasting the masks is the detector's
        postprocess step.
        """
        cfg = self.cfg
        dtype = feats[0].dtype  # the heads' dtype: the FPN's (bf16 for a bf16 model)
        pool = roi_align_inputs(feats)
        rois = boxes_to_rois([p[:, :4] for p in proposals])
        cls_score, bbox_pred = self.bbox_head(self.bbox_roi_extractor(pool, rois).to(dtype))
        bbox_pred = bbox_pred.float()  # decoded in fp32 (the scores: ``class_scores``)
        top_first = dtype == torch.bfloat16  # bf16: NMS on the best candidates first (BBoxHead.predict)
        counts = [p.shape[0] for p in proposals]
        dets = []
        for img, (cs, bp, r) in enumerate(zip(cls_score.split(counts), bbox_pred.split(counts), rois.split(counts))):
            boxes, scores, labels = self.bbox_head.predict(
                r, cs, bp, image_sizes[img], cfg.score_thr, cfg.nms_iou, cfg.max_per_img, score_thrs, top_first
            )
            dets.append({"boxes": boxes, "scores": scores, "labels": labels})
        mask_feats = self.mask_roi_extractor(pool, boxes_to_rois([d["boxes"] for d in dets])).to(dtype)
        mask_logits = self.mask_head(mask_feats, torch.cat([d["labels"] for d in dets]))  # each detection's class only
        for det, logits in zip(dets, mask_logits.split([d["boxes"].shape[0] for d in dets])):
            det["mask_probs"] = logits.float().sigmoid()
        return dets
