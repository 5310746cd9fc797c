"""Overfit a handful of REAL coco128_seg photos: train and evaluate (COCOeval) on the same images.

    python benchmarks/overfit_coco128.py                       # 4 images at (384, 256), target mask AP50 >= 0.9
    python benchmarks/overfit_coco128.py --images 2 --scale 320 192 --budget-cpu 150

A detector whose targets, losses or box/mask decoding are wrong cannot memorise a few images; unit
tests that compare against hand-computed values miss such bugs when both sides share a wrong
assumption. ``tests/training/test_overfit_coco128.py`` runs the fast variant (2 images) by default.

Image choice (deterministic): train images sorted by id, keeping those with 1..``--max-objects``
instances whose every instance has an area >= ``--min-area`` px (at the original size); the first
``--images`` of them. The model is the tiny Swin (``tiny_model_config``, embed 32, one block per
stage) with all 80 COCO classes; images are resized (keep ratio) to ``--scale`` once, no
augmentation; every step is one batch of all chosen images (AdamW lr 1e-3). Evaluation every
``--eval-every`` steps on the same images at their original size; training stops as soon as bbox
and segm AP50 both reach ``--target`` or the process-CPU budget runs out.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import BENCH_OUT, DATA, CpuClock  # noqa: E402

COCO128 = DATA / "coco128_seg"


def choose_images(ds, n: int, max_objects: int, min_area: float) -> list[int]:
    chosen = []
    for i, img_id in enumerate(ds.img_ids):
        anns = ds.coco.imgToAnns.get(img_id, [])
        if 1 <= len(anns) <= max_objects and all(a["area"] >= min_area for a in anns):
            chosen.append(i)
        if len(chosen) == n:
            break
    if len(chosen) < n:
        raise ValueError(f"only {len(chosen)} images match (1..{max_objects} objects, area >= {min_area})")
    return chosen


def run_overfit(
    n_images: int = 4,
    scale: tuple[int, int] = (384, 256),
    budget_cpu_s: float = 400.0,
    target: float = 0.9,
    eval_every: int = 10,
    eval_start: int = 30,
    max_objects: int = 4,
    min_area: float = 48.0 ** 2,
    lr: float = 1e-3,
    seed: int = 0,
    ann: Path = COCO128 / "annotations" / "train.json",
    images: Path = COCO128 / "images",
    verbose: bool = True,
) -> dict[str, Any]:
    from swin_maskrcnn import SwinMaskRCNN, tiny_model_config
    from swin_maskrcnn.data.coco import CocoInstanceDataset
    from swin_maskrcnn.data.transforms import build_test_transforms
    from swin_maskrcnn.evaluation import evaluate_coco, predictions_to_coco_results

    clock = CpuClock()
    ds = CocoInstanceDataset(ann, images, transforms=build_test_transforms(tuple(scale)))
    idx = choose_images(ds, n_images, max_objects, min_area)
    items = [ds[i] for i in idx]
    imgs = [im for im, _ in items]
    targets = [t for _, t in items]
    ids = [int(t["image_id"]) for t in targets]
    sizes = [tuple(int(v) for v in t["orig_size"]) for t in targets]
    torch.manual_seed(seed)
    model = SwinMaskRCNN(tiny_model_config(num_classes=len(ds.cat_ids)))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    history: list[dict] = []
    best = {"bbox_AP50": 0.0, "segm_AP50": 0.0}
    step = 0
    reached = False
    last_metrics: Optional[dict] = None
    while clock.cpu < budget_cpu_s:
        model.train()
        torch.manual_seed(seed * 1_000_003 + step)
        losses = model(imgs, targets)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step >= eval_start and step % eval_every == 0:
            model.eval()
            with torch.no_grad():
                preds = model(imgs, original_sizes=sizes)
            results = predictions_to_coco_results(preds, ids, ds.label_to_cat_id)
            m = evaluate_coco(ds.coco, results, max_dets=(1, 100, 400), img_ids=ids)
            last_metrics = common.short_metrics(m)
            row = {"step": step, "loss": float(loss.detach()), "cpu_s": round(clock.cpu, 1),
                   "bbox_AP50": m["bbox"]["AP50"], "segm_AP50": m["segm"]["AP50"],
                   "segm_AP": m["segm"]["AP"], "preds>=0.5": sum(int((p["scores"] >= 0.5).sum()) for p in preds)}
            history.append(row)
            if verbose:
                print(row, flush=True)
            if row["bbox_AP50"] >= target and row["segm_AP50"] >= target:
                best = {"bbox_AP50": row["bbox_AP50"], "segm_AP50": row["segm_AP50"]}
                reached = True
                break
            best = {k: max(best[k], row[k]) for k in best}
    return {
        "images": [ds.coco.imgs[i]["file_name"] for i in ids],
        "num_instances": sum(len(t["labels"]) for t in targets),
        "scale": list(scale),
        "steps": step,
        "cpu_s": clock.cpu,
        "wall_s": clock.wall,
        "reached": reached,
        "target": target,
        "best": best,
        "final_metrics": last_metrics,
        "history": history,
    }


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--scale", type=int, nargs=2, default=[384, 256], metavar=("LONG", "SHORT"))
    ap.add_argument("--budget-cpu", type=float, default=400.0, help="process CPU seconds")
    ap.add_argument("--target", type=float, default=0.9)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--max-objects", type=int, default=4)
    ap.add_argument("--min-area", type=float, default=48.0 ** 2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(BENCH_OUT / "overfit_coco128"))
    args = ap.parse_args(argv)
    common.set_threads(args.threads)
    load0 = common.load_avg()
    res = run_overfit(args.images, tuple(args.scale), args.budget_cpu, args.target, args.eval_every,
                      max_objects=args.max_objects, min_area=args.min_area)
    res.update(command=" ".join([Path(sys.executable).name] + sys.argv), hardware=common.hardware_line(),
               threads=args.threads, load_start=load0, load_end=common.load_avg(),
               finished=time.strftime("%Y-%m-%d %H:%M:%S"))
    out = Path(args.out)
    common.write_json(res, out / "summary.json")
    print(f"{'REACHED' if res['reached'] else 'NOT reached'}: target AP50 {args.target} on {len(res['images'])} images "
          f"({res['num_instances']} instances) at {res['scale']}; best {res['best']} after {res['steps']} steps, "
          f"{res['cpu_s']:.0f} CPU-s, {res['wall_s']:.0f} wall-s; load {load0} -> {res['load_end']}")
    return res


if __name__ == "__main__":
    main()
