"""COCO results format: detections as the JSON list COCOeval and other tools read.

Needs only ``pycocotools.mask`` (the RLE encoder), not COCOeval: ``predict`` writes its JSON with
it, evaluation and training feed it to COCOeval.

* :func:`detection_results` formats one image's detections (boxes xyxy in original image pixels,
  scores, dataset category ids, optional masks at the original size): boxes as xywh, masks as
  compressed RLE with ``counts`` as str.
* :func:`predictions_to_coco_results` does it for model outputs with contiguous labels, mapped
  back to the dataset's category ids, each result with its ``image_id``.
* :func:`save_results_json` writes a results list atomically.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from pycocotools import mask as mask_utils

from .io_utils import atomic_write

__all__ = ["masks_to_rles", "detection_results", "predictions_to_coco_results", "save_results_json"]


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def masks_to_rles(masks: Any) -> list[dict]:
    """Binary masks (K, H, W) -> compressed RLEs with ``counts`` decoded to str (json-ready)."""
    m = _np(masks)
    if m.ndim != 3:
        raise ValueError(f"masks must be (K, H, W), got shape {m.shape}")
    if m.shape[0] == 0:
        return []
    fortran = np.asfortranarray(np.transpose(m > 0.5 if m.dtype.kind == "f" else m != 0, (1, 2, 0)).astype(np.uint8))
    rles = mask_utils.encode(fortran)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def detection_results(boxes: Any, scores: Any, category_ids: Any, masks: Optional[Any] = None,
                      where: str = "detections") -> list[dict]:
    """One image's detections as COCO result dicts (``category_id``, ``bbox`` xywh, ``score``, and
    ``segmentation`` when ``masks`` is given), without ``image_id``.

    ``boxes`` (K, 4) xyxy in original image pixels, ``scores`` (K,), ``category_ids`` (K,) dataset
    ids, ``masks`` (K, h0, w0) bool (or uint8 / probabilities, thresholded at 0.5) at the original
    image size. ``where`` names the image in errors."""
    boxes_np = _np(boxes).astype(np.float64).reshape(-1, 4)
    scores_np = _np(scores).astype(np.float64).reshape(-1)
    cats = _np(category_ids).astype(np.int64).reshape(-1)
    k = len(boxes_np)
    if not (len(scores_np) == len(cats) == k):
        raise ValueError(f"{where}: {k} boxes, {len(scores_np)} scores, {len(cats)} labels")
    rles = None
    if masks is not None:
        rles = masks_to_rles(masks)
        if len(rles) != k:
            raise ValueError(f"{where}: {len(rles)} masks for {k} boxes")
    results: list[dict] = []
    for j in range(k):
        x1, y1, x2, y2 = (float(v) for v in boxes_np[j])
        res = {"category_id": int(cats[j]), "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(scores_np[j])}
        if rles is not None:
            res["segmentation"] = rles[j]
        results.append(res)
    return results


def predictions_to_coco_results(
    predictions: Sequence[dict],
    image_ids: Sequence[int],
    label_to_cat_id: Mapping[int, int],
) -> list[dict]:
    """Model outputs -> COCO result dicts, each with its ``image_id``.

    Each prediction has ``boxes`` (K, 4) xyxy in original image pixels, ``scores`` (K,),
    ``labels`` (K,) contiguous 0..C-1 and optionally ``masks`` (K, h0, w0) already pasted at the
    original image size (see :func:`detection_results`). A result gets a ``segmentation`` only when
    the prediction has masks.
    """
    if len(predictions) != len(image_ids):
        raise ValueError(f"{len(predictions)} predictions for {len(image_ids)} image ids")
    results: list[dict] = []
    for pred, img_id in zip(predictions, image_ids):
        labels = _np(pred["labels"]).astype(np.int64).reshape(-1)
        missing = sorted({int(lab) for lab in labels} - set(label_to_cat_id))
        if missing:
            raise ValueError(f"image {img_id}: label {missing[0]} has no category id "
                             f"(labels 0..{len(label_to_cat_id) - 1})")
        cats = [int(label_to_cat_id[int(lab)]) for lab in labels]
        entries = detection_results(pred["boxes"], pred["scores"], cats, pred.get("masks"), where=f"image {img_id}")
        results.extend({"image_id": int(img_id), **e} for e in entries)
    return results


def save_results_json(results: Sequence[dict], path: Union[str, Path]) -> Path:
    """Writes ``results`` as json atomically (temporary file in the same folder, fsync, rename)."""
    return atomic_write(path, lambda f: json.dump(list(results), f))
