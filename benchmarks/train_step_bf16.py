"""bf16 training step against fp32, ours only, 1 thread, no mmdet checkpoint needed.

    python benchmarks/train_step_bf16.py [--reps 3] [--profile]

The step of ``benchmarks/speed.py``'s ``train2`` case (its ``train_fn``: forward under bf16 autocast
for bf16, sum of the losses, backward, AdamW with lr 0; 2 of its synthetic 800x1216 scenes with 5
instances each), on a full Swin-T Mask R-CNN with seeded random weights (speed.py's ``ours`` needs
an mmdet-made checkpoint, so needs the mmdet venv). fp32 and bf16 alternate, the warm-up step of
each is excluded, the figure is the median process CPU time. ``--profile`` adds the top operators
of one profiled bf16 step (self CPU time). ``--bf16-channels-last`` adds a third subject: bf16 on a
copy of the model whose FPN, RPN and mask head weights and backbone output maps are channels_last
(``modeling.acceleration.channels_last_convolutions``: what ``train()`` does for bf16-mixed on the
CPU, as oneDNN's bf16 convolutions run NCHW maps with reorders).
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from speed import adamw_lr0, make_scenes, train_fn  # noqa: E402

from swin_maskrcnn import SwinMaskRCNN  # noqa: E402
from swin_maskrcnn.modeling.acceleration import channels_last_convolutions  # noqa: E402
from swin_maskrcnn.modeling.config import ModelConfig  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--bf16-channels-last", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = SwinMaskRCNN(ModelConfig())
    opt = adamw_lr0(model)
    scenes = make_scenes(2)
    ims = [torch.from_numpy(im).permute(2, 0, 1).float().div(255) for im in scenes["images"]]
    tgts = [dict(boxes=torch.from_numpy(b), labels=torch.from_numpy(lb), masks=torch.from_numpy(m).to(torch.uint8))
            for b, lb, m in zip(scenes["boxes"], scenes["labels"], scenes["masks"])]
    steps = {d: train_fn(model, lambda: model(ims, tgts), opt, d, "cpu") for d in ("fp32", "bf16")}
    if args.bf16_channels_last:
        cl = channels_last_convolutions(copy.deepcopy(model))  # what train() does for bf16-mixed on the CPU
        steps["bf16_channels_last"] = train_fn(cl, lambda: cl(ims, tgts), adamw_lr0(cl), "bf16", "cpu")
    for fn in steps.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {d: [] for d in steps}
    order = list(steps)
    for rep in range(args.reps):
        for d in (order if rep % 2 == 0 else order[::-1]):
            c = time.process_time()
            steps[d]()
            times[d].append(time.process_time() - c)
    med = {d: statistics.median(v) for d, v in times.items()}
    print(f"\ntraining step, 2 images 800x1216, 1 thread, medians of {args.reps} (CPU s)\n")
    print("| precision | CPU s / step | vs fp32 |")
    print("|---|---|---|")
    for d in steps:
        print(f"| {d} | {med[d]:.2f} | {med['fp32'] / med[d]:.2f}x faster |")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        name = "bf16_channels_last" if args.bf16_channels_last else "bf16"
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            steps[name]()
        ev = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        tot = sum(e.self_cpu_time_total for e in ev)
        print(f"\n{name} step profiled: {tot / 1e6:.2f} CPU-s\n\n| operator | self CPU s | share | calls |\n|---|---|---|---|")
        for e in ev[: args.top]:
            print(f"| `{e.key}` | {e.self_cpu_time_total / 1e6:.3f} | {100 * e.self_cpu_time_total / tot:.1f} % | {e.count} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
