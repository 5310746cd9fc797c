"""Validation time: COCOeval (bbox + segm) with pycocotools vs faster-coco-eval, and the RLE encoding
of pasted masks, on the nuclei benchmark's val split with dense detections.

    python benchmarks/eval_speed.py                       # nuclei val split, 400 detections / image
    python benchmarks/eval_speed.py --dets 100 --reps 3

The detections are synthetic but shaped like a dense model's: every ground-truth nucleus is found
(box and mask shifted by up to 2 px, so the IoUs spread over COCOeval's thresholds), the rest of
the ``--dets`` per image are false positives (shifted copies of other nuclei's masks at random
places), scores random. Both implementations get the same results list; the AP figures must be
equal (printed side by side). Each repetition runs pycocotools then faster-coco-eval (alternating
order per repetition), 1 thread; the figure is the median of process CPU time. The RLE encoding
(``evaluation.masks_to_rles`` of 400 boolean masks at the image size) and the mask paste
(``modeling.postprocess.paste_masks`` of 400 28x28 maps) are timed per image too.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np  # noqa: E402
import torch  # noqa: E402
from pycocotools import mask as mask_utils  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from swin_maskrcnn.evaluation import evaluate_coco, masks_to_rles  # noqa: E402
from swin_maskrcnn.io_utils import stdout_to_log  # noqa: E402
from swin_maskrcnn.modeling.postprocess import paste_masks  # noqa: E402

NUCLEI = REPO.parent / "shared" / "data" / "dsb2018_nuclei"
log = logging.getLogger("eval_speed")


def nuclei_val(path: Path) -> COCO:
    """The nuclei benchmark's val split (benchmarks/nuclei.py: images sorted by id, every 5th)."""
    data = json.loads(path.read_text())
    ids = sorted(im["id"] for im in data["images"])[::5]
    keep = set(ids)
    val = {"images": [im for im in data["images"] if im["id"] in keep], "categories": data["categories"],
           "annotations": [a for a in data["annotations"] if a["image_id"] in keep]}
    coco = COCO()
    coco.dataset = val
    with stdout_to_log(log):
        coco.createIndex()
    return coco


def synthetic_results(coco: COCO, dets: int, seed: int = 0) -> tuple[list[dict], float]:
    """Dense detections per image (see the module docstring); returns them and the CPU seconds
    their RLE encoding (masks_to_rles) took in total."""
    rng = np.random.default_rng(seed)
    results: list[dict] = []
    encode_s = 0.0
    for img_id in sorted(coco.getImgIds()):
        info = coco.imgs[img_id]
        h, w = info["height"], info["width"]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img_id], iscrowd=False))
        gt = [coco.annToMask(a).astype(bool) for a in anns]
        masks, scores = [], []
        for k in range(dets):
            src = gt[k % len(gt)] if gt else np.zeros((h, w), bool)
            if k < len(gt):
                dy, dx = rng.integers(-2, 3, size=2)
            else:
                dy, dx = rng.integers(-h // 2, h // 2), rng.integers(-w // 2, w // 2)
            masks.append(np.roll(src, (int(dy), int(dx)), axis=(0, 1)))
            scores.append(float(rng.random()) * (1.0 if k < len(gt) else 0.7))
        m = np.stack(masks)
        c = time.process_time()
        rles = masks_to_rles(m)
        encode_s += time.process_time() - c
        boxes = mask_utils.toBbox(rles)
        for rle, box, s in zip(rles, boxes, scores):
            results.append({"image_id": img_id, "category_id": coco.getCatIds()[0], "bbox": [float(v) for v in box],
                            "score": s, "segmentation": rle})
    return results, encode_s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ann", type=Path, default=NUCLEI / "annotations" / "train.json")
    ap.add_argument("--dets", type=int, default=400, help="detections per image")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--max-images", type=int, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    coco = nuclei_val(args.ann)
    if args.max_images:
        keep = set(sorted(coco.getImgIds())[: args.max_images])
        coco.dataset = {**coco.dataset, "images": [i for i in coco.dataset["images"] if i["id"] in keep],
                        "annotations": [a for a in coco.dataset["annotations"] if a["image_id"] in keep]}
        with stdout_to_log(log):
            coco.createIndex()
    n_img = len(coco.getImgIds())
    results, encode_s = synthetic_results(coco, args.dets)
    print(f"{n_img} val images, {len(coco.getAnnIds())} nuclei, {len(results)} detections ({args.dets}/image)")
    print(f"RLE encoding (masks_to_rles): {encode_s / n_img * 1000:.1f} CPU-ms per image of {args.dets} masks")

    # mask paste of dets 28x28 maps at a val image's size (boxes from the results)
    img0 = sorted(coco.getImgIds())[0]
    h, w = coco.imgs[img0]["height"], coco.imgs[img0]["width"]
    b = torch.tensor([r["bbox"] for r in results if r["image_id"] == img0], dtype=torch.float32)
    b[:, 2:] += b[:, :2]
    probs = torch.rand(len(b), 28, 28, generator=torch.Generator().manual_seed(0))
    paste = []
    for _ in range(args.reps):
        c = time.process_time()
        paste_masks(probs, b, h, w, 0.5)
        paste.append(time.process_time() - c)
    print(f"mask paste (paste_masks, {len(b)} masks at {h}x{w}): {statistics.median(paste) * 1000:.1f} CPU-ms per image")

    times: dict[str, list[float]] = {"pycocotools": [], "faster-coco-eval": []}
    metrics: dict[str, dict] = {}
    order = list(times)
    max_dets = (1, 100, args.dets)
    for rep in range(args.reps):
        for backend in (order if rep % 2 == 0 else order[::-1]):
            c, t = time.process_time(), time.perf_counter()
            metrics[backend] = evaluate_coco(coco, results, max_dets=max_dets, backend=backend)
            times[backend].append(time.process_time() - c)
            log.info("%s rep %d: %.2f CPU-s, %.2f wall-s", backend, rep, times[backend][-1], time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"COCOeval bbox+segm (maxDets {max_dets}), median of {args.reps} CPU-s: pycocotools "
          f"{med['pycocotools']:.2f}, faster-coco-eval {med['faster-coco-eval']:.2f}: "
          f"{med['pycocotools'] / med['faster-coco-eval']:.2f}x faster")
    for t in ("bbox", "segm"):
        a, f = metrics["pycocotools"][t], metrics["faster-coco-eval"][t]
        keys = [k for k in a if isinstance(a[k], float)]
        worst = max(abs(a[k] - f[k]) for k in keys)
        print(f"{t}: AP {a['AP']:.4f} vs {f['AP']:.4f}, AP50 {a['AP50']:.4f} vs {f['AP50']:.4f}, "
              f"AR@{args.dets} {a[f'AR@{args.dets}']:.4f} vs {f[f'AR@{args.dets}']:.4f}; largest difference over "
              f"{len(keys)} figures {worst:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
