"""What a data set holds, against what the model and training will do with it: ``inspect``'s report.

:func:`build_report` turns a :class:`~swin_maskrcnn.data.coco.CocoInstanceDataset` (read with
``filter_empty_gt=False, min_size=0, bad_images="skip"``, so the start-up checks of
:mod:`swin_maskrcnn.data.validation` count what training would skip instead of stopping) and a model
config into the plain dict that ``inspect`` writes as ``report.json``::

    {"images": {"count", "without_annotations", "skipped", "width": {"min", "median", "max"}, "height": {...},
                "resize_factor": {...}, "below_min_size", "used_for_training"},
     "classes": [{"category_id", "name", "label", "instances", "images"}, ...],
     "imbalance_ratio": float,
     "instances_per_image": {"max", "p99", "mean", "caps": {...}},
     "crowd": int,
     "crowd_regions": {"annotations", "iscrowd", "ignore_flag", "images", "image_ids", "per_class", "degenerate",
                       "malformed", "usable", "image_area_fraction": {"mean", "max", "overall"}, "data_crowd",
                       "rpn_ignore_iof_thr", "roi_ignore_iof_thr", "training"},
     "anchor_fit": AnchorFit.as_dict(),
     "problems": [{"kind", "count", "message", "fix", "severity"}, ...]}

Counts: ``instances`` are training instances (non-crowd annotations the checks keep); an image
"without annotations" has none of them; ``instances_per_image`` is over every image that is not skipped.
Problems name the items (class names, image ids) and the fix (the config key and the value to set).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

import numpy as np

from ..modeling.config import ModelConfig
from ..modeling.preprocess import rescale_size

__all__ = ["union_area", "Problem", "RARE_CLASS_INSTANCES", "IMBALANCE_WARN", "build_report", "dense_cap"]

#: a class with fewer training instances than this is reported as rare
RARE_CLASS_INSTANCES = 10
#: an imbalance ratio (largest / smallest instance count) above this is reported
IMBALANCE_WARN = 10.0
#: anchors are reported when the suggestion gains this much bpr, or this fraction of boxes has no positive anchor
ANCHOR_BPR_GAIN = 0.05
ANCHOR_UNMATCHED_FRACTION = 0.01
#: items named in one message
LISTED = 5


@dataclass
class Problem:
    """One finding: ``kind``, how many items, a message naming them, the fix; ``severity`` error (training
    stops or learns nothing from those items), warning or info."""

    kind: str
    count: int
    message: str
    fix: str
    severity: str = "warning"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _names(items: Sequence[Any], limit: int = LISTED) -> str:
    shown = ", ".join(str(v) for v in items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def _stats(values: Sequence[float]) -> dict[str, Any]:
    if not len(values):
        return {"min": 0, "median": 0.0, "max": 0}
    a = np.asarray(values)
    return {"min": a.min().item(), "median": float(np.median(a)), "max": a.max().item()}


def dense_cap(n: int) -> int:
    """The ``model.max_instances`` to suggest for ``n`` objects in the densest image: n rounded up to 50."""
    return int(math.ceil(n / 50.0) * 50)


def build_report(
    dataset: Any,
    model_cfg: ModelConfig,
    data_cfg: Any = None,
    *,
    anchor_fit: Any = None,
    eval_max_dets: Optional[Sequence[int]] = None,
    checkpoint_class_names: Optional[Sequence[str]] = None,
    train_split: bool = True,
) -> dict[str, Any]:
    """The report of ``dataset`` (see the module docstring) for a model built from ``model_cfg``.

    ``data_cfg``: the ``DataConfig`` (training scale, ``filter_empty_gt``, ``min_size``,
    ``bad_images``; None = the defaults'). ``anchor_fit``: an :class:`~.anchor_fit.AnchorFit` of this
    dataset (None: no anchor section). ``eval_max_dets``: the COCOeval maxDets the instance counts are
    held against (default: model.max_instances' or [1, 10, 100]). ``checkpoint_class_names``: compared
    with the dataset's. ``train_split``: whether training reads this split (filter and skip rules apply)."""
    from ..diagnostics.anchor_fit import training_scale

    coco = dataset.coco
    fname = dataset.ann_file.name
    problems: list[Problem] = []
    filter_empty = True if data_cfg is None else bool(data_cfg.filter_empty_gt)
    min_size = 32 if data_cfg is None else int(data_cfg.min_size)
    bad_images = "error" if data_cfg is None else data_cfg.bad_images
    if data_cfg is not None:
        scale, _ = training_scale(data_cfg) if train_split else (model_cfg.test_scale, "")
    else:
        scale = (1333, 800) if train_split else model_cfg.test_scale

    # ---- images
    all_ids = [int(img["id"]) for img in coco.dataset["images"]]
    used = list(dataset.img_ids)  # after the skips (the dataset is read with filter_empty_gt=False, min_size=0)
    skipped = list(dataset.report.skipped_images)
    counts = {i: 0 for i in used}
    per_class_inst: dict[int, int] = {}
    per_class_imgs: dict[int, set] = {}
    for k, img_id in enumerate(used):
        _, labels = dataset.instance_boxes(k)
        counts[img_id] = int(labels.numel())
        for lab in labels.tolist():
            per_class_inst[lab] = per_class_inst.get(lab, 0) + 1
            per_class_imgs.setdefault(lab, set()).add(img_id)
    empty = [i for i in used if counts[i] == 0]
    ws = [int(coco.imgs[i]["width"]) for i in all_ids]
    hs = [int(coco.imgs[i]["height"]) for i in all_ids]
    factors = [rescale_size((w, h), scale)[1] if scale is not None else 1.0 for w, h in zip(ws, hs)]
    small = [i for i in used if min(int(coco.imgs[i]["width"]), int(coco.imgs[i]["height"])) < min_size]
    in_training = [i for i in used if not (filter_empty and counts[i] == 0)
                   and min(int(coco.imgs[i]["width"]), int(coco.imgs[i]["height"])) >= min_size]
    images = {
        "count": len(all_ids),
        "without_annotations": len(empty),
        "skipped": len(skipped),
        "width": _stats(ws),
        "height": _stats(hs),
        "resize_factor": {**_stats(factors), "scale": None if scale is None else list(scale)},
        "below_min_size": len(small) if train_split else 0,
        "used_for_training": len(in_training) if train_split else None,
    }
    if skipped:
        kinds: dict[str, int] = {}
        for s in skipped:
            kinds[s["problem"]] = kinds.get(s["problem"], 0) + 1
        what = ", ".join(f"{k}: {v}" for k, v in sorted(kinds.items()))
        stops = bad_images == "error" and train_split
        problems.append(Problem(
            "skipped images", len(skipped),
            f"{fname}: {len(skipped)} images cannot be used ({what}): image ids "
            f"{_names([s['image_id'] for s in skipped])}"
            + ("; with data.bad_images=error training stops on them" if stops else "; they are left out"),
            "fix or remove those files (or their entries in the json), or set data.bad_images=skip",
            "error" if stops else "warning"))
    ann_problems = {k: v for k, v in dataset.report.problems.items()
                    if not k.startswith("image skipped") and k != "box clipped (< 1 px)"}
    if ann_problems:
        n = sum(v for k, v in ann_problems.items() if k not in ("box clipped", "bad polygon part"))
        what = ", ".join(f"{k}: {v}" for k, v in sorted(ann_problems.items()))
        problems.append(Problem(
            "annotations skipped or repaired", sum(ann_problems.values()),
            f"{fname}: {what} ({n} annotations are not trained on; each one is logged with its image and annotation id)",
            "correct those annotations in the json (the log names each one)", "warning"))
    if empty:
        if train_split:
            use = ("training drops them (data.filter_empty_gt=true)" if filter_empty
                   else "training uses them as background-only images (data.filter_empty_gt=false)")
            fix = ("data.filter_empty_gt=false to train on them as negatives" if filter_empty
                   else "data.filter_empty_gt=true to leave them out")
        else:
            use, fix = "evaluation counts their detections as false positives", "nothing, if they are meant to be empty"
        problems.append(Problem("images without annotations", len(empty),
                                f"{len(empty)} of {len(used)} images have no non-crowd annotation (ids {_names(empty)}); {use}",
                                fix, "info"))
    if small and train_split:
        problems.append(Problem("images below data.min_size", len(small),
                                f"{len(small)} images have a side below data.min_size={min_size} and are not trained on "
                                f"(ids {_names(small)})", f"data.min_size={min(min(int(coco.imgs[i]['width']), int(coco.imgs[i]['height'])) for i in small)}",
                                "warning"))

    # ---- classes
    classes = []
    for label, (cid, name) in enumerate(zip(dataset.cat_ids, dataset.class_names)):
        classes.append({"category_id": int(cid), "name": str(name), "label": label,
                        "instances": per_class_inst.get(label, 0), "images": len(per_class_imgs.get(label, ()))})
    with_any = [c["instances"] for c in classes if c["instances"] > 0]
    imbalance = float(max(with_any) / min(with_any)) if with_any else 0.0
    none = [c["name"] for c in classes if c["instances"] == 0]
    if none:
        problems.append(Problem(
            "class without instances", len(none),
            f"{len(none)} categories have no training instance: {_names(none)}; the classifier still has an output "
            "for each and never sees a positive",
            "remove those categories from the json (model.num_classes then drops by as many) or annotate them",
            "warning"))
    rare = [c for c in classes if 0 < c["instances"] < RARE_CLASS_INSTANCES]
    if rare:
        problems.append(Problem(
            "rare class", len(rare),
            f"{len(rare)} categories have fewer than {RARE_CLASS_INSTANCES} instances: "
            + _names([f"{c['name']} ({c['instances']})" for c in rare]),
            "annotate more examples of them (their AP will be noise)", "warning"))
    if imbalance > IMBALANCE_WARN:
        top = max(classes, key=lambda c: c["instances"])
        low = min((c for c in classes if c["instances"] > 0), key=lambda c: c["instances"])
        problems.append(Problem(
            "class imbalance", len(with_any),
            f"imbalance ratio {imbalance:.1f}: {top['name']} has {top['instances']} instances, {low['name']} {low['instances']}",
            "annotate more of the rare classes (or oversample their images)", "info"))
    if checkpoint_class_names is not None and list(checkpoint_class_names) != list(dataset.class_names):
        diff = [f"label {i}: checkpoint {a!r} vs data {b!r}" for i, (a, b) in
                enumerate(zip(checkpoint_class_names, dataset.class_names)) if a != b]
        if len(checkpoint_class_names) != len(dataset.class_names):
            diff.insert(0, f"{len(checkpoint_class_names)} classes in the checkpoint, {len(dataset.class_names)} in the data")
        problems.append(Problem("class names differ from the checkpoint", len(diff),
                                "the checkpoint's class names do not match the dataset's: " + _names(diff),
                                "use the checkpoint's categories (same ids and order) or fine-tune with init.checkpoint",
                                "error"))

    # ---- instances per image against the caps
    per_img = np.asarray([counts[i] for i in used], dtype=np.float64)
    mx = int(per_img.max()) if per_img.size else 0
    max_dets = list(eval_max_dets or model_cfg.eval_max_dets() or [1, 10, 100])
    caps = {"roi.max_per_img": model_cfg.roi.max_per_img, "rpn.max_per_img_train": model_cfg.rpn.max_per_img_train,
            "rpn.max_per_img_test": model_cfg.rpn.max_per_img_test, "eval maxDets": int(max(max_dets))}
    inst = {"max": mx, "p99": float(np.percentile(per_img, 99)) if per_img.size else 0.0,
            "mean": float(per_img.mean()) if per_img.size else 0.0, "caps": caps}
    over = {k: [i for i in used if counts[i] > v] for k, v in caps.items()}
    over = {k: v for k, v in over.items() if v}
    if over:
        worst = max(used, key=lambda i: counts[i])
        keys = ", ".join(f"{k} {caps[k]} ({len(v)} images)" for k, v in over.items())
        m = dense_cap(mx)
        fix = f"model.max_instances={m}"
        if "rpn.max_per_img_train" in over:
            fix += f" model.rpn.max_per_img_train={max(m, 2 * mx)}"
        if data_cfg is not None:
            fix += f" runtime.val_max_dets=[1,100,{m}]"
        fix += f" (evaluate --max-dets 1 100 {m} when the checkpoint has no max_instances)"
        problems.append(Problem(
            "more objects per image than a cap", len(set().union(*over.values())),
            f"up to {mx} objects per image (image id {worst}; 99th percentile {inst['p99']:.0f}) against {keys}: "
            "detections, proposals or evaluation stop counting beyond the cap",
            fix, "error"))

    crowd = int(dataset.num_crowd)
    report: dict[str, Any] = {"file": str(dataset.ann_file), "images": images, "classes": classes,
                              "imbalance_ratio": imbalance, "instances_per_image": inst, "crowd": crowd}
    regions, crowd_problem = _crowd_regions(dataset, model_cfg, data_cfg, train_split)
    report["crowd_regions"] = regions
    if crowd_problem is not None:
        problems.append(crowd_problem)

    # ---- anchors
    if anchor_fit is not None:
        report["anchor_fit"] = anchor_fit.as_dict()
        cur, sug, n = anchor_fit.current, anchor_fit.suggested, anchor_fit.num_boxes
        if n and (sug.bpr - cur.bpr >= ANCHOR_BPR_GAIN or cur.unmatched > ANCHOR_UNMATCHED_FRACTION * n):
            problems.append(Problem(
                "anchors do not fit the objects", cur.unmatched,
                f"with anchor_scales {cur.anchor_scales} and ratios {cur.anchor_ratios}, {cur.bpr:.1%} of the {n} boxes "
                f"have an anchor at IoU >= {anchor_fit.pos_iou_thr} (bpr) and {cur.unmatched} have none at "
                f">= {anchor_fit.min_pos_iou} (no positive anchor at all); the suggested anchors reach bpr {sug.bpr:.1%} "
                f"with {sug.unmatched} unmatched"
                + (" (more boxes without a positive anchor than now: the small ones lose theirs; compare the per-size "
                   "table before switching)" if sug.unmatched > cur.unmatched else ""),
                anchor_fit.override_line() + " (or model.rpn.auto_anchors=true)",
                "error" if cur.unmatched > 0.1 * n else "warning"))
    order = {"error": 0, "warning": 1, "info": 2}
    report["problems"] = [p.as_dict() for p in sorted(problems, key=lambda p: order[p.severity])]
    return report


def union_area(boxes: Sequence[Sequence[float]]) -> float:
    """Exact area of the union of xyxy boxes (coordinate compression)."""
    if not len(boxes):
        return 0.0
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    xs, ys = np.unique(b[:, [0, 2]]), np.unique(b[:, [1, 3]])
    cx, cy = (xs[:-1] + xs[1:]) / 2, (ys[:-1] + ys[1:]) / 2
    inside = ((b[:, None, None, 0] <= cx[None, None, :]) & (cx[None, None, :] <= b[:, None, None, 2])
              & (b[:, None, None, 1] <= cy[None, :, None]) & (cy[None, :, None] <= b[:, None, None, 3])).any(0)
    return float((inside * np.outer(np.diff(ys), np.diff(xs))).sum())


def _crowd_regions(dataset: Any, model_cfg: ModelConfig, data_cfg: Any,
                   train_split: bool) -> tuple[dict[str, Any], Optional[Problem]]:
    """``crowd_regions``: the crowd / ``"ignore": 1`` annotations of the images in use and what training does
    with them under ``data.crowd``, with the dataset's own rule (:func:`~swin_maskrcnn.data.coco.crowd_box`)
    for the degenerate ones; plus the problem entry (None without crowd annotations)."""
    from ..data.coco import DataError, crowd_box

    coco = dataset.coco
    mode = "drop" if data_cfg is None else str(getattr(data_cfg, "crowd", "drop"))
    rpn_thr, roi_thr = float(model_cfg.rpn.ignore_iof_thr), float(model_cfg.roi.ignore_iof_thr)
    per_class: dict[str, int] = {}
    n = n_iscrowd = n_flag = degenerate = malformed = 0
    images, fractions = [], []
    area_all = covered_all = 0.0
    for img_id in dataset.img_ids:
        info = coco.imgs[img_id]
        h, w = int(info["height"]), int(info["width"])
        area_all += h * w
        anns = dataset.crowd_annotations(img_id)
        if not anns:
            continue
        images.append(img_id)
        boxes = []
        for ann in anns:
            n += 1
            n_iscrowd += int(bool(int(ann.get("iscrowd", 0) or 0)))
            n_flag += int(bool(int(ann.get("ignore", 0) or 0)))
            name = dataset.class_names[dataset.cat_id_to_label[ann["category_id"]]]
            per_class[name] = per_class.get(name, 0) + 1
            try:
                box = crowd_box(ann, h, w, f"image id {img_id}, annotation id {ann.get('id')}")
            except DataError:
                malformed += 1
                continue
            if box is None:
                degenerate += 1
            else:
                boxes.append(box)
        covered = union_area(boxes)
        covered_all += covered
        fractions.append(covered / float(h * w))
    thr_on = rpn_thr > 0 or roi_thr > 0
    if not train_split:
        training = "not trained on (validation split); COCOeval ignores detections that match iscrowd=1 regions"
    elif mode == "ignore":
        training = (f"ignore_boxes of their images (model.rpn.ignore_iof_thr={rpn_thr:g}, model.roi.ignore_iof_thr="
                    f"{roi_thr:g}: anchors / proposals inside them are neither positive nor negative)" if thr_on else
                    "ignore_boxes of their images, but both ignore_iof_thr are off: taught as background like drop")
    else:
        training = "left out of the targets (data.crowd=drop): their area is taught as background"
    regions = {
        "annotations": n, "iscrowd": n_iscrowd, "ignore_flag": n_flag, "images": len(images),
        "image_ids": images[:LISTED], "per_class": per_class, "degenerate": degenerate, "malformed": malformed,
        "usable": n - degenerate - malformed,
        "image_area_fraction": {"mean": float(np.mean(fractions)) if fractions else 0.0,
                                "max": float(max(fractions)) if fractions else 0.0,
                                "overall": covered_all / area_all if area_all else 0.0},
        "data_crowd": mode, "rpn_ignore_iof_thr": rpn_thr, "roi_ignore_iof_thr": roi_thr, "training": training,
    }
    if not n:
        return regions, None
    where = (f"{n} crowd annotations (iscrowd=1: {n_iscrowd}, \"ignore\": 1: {n_flag}) in {len(images)} images "
             f"(ids {_names(images)}; per class: {_names([f'{k} ({v})' for k, v in sorted(per_class.items())])}), "
             f"covering {regions['image_area_fraction']['mean']:.1%} of those images' area on average"
             + (f"; {degenerate} under 1 px or outside the image (no ignore region)" if degenerate else "")
             + (f"; {malformed} with a malformed bbox (training stops on them with data.crowd=ignore)" if malformed else ""))
    if not train_split:
        return regions, Problem("crowd annotations", n, f"{where}: {training}",
                                "nothing to do if they mark crowds; set iscrowd=0 on those that are single objects",
                                "info")
    if mode == "drop":
        return regions, Problem("crowd annotations", n, f"{where}: {training}",
                                "data.crowd=ignore model.rpn.ignore_iof_thr=0.5 model.roi.ignore_iof_thr=0.5",
                                "warning")
    if not thr_on:
        return regions, Problem("crowd annotations", n, f"{where}: {training} (train() warns)",
                                "model.rpn.ignore_iof_thr=0.5 model.roi.ignore_iof_thr=0.5", "warning")
    return regions, Problem("crowd annotations", n, f"{where}: {training}",
                            "nothing to do if they mark crowds; set iscrowd=0 on those that are single objects",
                            "error" if malformed else "info")
