"""Detections back to the original image: box rescaling and mask pasting (mmdet semantics).

mmdet pastes each 28 x 28 mask probability map over its box with ``grid_sample`` (pixel centres at
+0.5, ``align_corners=False``) on the box's pixel window grown by one pixel and clipped to the image
(its CPU path, ``_do_paste_mask(skip_empty=True)``, one box at a time), thresholds it, and leaves
every other pixel background. :func:`paste_masks` computes exactly that (the same ``grid_sample``
on the same grid values, so the same bits) for all boxes with a few batched calls: boxes whose
windows have similar heights and widths (within 1.5x) are sampled together on their group's
largest window (grid coordinates built for the whole group at once), and each box's part is then
copied into the output by slicing. The only host read is the integer windows of all boxes at once
(one transfer, not four per box), so on a GPU nothing synchronises per box.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def rescale_boxes(boxes: Tensor, input_hw: tuple[int, int], output_hw: tuple[int, int]) -> Tensor:
    """Boxes in network-input pixels -> ``output_hw`` pixels, dividing by mmdet's per-axis
    ``scale_factor`` (input / output size) as mmdet does (a division, not a multiplication, so
    the values match mmdet's bit for bit)."""
    ih, iw = input_hw
    oh, ow = output_hw
    scale = boxes.new_tensor([iw / ow, ih / oh, iw / ow, ih / oh])
    return boxes / scale


def paste_windows(boxes: Tensor, img_h: int, img_w: int) -> Tensor:
    """(K, 4) int64 ``[x_start, y_start, x_end, y_end]`` pixel windows mmdet pastes each box into:
    ``floor(x0) - 1 .. ceil(x1) + 1`` clipped to the image (empty when end <= start)."""
    b = boxes.float()
    xs = (torch.floor(b[:, 0]) - 1).clamp(min=0)
    ys = (torch.floor(b[:, 1]) - 1).clamp(min=0)
    xe = (torch.ceil(b[:, 2]) + 1).clamp(max=img_w)
    ye = (torch.ceil(b[:, 3]) + 1).clamp(max=img_h)
    return torch.stack([xs, ys, xe, ye], 1).long()


def _split(order: list[int], size: list[int], ratio: float) -> list[list[int]]:
    """Cut ``order`` (sorted by decreasing ``size``) where a size falls below the run's first / ratio."""
    runs: list[list[int]] = []
    for i in order:
        if runs and size[i] * ratio >= size[runs[-1][0]]:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def size_groups(heights: list[int], widths: list[int], ratio: float = 1.5) -> list[list[int]]:
    """Non-empty windows grouped so that within a group every height and width is at least
    1 / ``ratio`` of the group's largest (padding a group to its largest window then costs at most
    ``ratio ** 2`` times the work of pasting each box alone)."""
    order = sorted((i for i in range(len(heights)) if heights[i] > 0 and widths[i] > 0), key=lambda i: -heights[i])
    groups: list[list[int]] = []
    for run in _split(order, heights, ratio):
        groups += _split(sorted(run, key=lambda i: -widths[i]), widths, ratio)
    return groups


def paste_masks(mask_probs: Tensor, boxes: Tensor, img_h: int, img_w: int, threshold: float) -> Tensor:
    """Paste (K, M, M) mask probabilities into (K, img_h, img_w) bool masks (mmdet ``_do_paste_mask``).

    Each mask is resampled with ``grid_sample`` over its box (see the module docstring) and
    thresholded at ``threshold`` (``>=``); pixels more than one pixel outside the box are background.
    The result does not depend on the device.
    """
    k = mask_probs.shape[0]
    device = mask_probs.device
    out = torch.zeros(k, img_h, img_w, dtype=torch.bool, device=device)
    if k == 0:
        return out
    win = paste_windows(boxes, img_h, img_w)
    windows = win.tolist()  # the one host read
    heights = [ye - ys for _, ys, _, ye in windows]
    widths = [xe - xs for xs, _, xe, _ in windows]
    b = boxes.float()  # float32 arithmetic, as mmdet
    probs = mask_probs.float()
    for group in size_groups(heights, widths):
        idx = torch.tensor(group, device=device)
        h_max, w_max = max(heights[i] for i in group), max(widths[i] for i in group)
        xx = win[idx, 0][:, None] + torch.arange(w_max, device=device)  # G, w_max pixel columns
        yy = win[idx, 1][:, None] + torch.arange(h_max, device=device)  # G, h_max pixel rows
        bg = b[idx]
        gx = (xx.float() + 0.5 - bg[:, 0:1]) / (bg[:, 2:3] - bg[:, 0:1]) * 2 - 1
        gy = (yy.float() + 0.5 - bg[:, 1:2]) / (bg[:, 3:4] - bg[:, 1:2]) * 2 - 1
        gx = torch.where(torch.isinf(gx), torch.zeros_like(gx), gx)
        gy = torch.where(torch.isinf(gy), torch.zeros_like(gy), gy)
        grid = torch.stack([gx[:, None, :].expand(-1, h_max, -1), gy[:, :, None].expand(-1, -1, w_max)], dim=-1)
        pasted = F.grid_sample(probs[idx][:, None], grid, align_corners=False)[:, 0] >= threshold
        for j, i in enumerate(group):  # slice copies only: no host reads, no per-box arithmetic
            xs, ys, xe, ye = windows[i]
            out[i, ys:ye, xs:xe] = pasted[j, : ye - ys, : xe - xs]
    return out


def postprocess_detections(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    mask_probs: Tensor,
    input_hw: tuple[int, int],
    output_hw: tuple[int, int],
    mask_thr: float,
) -> dict[str, Tensor]:
    """One image's detections in network-input pixels -> ``output_hw``: boxes rescaled, each
    detection's mask probabilities of its class (K, M, M) pasted and thresholded."""
    out_boxes = rescale_boxes(boxes, input_hw, output_hw)
    masks = paste_masks(mask_probs, out_boxes, output_hw[0], output_hw[1], mask_thr)
    return {"boxes": out_boxes, "scores": scores, "labels": labels, "masks": masks}
