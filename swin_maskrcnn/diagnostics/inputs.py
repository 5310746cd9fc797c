"""Ground truth and detection results for the error analysis, checked and indexed per image.

:func:`load_ground_truth` reads a COCO instance file (checked by
:func:`~swin_maskrcnn.data.validation.read_coco_json`) into pycocotools' ``COCO``;
:func:`load_results` reads a COCO results list (ours from ``predict`` / ``evaluate``, or any other
tool's) and checks every entry against it: a result for an image the ground truth lacks, an unknown
category id or a malformed entry is a :class:`ResultsError` naming the entry. ``predict``'s files,
which name images by ``file_name`` instead of ``image_id``, are matched by file name.

:func:`per_image` groups both by image with the geometry the IoUs need (``bbox`` xywh lists or
``segm`` RLEs), and :func:`iou_matrix` computes IoUs with ``pycocotools.mask.iou``, as COCOeval
and tidecv do.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from ..data.validation import DataError, DataFileNotFoundError, read_coco_json
from ..io_utils import stdout_to_log

log = logging.getLogger(__name__)

__all__ = ["ResultsError", "load_ground_truth", "load_results", "ImageData", "per_image", "iou_matrix", "IOU_TYPES"]

IOU_TYPES = ("bbox", "segm")


class ResultsError(DataError):
    """A detection results file that cannot be analysed against the ground truth; names the entry."""


def load_ground_truth(path: Union[str, Path]) -> COCO:
    """pycocotools ``COCO`` of a checked COCO instance file (its path in ``coco.source``)."""
    data = read_coco_json(path)
    coco = COCO()
    coco.dataset = data
    with stdout_to_log(log):
        coco.createIndex()
    coco.source = str(path)  # type: ignore[attr-defined]
    return coco


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def load_results(results: Union[str, Path, Sequence[dict]], coco: COCO, name: str = "results") -> list[dict]:
    """Checked copies of the result entries: ``image_id`` (int; from ``file_name`` when absent),
    ``category_id``, ``bbox`` [x, y, w, h], ``score`` and, when present, ``segmentation`` (an RLE
    or polygons). Raises :class:`ResultsError` naming the first bad entry."""
    if isinstance(results, (str, Path)):
        path = Path(results)
        name = str(path)
        if not path.is_file():
            raise DataFileNotFoundError(f"results file not found: {path}")
        try:
            with open(path, "r", encoding="utf-8") as f:
                results = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ResultsError(f"{path}: not a valid JSON file (truncated or not JSON): {exc}") from exc
    if not isinstance(results, list):
        raise ResultsError(f"{name}: a COCO results file is a list of detections, got a {type(results).__name__}")
    by_file: dict[str, int] = {}
    for img in coco.dataset.get("images", []):
        by_file.setdefault(str(img["file_name"]), int(img["id"]))
        by_file.setdefault(Path(str(img["file_name"])).name, int(img["id"]))
    gt_name = getattr(coco, "source", "the ground truth")
    out: list[dict] = []
    for k, r in enumerate(results):
        where = f"{name}: result {k}"
        if not isinstance(r, dict):
            raise ResultsError(f"{where} is a {type(r).__name__}, not a mapping")
        entry = dict(r)
        if "image_id" not in entry:
            fname = entry.get("file_name")
            if fname is None:
                raise ResultsError(f"{where} has neither 'image_id' nor 'file_name'")
            if str(fname) not in by_file and Path(str(fname)).name not in by_file:
                raise ResultsError(f"{where} is for file {fname!r}, which {gt_name} does not have")
            entry["image_id"] = by_file.get(str(fname), by_file.get(Path(str(fname)).name))
        img_id = entry["image_id"]
        if isinstance(img_id, bool) or not isinstance(img_id, int):
            raise ResultsError(f"{where} has image_id {img_id!r}; image ids are integers")
        if img_id not in coco.imgs:
            raise ResultsError(f"{where} is for image {img_id}, which {gt_name} does not have")
        for key in ("category_id", "bbox", "score"):
            if key not in entry:
                raise ResultsError(f"{where} (image {img_id}) has no '{key}'")
        if entry["category_id"] not in coco.cats:
            raise ResultsError(f"{where} (image {img_id}) has category id {entry['category_id']!r}, which is not one "
                               f"of {gt_name}'s {sorted(coco.cats)[:20]}")
        box = entry["bbox"]
        if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(_is_number(v) for v in box):
            raise ResultsError(f"{where} (image {img_id}) has bbox {box!r}; expected [x, y, w, h] numbers")
        if not _is_number(entry["score"]):
            raise ResultsError(f"{where} (image {img_id}) has score {entry['score']!r}; expected a number")
        seg = entry.get("segmentation")
        if seg is not None:
            h, w = int(coco.imgs[img_id]["height"]), int(coco.imgs[img_id]["width"])
            if isinstance(seg, dict):
                if "counts" not in seg or "size" not in seg:
                    raise ResultsError(f"{where} (image {img_id}): segmentation RLE needs 'size' and 'counts'")
                if [int(v) for v in seg["size"]] != [h, w]:
                    raise ResultsError(f"{where} (image {img_id}): segmentation size {seg['size']} differs from "
                                       f"the image's [{h}, {w}]")
                if isinstance(seg["counts"], list):  # uncompressed RLE
                    seg = mask_utils.frPyObjects(seg, h, w)
            elif isinstance(seg, list):
                try:
                    seg = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
                except Exception as exc:  # noqa: BLE001 - pycocotools raises bare exceptions
                    raise ResultsError(f"{where} (image {img_id}): unreadable polygon segmentation: {exc}") from exc
            else:
                raise ResultsError(f"{where} (image {img_id}): segmentation must be an RLE or polygons")
            entry["segmentation"] = seg
        entry["bbox"] = [float(v) for v in box]
        entry["score"] = float(entry["score"])
        entry["_index"] = k
        out.append(entry)
    return out


@dataclass
class ImageData:
    """One image's ground truth and detections (detections sorted by descending score, stable)."""

    image_id: int
    gt: list[dict] = field(default_factory=list)  # not crowd, in annotation order
    crowd: list[dict] = field(default_factory=list)
    dets: list[dict] = field(default_factory=list)


def _gt_geometry(coco: COCO, ann: dict, iou_type: str) -> Any:
    if iou_type == "bbox":
        return [float(v) for v in ann["bbox"]]
    return coco.annToRLE(ann)


def per_image(coco: COCO, results: Sequence[dict], iou_type: str, max_dets: int = 100) -> list[ImageData]:
    """Every ground-truth image (sorted by id) with its annotations and its ``max_dets``
    best-scoring detections; each entry gets ``geom`` for ``iou_type``."""
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    images = {i: ImageData(i) for i in sorted(coco.imgs)}
    for ann in coco.dataset.get("annotations", []):
        if iou_type == "segm" and "segmentation" not in ann:
            continue
        a = dict(ann, geom=_gt_geometry(coco, ann, iou_type))
        (images[ann["image_id"]].crowd if ann.get("iscrowd", 0) else images[ann["image_id"]].gt).append(a)
    for r in results:
        if iou_type == "segm" and r.get("segmentation") is None:
            continue
        images[r["image_id"]].dets.append(dict(r, geom=r["bbox"] if iou_type == "bbox" else r["segmentation"]))
    for im in images.values():
        im.dets.sort(key=lambda d: -d["score"])
        im.dets = im.dets[:max_dets]
    return list(images.values())


def iou_matrix(dets: Sequence[dict], gts: Sequence[dict], crowd: bool = False) -> np.ndarray:
    """(D, G) IoUs of the entries' ``geom`` (``pycocotools.mask.iou``; ``crowd``: COCO's crowd IoU,
    the intersection over the detection's area)."""
    if not dets or not gts:
        return np.zeros((len(dets), len(gts)))
    iou = mask_utils.iou([d["geom"] for d in dets], [g["geom"] for g in gts], [int(crowd)] * len(gts))
    return np.asarray(iou, dtype=np.float64).reshape(len(dets), len(gts))
