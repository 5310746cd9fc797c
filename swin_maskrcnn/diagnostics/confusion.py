"""Confusion matrix of detections against ground truth, right for any number of classes.

Per image, detections with score >= ``score_thr`` are taken by descending score and each is
matched to the unmatched ground truth (of any class) it overlaps most, when that box IoU is >=
``iou``. A match counts in (ground-truth class, predicted class); an unmatched detection in the
last row (background, predicted class); an unmatched ground truth in the last column (its class,
background). Crowd annotations are not ground truth here. The matrix has C + 1 rows and columns
whatever C is, so one- and two-class datasets get their background row and column too (the
mmdetection bug, open-mmlab/mmdetection#9592 and #8231, dropped them there).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from pycocotools.coco import COCO

from .inputs import iou_matrix, per_image

__all__ = ["confusion_matrix"]


def confusion_matrix(coco: COCO, results: Sequence[dict], iou: float = 0.5, score_thr: float = 0.3,
                     max_dets: int = 100) -> dict:
    """``{"iou", "score_thr", "labels": [class names..., "background"], "matrix": [[int]]}`` with
    rows = ground-truth classes + background and columns = predicted classes + background, the
    classes in category-id order."""
    cat_ids = sorted(coco.cats)
    index = {c: i for i, c in enumerate(cat_ids)}
    bg = len(cat_ids)
    m = np.zeros((bg + 1, bg + 1), dtype=np.int64)
    kept = [r for r in results if r["score"] >= score_thr]
    for im in per_image(coco, kept, "bbox", max_dets=max_dets):
        ious = iou_matrix(im.dets, im.gt)
        taken = np.zeros(len(im.gt), bool)
        for i, d in enumerate(im.dets):
            cand = np.where(taken, -1.0, ious[i]) if len(im.gt) else np.zeros(0)
            j = int(np.argmax(cand)) if len(cand) else -1
            if j >= 0 and cand[j] >= iou:
                taken[j] = True
                m[index[im.gt[j]["category_id"]], index[d["category_id"]]] += 1
            else:
                m[bg, index[d["category_id"]]] += 1
        for j, g in enumerate(im.gt):
            if not taken[j]:
                m[index[g["category_id"]], bg] += 1
    labels = [str(coco.cats[c].get("name", c)) for c in cat_ids] + ["background"]
    return {"iou": float(iou), "score_thr": float(score_thr), "labels": labels, "matrix": m.tolist()}
