"""Hand-made ground truth and results with exactly one planted error of each TIDE type.

Image 1 (200 x 200), boxes xywh; A, B, C = categories 1, 2, 3 (3-class variant):

  g1 A [10,10,40,40]   d1 A .90 exact            -> TP
                       d2 A .80 [14,10,40,40]    -> dupe (IoU 0.818 with g1, already matched)
  g2 B [100,10,40,40]  d3 A .70 exact on g2      -> cls
  g3 A [10,100,40,40]  d4 A .60 [30,100,40,40]   -> loc (IoU 1/3)
  g4 C [100,100,40,40] d7 C .95 exact            -> TP
                       d5 B .50 [120,100,40,40]  -> both (IoU 1/3 with g4, class C only)
  g5 A [150,60,30,30]  d9 A .30 exact            -> TP
  g6 C [150,150,40,40] (nothing)                 -> missed
  g7 B [60,60,30,30]   d10 B .20 exact           -> TP
                       d6 C .97 [60,150,30,30]   -> bkg (IoU 0 with every box)

Image 2 (100 x 100): one A box [20,20,30,30] detected exactly (.99). Masks are the boxes'
rectangles as RLEs, so mask IoU = box IoU. The 1-class variant maps every category to A and drops
g2, g7, d3, d5, d10 (cls / both are impossible with one class).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

GT = {  # id: (image, category, box)
    1: (1, 1, [10, 10, 40, 40]), 2: (1, 2, [100, 10, 40, 40]), 3: (1, 1, [10, 100, 40, 40]),
    4: (1, 3, [100, 100, 40, 40]), 5: (1, 1, [150, 60, 30, 30]), 6: (1, 3, [150, 150, 40, 40]),
    7: (1, 2, [60, 60, 30, 30]), 8: (2, 1, [20, 20, 30, 30]),
}
DETS = {  # name: (image, category, score, box)
    "d1": (1, 1, 0.90, [10, 10, 40, 40]), "d2": (1, 1, 0.80, [14, 10, 40, 40]),
    "d3": (1, 1, 0.70, [100, 10, 40, 40]), "d4": (1, 1, 0.60, [30, 100, 40, 40]),
    "d5": (1, 2, 0.50, [120, 100, 40, 40]), "d6": (1, 3, 0.97, [60, 150, 30, 30]),
    "d7": (1, 3, 0.95, [100, 100, 40, 40]), "d9": (1, 1, 0.30, [150, 60, 30, 30]),
    "d10": (1, 2, 0.20, [60, 60, 30, 30]), "e1": (2, 1, 0.99, [20, 20, 30, 30]),
}
SIZES = {1: (200, 200), 2: (100, 100)}
ONE_CLASS_DROP = {"gt": {2, 7}, "dets": {"d3", "d5", "d10"}}


def rle(box, image_id):
    h, w = SIZES[image_id]
    m = np.zeros((h, w), np.uint8)
    x, y, bw, bh = box
    m[y:y + bh, x:x + bw] = 1
    r = mask_utils.encode(np.asfortranarray(m))
    r["counts"] = r["counts"].decode("ascii")
    return r


def ground_truth(num_classes: int = 3) -> dict:
    names = ["A", "B", "C"][:num_classes]
    anns = []
    for aid, (img, cat, box) in GT.items():
        if num_classes == 1:
            if aid in ONE_CLASS_DROP["gt"]:
                continue
            cat = 1
        anns.append({"id": aid, "image_id": img, "category_id": cat, "bbox": box, "area": box[2] * box[3],
                     "iscrowd": 0, "segmentation": rle(box, img)})
    return {"images": [{"id": i, "file_name": f"{i:03d}.png", "height": h, "width": w} for i, (h, w) in SIZES.items()],
            "annotations": anns, "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)]}


def results(num_classes: int = 3) -> tuple[list[dict], list[str]]:
    """(results list, the detection names in the same order)."""
    out, names = [], []
    for name, (img, cat, score, box) in DETS.items():
        if num_classes == 1:
            if name in ONE_CLASS_DROP["dets"]:
                continue
            cat = 1
        out.append({"image_id": img, "category_id": cat, "score": score, "bbox": [float(v) for v in box],
                    "segmentation": rle(box, img)})
        names.append(name)
    return out, names


def perfect_results(num_classes: int = 3) -> list[dict]:
    gt = ground_truth(num_classes)
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 0.9, "bbox": list(map(float, a["bbox"])),
             "segmentation": a["segmentation"]} for a in gt["annotations"]]


def write(tmp: Path, num_classes: int = 3) -> tuple[Path, Path]:
    gt_path, res_path = tmp / f"gt{num_classes}.json", tmp / f"res{num_classes}.json"
    gt_path.write_text(json.dumps(ground_truth(num_classes)))
    res_path.write_text(json.dumps(results(num_classes)[0]))
    return gt_path, res_path
