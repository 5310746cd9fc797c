"""Checks of a COCO-format dataset, run once at start-up, before any training step.

Every check either raises :class:`DataError` (or :class:`ImageNotFoundError`) with a message that
names the annotation file, the image id (and file name), the annotation id or the key and what is
wrong, or records a *skip* in a :class:`ValidationReport` (logged at WARNING, counted, and reported
in the run summary). Which problem gets which treatment, and why, is listed in ``docs/data.md``.

* :func:`read_coco_json` -- the file itself: missing, not JSON, not COCO, duplicate ids.
* :func:`check_categories` -- category ids and names (any ids, mapped to contiguous labels).
* :func:`check_annotation` -- one annotation against its image: category, segmentation, box.
* :func:`scan_images` -- a header read of every image (no pixel decode): missing, zero-byte, not an
  image, truncated, or a size (after EXIF orientation) that disagrees with the JSON.

``CocoInstanceDataset`` runs them all in its constructor; they are separate functions so that
other tools (a dataset linter, ``evaluate``) can use them on their own.
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, Union

from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils

from ..errors import DataError

logger = logging.getLogger("swin_maskrcnn.data.coco")  # one logger for everything the dataset reports

__all__ = [
    "DataError",
    "DataFileNotFoundError",
    "ImageNotFoundError",
    "ValidationReport",
    "ImageProblem",
    "read_coco_json",
    "check_categories",
    "check_annotation",
    "displayed_size",
    "probe_image",
    "scan_images",
    "format_problems",
    "require_instances",
    "sanitize_ground_truth",
]

#: warnings of one kind logged at WARNING; the rest go to DEBUG (the summary counts them all)
MAX_WARNINGS_PER_KIND = 20
#: a box side out of the image by more than this is warned about when clipped
CLIP_WARN_PX = 1.0
#: problems named in one error message (all of them are logged before it is raised)
MAX_LISTED = 5
#: EXIF orientations that swap width and height (transpose, rotate 90/270, transverse)
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


class DataFileNotFoundError(FileNotFoundError, DataError):
    """An annotation file, image folder or image that does not exist."""


class ImageNotFoundError(DataFileNotFoundError):
    """An image (or the image folder) named by the annotation file does not exist."""


# ------------------------------------------------------------------------------------------------
# report of what was skipped or repaired
# ------------------------------------------------------------------------------------------------
@dataclass
class ValidationReport:
    """Counts of every skip and repair of one annotation file, for the log and the run summary."""

    source: str
    problems: Counter = field(default_factory=Counter)
    skipped_images: list[dict[str, Any]] = field(default_factory=list)

    def warn(self, kind: str, msg: str) -> None:
        """Count a problem of ``kind`` and log ``msg`` (WARNING for the first few of each kind)."""
        self.problems[kind] += 1
        level = logging.WARNING if self.problems[kind] <= MAX_WARNINGS_PER_KIND else logging.DEBUG
        logger.log(level, "%s", msg)

    def count(self, kind: str) -> None:
        """Count a problem without logging it (harmless repairs such as sub-pixel clipping)."""
        self.problems[kind] += 1

    def as_dict(self) -> dict[str, Any]:
        """Plain-type summary: problem counts by kind and the skipped images (first 20 listed)."""
        return {
            "annotation_file": self.source,
            "problems": dict(sorted(self.problems.items())),
            "skipped_images": len(self.skipped_images),
            "skipped_image_list": self.skipped_images[:20],
        }


# ------------------------------------------------------------------------------------------------
# the annotation file
# ------------------------------------------------------------------------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def read_coco_json(ann_file: Union[str, Path]) -> dict[str, Any]:
    """The parsed annotation file, checked to be a COCO instance file.

    Errors: missing file, not JSON (truncated), not a mapping with ``images`` and ``categories``
    lists, an image entry without ``id``/``file_name``/``width``/``height`` or with a non-positive
    size, duplicate image ids (pycocotools would silently keep one entry and give it both images'
    annotations), annotations that are not mappings with ``id``, ``image_id`` and ``category_id``,
    duplicate annotation ids (COCOeval would read one annotation twice and the other never).
    A missing ``annotations`` key is read as no annotations.
    """
    path = Path(ann_file)
    fname = path.name
    if not path.is_file():
        raise DataFileNotFoundError(f"annotation file not found: {path}")
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a valid JSON file (truncated or not JSON): {exc}") from exc
    not_coco = f"{path}: not a COCO instance annotation file"
    if not isinstance(data, dict):
        raise DataError(f"{not_coco}: the top level is a {type(data).__name__}, not a mapping with 'images', "
                        "'annotations' and 'categories' (a list is what detection results files look like)")
    missing = [k for k in ("images", "categories") if k not in data]
    if missing:
        raise DataError(f"{not_coco}: no {' and no '.join(repr(k) for k in missing)} key "
                        f"(top-level keys: {sorted(data)[:10]})")
    data.setdefault("annotations", [])
    for key in ("images", "annotations", "categories"):
        if not isinstance(data[key], list):
            raise DataError(f"{not_coco}: '{key}' must be a list, got {type(data[key]).__name__}")

    for k, img in enumerate(data["images"]):
        if not isinstance(img, dict):
            raise DataError(f"{fname}: images[{k}] is a {type(img).__name__}, not a mapping")
        for key in ("id", "file_name", "width", "height"):
            if key not in img:
                raise DataError(f"{fname}: images[{k}] (id {img.get('id')!r}) has no '{key}'")
        if not _is_int(img["id"]):
            raise DataError(f"{fname}: images[{k}] has id {img['id']!r}; image ids must be integers")
        if not all(_is_int(img[key]) or (isinstance(img[key], float) and img[key].is_integer())
                   for key in ("width", "height")) or img["width"] <= 0 or img["height"] <= 0:
            raise DataError(f"{fname}: image id {img['id']} ({img['file_name']}): invalid size "
                            f"{img['width']!r}x{img['height']!r} (width and height must be positive integers)")
    dup = sorted(k for k, v in Counter(img["id"] for img in data["images"]).items() if v > 1)
    if dup:
        files = {i: [im["file_name"] for im in data["images"] if im["id"] == i] for i in dup[:MAX_LISTED]}
        raise DataError(f"{fname}: {len(dup)} duplicate image id(s): " + "; ".join(
            f"id {i} is used by {files[i]}" for i in files) + (" ..." if len(dup) > MAX_LISTED else "")
            + " (each image needs its own id; pycocotools would keep one entry and give it both images' annotations)")

    for k, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise DataError(f"{fname}: annotations[{k}] is a {type(ann).__name__}, not a mapping")
        for key in ("id", "image_id", "category_id"):
            if key not in ann:
                raise DataError(f"{fname}: annotations[{k}] (id {ann.get('id')!r}, image id "
                                f"{ann.get('image_id')!r}) has no '{key}'")
    dup = sorted((k for k, v in Counter(a["id"] for a in data["annotations"]).items() if v > 1), key=str)
    if dup:
        raise DataError(f"{fname}: {len(dup)} duplicate annotation id(s), e.g. {dup[:MAX_LISTED]} (COCOeval looks "
                        "annotations up by id and would read one of them twice and the other never)")
    return data


def check_categories(data: dict[str, Any], fname: str) -> tuple[list[int], list[str]]:
    """(category ids ascending, their names). Any integer ids are allowed (COCO's own skip
    numbers); labels are their ranks. Errors: no categories, a malformed entry, duplicate ids."""
    cats = data["categories"]
    if not cats:
        raise DataError(f"{fname}: no categories")
    for k, c in enumerate(cats):
        if not isinstance(c, dict) or "id" not in c or not _is_int(c["id"]):
            raise DataError(f"{fname}: categories[{k}] = {c!r} needs an integer 'id'")
    dup = sorted(k for k, v in Counter(c["id"] for c in cats).items() if v > 1)
    if dup:
        raise DataError(f"{fname}: duplicate category ids {dup}")
    cats = sorted(cats, key=lambda c: c["id"])
    return [int(c["id"]) for c in cats], [str(c.get("name", c["id"])) for c in cats]


# ------------------------------------------------------------------------------------------------
# one annotation
# ------------------------------------------------------------------------------------------------
def segm_to_rle(segm: Any, h: int, w: int) -> dict:
    """Validated segmentation (polygon list or RLE dict) -> one compressed RLE."""
    if isinstance(segm, list):
        return mask_utils.merge(mask_utils.frPyObjects(segm, h, w))
    if isinstance(segm["counts"], list):
        return mask_utils.frPyObjects(segm, h, w)
    counts = segm["counts"]
    return {"size": list(segm["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def _box_iou_xywh(a: Sequence[float], b: Sequence[float]) -> float:
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def _valid_polygon(poly: Any) -> bool:
    return (
        isinstance(poly, (list, tuple))
        and len(poly) >= 6
        and len(poly) % 2 == 0
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in poly)
    )


def check_annotation(
    ann: dict[str, Any],
    image: dict[str, Any],
    cat_id_to_label: dict[int, int],
    ctx: str,
    report: ValidationReport,
) -> Optional[dict[str, Any]]:
    """The training record of one non-crowd annotation, or None when it is skipped.

    ``image`` is its image entry, ``ctx`` the prefix of every message (file, image id, annotation
    id). Raises :class:`DataError` for an unknown ``category_id``, an RLE whose ``size`` is not the
    image's, an unknown segmentation format, an undecodable RLE and a malformed or non-finite
    ``bbox``. Skips (counted in ``report``): no segmentation, no valid polygon part, empty mask,
    box under 1 px (zero-area, negative width), box outside the image, mask and box that
    disagree. Repairs: invalid polygon parts dropped, a box partly outside clipped.
    """
    cat_id = ann.get("category_id")
    if cat_id not in cat_id_to_label:
        raise DataError(f"{ctx}: unknown category_id {cat_id!r} (categories of the file: {sorted(cat_id_to_label)})")
    h, w = int(image["height"]), int(image["width"])

    # --- segmentation
    segm = ann.get("segmentation")
    if segm is None or (isinstance(segm, list) and len(segm) == 0):
        report.warn("empty mask", f"{ctx}: no segmentation; annotation skipped")
        return None
    if isinstance(segm, list):
        parts = []
        for k, poly in enumerate(segm):
            if _valid_polygon(poly):
                parts.append([float(v) for v in poly])
            else:
                n = len(poly) if isinstance(poly, (list, tuple)) else type(poly).__name__
                report.warn(
                    "bad polygon part",
                    f"{ctx}: bad polygon part {k} ({n} coordinates; need an even count >= 6 of finite "
                    f"numbers, i.e. at least 3 points); part dropped",
                )
        if not parts:
            report.warn("no valid polygon", f"{ctx}: no valid polygon left; annotation skipped")
            return None
        segm_ok: Any = parts if len(parts) != len(segm) else segm
    elif isinstance(segm, dict) and "counts" in segm and "size" in segm:
        try:
            size = [int(v) for v in segm["size"]]
        except (TypeError, ValueError) as exc:
            raise DataError(f"{ctx}: RLE size {segm['size']!r} is not [height, width]") from exc
        if size != [h, w]:
            raise DataError(f"{ctx}: RLE size {size} differs from the image size [h, w] = [{h}, {w}] in the JSON")
        if not isinstance(segm["counts"], (list, str, bytes)):
            raise DataError(f"{ctx}: RLE counts must be a list, str or bytes, got {type(segm['counts']).__name__}")
        segm_ok = segm
    else:
        raise DataError(f"{ctx}: unknown segmentation format {type(segm).__name__} "
                        "(need a list of polygons or an RLE mapping with 'size' and 'counts')")
    try:
        rle = segm_to_rle(segm_ok, h, w)
    except Exception as exc:  # noqa: BLE001 - pycocotools raises assorted errors for malformed RLE
        raise DataError(f"{ctx}: cannot decode segmentation: {exc}") from exc
    if float(mask_utils.area(rle)) <= 0:
        report.warn("empty mask", f"{ctx}: mask has no pixel inside the image; annotation skipped")
        return None
    mask_box = [float(v) for v in mask_utils.toBbox(rle)]

    # --- box
    bbox = ann.get("bbox")
    if bbox is None:
        bbox = mask_box
    try:
        x, y, bw, bh = (float(v) for v in bbox)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{ctx}: malformed bbox {bbox!r} (need [x, y, w, h])") from exc
    if not all(math.isfinite(v) for v in (x, y, bw, bh)):
        raise DataError(f"{ctx}: non-finite bbox {bbox!r}")
    if bw < 1 or bh < 1:
        report.warn("box under 1 px (zero-area or negative size)",
                    f"{ctx}: box {bbox} has width or height < 1 px; annotation skipped")
        return None
    x1, y1, x2, y2 = x, y, x + bw, y + bh
    cx1, cy1, cx2, cy2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(w)), min(y2, float(h))
    if cx2 <= cx1 or cy2 <= cy1:
        report.warn("box outside image", f"{ctx}: box {bbox} lies outside the {w}x{h} image; annotation skipped")
        return None
    out = max(cx1 - x1, cy1 - y1, x2 - cx2, y2 - cy2)
    if out > 0:
        if out > CLIP_WARN_PX:
            report.warn("box clipped", f"{ctx}: box {bbox} extends {out:.1f} px outside the {w}x{h} image; clipped")
        else:
            report.count("box clipped (< 1 px)")
    clipped = [cx1, cy1, cx2 - cx1, cy2 - cy1]
    iou = _box_iou_xywh(clipped, mask_box)
    mx2, my2 = mask_box[0] + mask_box[2], mask_box[1] + mask_box[3]
    side = max(abs(a - b) for a, b in zip((cx1, cy1, cx2, cy2), (mask_box[0], mask_box[1], mx2, my2)))
    if iou < 0.5 and side > 4.0:
        report.warn(
            "mask/box mismatch",
            f"{ctx}: box {bbox} does not match the mask's box {[round(v, 2) for v in mask_box]} "
            f"(IoU {iou:.2f}); annotation skipped",
        )
        return None
    return {
        "ann_id": ann.get("id"),
        "image_id": ann.get("image_id"),
        "label": cat_id_to_label[cat_id],
        "box": (cx1, cy1, cx2, cy2),
        "segm": segm_ok,
    }


def sanitize_ground_truth(annotations: list[dict[str, Any]], fname: str) -> list[dict[str, Any]]:
    """The annotations with every segmentation pycocotools can rasterise, for COCOeval.

    pycocotools crashes on a polygon part of 4 coordinates (read as a box), on an empty or missing
    segmentation and can crash on odd or non-finite parts: during a validation, hours into a run.
    Such parts are dropped (as for training); an annotation with no valid part left is removed
    from the evaluation's ground truth (it has no mask to compare with). RLE and valid polygons are
    kept as they are, so a clean file is evaluated exactly as pycocotools reads it.
    """
    out = []
    removed = []
    for ann in annotations:
        segm = ann.get("segmentation")
        if isinstance(segm, dict):
            out.append(ann)
            continue
        parts = [p for p in segm if _valid_polygon(p)] if isinstance(segm, list) else []
        if not parts:
            removed.append(ann["id"])
            continue
        if len(parts) != len(segm):
            ann["segmentation"] = parts
        out.append(ann)
    if removed:
        logger.warning("%s: %d annotations without a usable segmentation are left out of the evaluation's ground "
                       "truth (ids %s%s)", fname, len(removed), removed[:10], " ..." if len(removed) > 10 else "")
    return out


# ------------------------------------------------------------------------------------------------
# images: header read
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageProblem:
    """Why one image cannot be used: ``kind`` is one of missing, empty file, not an image,
    truncated, size mismatch."""

    image_id: int
    path: str
    kind: str
    detail: str


def displayed_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) after EXIF orientation, read from the header (no pixel decode).

    A PNG's EXIF is taken from the chunks read at open (Pillow's ``getexif`` on a PNG decodes the
    whole image to look for an eXIf chunk after the pixels; such a rotated PNG is still caught,
    when it is loaded)."""
    w, h = img.size
    try:
        if img.format == "PNG":
            raw = img.info.get("exif")
            exif = Image.Exif()
            if raw:
                exif.load(raw)
        else:
            exif = img.getexif()
        orientation = exif.get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block is ignored, as exif_transpose does
        orientation = 1
    return (h, w) if orientation in _SWAPPING_ORIENTATIONS else (w, h)


def _ends_cleanly(path: Path, fmt: Optional[str]) -> bool:
    """True when the file ends with its format's end marker (JPEG EOI, PNG IEND): a file cut
    short lacks it. Other formats return False and are decoded in full instead."""
    if fmt not in ("JPEG", "PNG", "MPO"):
        return False
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        n = f.tell()
        f.seek(max(0, n - 64))
        tail = f.read()
    if fmt == "PNG":
        return tail.endswith(_PNG_END)
    return tail.rstrip(b"\x00").endswith(b"\xff\xd9")


def probe_image(path: Union[str, Path]) -> tuple[int, int]:
    """(width, height) as displayed (EXIF orientation applied) of an image file that can be read.

    Reads the header and the last bytes only; a JPEG or PNG without its end marker, and any other
    format, is decoded in full to confirm it is complete. Raises :class:`ImageNotFoundError` or
    :class:`DataError` saying what is wrong (zero bytes, not an image, truncated).
    """
    path = Path(path)
    if not path.is_file():
        raise ImageNotFoundError("file not found" + (" (it is a folder)" if path.is_dir() else ""))
    if path.stat().st_size == 0:
        raise DataError("empty file (0 bytes)")
    try:
        with Image.open(path) as img:
            size, fmt = displayed_size(img), img.format
    except Image.DecompressionBombError as exc:
        raise DataError(f"too large for PIL's decompression-bomb limit: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise DataError("not an image (PIL cannot identify the file's format)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"not an image PIL can read ({exc})") from exc
    if not _ends_cleanly(path, fmt):
        try:
            with Image.open(path) as img:
                img.load()
        except (OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"truncated or corrupt {fmt} ({exc})") from exc
    return size


def _probe_one(item: tuple[int, Path, int, int]) -> Optional[ImageProblem]:
    img_id, path, w, h = item
    try:
        dw, dh = probe_image(path)
    except ImageNotFoundError as exc:
        return ImageProblem(img_id, str(path), "missing", str(exc))
    except DataError as exc:
        text = str(exc)
        kind = ("empty file" if text.startswith("empty") else "truncated" if text.startswith("truncated")
                else "not an image")
        return ImageProblem(img_id, str(path), kind, text)
    if (dw, dh) != (w, h):
        hint = ""
        if (dh, dw) == (w, h):
            hint = " (width and height are swapped: the JSON may give the size before EXIF orientation)"
        return ImageProblem(img_id, str(path), "size mismatch",
                            f"image is {dw}x{dh} (w x h, after EXIF orientation) but the JSON says {w}x{h}{hint}")
    return None


def scan_images(items: Iterable[tuple[int, Path, int, int]], threads: int = 8) -> list[ImageProblem]:
    """Header read of every ``(image_id, path, json_width, json_height)``; the problems found, in
    input order. I/O bound, so a few threads overlap the file reads."""
    items = list(items)
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(items)))) as pool:
        return [p for p in pool.map(_probe_one, items) if p is not None]


def format_problems(problems: Sequence[Any], describe: Callable[[Any], str], limit: int = MAX_LISTED) -> str:
    """The first ``limit`` problems joined with '; ' and the count of the rest."""
    shown = "; ".join(describe(p) for p in problems[:limit])
    more = f"; ... and {len(problems) - limit} more (all logged above)" if len(problems) > limit else ""
    return shown + more


def require_instances(dataset: Any, role: str) -> None:
    """DataError unless ``dataset`` (a CocoInstanceDataset) has at least one usable instance: training
    on, or evaluating against, no ground truth at all is a mistake, not a run. ``role`` names the
    config key or option that gave the file."""
    if dataset.num_instances() > 0:
        return
    n_ann = len(dataset.coco.dataset.get("annotations") or [])
    if n_ann == 0:
        why = "has no annotations at all"
    elif len(dataset) == 0:
        why = (f"has {n_ann} annotations but no image is left after filtering "
               f"(filter_empty_gt={dataset.filter_empty_gt}, min_size={dataset.min_size})")
    else:
        skipped = ", ".join(f"{k}: {v}" for k, v in sorted(dataset.report.problems.items()))
        why = (f"has {n_ann} annotations but none is usable in the {len(dataset)} images in use "
               f"(crowd: {dataset.num_crowd}; skipped: {skipped or 'none'}; see the warnings above)")
    raise DataError(f"{role} {dataset.ann_file} {why}: there is nothing to train or evaluate against")
