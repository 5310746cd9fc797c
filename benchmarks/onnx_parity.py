"""ONNX export of a full model: onnxruntime vs PyTorch ``predict(resize=False)`` on real photos.

Exports the checkpoint with ``export_onnx``, runs every image through onnxruntime
(``OnnxPredictor``: the graph plus the numpy mask paste) and through ``model.predict([image],
resize=False)``, and reports per image: detection counts, whether the labels are equal, the largest
box difference relative to max(|coordinate|, 1), the largest score difference and the smallest
pasted-mask IoU. Then it times both on the first image with one thread each (torch intra-op and
inter-op threads 1, onnxruntime intra-op 1), alternating run by run after one warm-up each, and
prints the median wall and process-CPU seconds. Exit status 1 if a parity check fails (the issue's
bar: same labels, boxes within 1e-3 relative, scores within 1e-4, mask IoU >= 0.99).

    python benchmarks/onnx_parity.py --checkpoint CKPT [--images IMG ...] [--reps 5] [--opset 17]
        [--out bench_out/onnx_parity]

CKPT is anything ``load_model`` reads (an mmdet ``.pth`` such as the seeded Swin-T that
``../shared/tools/mmdet_reference/make_fixture.py --model swin_t`` writes, or our own file).
Default images: two coco128 photos of different sizes from ../shared/data/coco128_seg/images.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common import DATA, REPO, hardware_line, load_avg, set_threads, write_json

from swin_maskrcnn import load_model  # noqa: E402
from swin_maskrcnn.apps.onnx_export import export_onnx  # noqa: E402
from swin_maskrcnn.apps.onnx_runtime import OnnxPredictor  # noqa: E402

DEFAULT_IMAGES = [DATA / "coco128_seg" / "images" / n for n in ("000000000009.jpg", "000000000025.jpg")]
BOX_RTOL, SCORE_ATOL, MIN_MASK_IOU = 1e-3, 1e-4, 0.99


def compare(ref: dict, out: dict) -> dict:
    """Parity figures of one image (ONNX ``out`` vs PyTorch ``ref``)."""
    n_ref, n_onnx = int(ref["boxes"].shape[0]), int(out["boxes"].shape[0])
    row = {"detections_torch": n_ref, "detections_onnx": n_onnx}
    if n_ref != n_onnx:
        return {**row, "ok": False}
    rb = ref["boxes"].numpy()
    row["labels_equal"] = bool(np.array_equal(ref["labels"].numpy(), out["labels"]))
    row["box_max_rel_diff"] = float((np.abs(out["boxes"] - rb) / np.maximum(np.abs(rb), 1.0)).max(initial=0.0))
    row["score_max_abs_diff"] = float(np.abs(out["scores"] - ref["scores"].numpy()).max(initial=0.0))
    a, b = out["masks"], ref["masks"].numpy()
    inter, union = (a & b).sum(axis=(1, 2)), (a | b).sum(axis=(1, 2))
    row["mask_iou_min"] = float(np.where(union > 0, inter / np.maximum(union, 1), 1.0).min(initial=1.0))
    row["mask_pixels_differing"] = int((a != b).sum())
    row["ok"] = (
        row["labels_equal"] and row["box_max_rel_diff"] <= BOX_RTOL and row["score_max_abs_diff"] <= SCORE_ATOL
        and row["mask_iou_min"] >= MIN_MASK_IOU
    )
    return row


def timed(fn) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="any checkpoint load_model reads")
    ap.add_argument("--images", nargs="+", type=Path, default=DEFAULT_IMAGES)
    ap.add_argument("--reps", type=int, default=5, help="timed runs of each runtime (after one warm-up each)")
    ap.add_argument("--opset", type=int, default=None)
    ap.add_argument("--out", type=Path, default=REPO / "bench_out" / "onnx_parity")
    args = ap.parse_args()
    set_threads(1)
    load_start = load_avg()
    args.out.mkdir(parents=True, exist_ok=True)

    model = load_model(args.checkpoint).eval()
    t = time.perf_counter()
    onnx_path = export_onnx(model, args.out / "model.onnx", opset=args.opset)
    export_s = time.perf_counter() - t
    predictor = OnnxPredictor(onnx_path, threads=1)
    print(f"exported {onnx_path} ({onnx_path.stat().st_size / 2**20:.1f} MiB) in {export_s:.1f} s")

    images = [np.array(Image.open(p).convert("RGB")) for p in args.images]
    rows = []
    for path, image in zip(args.images, images):
        (ref,) = model.predict([image], resize=False)
        row = {"image": str(path), "size": list(image.shape[:2]), **compare(ref, predictor(image))}
        rows.append(row)
        print(" ".join(f"{k}={v}" for k, v in row.items()))

    image = images[0]
    times: dict[str, list[tuple[float, float]]] = {"torch_predict": [], "onnx_graph": [], "onnx_graph_and_paste": []}
    runs = {
        "torch_predict": lambda: model.predict([image], resize=False),
        "onnx_graph": lambda: predictor.raw(image),
        "onnx_graph_and_paste": lambda: predictor(image),
    }
    for fn in runs.values():  # warm-up
        fn()
    for _ in range(args.reps):
        for name, fn in runs.items():
            times[name].append(timed(fn))
    timing = {
        name: {"wall_s_median": statistics.median(w for w, _ in v), "cpu_s_median": statistics.median(c for _, c in v),
               "wall_s": [round(w, 3) for w, _ in v]}
        for name, v in times.items()
    }
    ratio = timing["onnx_graph_and_paste"]["wall_s_median"] / timing["torch_predict"]["wall_s_median"]
    for name, v in timing.items():
        print(f"{name}: median wall {v['wall_s_median']:.3f} s, cpu {v['cpu_s_median']:.3f} s over {args.reps} runs")
    print(f"onnxruntime (graph + paste) / torch predict, median wall: {ratio:.2f}")
    summary = {
        "checkpoint": str(args.checkpoint), "onnx": str(onnx_path), "export_s": export_s, "parity": rows,
        "timing_image": str(args.images[0]), "timing": timing, "onnx_over_torch_wall": ratio,
        "hardware": hardware_line(), "load_avg_start": load_start, "load_avg_end": load_avg(),
        "versions": {"torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__},
    }
    write_json(summary, args.out / "summary.json")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
