"""TIDE error breakdown (Bolya et al., ECCV 2020), with the definitions of the ``tidecv`` package.

Per image, detections are sorted by descending score (the ``max_dets`` best kept) and matched
greedily to unmatched ground truth of their class at IoU >= ``pos_thr`` (0.5). Every detection left
unmatched gets the first error type whose test passes, in tidecv's order:

* ``loc``  -- ``bg_thr <= IoU <= pos_thr`` with a ground truth of its class (the best one);
* ``cls``  -- IoU >= ``pos_thr`` with a ground truth of another class;
* ``dupe`` -- IoU >= ``pos_thr`` with a ground truth of its class already matched by a higher-scoring
  detection;
* ``bkg``  -- IoU <= ``bg_thr`` (0.1) with every ground truth (or an image without ground truth);
* ``both`` -- anything else (``bg_thr`` < IoU < ``pos_thr`` with another class only).

A ground truth no detection matched is ``missed`` unless a ``cls`` or ``loc`` error covers it.
Detections that match a crowd region of their class (crowd IoU > ``pos_thr``) are left out of the
AP, and, as in tidecv, still get an error type.

dAP per type is TIDE's oracle: AP at ``pos_thr`` (tidecv's 101-point AP per class, averaged over
the classes with detections or ground truth) recomputed with that type fixed, minus the AP as it
is, clipped at 0: a ``cls`` / ``loc`` error becomes a true positive (of the ground truth's class /
its own) when it is the best-scoring error on a ground truth nobody matched, and is removed
otherwise; ``dupe``, ``bkg`` and ``both`` errors are removed; a ``missed`` ground truth is taken
out of the class's count. IoU is ``pycocotools.mask.iou`` on boxes (``bbox``) or masks (``segm``).
"""
from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np
from pycocotools.coco import COCO

from .inputs import ImageData, iou_matrix, per_image

log = logging.getLogger(__name__)

__all__ = ["ERROR_TYPES", "TideResult", "tide_errors", "tide_ap"]

#: the error types, in the order of the analysis.json keys
ERROR_TYPES = ("cls", "loc", "both", "dupe", "bkg", "missed")


@dataclass
class _Error:
    kind: str
    det: Optional[dict] = None  # the detection (None for missed)
    gt: Optional[dict] = None  # the ground truth it is about (cls / loc / missed)
    ignored: bool = False  # the detection matched a crowd region: not in the AP


@dataclass
class TideResult:
    """Counts, dAP and the per-detection / per-ground-truth verdicts of one IoU type."""

    iou_type: str
    ap: float  # TIDE's AP at pos_thr, 0-1
    errors: dict[str, int]
    dAP: dict[str, float]
    #: result ``_index`` -> "tp" or an error type (detections beyond max_dets are absent)
    det_kind: dict[int, str] = field(default_factory=dict)
    #: annotation id -> "tp", "missed" or "covered" (by a cls / loc error)
    gt_kind: dict[int, str] = field(default_factory=dict)
    #: image id -> number of errors (detection errors + missed)
    errors_per_image: dict[int, int] = field(default_factory=dict)


def _ap_of_points(points: Sequence[tuple[float, bool]], num_gt: int) -> float:
    """tidecv's AP of one class: precision made monotone, sampled at 101 recall points (COCO's
    way), 0 when the class has no ground truth."""
    if num_gt <= 0:
        return 0.0
    pts = sorted(points, key=lambda p: -p[0])  # stable: insertion order breaks ties, as tidecv
    if not pts:
        return 0.0
    tp = np.cumsum([1 if t else 0 for _, t in pts])
    n = np.arange(1, len(pts) + 1)
    precision = tp / n
    recall = tp / num_gt
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    # tidecv's recall points k / 100 (COCOeval's np.linspace differs in the last bit at some k, which
    # matters when a recall lands exactly on one)
    idx = np.searchsorted(recall, np.arange(101) / 100, side="left")
    y = np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)], 0.0)
    return float(y.mean())


def tide_ap(points: dict[Any, list[tuple[float, bool]]], num_gt: dict[Any, int]) -> float:
    """Mean over the classes with detections or ground truth of :func:`_ap_of_points` (tidecv's mAP)."""
    classes = [c for c in set(points) | set(num_gt) if points.get(c) or num_gt.get(c, 0) != 0]
    if not classes:
        return 0.0
    return float(np.mean([_ap_of_points(points.get(c, []), num_gt.get(c, 0)) for c in classes]))


def _classify(images: list[ImageData], pos_thr: float, bg_thr: float):
    """TIDE's matching and error assignment. Returns (true positives as (class, det), errors,
    ground-truth count per class, best-error det index per ground truth id)."""
    tps: list[tuple[int, dict]] = []
    errors: list[_Error] = []
    num_gt: dict[int, int] = defaultdict(int)
    best: dict[int, tuple[float, int]] = {}  # gt id -> (score, det _index) of its best cls/loc error
    gt_kind: dict[int, str] = {}
    for im in images:
        for g in im.gt:
            num_gt[g["category_id"]] += 1
        dets, gts = im.dets, im.gt
        if not dets:
            for g in gts:
                errors.append(_Error("missed", gt=g))
                gt_kind[g["id"]] = "missed"
            continue
        iou = iou_matrix(dets, gts)
        pred_cls = np.array([d["category_id"] for d in dets])
        gt_cls = np.array([g["category_id"] for g in gts])
        same = pred_cls[:, None] == gt_cls[None, :] if gts else np.zeros((len(dets), 0), bool)
        cls_iou = iou * same
        buf = cls_iou.copy()
        used = np.zeros(len(gts), bool)
        matched = np.zeros(len(dets), bool)
        for i in range(len(dets)):
            if not gts:
                break
            j = int(np.argmax(buf[i]))
            if buf[i, j] >= pos_thr:
                matched[i] = used[j] = True
                buf[:, j] = 0
        ignored = np.zeros(len(dets), bool)
        if im.crowd:
            ciou = iou_matrix(dets, im.crowd, crowd=True)
            crowd_cls = np.array([c["category_id"] for c in im.crowd])
            for i in range(len(dets)):
                if not matched[i] and np.any((ciou[i] > pos_thr) & (crowd_cls == pred_cls[i])):
                    ignored[i] = True
        noncls_iou = iou * ~same
        used_cls_iou = iou * used[None, :] * same
        usable = np.zeros(len(gts), bool)
        for i, d in enumerate(dets):
            if matched[i]:
                tps.append((int(d["category_id"]), d))
                continue
            ign = bool(ignored[i])
            if not gts:
                errors.append(_Error("bkg", det=d, ignored=ign))
                continue
            j = int(np.argmax(cls_iou[i]))
            if bg_thr <= cls_iou[i, j] <= pos_thr:
                kind = "loc"
            else:
                j = int(np.argmax(noncls_iou[i]))
                kind = "cls" if noncls_iou[i, j] >= pos_thr else ""
            if kind:
                g = gts[j]
                errors.append(_Error(kind, det=d, gt=g, ignored=ign))
                if not used[j]:
                    usable[j] = True
                    prev = best.get(g["id"])
                    if prev is None or prev[0] < d["score"]:
                        best[g["id"]] = (d["score"], d["_index"])
                continue
            j = int(np.argmax(used_cls_iou[i]))
            if used_cls_iou[i, j] >= pos_thr:
                errors.append(_Error("dupe", det=d, ignored=ign))
            elif iou[i].max() <= bg_thr:
                errors.append(_Error("bkg", det=d, ignored=ign))
            else:
                errors.append(_Error("both", det=d, ignored=ign))
        for j, g in enumerate(gts):
            if used[j]:
                gt_kind[g["id"]] = "tp"
            elif usable[j]:
                gt_kind[g["id"]] = "covered"
            else:
                errors.append(_Error("missed", gt=g))
                gt_kind[g["id"]] = "missed"
    return tps, errors, dict(num_gt), best, gt_kind


def _oracle_ap(tps, errors: list[_Error], num_gt: dict[int, int], best, fix: Callable[[_Error], bool]) -> float:
    points: dict[int, list[tuple[float, bool]]] = defaultdict(list)
    counts = dict(num_gt)
    for e in errors:
        if e.kind == "missed":
            if fix(e):
                counts[e.gt["category_id"]] -= 1
            continue
        if fix(e):
            if e.kind in ("cls", "loc"):  # tidecv fixes these also for crowd-ignored detections
                g = e.gt
                if best.get(g["id"], (None, None))[1] == e.det["_index"]:
                    cls = g["category_id"] if e.kind == "cls" else e.det["category_id"]
                    points[cls].append((e.det["score"], True))
            continue
        if not e.ignored:
            points[e.det["category_id"]].append((e.det["score"], False))
    for cls, d in tps:
        points[cls].append((d["score"], True))
    return tide_ap(points, counts)


def tide_errors(
    coco: COCO,
    results: Sequence[dict],
    iou_type: str = "bbox",
    pos_thr: float = 0.5,
    bg_thr: float = 0.1,
    max_dets: int = 100,
) -> TideResult:
    """The TIDE breakdown of checked ``results`` (:func:`~.inputs.load_results`) against ``coco``."""
    images = per_image(coco, results, iou_type, max_dets=max_dets)
    tps, errors, num_gt, best, gt_kind = _classify(images, pos_thr, bg_thr)
    base = _oracle_ap(tps, errors, num_gt, best, lambda e: False)
    counts = {k: 0 for k in ERROR_TYPES}
    det_kind: dict[int, str] = {d["_index"]: "tp" for _, d in tps}
    per_img: dict[int, int] = {im.image_id: 0 for im in images}
    for e in errors:
        counts[e.kind] += 1
        if e.det is not None:
            det_kind[e.det["_index"]] = e.kind
            per_img[e.det["image_id"]] += 1
        else:
            per_img[e.gt["image_id"]] += 1
    dap = {k: max(_oracle_ap(tps, errors, num_gt, best, lambda e, k=k: e.kind == k) - base, 0.0) for k in ERROR_TYPES}
    log.info("%s TIDE: AP50 %.4f, errors %s", iou_type, base, counts)
    return TideResult(iou_type, base, counts, dap, det_kind, gt_kind, per_img)
