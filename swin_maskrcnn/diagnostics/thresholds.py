"""Per-class operating thresholds: precision, recall and F-beta against the score.

A detection is a true positive when it is matched to a ground truth of its class at box IoU >=
``iou`` (0.5): per image, detections by descending score each take the unmatched ground truth of
their class they overlap most (each ground truth once). Because matching goes by score, the
detections kept at a threshold ``t`` have the same matches as in the full list, so for every
``t``: P(t) = TP(score >= t) / #(score >= t), R(t) = TP(score >= t) / #ground truth, and
F_beta = (1 + beta^2) P R / (beta^2 P + R) (0 when P + R = 0). The chosen threshold is the
detection score with the largest F-beta; ties go to the higher threshold (fewer detections for
the same F). Classes without detections get no threshold.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

import numpy as np
from pycocotools.coco import COCO

from .inputs import iou_matrix, per_image

__all__ = ["match_same_class", "class_curves", "best_threshold", "choose_thresholds", "f_beta"]


def f_beta(p: np.ndarray, r: np.ndarray, beta: float) -> np.ndarray:
    """F-beta of precision / recall arrays (0 where both are 0)."""
    b2 = beta * beta
    den = b2 * p + r
    return np.where(den > 0, (1 + b2) * p * r / np.where(den > 0, den, 1), 0.0)


def match_same_class(coco: COCO, results: Sequence[dict], iou: float = 0.5, max_dets: int = 100):
    """(per class: list of (score, is_tp, result _index), per class: number of ground truths)."""
    points: dict[int, list[tuple[float, bool, int]]] = defaultdict(list)
    num_gt: dict[int, int] = defaultdict(int)
    for im in per_image(coco, results, "bbox", max_dets=max_dets):
        for g in im.gt:
            num_gt[g["category_id"]] += 1
        ious = iou_matrix(im.dets, im.gt)
        gt_cls = np.array([g["category_id"] for g in im.gt])
        taken = np.zeros(len(im.gt), bool)
        for i, d in enumerate(im.dets):
            tp = False
            if len(im.gt):
                cand = np.where(taken | (gt_cls != d["category_id"]), -1.0, ious[i])
                j = int(np.argmax(cand))
                if cand[j] >= iou:
                    taken[j] = tp = True
            points[d["category_id"]].append((d["score"], tp, d["_index"]))
    return dict(points), dict(num_gt)


def class_curves(points: Sequence[tuple[float, bool, Any]], num_gt: int, beta: float = 1.0) -> dict[str, np.ndarray]:
    """``score``, ``precision``, ``recall``, ``f`` at each distinct detection score (descending)."""
    if not points:
        z = np.zeros(0)
        return {"score": z, "precision": z, "recall": z, "f": z}
    scores = np.array([p[0] for p in points], dtype=np.float64)
    tps = np.array([bool(p[1]) for p in points])
    order = np.argsort(-scores, kind="stable")
    scores, tps = scores[order], tps[order]
    ctp = np.cumsum(tps)
    n = np.arange(1, len(scores) + 1)
    last = np.r_[scores[1:] != scores[:-1], True]  # the last detection of each distinct score
    s, tp, k = scores[last], ctp[last], n[last]
    precision = tp / k
    recall = tp / num_gt if num_gt > 0 else np.zeros_like(precision)
    return {"score": s, "precision": precision, "recall": recall, "f": f_beta(precision, recall, beta)}


def choose_thresholds(coco: COCO, results: Sequence[dict], beta: float = 1.0, iou: float = 0.5,
                      max_dets: int = 100) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, np.ndarray]]]:
    """(``{class name: {"score", "precision", "recall", "f"}}``, the curves per class name)."""
    points, num_gt = match_same_class(coco, results, iou=iou, max_dets=max_dets)
    chosen: dict[str, dict[str, float]] = {}
    curves: dict[str, dict[str, np.ndarray]] = {}
    for cid in sorted(coco.cats):
        name = str(coco.cats[cid].get("name", cid))
        c = class_curves(points.get(cid, []), num_gt.get(cid, 0), beta)
        curves[name] = c
        best = best_threshold(c)
        if best is not None:
            chosen[name] = best
    return chosen, curves


def best_threshold(curve: dict[str, np.ndarray]) -> "dict[str, float] | None":
    """``{"score", "precision", "recall", "f"}`` at the largest F (ties: the higher score), None
    for an empty curve."""
    if len(curve["score"]) == 0:
        return None
    best = float(curve["f"].max())
    i = int(np.flatnonzero(curve["f"] == best)[0])  # scores descend: the first best is the highest threshold
    return {"score": float(curve["score"][i]), "precision": float(curve["precision"][i]),
            "recall": float(curve["recall"][i]), "f": best}
