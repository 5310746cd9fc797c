"""One model, one image, one thread: torch fp32 / bf16 / bf16 autocast, onnxruntime, OpenVINO fp32 / bf16.

    python benchmarks/backend_speed.py                      # Swin-T, 800x1216, 3 alternating repetitions
    python benchmarks/backend_speed.py --checkpoint model_final.pt --reps 5
    python benchmarks/backend_speed.py --malloc keep        # glibc malloc as the CLI sets it

The model is a full Swin-T Mask R-CNN (80 classes; seeded random weights unless ``--checkpoint``),
with ``roi.score_thr = 0`` so that every subject returns ``max_per_img`` = 100 detections and runs
the mask head on them. It is exported once with ``export_onnx`` and ``export_openvino`` (the IR
converted from that ONNX graph) into a temporary folder. Every subject gets speed.py's first
synthetic 800x1216 scene at its own size (no resize): torch ``model.predict(resize=False)`` (fp32;
bf16: the bf16 copy ``--precision bf16`` runs, ``acceleration.bf16_copy``, converted once before
timing; bf16_autocast: the fp32 model under ``torch.autocast``, the path before that copy),
``OnnxPredictor`` / ``OpenVinoPredictor`` with 1 thread. Each repetition runs every subject once
in turn (the order reversed every other repetition); the warm-up call is excluded; the figure is
the median of process CPU time (the machine may be shared; the ratios are within one run). Also
printed: how many of each subject's 100 labels equal torch fp32's, and the largest box difference.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from functools import partial

os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from speed import apply_malloc, make_scenes  # noqa: E402

from swin_maskrcnn import SwinMaskRCNN, load_model  # noqa: E402
from swin_maskrcnn.modeling.acceleration import bf16_copy  # noqa: E402
from swin_maskrcnn.modeling.config import ModelConfig  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--malloc", choices=["system", "keep"], default="system",
                    help="glibc malloc: its defaults, or keep freed memory for reuse as the swin-maskrcnn CLI does "
                         "(swin_maskrcnn.runtime.keep_freed_memory; no page faults on every large tensor). OpenVINO "
                         "and onnxruntime allocate on their own")
    ap.add_argument("--subjects", nargs="+", default=["torch_fp32", "torch_bf16", "torch_bf16_autocast", "onnxruntime",
                                                       "openvino_fp32", "openvino_bf16"])
    args = ap.parse_args()
    apply_malloc(args.malloc)
    torch.set_num_threads(args.threads)
    if args.checkpoint:
        model = load_model(args.checkpoint, roi={"score_thr": 0.0, "max_per_img": 100})
    else:
        torch.manual_seed(0)
        cfg = ModelConfig()
        cfg = cfg.model_copy(update={"roi": cfg.roi.model_copy(update={"score_thr": 0.0, "max_per_img": 100})})
        model = SwinMaskRCNN(cfg)
    model.eval()
    image = make_scenes(1)["images"][0]
    tmp = Path(tempfile.mkdtemp(prefix="backend_speed_", dir=REPO / "bench_out" if (REPO / "bench_out").is_dir() else None))
    subjects = {}
    t = time.perf_counter()
    if "onnxruntime" in args.subjects or any(s.startswith("openvino") for s in args.subjects):
        from swin_maskrcnn.apps.onnx_export import export_onnx

        onnx_path = export_onnx(model, tmp / "model.onnx")
    if any(s.startswith("openvino") for s in args.subjects):
        from swin_maskrcnn.apps.openvino_export import export_openvino
        from swin_maskrcnn.apps.openvino_runtime import OpenVinoPredictor

        xml = export_openvino(model, tmp / "model.xml")
    print(f"exports: {time.perf_counter() - t:.0f} s")
    for s in args.subjects:
        if s.startswith("torch"):
            autocast = s == "torch_bf16_autocast"
            net = bf16_copy(model) if s == "torch_bf16" else model

            def run(net=net, autocast=autocast):
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    (o,) = net.predict([image], resize=False)
                return {"labels": o["labels"].numpy(), "boxes": o["boxes"].float().numpy()}
        elif s == "onnxruntime":
            from swin_maskrcnn.apps.onnx_runtime import OnnxPredictor

            run = partial(OnnxPredictor(onnx_path, threads=args.threads), image)
        else:
            run = partial(OpenVinoPredictor(xml, threads=args.threads, precision=s.split("_")[1]), image)
        subjects[s] = run
    outs = {s: fn() for s, fn in subjects.items()}  # warm-up
    times: dict[str, list[float]] = {s: [] for s in subjects}
    order = list(subjects)
    for rep in range(args.reps):
        for s in (order if rep % 2 == 0 else order[::-1]):
            c = time.process_time()
            subjects[s]()
            times[s].append(time.process_time() - c)
    med = {s: statistics.median(v) for s, v in times.items()}
    ref = outs.get("torch_fp32")
    peer = {"torch_fp32": "openvino_fp32", "torch_bf16": "openvino_bf16", "torch_bf16_autocast": "openvino_bf16",
            "onnxruntime": "openvino_fp32"}
    print(f"\n{image.shape[0]}x{image.shape[1]}, {args.threads} thread(s), medians of {args.reps} (CPU s), malloc {args.malloc}\n")
    print("| subject | CPU s | vs torch fp32 | vs OpenVINO same precision | labels = torch fp32 | max box diff px |")
    print("|---|---|---|---|---|---|")
    for s in subjects:
        o = outs[s]
        n = min(len(o["labels"]), len(ref["labels"])) if ref is not None else 0
        same = f"{int((o['labels'][:n] == ref['labels'][:n]).sum())}/{len(ref['labels'])}" if ref is not None else ""
        diff = f"{float(np.abs(o['boxes'][:n] - ref['boxes'][:n]).max()):.3g}" if n else ""
        p = peer.get(s)
        vs = f"{med[s] / med[p]:.2f}" if p in med else ""
        base = f"{med[s] / med['torch_fp32']:.2f}" if "torch_fp32" in med else ""
        print(f"| {s} | {med[s]:.2f} | {base} | {vs} | {same} | {diff} |")
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
