"""Peak memory of sliced prediction on a large canvas with many small objects.

    python benchmarks/sliced_memory.py --size 10000 --objects 5000 --tile 512

Paints ``--objects`` discs and ellipses (8-24 px) on a ``--size`` x ``--size`` canvas and predicts it
with ``--slice TILE TILE --overlap 0.2`` through the stand-in detector of tests/inference (it returns
the ground-truth instances visible in each tile, so the figure is the slicing, pasting and merging's
own memory, not a network's). Prints the process's peak RSS before and after prediction
(``ru_maxrss``), Python's traced peak (tracemalloc: numpy and Python objects), the crops' bytes,
the number of instances and how many of them match their object (mask IoU >= 0.99), and the time.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import tracemalloc
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "inference"))
sys.path.insert(0, str(REPO))


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=10000)
    ap.add_argument("--objects", type=int, default=5000)
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from standin_detector import StandIn, paint_canvas, random_objects

    from swin_maskrcnn.inference import SliceConfig, predict_instances

    objs = random_objects(args.size, args.size, args.objects, (8, 24), seed=0)
    canvas, gt = paint_canvas(args.size, args.size, objs)
    del objs
    base = rss_mb()
    tracemalloc.start()
    t = time.perf_counter()
    inst = predict_instances(StandIn(m=64), canvas, SliceConfig(args.tile, args.tile, overlap=0.2, batch=args.batch))
    elapsed = time.perf_counter() - t
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak = rss_mb()
    # each object matched by one instance whose box equals its own (the stand-in's masks are exact)
    boxes = {tuple(int(v) for v in b) for b in inst.boxes.tolist()}
    found = sum(1 for g in gt if tuple(int(v) for v in g["box"]) in boxes)
    out = {"size": args.size, "objects": len(gt), "tile": args.tile, "instances": len(inst), "objects_found": found,
           "canvas_mb": canvas.nbytes / 2**20, "rss_before_mb": round(base, 1), "rss_peak_mb": round(peak, 1),
           "rss_increase_mb": round(peak - base, 1), "traced_peak_mb": round(traced_peak / 2**20, 1),
           "crops_mb": round(inst.nbytes() / 2**20, 2), "seconds": round(elapsed, 1)}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
