"""COCO-format instance segmentation dataset.

``CocoInstanceDataset(ann_file, image_dir)[i]`` returns ``(image, target)``: ``image`` float32
(3, H, W) in [0, 1] after the transforms (divided by 255 exactly once, never mean/std-normalised:
the model does that; ``image_dtype="uint8"`` returns the uint8 0..255 image instead, which the model
turns into exactly the same input: float32(u / 255) * 255 == u for every u, and a quarter of the bytes
to pin and copy to the GPU; training uses it), and ``target`` a dict with

* ``boxes`` float32 (N, 4) xyxy in pixels of the returned image,
* ``labels`` int64 (N,) contiguous in 0..C-1 (category ids sorted ascending; background is not a
  label),
* ``masks`` uint8 (N, H, W),
* ``image_id`` (int, the json's image id), ``orig_size`` (h0, w0), ``img_size`` (h, w) after the
  transforms and ``scale_factor`` (w_scale, h_scale) = new / original.

Segmentations may be polygons, compressed RLE or uncompressed RLE (decoded with pycocotools). With
transforms of :mod:`.transforms` (or none) the masks go through them as :class:`~.lazy_masks.LazyMasks`
(each decoded at the original size inside its box only, :mod:`.rle_box`, and written at the final
size once: bit for bit what the dense masks give); other transforms get the dense masks.
The box of an instance is the annotation's ``bbox`` (as in mmdet), clipped to the image.

**Crowd annotations** (``iscrowd=1``, and annotations marked ``"ignore": 1``, a common convention)
are never training instances. ``crowd="drop"`` (the default) drops them from the training targets;
``crowd="ignore"`` turns their boxes into the target's ``ignore_boxes`` (K, 4) xyxy (clipped to the
image; boxes under 1 px or outside the image are skipped with a warning), which the transforms carry
like ``boxes`` and the model's assigners leave out of training (``model.rpn.ignore_iof_thr``,
``model.roi.ignore_iof_thr``). They stay in ``self.coco`` (the ground truth: the file as pycocotools
reads it, less segmentations it cannot rasterise), where COCOeval treats ``iscrowd=1`` as ignore regions
(pycocotools reads ``iscrowd`` only: an ``"ignore": 1`` annotation without ``iscrowd`` is evaluated as
an object).

**Problems in the dataset** are found once, in ``__init__``, before any training step: the
annotation file is parsed and checked, every annotation is checked against its image, and every
image that will be used gets a header read (no pixel decode; :mod:`.validation`). Every message names
the annotation file, the image id (and file name) and the annotation id. ``docs/data.md`` lists each
case and what happens.

Errors (:class:`~.validation.DataError`, a ValueError; missing files raise
:class:`~.validation.ImageNotFoundError`, also a FileNotFoundError):

* annotation file missing, not JSON (truncated) or not COCO; duplicate image or annotation ids;
* ``num_classes`` given and different from the number of categories;
* unknown ``category_id``, annotation of an unknown ``image_id``, an RLE whose ``size`` is not the
  image's size, an unknown segmentation format, a malformed ``bbox``;
* image folder or image file missing, zero-byte, not an image, truncated, or of a size (after EXIF
  orientation) that differs from the JSON's width/height. With ``bad_images="skip"`` these images
  (missing ones included) are left out instead, each logged, and counted in ``self.report``.

Logged warnings, the ANNOTATION (never the image or batch) being skipped:

* box smaller than 1 px in width or height (zero-area and negative sizes included; mmdet's rule),
* box entirely outside the image,
* empty mask (no segmentation, or a segmentation that rasterises to no pixel),
* no valid polygon part left (see below),
* mask and box that disagree (IoU of the box with the mask's tight box < 0.5 AND a side more than
  4 px apart; the second condition spares tiny objects whose rasterised mask is coarse).

Logged warnings, the annotation being repaired:

* a box partly outside the image is clipped to it (warned when a side is out by more than 1 px,
  silently clipped otherwise, e.g. float round-off),
* a polygon part with fewer than 6 coordinates (3 points), an odd count or non-finite values is
  dropped (mmdet drops such parts too); the other parts of the annotation are kept.

The first 20 warnings of each kind are logged at WARNING, the rest at DEBUG; ``self.report``
(:class:`~.validation.ValidationReport`) counts them all, and ``train`` puts its counts in the run
summary.

``filter_empty_gt=True`` drops the images without any usable (non-crowd, not skipped)
annotation; ``min_size`` drops images whose shorter side is below it (mmdet's ``filter_cfg``,
which applies ``min_size`` whether or not empty images are filtered; the default 0 keeps all).
"""
from __future__ import annotations

import logging
import math
import time
from collections import Counter
import warnings
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Union

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from ..io_utils import stdout_to_log
from .images import load_rgb_image, pil_to_rgb_uint8
from .lazy_masks import LazyMasks
from .transforms import to_float_image, unwrap_target
from .validation import (
    DataError,
    ImageNotFoundError,
    ImageProblem,
    ValidationReport,
    check_annotation,
    check_categories,
    format_problems,
    read_coco_json,
    scan_images,
    sanitize_ground_truth,
    segm_to_rle,
)

logger = logging.getLogger(__name__)

__all__ = ["CocoInstanceDataset", "is_crowd", "crowd_box", "load_rgb_image", "pil_to_rgb_uint8", "DataError", "ImageNotFoundError"]


def is_crowd(ann: dict) -> bool:
    """Whether an annotation is a crowd / "don't care" region (``iscrowd=1`` or ``"ignore": 1``), not an instance."""
    return bool(int(ann.get("iscrowd", 0) or 0) or int(ann.get("ignore", 0) or 0))


def crowd_box(ann: dict, height: int, width: int, ctx: str) -> Optional[list[float]]:
    """xyxy ignore box of a crowd / ignore annotation, clipped to the ``height`` x ``width`` image; None when
    it is under 1 px or outside the image (no ignore region). Its bbox, or the box of its segmentation
    when it has none; a malformed one raises :class:`DataError` naming ``ctx``."""
    h, w = float(height), float(width)
    bbox = ann.get("bbox")
    if bbox is None and ann.get("segmentation"):
        try:
            bbox = [float(v) for v in mask_utils.toBbox(segm_to_rle(ann["segmentation"], int(h), int(w)))]
        except Exception as exc:  # noqa: BLE001 - pycocotools raises assorted errors for malformed RLE
            raise DataError(f"{ctx}: crowd annotation without bbox and an undecodable segmentation: {exc}") from exc
    try:
        x, y, bw, bh = (float(v) for v in bbox)  # type: ignore[union-attr]
    except (TypeError, ValueError) as exc:
        raise DataError(f"{ctx}: malformed bbox {bbox!r} of a crowd annotation (need [x, y, w, h])") from exc
    if not all(math.isfinite(v) for v in (x, y, bw, bh)):
        raise DataError(f"{ctx}: non-finite bbox {bbox!r} of a crowd annotation")
    x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + bw, w), min(y + bh, h)
    if bw < 1 or bh < 1 or x2 <= x1 or y2 <= y1:
        return None
    return [x1, y1, x2, y2]


def output_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised contiguous CPU tensor for a sample's image or masks. In a DataLoader worker it is
    allocated in shared memory (as torch's ``default_collate`` does for its batches), so that sending it
    to the main process passes a file descriptor instead of copying it into shared memory: that copy took
    about half as long again as computing the sample (3.0 ms median against 6.4 ms, coco128 1x)."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    numel = math.prod(shape)
    storage = torch.UntypedStorage._new_shared(numel * dtype.itemsize)
    strides = torch.empty(shape, dtype=torch.uint8, device="meta").stride()
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape, strides)


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
        bad_images: Literal["error", "skip"] = "error",
        crowd: Literal["drop", "ignore"] = "drop",
        image_dtype: Literal["float32", "uint8"] = "float32",
    ):
        if bad_images not in ("error", "skip"):
            raise ValueError(f"bad_images must be 'error' or 'skip', got {bad_images!r}")
        if crowd not in ("drop", "ignore"):
            raise ValueError(f"crowd must be 'drop' or 'ignore', got {crowd!r}")
        if image_dtype not in ("float32", "uint8"):
            raise ValueError(f"image_dtype must be 'float32' or 'uint8', got {image_dtype!r}")
        self.image_dtype = image_dtype
        self.crowd = crowd
        self._ignore_boxes: dict[int, list[list[float]]] = {}
        self.ann_file = Path(ann_file)
        self.image_dir = Path(image_dir)
        self.transforms = transforms
        self.filter_empty_gt = filter_empty_gt
        self.min_size = min_size
        self._fname = self.ann_file.name
        self.report = ValidationReport(str(self.ann_file))

        data = read_coco_json(self.ann_file)
        self.cat_ids, self.class_names = check_categories(data, self._fname)
        self.cat_id_to_label: dict[int, int] = {cid: i for i, cid in enumerate(self.cat_ids)}
        self.label_to_cat_id: dict[int, int] = {i: cid for i, cid in enumerate(self.cat_ids)}
        if num_classes is not None and int(num_classes) != len(self.cat_ids):
            raise DataError(
                f"{self.ann_file}: num_classes={num_classes} but the file has {len(self.cat_ids)} "
                f"categories (ids {self.cat_ids[:10]}{'...' if len(self.cat_ids) > 10 else ''})"
            )

        self._images = {img["id"]: img for img in data["images"]}  # ids are unique (read_coco_json)
        self._num_crowd = 0
        self._crowd_anns: dict[int, list[dict]] = {}
        self._records: dict[int, list[dict]] = {}
        for ann in data["annotations"]:
            rec = self._check_annotation(ann)
            if rec is not None:
                self._records.setdefault(rec["image_id"], []).append(rec)

        # the ground truth COCOeval reads: the file, less what pycocotools cannot rasterise
        data["annotations"] = sanitize_ground_truth(data["annotations"], self._fname)
        self.coco = COCO()
        self.coco.dataset = data
        with stdout_to_log():
            self.coco.createIndex()

        all_ids = [int(img["id"]) for img in data["images"]]
        self.img_ids: list[int] = []
        for img_id in all_ids:
            info = self.coco.imgs[img_id]
            if filter_empty_gt and not self._records.get(img_id):
                continue
            if min(int(info["width"]), int(info["height"])) < min_size:
                continue
            self.img_ids.append(img_id)
        self._check_images(bad_images)
        if self.report.problems:
            summary = ", ".join(f"{k}: {v}" for k, v in sorted(self.report.problems.items()))
            logger.warning("%s: annotation problems (annotations skipped or repaired): %s", self._fname, summary)
        logger.info(
            "%s: %d images (%d in file), %d training instances, %d crowd annotations excluded (data.crowd=%s: "
            "%d ignore regions), %d categories",
            self._fname,
            len(self.img_ids),
            len(all_ids),
            self.num_instances(),
            self._num_crowd,
            crowd,
            self.num_ignore_boxes(),
            len(self.cat_ids),
        )

    # -------------------------------------------------------------------------------- validation
    def _ctx(self, img_id: Any, ann_id: Any = None) -> str:
        info = self._images.get(img_id, {})
        fn = info.get("file_name", "?")
        s = f"{self._fname}: image id {img_id} ({fn})"
        if ann_id is not None:
            s += f", annotation id {ann_id}"
        return s

    def _ann_ids_of(self, img_id: int, limit: int = 10) -> str:
        ids = [a["id"] for a in self.coco.imgToAnns.get(img_id, [])]
        more = f" ... ({len(ids)} total)" if len(ids) > limit else ""
        return f"{ids[:limit]}{more}"

    def _check_annotation(self, ann: dict) -> Optional[dict]:
        img_id = ann["image_id"]
        if img_id not in self._images:
            raise DataError(f"{self._fname}: annotation id {ann['id']} refers to image id {img_id!r}, "
                            "which is not in the file's images")
        ctx = self._ctx(img_id, ann["id"])
        if is_crowd(ann):
            if ann.get("category_id") not in self.cat_id_to_label:
                raise DataError(f"{ctx}: unknown category_id {ann.get('category_id')!r} "
                                f"(categories of the file: {self.cat_ids})")
            self._num_crowd += 1
            self._crowd_anns.setdefault(img_id, []).append(ann)
            if self.crowd == "ignore":
                box = self._crowd_box(ann, ctx)
                if box is not None:
                    self._ignore_boxes.setdefault(img_id, []).append(box)
            return None
        return check_annotation(ann, self._images[img_id], self.cat_id_to_label, ctx, self.report)

    def _crowd_box(self, ann: dict, ctx: str) -> Optional[list[float]]:
        """xyxy box of a crowd / ignore annotation, clipped to the image (None: skipped, warned)."""
        info = self._images[ann["image_id"]]
        box = crowd_box(ann, int(info["height"]), int(info["width"]), ctx)
        if box is None:
            self.report.warn("crowd box under 1 px or outside the image",
                             f"{ctx}: crowd box {ann.get('bbox')} is under 1 px or outside the image; no ignore region")
        return box

    def crowd_annotations(self, img_id: int) -> list[dict]:
        """The crowd / ignore annotations of an image as the file has them (any ``data.crowd``)."""
        return self._crowd_anns.get(img_id, [])

    def _describe(self, p: ImageProblem) -> str:
        return f"image id {p.image_id} ({p.path}): {p.detail} (annotation ids {self._ann_ids_of(p.image_id)})"

    def _check_images(self, bad_images: str) -> None:
        """Header read of every image in use; bad ones raise, or are left out with ``bad_images='skip'``."""
        if self.img_ids and not self.image_dir.is_dir():
            raise ImageNotFoundError(f"{self._fname}: image folder not found: {self.image_dir}")
        t0 = time.perf_counter()
        items = [(i, self.image_path(i), int(self.coco.imgs[i]["width"]), int(self.coco.imgs[i]["height"]))
                 for i in self.img_ids]
        problems = scan_images(items)
        logger.debug("%s: header read of %d images in %.2f s", self._fname, len(items), time.perf_counter() - t0)
        if not problems:
            return
        for p in problems:
            logger.log(logging.WARNING if bad_images == "skip" else logging.ERROR, "%s: %s", self._fname,
                       self._describe(p))
        kinds = ", ".join(f"{k}: {v}" for k, v in sorted(Counter(p.kind for p in problems).items()))
        if bad_images == "skip":
            bad = {p.image_id for p in problems}
            self.img_ids = [i for i in self.img_ids if i not in bad]
            for p in problems:
                self.report.skipped_images.append({"image_id": p.image_id, "file": p.path, "problem": p.kind})
                self.report.count(f"image skipped ({p.kind})")
            logger.warning("%s: %d images left out (bad_images=skip; %s)", self._fname, len(bad), kinds)
            return
        cls = ImageNotFoundError if all(p.kind == "missing" for p in problems) else DataError
        hint = ""
        if len(problems) == len(items) and all(p.kind == "missing" for p in problems):
            hint = f" (none of the {len(items)} images is in {self.image_dir}: is it the right folder?)"
        raise cls(
            f"{self.ann_file}: {len(problems)} of {len(items)} images cannot be used ({kinds}){hint}: "
            + format_problems(problems, self._describe)
            + ". Fix or remove them (or their entries in the JSON), or leave them out: data.bad_images=skip (train), "
            "--bad-images skip (evaluate)"
        )

    @property
    def num_crowd(self) -> int:
        """Crowd / ignore annotations of the file (ignore regions for COCOeval, not training instances)."""
        return self._num_crowd

    def num_ignore_boxes(self) -> int:
        """Ignore regions the training targets carry over the images in use (0 with ``crowd='drop'``)."""
        return sum(len(self._ignore_boxes.get(i, [])) for i in self.img_ids)

    def num_instances(self) -> int:
        """Training instances (non-crowd, not skipped) over the images in use."""
        return sum(len(self._records.get(i, [])) for i in self.img_ids)

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
            raise ImageNotFoundError(f"{self._ctx(img_id)}: {exc} (annotation ids {self._ann_ids_of(img_id)})") from exc
        except ValueError as exc:
            raise DataError(f"{self._ctx(img_id)}: {exc} (annotation ids {self._ann_ids_of(img_id)})") from exc
        h, w = arr.shape[:2]
        if (h, w) != (int(info["height"]), int(info["width"])):
            hint = ""
            if (w, h) == (int(info["height"]), int(info["width"])):
                hint = " (width and height are swapped: the json may refer to the image before EXIF orientation)"
            raise DataError(
                f"{self._ctx(img_id)}: image is {w}x{h} (w x h, after EXIF orientation) but the json says "
                f"{info['width']}x{info['height']}{hint} (annotation ids {self._ann_ids_of(img_id)})"
            )
        return arr

    def instance_boxes(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(boxes (N, 4) float32 xyxy at the original size, labels (N,) int64) of index ``i``: the
        training instances (non-crowd, not skipped, boxes clipped to the image), without reading the
        image or decoding a mask (the anchor fit and ``inspect`` read every box of a data set)."""
        recs = self._records.get(self.img_ids[i], [])
        boxes = torch.tensor([r["box"] for r in recs], dtype=torch.float32).reshape(-1, 4)
        return boxes, torch.tensor([r["label"] for r in recs], dtype=torch.int64)

    def get_raw_target(self, i: int) -> dict:
        """Target of index ``i`` at the original size, before any transform (dense uint8 masks)."""
        return self._raw_target(i, lazy=False)

    def _raw_target(self, i: int, lazy: bool) -> dict:
        """:meth:`get_raw_target`, the masks as :class:`LazyMasks` when ``lazy``."""
        img_id = self.img_ids[i]
        info = self.coco.imgs[img_id]
        h, w = int(info["height"]), int(info["width"])
        recs = self._records.get(img_id, [])
        n = len(recs)
        if n:
            rles = [segm_to_rle(r["segm"], h, w) for r in recs]
            if lazy:  # each mask decoded inside its box only
                masks = LazyMasks.from_rles(rles, h, w)
            else:
                with warnings.catch_warnings():  # pycocotools vs numpy 2 "copy keyword" deprecation
                    warnings.simplefilter("ignore", DeprecationWarning)
                    decoded = mask_utils.decode(rles)
                masks = torch.from_numpy(np.ascontiguousarray(np.transpose(decoded, (2, 0, 1))).astype(np.uint8, copy=False))
            boxes = torch.tensor([r["box"] for r in recs], dtype=torch.float32)
        else:
            masks = torch.zeros((0, h, w), dtype=torch.uint8)
            if lazy:
                masks = LazyMasks.from_dense(masks)
            boxes = torch.zeros((0, 4), dtype=torch.float32)
        target = {
            "boxes": boxes,
            "labels": torch.tensor([r["label"] for r in recs], dtype=torch.int64),
            "masks": masks,
            "image_id": int(img_id),
            "orig_size": (h, w),
            "img_size": (h, w),
            "scale_factor": (1.0, 1.0),
        }
        if self.crowd == "ignore":
            target["ignore_boxes"] = torch.tensor(self._ignore_boxes.get(img_id, []), dtype=torch.float32).reshape(-1, 4)
        return target

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict]:
        tf = self.transforms
        lazy = tf is None or bool(getattr(tf, "supports_lazy_masks", lambda: False)())
        arr = self.load_image(i)
        target = self._raw_target(i, lazy=lazy)
        # (3, H, W) view of the (H, W, 3) array: torch's uint8 bilinear resize works in that channels-last layout
        # (a (3, H, W)-contiguous copy is converted back to it); the returned image is made contiguous below
        image = torch.from_numpy(arr).permute(2, 0, 1)
        if tf is not None:
            image, target = tf(image, target)
        image = image.as_subclass(torch.Tensor)
        if self.image_dtype == "uint8":
            if image.dtype != torch.uint8:
                raise TypeError(f"image_dtype='uint8' needs transforms that keep uint8 images, got {image.dtype}")
            image = output_tensor(tuple(image.shape), torch.uint8).copy_(image)
        elif image.dtype == torch.uint8:  # to_float_image's arithmetic, written straight into (3, H, W) order
            image = output_tensor(tuple(image.shape), torch.float32).copy_(image).div_(255.0)
        else:
            image = to_float_image(image).contiguous()
        masks = target.get("masks")
        if isinstance(masks, LazyMasks):
            target["masks"] = masks.dense(out=output_tensor(masks.shape, torch.uint8))
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
