"""Crowd regions: ``data.crowd=drop`` vs ``data.crowd=ignore`` (with both ``ignore_iof_thr`` at 0.5) on
synthetic shapes where some objects are labelled as ONE crowd region, same data, seed and steps.

Data: the demo's generator (:mod:`swin_maskrcnn.data.synthetic`, ``configs/demo.yaml``'s shapes) renders
the train / val splits; then in every image that holds the crowd class (default ``star``), with
probability ``--crowd-fraction``, ALL objects of that class are replaced by one ``iscrowd=1`` annotation
(segmentation: the RLE of their union; bbox: its box), as COCO's crowds look. The val split gets the
same treatment (its own random stream); COCOeval ignores detections matched to crowds.

Training: ``configs/demo.yaml`` (the ``swin-maskrcnn demo`` recipe) with ``--steps`` steps, once per mode
(``drop``: the crowd area is taught as background; ``ignore``: the crowd boxes become ``ignore_boxes``,
``model.rpn.ignore_iof_thr=0.5 model.roi.ignore_iof_thr=0.5``). Reported on the whole val split:
box / mask AP (COCOeval), the detections (any class / the crowd class) with score >= ``--score``
whose box lies inside a val crowd region (IoF > 0.5, intersection over the detection's area), and
the box recall (IoU >= 0.5, score >= ``--score``, same class) of the NON-crowd objects of the crowd
class and of the other classes. Checkpoints are deleted after evaluation.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/crowd_regions.py --out /work/bench_out/h28/crowd \
        --modes drop ignore --seeds 0
    python benchmarks/crowd_regions.py --out /work/bench_out/h28/crowd --table   # the markdown table
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

log = logging.getLogger("crowd_regions")

MODE_OVERRIDES = {
    "drop": ["data.crowd=drop"],
    "ignore": ["data.crowd=ignore", "model.rpn.ignore_iof_thr=0.5", "model.roi.ignore_iof_thr=0.5"],
}


def make_crowds(ann_file: Path, crowd_cat: int, fraction: float, seed: int) -> dict[str, int]:
    """Rewrite ``ann_file``: in each image holding ``crowd_cat``, with probability ``fraction``, its objects of
    that class become one iscrowd=1 annotation (union mask as RLE). Returns counts."""
    from pycocotools import mask as mask_utils

    from swin_maskrcnn.data.validation import segm_to_rle

    data = json.loads(ann_file.read_text())
    imgs = {im["id"]: im for im in data["images"]}
    by_img: dict[int, list[dict]] = {}
    for a in data["annotations"]:
        by_img.setdefault(a["image_id"], []).append(a)
    rng = np.random.default_rng(seed)
    out, crowds, replaced = [], 0, 0
    next_id = max((a["id"] for a in data["annotations"]), default=0) + 1
    for img_id in sorted(by_img):
        anns = by_img[img_id]
        group = [a for a in anns if a["category_id"] == crowd_cat]
        if not group or rng.random() >= fraction:
            out.extend(anns)
            continue
        im = imgs[img_id]
        h, w = int(im["height"]), int(im["width"])
        union = np.zeros((h, w), dtype=np.uint8)
        for a in group:
            union |= mask_utils.decode(segm_to_rle(a["segmentation"], h, w)).astype(np.uint8)
        rle = mask_utils.encode(np.asfortranarray(union))
        bbox = [float(v) for v in mask_utils.toBbox(rle)]
        rle = {"size": [h, w], "counts": rle["counts"].decode("ascii")}
        out.extend(a for a in anns if a["category_id"] != crowd_cat)
        out.append({"id": next_id, "image_id": img_id, "category_id": crowd_cat, "iscrowd": 1, "bbox": bbox,
                    "area": float(union.sum()), "segmentation": rle})
        next_id += 1
        crowds += 1
        replaced += len(group)
    data["annotations"] = out
    ann_file.write_text(json.dumps(data))
    return {"crowd_regions": crowds, "objects_in_crowds": replaced,
            "crowd_class_objects_left": sum(1 for a in out if a["category_id"] == crowd_cat and not a["iscrowd"])}


def prepare(out: Path, n_train: int, n_val: int, crowd_name: str, fraction: float, data_seed: int) -> dict[str, Any]:
    from swin_maskrcnn.data.synthetic import CLASS_NAMES, ShapeParams, generate_dataset

    data_dir = out / "data"
    done = data_dir / "crowds.json"
    if done.exists():
        return json.loads(done.read_text())
    shutil.rmtree(data_dir, ignore_errors=True)
    generate_dataset(data_dir, {"train": n_train, "val": n_val}, image_size=128, seed=data_seed,
                     params=ShapeParams(max_rotation=20.0))
    cat = CLASS_NAMES.index(crowd_name) + 1
    info: dict[str, Any] = {"crowd_class": crowd_name, "crowd_category_id": cat, "fraction": fraction,
                            "num_train_images": n_train, "num_val_images": n_val, "data_seed": data_seed}
    for k, split in enumerate(("train", "val")):
        info[split] = make_crowds(data_dir / "annotations" / f"{split}.json", cat, fraction, data_seed * 10 + k + 1)
    info.update(train_ann=str(data_dir / "annotations" / "train.json"), train_images=str(data_dir / "images" / "train"),
                val_ann=str(data_dir / "annotations" / "val.json"), val_images=str(data_dir / "images" / "val"))
    done.write_text(json.dumps(info, indent=1))
    return info


def crowd_stats(val_ds: Any, results: list[dict], crowd_cat: int, score: float) -> dict[str, Any]:
    """Detections inside val crowd regions (IoF > 0.5) and the recall of the non-crowd objects."""
    import torch
    from torchvision.ops import box_iou

    from swin_maskrcnn.modeling.assigner import box_iof

    def xyxy(b: Sequence[float]) -> list[float]:
        return [b[0], b[1], b[0] + b[2], b[1] + b[3]]

    dets: dict[int, list[dict]] = {}
    for r in results:
        if r["score"] >= score:
            dets.setdefault(r["image_id"], []).append(r)
    inside_any = inside_cls = 0
    found = {"crowd_class": [0, 0], "other_classes": [0, 0]}
    for img_id in val_ds.img_ids:
        anns = val_ds.coco.imgToAnns.get(img_id, [])
        d = dets.get(img_id, [])
        crowd = [xyxy(a["bbox"]) for a in anns if a.get("iscrowd")]
        if crowd and d:
            iof = box_iof(torch.tensor([xyxy(r["bbox"]) for r in d]), torch.tensor(crowd))
            hit = (iof > 0.5).any(1)
            inside_any += int(hit.sum())
            inside_cls += int(sum(bool(h) and r["category_id"] == crowd_cat for h, r in zip(hit, d)))
        for a in anns:
            if a.get("iscrowd"):
                continue
            key = "crowd_class" if a["category_id"] == crowd_cat else "other_classes"
            found[key][1] += 1
            same = [xyxy(r["bbox"]) for r in d if r["category_id"] == a["category_id"]]
            if same and float(box_iou(torch.tensor([xyxy(a["bbox"])]), torch.tensor(same)).max()) >= 0.5:
                found[key][0] += 1
    return {"dets_inside_crowds": inside_any, "crowd_class_dets_inside_crowds": inside_cls,
            "recall_crowd_class": found["crowd_class"][0] / max(found["crowd_class"][1], 1),
            "recall_other_classes": found["other_classes"][0] / max(found["other_classes"][1], 1),
            "objects": {k: v[1] for k, v in found.items()}}


def run_one(out: Path, info: dict[str, Any], mode: str, seed: int, steps: int, score: float) -> dict[str, Any]:
    from swin_maskrcnn.apps.demo import _finish_recipe, _load_recipe, default_config_path, evaluate_demo, train_demo

    path = default_config_path()
    raw, demo = _load_recipe(path)
    demo["val_points"] = 1
    run_out = out / f"{mode}_seed{seed}_steps{steps}"
    cfg = _finish_recipe(raw, demo, str(path), run_out, info, seed, steps, False, MODE_OVERRIDES[mode])
    summary, train_s = train_demo(cfg, run_out)
    ev = evaluate_demo(summary, cfg, info)
    stats = crowd_stats(ev["val_ds"], ev["results"], int(info["crowd_category_id"]), score)
    row = {"mode": mode, "seed": seed, "steps": steps, "box_ap": ev["box_ap"], "mask_ap": ev["mask_ap"],
           "train_s": round(train_s, 1), "score_thr": score, "overrides": MODE_OVERRIDES[mode], **stats}
    for ck in Path(summary["run_dir"]).rglob("*.pt"):
        ck.unlink()
    for ck in Path(summary["run_dir"]).rglob("*.ckpt"):
        ck.unlink()
    (out / f"result_{mode}_seed{seed}_steps{steps}.json").write_text(json.dumps(row, indent=1))
    log.info("%s", row)
    return row


def table(out: Path) -> str:
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("result_*.json"))]
    info = json.loads((out / "data" / "crowds.json").read_text())
    lines = [f"crowd class `{info['crowd_class']}`; train: {info['train']['crowd_regions']} crowd regions "
             f"({info['train']['objects_in_crowds']} objects), {info['train']['crowd_class_objects_left']} "
             f"{info['crowd_class']} objects left as instances; val: {info['val']['crowd_regions']} crowd regions, "
             f"{rows[0]['objects']['crowd_class'] if rows else '?'} non-crowd {info['crowd_class']} objects", "",
             "| data.crowd | seed | steps | box AP | mask AP | dets in crowds (all / crowd class) | "
             "recall crowd class | recall other classes | train s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["steps"], r["seed"], r["mode"])):
        lines.append(f"| {r['mode']} | {r['seed']} | {r['steps']} | {r['box_ap']:.3f} | {r['mask_ap']:.3f} | "
                     f"{r['dets_inside_crowds']} / {r['crowd_class_dets_inside_crowds']} | "
                     f"{r['recall_crowd_class']:.3f} | {r['recall_other_classes']:.3f} | {r['train_s']:.0f} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="output folder (outside the repository)")
    ap.add_argument("--modes", nargs="+", choices=sorted(MODE_OVERRIDES), default=["drop", "ignore"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--train-images", type=int, default=360)
    ap.add_argument("--val-images", type=int, default=150)
    ap.add_argument("--crowd-class", default="star")
    ap.add_argument("--crowd-fraction", type=float, default=0.5,
                    help="probability that an image holding the crowd class gets its objects of that class as one crowd")
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--score", type=float, default=0.3, help="score threshold of the counted detections")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-only", action="store_true")
    ap.add_argument("--table", action="store_true", help="print the markdown table of the results in --out")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.table:
        print(table(args.out))
        return 0
    import torch

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    info = prepare(args.out, args.train_images, args.val_images, args.crowd_class, args.crowd_fraction, args.data_seed)
    log.info("data: %s (%.0f s)", {k: info[k] for k in ("train", "val")}, time.time() - t0)
    if args.data_only:
        return 0
    for seed in args.seeds:
        for mode in args.modes:
            run_one(args.out, info, mode, seed, args.steps, args.score)
    print(table(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
