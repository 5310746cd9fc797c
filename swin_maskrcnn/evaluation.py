"""COCO evaluation with pycocotools' COCOeval, or faster-coco-eval's exact C++ port of it when that is
installed (the ``[fasteval]`` extra; ``evaluate_coco(backend=...)``); the metric is never re-implemented.

* model outputs become COCO result dicts with :func:`~swin_maskrcnn.coco_results.predictions_to_coco_results`
  (``swin_maskrcnn/coco_results.py``, which needs no COCOeval; re-exported here).
* :func:`evaluate_coco` runs COCOeval for each iou type and reads AP / AR out of
  ``eval['precision']`` / ``eval['recall']`` for the requested ``max_dets`` itself, because
  ``COCOeval.summarize()`` hard-codes maxDets=100 for AP (so AP at 400 detections would be
  silently reported at 100). All pycocotools prints go to the logging module.
* :func:`evaluate_model` runs a model over a dataset and evaluates it: :func:`predict_coco_results`
  (one process's share of the images) then :func:`summarize_predictions` (COCOeval), the two
  halves a distributed validation runs on every rank and on rank 0.

Metric values follow COCOeval's convention: -1.0 where undefined (no ground truth of that kind,
e.g. APl without large objects); per-class AP is NaN for classes without ground truth in the
evaluated images.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .coco_results import masks_to_rles, predictions_to_coco_results, save_results_json
from .data.loader import collate
from .io_utils import stdout_to_log

logger = logging.getLogger(__name__)

__all__ = [
    "predictions_to_coco_results",
    "evaluate_coco",
    "evaluate_model",
    "predict_coco_results",
    "summarize_predictions",
    "save_results_json",
    "masks_to_rles",
    "flatten_metrics",
    "AREA_NAMES",
]

AREA_NAMES = ("all", "small", "medium", "large")


def _mean_valid(a: np.ndarray) -> float:
    v = a[a > -1]
    return float(np.mean(v)) if v.size else -1.0


def _stats_from_eval(E: COCOeval, max_dets: Sequence[int]) -> dict[str, float]:
    """AP/AR numbers from the accumulated arrays, for the given max_dets (the largest one for AP)."""
    p = E.params
    precision = E.eval["precision"]  # [T, R, K, A, M]
    recall = E.eval["recall"]  # [T, K, A, M]
    m_last = len(p.maxDets) - 1
    a_idx = {name: p.areaRngLbl.index(name) for name in AREA_NAMES}
    t50 = int(np.argmin(np.abs(p.iouThrs - 0.5)))
    t75 = int(np.argmin(np.abs(p.iouThrs - 0.75)))
    out = {
        "AP": _mean_valid(precision[:, :, :, a_idx["all"], m_last]),
        "AP50": _mean_valid(precision[t50, :, :, a_idx["all"], m_last]),
        "AP75": _mean_valid(precision[t75, :, :, a_idx["all"], m_last]),
        "APs": _mean_valid(precision[:, :, :, a_idx["small"], m_last]),
        "APm": _mean_valid(precision[:, :, :, a_idx["medium"], m_last]),
        "APl": _mean_valid(precision[:, :, :, a_idx["large"], m_last]),
    }
    for m, md in enumerate(max_dets):
        out[f"AR@{md}"] = _mean_valid(recall[:, :, a_idx["all"], m])
    out["ARs"] = _mean_valid(recall[:, :, a_idx["small"], m_last])
    out["ARm"] = _mean_valid(recall[:, :, a_idx["medium"], m_last])
    out["ARl"] = _mean_valid(recall[:, :, a_idx["large"], m_last])
    return out


def _empty_result_coco(coco_gt: COCO) -> COCO:
    dt = COCO()
    dt.dataset = {
        "images": list(coco_gt.dataset.get("images", [])),
        "categories": list(coco_gt.dataset.get("categories", [])),
        "annotations": [],
    }
    with stdout_to_log(logger):
        dt.createIndex()
    return dt


#: COCOeval implementations: pycocotools (the reference) or faster-coco-eval's C++ port (the
#: ``[fasteval]`` extra; equal to pycocotools' figures, tests/test_eval_backends.py); "auto": the
#: latter when it is installed
EVAL_BACKENDS = ("auto", "pycocotools", "faster-coco-eval")


def resolve_eval_backend(backend: str = "auto") -> str:
    """``"pycocotools"`` or ``"faster-coco-eval"`` for ``backend`` (``"auto"``: faster-coco-eval when importable)."""
    if backend not in EVAL_BACKENDS:
        raise ValueError(f"eval backend must be one of {', '.join(EVAL_BACKENDS)}, got {backend!r}")
    if backend != "auto":
        return backend
    import importlib.util

    return "faster-coco-eval" if importlib.util.find_spec("faster_coco_eval") is not None else "pycocotools"


def _faster_eval(coco_gt: COCO, results: Sequence[dict], iou_type: str) -> Any:
    """faster-coco-eval's COCOeval on copies of ``coco_gt``'s dataset and ``results`` (not yet run)."""
    from faster_coco_eval import COCO as FastCOCO
    from faster_coco_eval import COCOeval_faster

    gt = FastCOCO()
    gt.dataset = coco_gt.dataset
    with stdout_to_log(logger):
        gt.createIndex()
        if len(results):
            dt = gt.loadRes([dict(r) for r in results])
        else:
            dt = FastCOCO()
            dt.dataset = {"images": list(coco_gt.dataset.get("images", [])),
                          "categories": list(coco_gt.dataset.get("categories", [])), "annotations": []}
            dt.createIndex()
    return COCOeval_faster(gt, dt, iouType=iou_type, print_function=logger.debug)


def evaluate_coco(
    coco_gt: COCO,
    results: Sequence[dict],
    iou_types: Sequence[str] = ("bbox", "segm"),
    max_dets: Sequence[int] = (1, 10, 100),
    class_names: Optional[Sequence[str]] = None,
    img_ids: Optional[Iterable[int]] = None,
    backend: str = "auto",
) -> dict[str, Any]:
    """COCOeval for each iou type.

    Returns ``{iou_type: {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR@<d>" for each d in
    max_dets, "ARs", "ARm", "ARl", "per_class_AP": {name: AP}, "top5": [(name, AP)],
    "bottom5": [(name, AP)]}}``. AP values use the LARGEST of ``max_dets`` (e.g. 400 with
    ``(1, 100, 400)``), read from ``eval['precision']`` directly. ``img_ids`` restricts the
    evaluation (default: every image of ``coco_gt``; pass the evaluated ids when only a subset was
    predicted). ``class_names`` are the names of the categories sorted by id (default: the
    names in ``coco_gt``). An empty ``results`` gives 0 AP (no crash). Results are copied,
    ``results`` is not modified. ``backend``: which COCOeval runs (:data:`EVAL_BACKENDS`; the
    figures are the same, faster-coco-eval's C++ port is several times faster with many detections).
    """
    backend = resolve_eval_backend(backend)
    max_dets = [int(m) for m in max_dets]
    if not max_dets or any(m < 1 for m in max_dets) or sorted(max_dets) != max_dets:
        raise ValueError(f"max_dets must be increasing positive integers, got {max_dets}")
    cat_ids = sorted(coco_gt.getCatIds())
    if class_names is None:
        class_names = [str(coco_gt.cats[c].get("name", c)) for c in cat_ids]
    if len(class_names) != len(cat_ids):
        raise ValueError(f"{len(class_names)} class names for {len(cat_ids)} categories")
    eval_img_ids = sorted(set(int(i) for i in img_ids)) if img_ids is not None else sorted(coco_gt.getImgIds())

    coco_dt = None
    if backend == "pycocotools":
        if len(results) == 0:
            coco_dt = _empty_result_coco(coco_gt)
        else:
            with stdout_to_log(logger):
                coco_dt = coco_gt.loadRes([dict(r) for r in results])

    metrics: dict[str, Any] = {}
    for iou_type in iou_types:
        if iou_type not in ("bbox", "segm"):
            raise ValueError(f"unsupported iou type {iou_type!r}")
        if iou_type == "segm" and results and "segmentation" not in results[0]:
            raise ValueError("segm evaluation needs results with 'segmentation'")
        with stdout_to_log(logger):
            E = COCOeval(coco_gt, coco_dt, iouType=iou_type) if coco_dt is not None else \
                _faster_eval(coco_gt, results, iou_type)
            E.params.imgIds = eval_img_ids
            E.params.catIds = cat_ids
            E.params.maxDets = list(max_dets)
            E.evaluate()
            E.accumulate()
        stats = _stats_from_eval(E, max_dets)
        precision = E.eval["precision"]
        per_class: dict[str, float] = {}
        for k, name in enumerate(class_names):
            v = precision[:, :, k, 0, -1]
            v = v[v > -1]
            per_class[name] = float(np.mean(v)) if v.size else float("nan")
        ranked = sorted(((n, a) for n, a in per_class.items() if not math.isnan(a)), key=lambda x: (-x[1], x[0]))
        stats_any: dict[str, Any] = dict(stats)
        stats_any["per_class_AP"] = per_class
        stats_any["top5"] = ranked[:5]
        stats_any["bottom5"] = list(reversed(ranked[-5:])) if ranked else []
        metrics[iou_type] = stats_any
        logger.info(
            "%s: AP %.4f AP50 %.4f AP75 %.4f APs %.4f APm %.4f APl %.4f (maxDets %s, %d images, " + backend + ")",
            iou_type,
            stats["AP"],
            stats["AP50"],
            stats["AP75"],
            stats["APs"],
            stats["APm"],
            stats["APl"],
            max_dets[-1],
            len(eval_img_ids),
        )
    return metrics


def flatten_metrics(metrics: dict[str, Any], sep: str = "/") -> dict[str, float]:
    """``{"bbox": {"AP": ..}}`` -> ``{"bbox/AP": ..}`` for loggers (scalars only)."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            for k2, v2 in value.items():
                if isinstance(v2, (int, float)):
                    flat[f"{key}{sep}{k2}"] = float(v2)
        elif isinstance(value, (int, float)):
            flat[key] = float(value)
    return flat


def _find_coco_dataset(dataset: Any) -> Any:
    """The dataset holding ``coco`` / ``label_to_cat_id`` (follows ``Subset.dataset``)."""
    d = dataset
    while not hasattr(d, "coco") and hasattr(d, "dataset"):
        d = d.dataset
    if not hasattr(d, "coco") or not hasattr(d, "label_to_cat_id"):
        raise TypeError(f"{type(dataset).__name__} has no 'coco' / 'label_to_cat_id' (expected a CocoInstanceDataset)")
    return d


def predict_coco_results(
    model: torch.nn.Module,
    dataset: Any,
    indices: Sequence[int],
    batch_size: int = 1,
    progress: bool = False,
    score_thr: float = 0.05,
    precision: str = "fp32",
) -> tuple[list[dict], list[int], list[int]]:
    """Runs ``model`` (eval mode, no grad; its mode is restored) over ``dataset[i]`` for ``i`` in
    ``indices``, ``batch_size`` images per call in the order given. Returns ``(results, image_ids,
    counts)``: COCO result dicts, the image ids predicted and, per image, the number of
    predictions with score >= ``score_thr``. One rank's share of a distributed evaluation.
    ``precision='bf16'`` runs a bf16 copy of the model (:func:`~swin_maskrcnn.modeling.acceleration.inference_model`,
    converted once here; ``model`` is not modified); ``'auto'`` picks bf16 or fp32 for the model's
    device (:func:`~swin_maskrcnn.modeling.acceleration.resolve_precision`)."""
    from tqdm.auto import tqdm

    from .modeling.acceleration import inference_model, resolve_precision

    base = _find_coco_dataset(dataset)
    subset = torch.utils.data.Subset(dataset, list(indices))
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=collate)
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    precision = resolve_precision(precision, device)
    was_training = model.training
    model.eval()
    runner = inference_model(model, precision)
    results: list[dict] = []
    image_ids: list[int] = []
    counts: list[int] = []
    try:
        with torch.no_grad(), tqdm(total=len(subset), desc="evaluate", disable=not progress, leave=False) as bar:
            for images, targets in loader:
                images = [im.to(device) for im in images]
                sizes = [tuple(int(v) for v in t["orig_size"]) for t in targets]
                outputs = runner(images, original_sizes=sizes)
                outputs = [{k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in o.items()} for o in outputs]
                ids = [int(t["image_id"]) for t in targets]
                results.extend(predictions_to_coco_results(outputs, ids, base.label_to_cat_id))
                image_ids.extend(ids)
                counts.extend(int((torch.as_tensor(o["scores"]) >= score_thr).sum()) for o in outputs)
                bar.update(len(images))
    finally:
        model.train(was_training)
    return results, image_ids, counts


def summarize_predictions(
    dataset: Any,
    results: Sequence[dict],
    image_ids: Sequence[int],
    counts: Sequence[int],
    max_dets: Sequence[int] = (1, 10, 100),
    iou_types: Sequence[str] = ("bbox", "segm"),
) -> dict[str, Any]:
    """COCOeval of ``results`` against ``dataset.coco`` restricted to ``image_ids``: the metrics of
    :func:`evaluate_coco` plus ``num_images`` and ``mean_num_predictions`` (mean of ``counts``)."""
    base = _find_coco_dataset(dataset)
    types = tuple(iou_types)
    if results and "segmentation" not in results[0]:
        types = tuple(t for t in types if t != "segm")
    metrics = evaluate_coco(
        base.coco, results, iou_types=types, max_dets=max_dets, class_names=base.class_names, img_ids=image_ids
    )
    metrics["num_images"] = len(image_ids)
    metrics["mean_num_predictions"] = float(np.mean(counts)) if len(counts) else 0.0
    return metrics


def evaluate_model(
    model: torch.nn.Module,
    dataset: Any,
    batch_size: int = 1,
    max_images: Optional[int] = None,
    max_dets: Sequence[int] = (1, 10, 100),
    progress: bool = True,
    score_thr: float = 0.05,
    iou_types: Sequence[str] = ("bbox", "segm"),
    precision: str = "fp32",
) -> tuple[dict[str, Any], list[dict]]:
    """Runs ``model`` (eval mode, no grad) over the first ``max_images`` images of ``dataset`` and
    evaluates the predictions with COCOeval against ``dataset.coco`` restricted to those images.

    The model is called as ``model(images, original_sizes=[(h0, w0), ...])`` and must return, per
    image, ``boxes`` / ``masks`` in ORIGINAL image coordinates. The dataset should use test
    transforms. Returns ``(metrics, results)``: ``metrics`` as :func:`evaluate_coco` plus
    ``num_images`` and ``mean_num_predictions`` (mean per image of the predictions with score >=
    ``score_thr``); ``results`` the COCO result dicts. The model's train/eval mode is restored.
    ``precision='bf16'`` runs a bf16 copy of the model (see :func:`predict_coco_results`).
    """
    n = len(dataset) if max_images is None else min(len(dataset), int(max_images))
    results, image_ids, counts = predict_coco_results(model, dataset, range(n), batch_size=batch_size,
                                                      progress=progress, score_thr=score_thr, precision=precision)
    metrics = summarize_predictions(dataset, results, image_ids, counts, max_dets=max_dets, iou_types=iou_types)
    return metrics, results
