"""Mask head (mmdet FCNMaskHead): M x M class-specific mask logits (M = mask_size, mmdet's 28),
targets and loss (pasting: ``..postprocess``).

4 x (3x3 conv + ReLU) -> 2x2 stride-2 transposed conv + ReLU -> 1x1 conv to one channel per
foreground class. Targets are the GT masks RoIAligned (aligned=True, output M, scale 1) onto the
positive proposals and binarised at 0.5; the loss is the mean pixel BCE over all positive RoIs
(a mean, so its scale does not grow with M * M).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from ..config import LossConfig
from ..layers import ConvWrap
from ..losses import sigmoid_bce


#: RoIs per mask-head call at inference (see MaskHead.forward)
INFERENCE_CHUNK = 25


class MaskHead(nn.Module):
    """mmdet's FCNMaskHead. Input: mask RoI features (K, C, M/2, M/2). Output: mask logits
    (K, num_classes, M, M), one channel per foreground class (M = ``RoIConfig.mask_size``, 28)."""

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

    def forward(self, roi_feats: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        """(K, C, M/2, M/2) -> (K, num_classes, M, M) logits (the transposed conv doubles the side),
        or with ``labels`` (K,) only each RoI's labelled channel, (K, M, M).

        Training and inference only ever read the labelled channel, so with ``labels`` the last 1x1
        conv is one dot product per pixel instead of ``num_classes`` (a batched matmul with each
        RoI's row of the conv weight): the same function, 1/num_classes of that layer's work.
        """
        chunk = not torch.is_grad_enabled() and not torch.jit.is_tracing()  # (an ONNX graph keeps K dynamic)
        if chunk and roi_feats.shape[0] > INFERENCE_CHUNK:
            # Inference in chunks of RoIs: oneDNN's layout copies around each conv and the
            # transposed conv cost ~2.4 KiB per RoI per channel at once (243 MiB for 100 detections,
            # the largest allocation of a whole inference); a chunk at a time keeps it to ~1/4.
            chunks = roi_feats.split(INFERENCE_CHUNK)
            label_chunks = [None] * len(chunks) if labels is None else labels.split(INFERENCE_CHUNK)
            return torch.cat([self.forward(c, lc) for c, lc in zip(chunks, label_chunks)])
        x = roi_feats
        for conv in self.convs:
            x = conv(x)
        x = F.relu(self.upsample(x), inplace=True)  # in place: the 28 x 28 maps are the head's largest tensor
        if labels is None:
            return self.conv_logits(x)
        k, c, m, _ = x.shape
        w = self.conv_logits.weight[labels, :, 0, 0].to(x.dtype)  # K, C
        b = self.conv_logits.bias[labels].to(x.dtype)  # K
        if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            # channels_last maps (a bf16 copy's convolutions): the same products on the free NHWC view
            return torch.baddbmm(b.view(k, 1, 1), x.permute(0, 2, 3, 1).reshape(k, m * m, c), w.view(k, c, 1)).view(k, m, m)
        return torch.baddbmm(b.view(k, 1, 1), w.view(k, 1, c), x.reshape(k, c, m * m)).view(k, m, m)

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
        """Weighted ``loss_mask``: mean BCE over the pixels of every positive RoI's GT-class channel.

        ``mask_logits``: all channels (K, num_classes, M, M), or the GT-class channel already
        selected (K, M, M), as ``forward(roi_feats, labels)`` returns it."""
        lc = self.loss_cfg
        if mask_logits.shape[0] == 0:
            return {"loss_mask": mask_logits.sum() * 0}
        if mask_logits.dim() == 3:
            pred = mask_logits
        else:
            pred = mask_logits[torch.arange(mask_logits.shape[0], device=labels.device), labels]
        loss = sigmoid_bce(pred, targets, None, "mean", None, lc.eps)
        return {"loss_mask": loss * lc.roi_loss_mask_weight}
