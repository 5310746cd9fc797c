"""Merging detections of the same object seen in several tiles or augmented views, by their masks.

Two detections match when they come from different tiles or views (the model's own NMS already
chose between the detections of one tile), their masks' IoU, or IoS (intersection over the smaller
mask), is at least the threshold, and (unless class-agnostic) they have the same label. Masks are compared on their
crops (:class:`~swin_maskrcnn.inference.instances.Instances`), only for pairs whose windows overlap,
found by a sweep over the windows sorted by x, so the cost grows with the detections and their
neighbours, not with the image.

Greedy, as SAHI's ``GREEDYNMM``: detections are taken in order (uncut before cut ones, i.e. a
detection touching an inner tile border comes after one that does not; then by score), and each
untaken one takes every untaken detection matching it into its group:

- ``nms`` keeps the leader of each group as it is;
- ``nmm`` unites the group: the union of the boxes, the maximum of the mask probabilities (so the
  thresholded mask is the union of the masks), the best score, the leader's label;
- ``fuse`` (test-time augmentation, weighted box fusion): the score-weighted mean of the boxes, the
  mask probabilities averaged over the group's members before the threshold, and the score
  ``sum(scores) / max(views, members)`` (an object seen in one view of two keeps half its score).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .instances import Instances

__all__ = ["match_pairs", "merge_instances"]


def _overlapping_pairs(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) index pairs, i < j, of windows ``[x0, y0, x1, y1)`` that share at least one pixel."""
    k = len(windows)
    if k < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.argsort(windows[:, 0], kind="stable")
    w = windows[order]
    # sorted by x0: the candidates of a are the next windows whose x0 lies before a's x1
    hi = np.searchsorted(w[:, 0], w[:, 2], side="left")
    lo = np.arange(1, k + 1)
    counts = np.maximum(hi - lo, 0)
    a = np.repeat(np.arange(k), counts)
    offsets = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    b = np.repeat(lo, counts) + offsets
    keep = (np.maximum(w[a, 1], w[b, 1]) < np.minimum(w[a, 3], w[b, 3])) & (w[b, 0] < w[a, 2])
    i, j = order[a[keep]], order[b[keep]]
    return np.minimum(i, j), np.maximum(i, j)


def match_pairs(inst: Instances, threshold: float, metric: str, class_agnostic: bool,
                mask_thr: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, value) of the detection pairs whose mask ``metric`` ('iou' or 'ios') is >= ``threshold``."""
    windows = inst.windows.numpy().astype(np.int64)
    i, j = _overlapping_pairs(windows)
    src = inst.source.numpy()
    other = src[i] != src[j]
    i, j = i[other], j[other]
    if not class_agnostic and len(i):
        labels = inst.labels.numpy()
        same = labels[i] == labels[j]
        i, j = i[same], j[same]
    bins = [c.numpy() >= mask_thr for c in inst.crops]
    areas = np.array([int(b.sum()) for b in bins], dtype=np.int64)
    values = np.zeros(len(i), dtype=np.float64)
    for n, (a, b) in enumerate(zip(i.tolist(), j.tolist())):
        wa, wb = windows[a], windows[b]
        x0, y0 = max(wa[0], wb[0]), max(wa[1], wb[1])
        x1, y1 = min(wa[2], wb[2]), min(wa[3], wb[3])
        ma = bins[a][y0 - wa[1] : y1 - wa[1], x0 - wa[0] : x1 - wa[0]]
        mb = bins[b][y0 - wb[1] : y1 - wb[1], x0 - wb[0] : x1 - wb[0]]
        inter = int(np.count_nonzero(ma & mb))
        if inter == 0:
            continue
        denom = (areas[a] + areas[b] - inter) if metric == "iou" else min(areas[a], areas[b])
        values[n] = inter / denom if denom > 0 else 0.0
    ok = values >= threshold
    return i[ok], j[ok], values[ok]


def _union_window(windows: np.ndarray) -> list[int]:
    return [int(windows[:, 0].min()), int(windows[:, 1].min()), int(windows[:, 2].max()), int(windows[:, 3].max())]


def _place(crops: Sequence[torch.Tensor], windows: np.ndarray, union: list[int]) -> list[torch.Tensor]:
    """Each crop on the union window (zeros outside its own window)."""
    h, w = union[3] - union[1], union[2] - union[0]
    out = []
    for c, win in zip(crops, windows):
        z = torch.zeros(h, w)
        z[win[1] - union[1] : win[3] - union[1], win[0] - union[0] : win[2] - union[0]] = c
        out.append(z)
    return out


def merge_instances(inst: Instances, mode: str = "nmm", threshold: float = 0.5, metric: str = "ios",
                    class_agnostic: bool = False, mask_thr: float = 0.5, views: int = 1) -> Instances:
    """Greedy merge of ``inst`` (see the module docstring); ``mode`` is 'nms', 'nmm' or 'fuse'
    (``views``: the number of augmented views, for fuse's score). Returns the merged detections
    sorted by score (descending)."""
    if mode not in ("nms", "nmm", "fuse"):
        raise ValueError(f"merge mode must be nms, nmm or fuse, got {mode!r}")
    k = len(inst)
    if k == 0:
        return inst
    i, j, _ = match_pairs(inst, threshold, metric, class_agnostic, mask_thr)
    neighbours: list[list[int]] = [[] for _ in range(k)]
    for a, b in zip(i.tolist(), j.tolist()):
        neighbours[a].append(b)
        neighbours[b].append(a)
    scores = inst.scores.numpy().astype(np.float64)
    cut = inst.cut.numpy().astype(bool)
    order = np.lexsort((np.arange(k), -scores, cut))  # uncut first, then by score, then by index
    taken = np.zeros(k, dtype=bool)
    groups: list[list[int]] = []
    for lead in order.tolist():
        if taken[lead]:
            continue
        members = [lead] + [n for n in neighbours[lead] if not taken[n]]
        taken[members] = True
        groups.append(members)
    if mode == "nms":
        kept = inst.select([g[0] for g in groups])
    else:
        windows = inst.windows.numpy().astype(np.int64)
        boxes, out_scores, out_windows, crops, cuts = [], [], [], [], []
        for g in groups:
            lead = g[0]
            if len(g) == 1:
                boxes.append(inst.boxes[lead])
                out_scores.append(float(scores[lead]) / (max(views, 1) if mode == "fuse" else 1.0))
                out_windows.append(windows[lead].tolist())
                crops.append(inst.crops[lead])
                cuts.append(bool(cut[lead]))
                continue
            union = _union_window(windows[g])
            placed = _place([inst.crops[m] for m in g], windows[g], union)
            b = inst.boxes[g].float()
            if mode == "nmm":
                boxes.append(torch.cat([b[:, :2].min(0).values, b[:, 2:].max(0).values]))
                out_scores.append(float(scores[g].max()))
                crops.append(torch.stack(placed).amax(0))
            else:
                wts = torch.as_tensor(scores[g], dtype=torch.float32)
                boxes.append((b * wts[:, None]).sum(0) / wts.sum().clamp(min=1e-12))
                out_scores.append(float(scores[g].sum()) / max(views, len(g)))
                crops.append(torch.stack(placed).mean(0))
            out_windows.append(union)
            cuts.append(bool(cut[g].all()))
        leads = [g[0] for g in groups]
        kept = Instances(torch.stack(boxes).float(), torch.tensor(out_scores, dtype=torch.float32),
                         inst.labels[leads], torch.tensor(out_windows, dtype=torch.int64),
                         crops, torch.tensor(cuts, dtype=torch.bool), inst.source[leads])
    order_out = torch.argsort(kept.scores, descending=True, stable=True)
    return kept.select(order_out.tolist())
