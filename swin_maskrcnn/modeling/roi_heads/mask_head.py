"""Mask head (mmdet FCNMaskHead): 28x28 class-specific mask logits, targets, loss and pasting.

4 x (3x3 conv + ReLU) -> 2x2 stride-2 transposed conv + ReLU -> 1x1 conv to one channel per
foreground class. Targets are the GT masks RoIAligned (aligned=True, output 28, scale 1) onto the
positive proposals and binarised at 0.5; the loss is the mean pixel BCE over all positive RoIs.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from ..config import LossConfig
from ..layers import ConvWrap
from ..losses import sigmoid_bce


class MaskHead(nn.Module):
    def __init__(self, in_channels: int, channels: int, num_classes: int, loss_cfg: LossConfig, num_convs: int = 4):
        super().__init__()
        self.num_classes = num_classes
        self.loss_cfg = loss_cfg
        self.convs = nn.ModuleList(
            [ConvWrap(in_channels if i == 0 else channels, channels, 3, relu=True) for i in range(num_convs)]
        )
        self.upsample = nn.ConvTranspose2d(channels, channels, 2, stride=2)
        self.conv_logits = nn.Conv2d(channels, num_classes, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, roi_feats: Tensor) -> Tensor:
        """(K, C, 14, 14) -> (K, num_classes, 28, 28) logits."""
        x = roi_feats
        for conv in self.convs:
            x = conv(x)
        return self.conv_logits(F.relu(self.upsample(x)))

    @staticmethod
    def targets(pos_boxes: Tensor, gt_masks: Tensor, assigned_gt: Tensor, size: int) -> Tensor:
        """(P, size, size) binary targets: ``gt_masks[assigned_gt]`` RoIAligned onto ``pos_boxes``."""
        if pos_boxes.shape[0] == 0:
            return pos_boxes.new_zeros(0, size, size)
        rois = torch.cat([torch.arange(pos_boxes.shape[0], device=pos_boxes.device, dtype=torch.float32)[:, None], pos_boxes.float()], 1)
        masks = gt_masks[assigned_gt].float()[:, None]
        out = roi_align(masks, rois, size, spatial_scale=1.0, sampling_ratio=0, aligned=True)
        return (out[:, 0] >= 0.5).float()

    def loss(self, mask_logits: Tensor, targets: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Weighted ``loss_mask``: mean BCE over the pixels of every positive RoI's GT-class channel."""
        lc = self.loss_cfg
        if mask_logits.shape[0] == 0:
            return {"loss_mask": mask_logits.sum() * 0}
        pred = mask_logits[torch.arange(mask_logits.shape[0], device=labels.device), labels]
        loss = sigmoid_bce(pred, targets, None, "mean", None, lc.eps)
        return {"loss_mask": loss * lc.roi_loss_mask_weight}


def paste_masks(mask_probs: Tensor, boxes: Tensor, img_h: int, img_w: int, threshold: float) -> Tensor:
    """Paste (K, M, M) mask probabilities into (K, img_h, img_w) bool masks (mmdet ``_do_paste_mask``).

    Each mask is resampled with ``grid_sample`` (pixel centres at +0.5, align_corners=False) over its
    box and thresholded at ``threshold``; pixels beyond one pixel outside the box are background
    (mmdet's CPU path, which pastes mask by mask with ``skip_empty``). We use that per-box path on
    every device so results do not depend on the device.
    """
    k = mask_probs.shape[0]
    out = torch.zeros(k, img_h, img_w, dtype=torch.bool, device=mask_probs.device)
    for i in range(k):
        x0, y0, x1, y1 = (float(v) for v in boxes[i])
        xs = max(int(math.floor(x0)) - 1, 0)
        ys = max(int(math.floor(y0)) - 1, 0)
        xe = min(int(math.ceil(x1)) + 1, img_w)
        ye = min(int(math.ceil(y1)) + 1, img_h)
        if xe <= xs or ye <= ys:
            continue
        bx0, by0, bx1, by1 = boxes[i].float()  # float32 arithmetic, as mmdet
        gy = (torch.arange(ys, ye, device=mask_probs.device, dtype=torch.float32) + 0.5 - by0) / (by1 - by0) * 2 - 1
        gx = (torch.arange(xs, xe, device=mask_probs.device, dtype=torch.float32) + 0.5 - bx0) / (bx1 - bx0) * 2 - 1
        gx = torch.where(torch.isinf(gx), torch.zeros_like(gx), gx)
        gy = torch.where(torch.isinf(gy), torch.zeros_like(gy), gy)
        grid = torch.stack([gx[None, :].expand(gy.numel(), -1), gy[:, None].expand(-1, gx.numel())], dim=-1)
        pasted = F.grid_sample(mask_probs[i][None, None].float(), grid[None], align_corners=False)[0, 0]
        out[i, ys:ye, xs:xe] = pasted >= threshold
    return out
