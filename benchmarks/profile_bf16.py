"""Where bf16 inference time goes: torch.profiler of the bf16 copy (or under bf16 autocast) vs OpenVINO's per-layer counters,
same Swin-T model (seeded random weights, score_thr 0: 100 detections), same 800x1216 image, 1 thread.

    python benchmarks/profile_bf16.py [--top 15] [--mode copy|autocast|fp32]

Torch: self CPU time per operator of one profiled ``model.predict(resize=False)`` (after a warm-up),
with the input dtypes of the convolutions / matmuls, so fp32 fallbacks show. OpenVINO: the IR
converted from our ONNX graph, compiled with INFERENCE_PRECISION_HINT=bf16 and PERF_COUNT=YES;
``get_profiling_info()`` of one request summed by layer type, with the execution precision per type.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from speed import make_scenes  # noqa: E402

from swin_maskrcnn import SwinMaskRCNN  # noqa: E402
from swin_maskrcnn.modeling.config import ModelConfig  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--mode", choices=["copy", "autocast", "fp32"], default="copy",
                    help="copy: the bf16 copy --precision bf16 runs (acceleration.bf16_copy); autocast: the fp32 model "
                         "under torch.autocast (the path before it); fp32: the fp32 model against OpenVINO fp32")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = ModelConfig()
    cfg = cfg.model_copy(update={"roi": cfg.roi.model_copy(update={"score_thr": 0.0, "max_per_img": 100})})
    model = SwinMaskRCNN(cfg).eval()
    image = make_scenes(1)["images"][0]

    net = model
    if args.mode == "copy":
        from swin_maskrcnn.modeling.acceleration import bf16_copy

        net = bf16_copy(model)

    def run():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.mode == "autocast"):
            return net.predict([image], resize=False)

    run()
    from torch.profiler import ProfilerActivity, profile

    c = time.process_time()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        run()
    total = time.process_time() - c
    print(f"torch {args.mode}: {total:.2f} CPU-s profiled (profiler overhead included)\n")
    print("| operator | self CPU s | share | calls |")
    print("|---|---|---|---|")
    ev = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    tot = sum(e.self_cpu_time_total for e in ev)
    for e in ev[: args.top]:
        print(f"| `{e.key}` | {e.self_cpu_time_total / 1e6:.3f} | {100 * e.self_cpu_time_total / tot:.1f} % | {e.count} |")
    dt = collections.Counter()
    for e in prof.key_averages(group_by_input_shape=True):
        if e.key in ("aten::addmm", "aten::mm", "aten::bmm", "aten::mkldnn_convolution", "aten::linear",
                     "torchvision::roi_align", "aten::_scaled_dot_product_flash_attention_for_cpu", "aten::convolution"):
            dt[(e.key, str(e.input_shapes[:1]))] += e.self_cpu_time_total
    # the dtype of each op's inputs is not in key_averages; the fp32 share is found by re-running with a
    # dispatch-mode counter below
    from torch.utils._python_dispatch import TorchDispatchMode

    class DtypeTime(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.t = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            t0 = time.process_time()
            out = func(*args, **(kwargs or {}))
            dts = sorted({a.dtype for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()}, key=str)
            self.t[(str(func.overloadpacket.__name__), "/".join(str(d).replace("torch.", "") for d in dts))] += \
                time.process_time() - t0
            return out

    with DtypeTime() as m:
        run()
    print("\nCPU s per (operator, floating input dtypes), top entries (dispatch-mode timing):\n")
    print("| operator | input dtypes | CPU s |")
    print("|---|---|---|")
    for (op, d), s in m.t.most_common(args.top):
        print(f"| `{op}` | {d} | {s:.3f} |")
    f32 = sum(s for (op, d), s in m.t.items() if d == "float32")
    print(f"\nops with only fp32 floating inputs: {f32:.2f} CPU-s of {sum(m.t.values()):.2f}")

    import openvino as ov

    from swin_maskrcnn.apps.openvino_export import export_openvino

    ov_hint = "f32" if args.mode == "fp32" else "bf16"
    with tempfile.TemporaryDirectory() as tmp:
        xml = export_openvino(model, Path(tmp) / "model.xml")
        core = ov.Core()
        compiled = core.compile_model(core.read_model(str(xml)), "CPU", {"INFERENCE_NUM_THREADS": "1",
                                      "INFERENCE_PRECISION_HINT": ov_hint, "PERF_COUNT": "YES"})
        req = compiled.create_infer_request()
        inp = {"image": np.ascontiguousarray(image.transpose(2, 0, 1))}
        req.infer(inp)
        c = time.process_time()
        req.infer(inp)
        ov_total = time.process_time() - c
        by_type = collections.Counter()
        prec = collections.defaultdict(set)
        for p in req.profiling_info:
            by_type[p.node_type] += p.real_time.total_seconds()
            prec[p.node_type].add(p.exec_type)
    print(f"\nOpenVINO {ov_hint}: {ov_total:.2f} CPU-s for one request\n")
    print("| layer type | s | share | kernels (exec_type) |")
    print("|---|---|---|---|")
    tot = sum(by_type.values())
    for t, s in by_type.most_common(args.top):
        print(f"| {t} | {s:.3f} | {100 * s / tot:.1f} % | {', '.join(sorted(prec[t]))[:80]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
