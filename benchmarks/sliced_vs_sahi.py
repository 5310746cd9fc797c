"""Large-image benchmark: plain resized prediction, our sliced prediction (and with flip TTA), and
SAHI's sliced prediction, on mosaics of dsb2018_nuclei validation images, with one trained model.

    python benchmarks/sliced_vs_sahi.py --checkpoint CKPT [--sahi-python /work/bench-venvs/sahi/bin/python]

Mosaics: the 256x256 images of the nuclei validation split (bench_out/nuclei_split/val.json, never
trained on) in id order, ``--grid`` x ``--grid`` per canvas (1024 x 1024 for 4), their annotations
offset into the canvas (exact ground truth), written under bench_out/mosaics and deleted at the end
(``--keep`` keeps them). Each method runs in its own process (peak RSS = ``ru_maxrss``; 1 torch thread)
over all canvases: ``plain`` (``model.predict``: the canvas resized to the checkpoint's test scale),
``ours`` (``--slice T T --overlap 0.2 --slice-batch 4``, defaults nmm / IoS 0.5), ``ours_tta`` (the same
with ``--tta``), ``sahi`` (``sahi.predict.get_sliced_prediction`` with the same tiles and overlap, its
defaults GREEDYNMM / IOS / 0.5, ``perform_standard_pred=False`` as ours, our model wrapped as its
``DetectionModel``, confidence threshold = the model's score_thr). COCOeval bbox and segm, maxDets
[1, 100, 3000]. Prints one JSON line per method and a table.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench_out" / "mosaics"
METHODS = ("plain", "ours", "ours_tta", "sahi")


def make_mosaics(val_ann: Path, images: Path, grid: int, n_canvases: int, out: Path) -> Path:
    from PIL import Image
    from pycocotools import mask as mask_utils

    d = json.loads(val_ann.read_text())
    imgs = sorted((i for i in d["images"] if (i["width"], i["height"]) == (256, 256)), key=lambda i: i["id"])
    per = grid * grid
    n_canvases = min(n_canvases, len(imgs) // per)
    by_img: dict[int, list[dict]] = {}
    for a in d["annotations"]:
        by_img.setdefault(a["image_id"], []).append(a)
    out.mkdir(parents=True, exist_ok=True)
    images_out, anns_out = [], []
    aid = 1
    size = 256 * grid
    for c in range(n_canvases):
        canvas = np.zeros((size, size, 3), np.uint8)
        for k, info in enumerate(imgs[c * per : (c + 1) * per]):
            oy, ox = 256 * (k // grid), 256 * (k % grid)
            canvas[oy : oy + 256, ox : ox + 256] = np.asarray(Image.open(images / info["file_name"]).convert("RGB"))
            for a in by_img.get(info["id"], []):
                m = mask_utils.decode(a["segmentation"])
                full = np.zeros((size, size), np.uint8, order="F")
                full[oy : oy + 256, ox : ox + 256] = m
                rle = mask_utils.encode(full)
                rle["counts"] = rle["counts"].decode("ascii")
                x, y, w, h = a["bbox"]
                anns_out.append({"id": aid, "image_id": c + 1, "category_id": a["category_id"], "iscrowd": 0,
                                 "area": float(a["area"]), "bbox": [x + ox, y + oy, w, h], "segmentation": rle})
                aid += 1
        name = f"mosaic_{c:02d}.png"
        Image.fromarray(canvas).save(out / name)
        images_out.append({"id": c + 1, "file_name": name, "width": size, "height": size})
    ann = out / "mosaics.json"
    ann.write_text(json.dumps({"images": images_out, "annotations": anns_out, "categories": d["categories"]}))
    return ann


def run_method(method: str, checkpoint: str, ann: Path, tile: int, out_json: Path) -> dict:
    import torch

    torch.set_num_threads(1)
    from PIL import Image

    from swin_maskrcnn import load_model

    model = load_model(checkpoint)
    d = json.loads(ann.read_text())
    images = [(i["id"], np.asarray(Image.open(ann.parent / i["file_name"]).convert("RGB"))) for i in d["images"]]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results = []
    t = time.perf_counter()
    if method == "sahi":
        from sahi.models.torchvision import TorchVisionDetectionModel
        from sahi.predict import get_sliced_prediction

        class SwinMaskRCNNSahi(TorchVisionDetectionModel):
            """Our model as SAHI's DetectionModel: torchvision's output format (boxes, scores, labels, masks)."""

            def load_model(self):
                self.set_model(load_model(self.model_path))

            def set_model(self, model, **kwargs):
                self.model = model.eval()
                self.category_mapping = {str(i): n for i, n in enumerate(model.meta.class_names)}

            @property
            def has_mask(self):
                return True

            def perform_inference(self, image, image_size=None):
                from sahi.utils.cv import get_coco_segmentation_from_bool_mask

                (out,) = self.model.predict([image], resize=False)
                # SAHI refuses a mask whose polygon is empty ("Invalid segmentation mask."): drop those
                # detections (a handful of 1-3 px masks), as a SAHI user has to
                keep = [k for k, m in enumerate(out["masks"].numpy()) if get_coco_segmentation_from_bool_mask(m)]
                self.dropped = getattr(self, "dropped", 0) + len(out["scores"]) - len(keep)
                self._original_predictions = [{k: v[keep] for k, v in out.items()}]

        det = SwinMaskRCNNSahi(model=model, confidence_threshold=float(model.cfg.roi.score_thr) - 1e-9,
                               mask_threshold=0.5, device="cpu")
        for img_id, im in images:
            res = get_sliced_prediction(im, det, slice_height=tile, slice_width=tile, overlap_height_ratio=0.2,
                                        overlap_width_ratio=0.2, perform_standard_pred=False, verbose=0)
            for r in res.to_coco_predictions(image_id=img_id):
                r["category_id"] = int(model.meta.category_ids()[int(r["category_id"])])
                results.append(r)
        extra = {"sahi_dropped_empty_polygons": det.dropped}
    else:
        extra = {}
        from swin_maskrcnn.apps.predict import Predictor, to_coco_results
        from swin_maskrcnn.inference import SliceConfig, TTAConfig

        slicing = None if method == "plain" else SliceConfig(tile, tile, overlap=0.2, batch=4)
        tta = TTAConfig(hflip=True) if method == "ours_tta" else None
        p = Predictor(model, device="cpu", slicing=slicing, tta=tta)
        for img_id, im in images:
            (r,) = p.predict([im])
            results += [{"image_id": img_id, **e} for e in to_coco_results(r)]
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out_json.write_text(json.dumps(results, default=float))
    return {"method": method, "seconds": round(seconds, 1), "peak_rss_mb": round(peak, 1),
            "rss_increase_mb": round(peak - base, 1), "detections": len(results), **extra}


def score(ann: Path, results: Path) -> dict:
    from swin_maskrcnn.evaluation import evaluate_coco
    from pycocotools.coco import COCO

    gt = COCO(str(ann))
    res = json.loads(results.read_text())
    m = evaluate_coco(gt, res, max_dets=(1, 100, 3000))
    return {t: {k: round(m[t][k], 4) for k in ("AP", "AP50", "AP75", "APs", "APm")} for t in ("bbox", "segm")}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--val-ann", default=str(REPO / "bench_out" / "nuclei_split" / "val.json"))
    ap.add_argument("--images", default="/work/shared/data/dsb2018_nuclei/images")
    ap.add_argument("--grid", type=int, default=4)
    ap.add_argument("--canvases", type=int, default=3)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--sahi-python", default="/work/bench-venvs/sahi/bin/python")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--_run", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_ann", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._run:  # a child process: one method
        print(json.dumps(run_method(args._run, args.checkpoint, Path(args._ann), args.tile,
                                    OUT / f"{args._run}.json")))
        return
    ann = make_mosaics(Path(args.val_ann), Path(args.images), args.grid, args.canvases, OUT)
    n_gt = len(json.loads(ann.read_text())["annotations"])
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    try:
        for method in args.methods.split(","):
            py = args.sahi_python if method == "sahi" else sys.executable
            out = subprocess.run([py, __file__, "--checkpoint", args.checkpoint, "--tile", str(args.tile),
                                  "--_run", method, "--_ann", str(ann)], capture_output=True, text=True, env=env)
            if out.returncode != 0:
                print(out.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"{method} failed")
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row.update(score(ann, OUT / f"{method}.json"))
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        if not args.keep:
            shutil.rmtree(OUT, ignore_errors=True)
    print(f"\n{args.canvases} canvases of {256 * args.grid}x{256 * args.grid}, {n_gt} nuclei, tiles {args.tile}, overlap 0.2")
    print("| method | segm AP | AP50 | bbox AP | time s | peak RSS MB | detections |")
    for r in rows:
        print(f"| {r['method']} | {r['segm']['AP']:.3f} | {r['segm']['AP50']:.3f} | {r['bbox']['AP']:.3f} | "
              f"{r['seconds']} | {r['peak_rss_mb']} | {r['detections']} |")


if __name__ == "__main__":
    main()
