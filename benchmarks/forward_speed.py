"""Forward time of a full Swin-T Mask R-CNN vs torchvision's maskrcnn_resnet50_fpn, same run.

Both models get the same 800x1216 RGB image with the same 5 ground-truth instances, random
weights (nothing is downloaded). For each model we time, interleaved rep by rep so machine noise
hits both alike: a train step (forward with targets + backward) and an eval forward. The printed
figure is the ratio ours / torchvision (lower is faster); absolute seconds are shown for context
only (this machine is shared and noisy).

    python benchmarks/forward_speed.py [--reps 3] [--threads 2] [--out bench_out/forward_speed.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torchvision

from swin_maskrcnn import ModelConfig, SwinMaskRCNN

H, W = 800, 1216


def make_input(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(3, H, W, generator=g)
    boxes = torch.tensor([[100, 120, 400, 500], [500, 80, 700, 300], [750, 400, 1100, 780], [60, 550, 300, 760], [420, 420, 600, 600]], dtype=torch.float32)
    masks = torch.zeros(len(boxes), H, W, dtype=torch.uint8)
    for i, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
        masks[i, y1:y2, x1:x2] = 1
    labels = torch.arange(len(boxes)) % 80
    return img, dict(boxes=boxes, labels=labels, masks=masks)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def train_step(model, img, target, label_offset: int):
    model.train()
    tgt = dict(target, labels=target["labels"] + label_offset)
    losses = model([img], [tgt])
    sum(v for k, v in losses.items() if k.startswith("loss")).backward()
    model.zero_grad(set_to_none=True)


@torch.no_grad()
def eval_step(model, img):
    model.eval()
    model([img])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions per model and mode (after 1 warm-up)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--out", type=Path, default=Path("bench_out/forward_speed.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ours = SwinMaskRCNN(ModelConfig(variant="swin_t", num_classes=80))
    peer = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    img, target = make_input()
    # torchvision counts background as class 0, so its labels are shifted by one.
    jobs = {
        ("ours", "train"): lambda: train_step(ours, img, target, 0),
        ("peer", "train"): lambda: train_step(peer, img, target, 1),
        ("ours", "eval"): lambda: eval_step(ours, img),
        ("peer", "eval"): lambda: eval_step(peer, img),
    }
    for fn in jobs.values():  # warm-up
        fn()
    times: dict[tuple[str, str], list[float]] = {k: [] for k in jobs}
    for _ in range(args.reps):
        for k, fn in jobs.items():
            times[k].append(timed(fn))
    res = {f"{m}_{mode}_s": statistics.median(v) for (m, mode), v in times.items()}
    res["ratio_train"] = res["ours_train_s"] / res["peer_train_s"]
    res["ratio_eval"] = res["ours_eval_s"] / res["peer_eval_s"]
    res.update(image=f"{H}x{W}", reps=args.reps, threads=args.threads, torch=torch.__version__,
               cpu=platform.processor() or platform.machine(), cores=torch.get_num_threads())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    print(f"train step (fwd+bwd) on {H}x{W}: ours {res['ours_train_s']:.2f}s, torchvision maskrcnn_resnet50_fpn "
          f"{res['peer_train_s']:.2f}s, ratio {res['ratio_train']:.2f}")
    print(f"eval forward on {H}x{W}: ours {res['ours_eval_s']:.2f}s, torchvision {res['peer_eval_s']:.2f}s, "
          f"ratio {res['ratio_eval']:.2f}")


if __name__ == "__main__":
    main()
