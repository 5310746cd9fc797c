"""COCO-format instance segmentation dataset.

``CocoInstanceDataset(ann_file, image_dir)[i]`` returns ``(image, target)``: ``image`` float32
(3, H, W) in [0, 1] after the transforms (divided by 255 exactly once, never mean/std-normalised:
the model does that), and ``target`` a dict with

* ``boxes`` float32 (N, 4) xyxy in pixels of the returned image,
* ``labels`` int64 (N,) contiguous in 0..C-1 (category ids sorted ascending; background is not a
  label),
* ``masks`` uint8 (N, H, W),
* ``image_id`` (int, the json's image id), ``orig_size`` (h0, w0), ``img_size`` (h, w) after the
  transforms and ``scale_factor`` (w_scale, h_scale) = new / original.

Segmentations may be polygons, compressed RLE or uncompressed RLE (decoded with pycocotools).
The box of an instance is the annotation's ``bbox`` (as in mmdet), clipped to the image.

**Crowd annotations** (``iscrowd=1``) are dropped from the training targets. They stay in
``self.coco`` (the unmodified ground truth), where COCOeval treats them as ignore regions.

**Problems in the annotation file** are found once, in ``__init__`` (no image is decoded there).
Every message names the annotation file, the image id (and file name) and the annotation id.

Errors (raised):

* annotation file missing (FileNotFoundError) or not valid json / COCO (ValueError);
* ``num_classes`` given and different from the number of categories (ValueError);
* image file missing (FileNotFoundError, checked at construction and again when loading);
* image unreadable, or its size (after EXIF orientation) differs from the json's width/height
  (ValueError, when the image is loaded);
* unknown ``category_id``, annotation of an unknown ``image_id``, an RLE whose ``size`` is not the
  image's size, an unknown segmentation format, a malformed ``bbox`` (ValueError).

Logged warnings, the ANNOTATION (never the image or batch) being skipped:

* box smaller than 1 px in width or height (zero-area boxes included; mmdet's rule),
* box entirely outside the image,
* empty mask (no segmentation, or a segmentation that rasterises to no pixel),
* no valid polygon part left (see below),
* mask and box that disagree (IoU of the box with the mask's tight box < 0.5 AND a side more than
  4 px apart; the second condition spares tiny objects whose rasterised mask is coarse).

Logged warnings, the annotation being repaired:

* a box partly outside the image is clipped to it (warned when a side is out by more than 1 px,
  silently clipped otherwise, e.g. float round-off),
* a polygon part with fewer than 6 coordinates, an odd count or non-finite values is dropped
  (mmdet drops such parts too); the other parts of the annotation are kept.

The first 20 warnings of each kind are logged at WARNING, the rest at DEBUG, and a summary with
the count of every kind is logged at WARNING at the end of ``__init__``.

``filter_empty_gt=True`` drops the images without any usable (non-crowd, not skipped)
annotation; ``min_size`` drops images whose shorter side is below it (mmdet's ``filter_cfg``,
which applies ``min_size`` whether or not empty images are filtered; the default 0 keeps all).
"""
from __future__ import annotations

import json
import logging
import math
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from ..io_utils import stdout_to_log
from .images import load_rgb_image, pil_to_rgb_uint8
from .transforms import to_float_image, unwrap_target

logger = logging.getLogger(__name__)

__all__ = ["CocoInstanceDataset", "load_rgb_image", "pil_to_rgb_uint8"]

_MAX_WARNINGS_PER_KIND = 20
_CLIP_WARN_PX = 1.0


# ------------------------------------------------------------------------------------------------
# segmentations
# ------------------------------------------------------------------------------------------------
def _segm_to_rle(segm: Any, h: int, w: int) -> dict:
    """Validated segmentation (polygon list or RLE dict) -> one compressed RLE."""
    if isinstance(segm, list):
        return mask_utils.merge(mask_utils.frPyObjects(segm, h, w))
    if isinstance(segm["counts"], list):
        return mask_utils.frPyObjects(segm, h, w)
    counts = segm["counts"]
    return {"size": list(segm["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def _box_iou_xywh(a: list[float], b: list[float]) -> float:
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


# ------------------------------------------------------------------------------------------------
# dataset
# ------------------------------------------------------------------------------------------------
class CocoInstanceDataset(torch.utils.data.Dataset):
    """COCO instance segmentation dataset; see the module docstring for the full contract,
    crowd handling, and which annotation problems raise and which are logged and skipped."""

    def __init__(
        self,
        ann_file: Union[str, Path],
        image_dir: Union[str, Path],
        transforms: Optional[Callable] = None,
        filter_empty_gt: bool = False,
        min_size: int = 0,
        num_classes: Optional[int] = None,
    ):
        self.ann_file = Path(ann_file)
        self.image_dir = Path(image_dir)
        self.transforms = transforms
        self.filter_empty_gt = filter_empty_gt
        self.min_size = min_size
        if not self.ann_file.is_file():
            raise FileNotFoundError(f"annotation file not found: {self.ann_file}")
        self._fname = self.ann_file.name
        try:
            with stdout_to_log():
                self.coco = COCO(str(self.ann_file))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{self.ann_file}: not a valid json file: {exc}") from exc
        except (AssertionError, KeyError, TypeError) as exc:
            raise ValueError(f"{self.ann_file}: not a valid COCO annotation file: {exc!r}") from exc

        cats = self.coco.dataset.get("categories") or []
        if not cats:
            raise ValueError(f"{self.ann_file}: no categories")
        ids = [c["id"] for c in cats]
        dup = sorted(k for k, v in Counter(ids).items() if v > 1)
        if dup:
            raise ValueError(f"{self.ann_file}: duplicate category ids {dup}")
        cats = sorted(cats, key=lambda c: c["id"])
        self.cat_ids: list[int] = [int(c["id"]) for c in cats]
        self.class_names: list[str] = [str(c.get("name", c["id"])) for c in cats]
        self.cat_id_to_label: dict[int, int] = {cid: i for i, cid in enumerate(self.cat_ids)}
        self.label_to_cat_id: dict[int, int] = {i: cid for i, cid in enumerate(self.cat_ids)}
        if num_classes is not None and int(num_classes) != len(self.cat_ids):
            raise ValueError(
                f"{self.ann_file}: num_classes={num_classes} but the file has {len(self.cat_ids)} "
                f"categories (ids {self.cat_ids[:10]}{'...' if len(self.cat_ids) > 10 else ''})"
            )

        self._problems: Counter = Counter()
        self._num_crowd = 0
        self._records: dict[int, list[dict]] = {}
        self._validate_images()
        for ann in self.coco.dataset.get("annotations") or []:
            rec = self._validate_annotation(ann)
            if rec is not None:
                self._records.setdefault(rec["image_id"], []).append(rec)

        all_ids = [int(img["id"]) for img in self.coco.dataset.get("images") or []]
        self.img_ids: list[int] = []
        for img_id in all_ids:
            info = self.coco.imgs[img_id]
            if filter_empty_gt and not self._records.get(img_id):
                continue
            if min(int(info["width"]), int(info["height"])) < min_size:
                continue
            self.img_ids.append(img_id)
        self._check_files()
        if self._problems:
            summary = ", ".join(f"{k}: {v}" for k, v in sorted(self._problems.items()))
            logger.warning("%s: annotation problems (annotations skipped or repaired): %s", self._fname, summary)
        logger.info(
            "%s: %d images (%d in file), %d training instances, %d crowd annotations excluded, %d categories",
            self._fname,
            len(self.img_ids),
            len(all_ids),
            sum(len(self._records.get(i, [])) for i in self.img_ids),
            self._num_crowd,
            len(self.cat_ids),
        )

    # -------------------------------------------------------------------------------- validation
    def _ctx(self, img_id: Any, ann_id: Any = None) -> str:
        info = self.coco.imgs.get(img_id, {})
        fn = info.get("file_name", "?")
        s = f"{self._fname}: image id {img_id} ({fn})"
        if ann_id is not None:
            s += f", annotation id {ann_id}"
        return s

    def _warn(self, kind: str, msg: str) -> None:
        self._problems[kind] += 1
        level = logging.WARNING if self._problems[kind] <= _MAX_WARNINGS_PER_KIND else logging.DEBUG
        logger.log(level, "%s", msg)

    def _validate_images(self) -> None:
        for img in self.coco.dataset.get("images") or []:
            img_id = img.get("id")
            for key in ("id", "file_name", "width", "height"):
                if key not in img:
                    raise ValueError(f"{self._fname}: image entry {img!r} has no '{key}'")
            if int(img["width"]) <= 0 or int(img["height"]) <= 0:
                raise ValueError(f"{self._ctx(img_id)}: invalid size {img['width']}x{img['height']}")

    def _check_files(self) -> None:
        for img_id in self.img_ids:
            path = self.image_path(img_id)
            if not path.is_file():
                raise FileNotFoundError(
                    f"{self._ctx(img_id)}: image file not found: {path} "
                    f"(annotation ids {self._ann_ids_of(img_id)})"
                )

    def _ann_ids_of(self, img_id: int, limit: int = 10) -> str:
        ids = [a["id"] for a in self.coco.imgToAnns.get(img_id, [])]
        more = f" ... ({len(ids)} total)" if len(ids) > limit else ""
        return f"{ids[:limit]}{more}"

    def _validate_annotation(self, ann: dict) -> Optional[dict]:
        ann_id = ann.get("id")
        img_id = ann.get("image_id")
        if img_id not in self.coco.imgs:
            raise ValueError(f"{self._fname}: annotation id {ann_id} refers to unknown image id {img_id}")
        ctx = self._ctx(img_id, ann_id)
        cat_id = ann.get("category_id")
        if cat_id not in self.cat_id_to_label:
            raise ValueError(f"{ctx}: unknown category_id {cat_id!r} (categories of the file: {self.cat_ids})")
        if int(ann.get("iscrowd", 0) or 0):
            self._num_crowd += 1
            return None
        info = self.coco.imgs[img_id]
        h, w = int(info["height"]), int(info["width"])

        # --- segmentation
        segm = ann.get("segmentation")
        if segm is None or (isinstance(segm, list) and len(segm) == 0):
            self._warn("empty mask", f"{ctx}: no segmentation; annotation skipped")
            return None
        if isinstance(segm, list):
            parts = []
            for k, poly in enumerate(segm):
                ok = (
                    isinstance(poly, (list, tuple))
                    and len(poly) >= 6
                    and len(poly) % 2 == 0
                    and all(isinstance(v, (int, float)) and math.isfinite(v) for v in poly)
                )
                if ok:
                    parts.append([float(v) for v in poly])
                else:
                    n = len(poly) if isinstance(poly, (list, tuple)) else type(poly).__name__
                    self._warn(
                        "bad polygon part",
                        f"{ctx}: bad polygon part {k} ({n} coordinates; need an even count >= 6 of finite "
                        f"numbers); part dropped",
                    )
            if not parts:
                self._warn("no valid polygon", f"{ctx}: no valid polygon left; annotation skipped")
                return None
            segm_ok: Any = parts if len(parts) != len(segm) else segm
        elif isinstance(segm, dict) and "counts" in segm and "size" in segm:
            size = [int(v) for v in segm["size"]]
            if size != [h, w]:
                raise ValueError(f"{ctx}: RLE size {size} differs from the image size [h, w] = [{h}, {w}]")
            if not isinstance(segm["counts"], (list, str, bytes)):
                raise ValueError(f"{ctx}: RLE counts must be a list, str or bytes")
            segm_ok = segm
        else:
            raise ValueError(f"{ctx}: unknown segmentation format {type(segm).__name__}")
        try:
            rle = _segm_to_rle(segm_ok, h, w)
        except Exception as exc:  # malformed RLE strings
            raise ValueError(f"{ctx}: cannot decode segmentation: {exc}") from exc
        mask_area = float(mask_utils.area(rle))
        if mask_area <= 0:
            self._warn("empty mask", f"{ctx}: mask has no pixel inside the image; annotation skipped")
            return None
        mask_box = [float(v) for v in mask_utils.toBbox(rle)]

        # --- box
        bbox = ann.get("bbox")
        if bbox is None:
            bbox = mask_box
        try:
            x, y, bw, bh = (float(v) for v in bbox)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{ctx}: malformed bbox {bbox!r} (need [x, y, w, h])") from exc
        if not all(math.isfinite(v) for v in (x, y, bw, bh)):
            raise ValueError(f"{ctx}: non-finite bbox {bbox!r}")
        if bw < 1 or bh < 1:
            self._warn("zero-area or < 1 px box", f"{ctx}: box {bbox} has width or height < 1 px; annotation skipped")
            return None
        x1, y1, x2, y2 = x, y, x + bw, y + bh
        cx1, cy1, cx2, cy2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(w)), min(y2, float(h))
        if cx2 <= cx1 or cy2 <= cy1:
            self._warn("box outside image", f"{ctx}: box {bbox} lies outside the {w}x{h} image; annotation skipped")
            return None
        out = max(cx1 - x1, cy1 - y1, x2 - cx2, y2 - cy2)
        if out > 0:
            if out > _CLIP_WARN_PX:
                self._warn("box clipped", f"{ctx}: box {bbox} extends {out:.1f} px outside the {w}x{h} image; clipped")
            else:
                self._problems["box clipped (< 1 px)"] += 1
        clipped = [cx1, cy1, cx2 - cx1, cy2 - cy1]
        iou = _box_iou_xywh(clipped, mask_box)
        side = max(abs(a - b) for a, b in zip((cx1, cy1, cx2, cy2), (mask_box[0], mask_box[1], mask_box[0] + mask_box[2], mask_box[1] + mask_box[3])))
        if iou < 0.5 and side > 4.0:
            self._warn(
                "mask/box mismatch",
                f"{ctx}: box {bbox} does not match the mask's box {[round(v, 2) for v in mask_box]} "
                f"(IoU {iou:.2f}); annotation skipped",
            )
            return None
        return {
            "ann_id": ann_id,
            "image_id": img_id,
            "label": self.cat_id_to_label[cat_id],
            "box": (cx1, cy1, cx2, cy2),
            "segm": segm_ok,
        }

    # -------------------------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.img_ids)

    def image_path(self, img_id: int) -> Path:
        return self.image_dir / self.coco.imgs[img_id]["file_name"]

    def get_image_info(self, i: int) -> dict:
        """The json's image entry of index ``i`` plus ``path`` and ``num_instances`` (training
        instances after crowd removal and skips)."""
        img_id = self.img_ids[i]
        info = dict(self.coco.imgs[img_id])
        info["path"] = str(self.image_path(img_id))
        info["num_instances"] = len(self._records.get(img_id, []))
        return info

    def aspect_ratios(self) -> list[float]:
        """w / h of every index, from the json (no image is decoded)."""
        return [float(self.coco.imgs[i]["width"]) / float(self.coco.imgs[i]["height"]) for i in self.img_ids]

    def load_image(self, i: int) -> np.ndarray:
        """uint8 RGB (H, W, 3) of index ``i``, EXIF-oriented, checked against the json size."""
        img_id = self.img_ids[i]
        info = self.coco.imgs[img_id]
        path = self.image_path(img_id)
        try:
            arr = load_rgb_image(path)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{self._ctx(img_id)}: {exc} (annotation ids {self._ann_ids_of(img_id)})") from exc
        except ValueError as exc:
            raise ValueError(f"{self._ctx(img_id)}: {exc} (annotation ids {self._ann_ids_of(img_id)})") from exc
        h, w = arr.shape[:2]
        if (h, w) != (int(info["height"]), int(info["width"])):
            hint = ""
            if (w, h) == (int(info["height"]), int(info["width"])):
                hint = " (width and height are swapped: the json may refer to the image before EXIF orientation)"
            raise ValueError(
                f"{self._ctx(img_id)}: image is {w}x{h} (w x h, after EXIF orientation) but the json says "
                f"{info['width']}x{info['height']}{hint} (annotation ids {self._ann_ids_of(img_id)})"
            )
        return arr

    def get_raw_target(self, i: int) -> dict:
        """Target of index ``i`` at the original size, before any transform."""
        img_id = self.img_ids[i]
        info = self.coco.imgs[img_id]
        h, w = int(info["height"]), int(info["width"])
        recs = self._records.get(img_id, [])
        n = len(recs)
        if n:
            rles = [_segm_to_rle(r["segm"], h, w) for r in recs]
            with warnings.catch_warnings():  # pycocotools vs numpy 2 "copy keyword" deprecation
                warnings.simplefilter("ignore", DeprecationWarning)
                decoded = mask_utils.decode(rles)
            masks = np.ascontiguousarray(np.transpose(decoded, (2, 0, 1)))
            boxes = torch.tensor([r["box"] for r in recs], dtype=torch.float32)
        else:
            masks = np.zeros((0, h, w), dtype=np.uint8)
            boxes = torch.zeros((0, 4), dtype=torch.float32)
        return {
            "boxes": boxes,
            "labels": torch.tensor([r["label"] for r in recs], dtype=torch.int64),
            "masks": torch.from_numpy(masks.astype(np.uint8, copy=False)),
            "image_id": int(img_id),
            "orig_size": (h, w),
            "img_size": (h, w),
            "scale_factor": (1.0, 1.0),
        }

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict]:
        arr = self.load_image(i)
        target = self.get_raw_target(i)
        image = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        image = to_float_image(image)
        target = unwrap_target(target)
        if tuple(image.shape[-2:]) != tuple(target["img_size"]):
            raise RuntimeError(
                f"{self._ctx(target['image_id'])}: transforms returned an image of size {tuple(image.shape[-2:])} "
                f"but img_size {target['img_size']}"
            )
        return image, target

    def __repr__(self) -> str:
        return (
            f"CocoInstanceDataset({self.ann_file}, {len(self)} images, {len(self.cat_ids)} classes, "
            f"transforms={self.transforms!r})"
        )
