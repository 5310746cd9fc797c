"""Loss-control ablation on the nuclei benchmark: same data, model, budget and seed per variant.

    python benchmarks/loss_ablation.py                      # all variants, 2.5 CPU-minutes each, first 53 val images
    python benchmarks/loss_ablation.py --minutes 6 --variants mmdet,seed

Variants (layers and overrides of ``configs/nuclei.yaml``'s ``model.losses``; focal / ohem / dynamic
are mmdet's losses plus one change):

* ``mmdet``    -- ``configs/losses/mmdet.yaml``: mmdet's losses exactly (pos weights 1, no clipping, BCE / softmax CE, random sampling)
* ``seed``     -- the design's preset ``configs/losses/seed.yaml`` (pos weights 5 / 3, clip_grad_norm 10; the library default)
* ``focal``    -- ``rpn_cls_loss=focal``, ``roi_cls_loss=sigmoid_focal`` (alpha 0.25, gamma 2)
* ``ohem``     -- ``roi_sampler=ohem``
* ``dynamic``  -- ``learned_loss_weights=true`` (learned uncertainty weights)

Each variant trains ``configs/nuclei.yaml``'s model from scratch with ``benchmarks/nuclei.py``'s
``run_ours`` (same CPU-time budget, same data order, same init seed) and is evaluated on the val
split with COCOeval maxDets [1, 100, 400]. Writes ``OUT/<variant>.json`` (COCO results) and
``OUT/summary.json``; prints a markdown table.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import nuclei  # noqa: E402
from common import BENCH_OUT, REPO  # noqa: E402

DEFAULT_MINUTES = 2.5
SEED_PRESET = REPO / "configs" / "losses" / "seed.yaml"
MMDET_LOSSES = REPO / "configs" / "losses" / "mmdet.yaml"

# Every variant names its losses explicitly (the library default is the seed preset since this
# ablation); focal / OHEM / dynamic each change one thing on top of mmdet's losses.
VARIANTS: dict[str, tuple[list[str], list[str]]] = {  # name -> (layers, overrides)
    "mmdet": ([str(MMDET_LOSSES)], []),
    "seed": ([str(SEED_PRESET)], []),
    "focal": ([str(MMDET_LOSSES)], ["model.losses.rpn_cls_loss=focal", "model.losses.roi_cls_loss=sigmoid_focal"]),
    "ohem": ([str(MMDET_LOSSES)], ["model.losses.roi_sampler=ohem"]),
    "dynamic": ([str(MMDET_LOSSES)], ["model.losses.learned_loss_weights=true"]),
}


def markdown_table(rows: dict[str, dict]) -> str:
    lines = [
        "| variant | steps | train CPU s | wall s | bbox AP | bbox AP50 | bbox AP75 | segm AP | segm AP50 | segm AP75 | "
        "preds/img ≥0.05 | ≥0.3 | ≥0.5 | final loss |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        b, s, p, t = r["metrics"]["bbox"], r["metrics"]["segm"], r["preds_per_image"], r["train"]
        lines.append(
            f"| {name} | {t['steps']} | {t['cpu_s']:.0f} | {t['wall_s']:.0f} | {b['AP']:.4f} | {b['AP50']:.4f} | "
            f"{b['AP75']:.4f} | {s['AP']:.4f} | {s['AP50']:.4f} | {s['AP75']:.4f} | {p['score>=0.05']:.1f} | "
            f"{p['score>=0.3']:.1f} | {p['score>=0.5']:.1f} | {t['loss_last_20']:.3f} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=DEFAULT_MINUTES, help="CPU-minutes per variant")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--config", default=str(nuclei.DEFAULT_CONFIG))
    ap.add_argument("--out", default=str(BENCH_OUT / "loss_ablation"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-val-images", type=int, default=53, help="evaluate on the first N val images (half of them: evaluation costs ~1 CPU-s per image)")
    args = ap.parse_args(argv)

    common.set_threads(args.threads)
    from swin_maskrcnn.evaluation import save_results_json

    tr, va = common.make_nuclei_split(nuclei.NUCLEI / "annotations" / "train.json", nuclei.SPLIT_DIR)
    out = Path(args.out)
    budget = args.minutes * 60.0
    summary: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "hardware": common.hardware_line(),
        "budget": f"{args.minutes} CPU-minutes ({budget:.0f} s process CPU time) per variant, torch threads {args.threads}",
        "config": args.config,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "variants": {},
    }
    train_ds = val_ds = None
    for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
        layers, overrides = VARIANTS[name]
        cfg = nuclei.load_cfg(Path(args.config), overrides, layers, train_ann=tr,
                              train_images=nuclei.NUCLEI / "images", val_ann=va, val_images=nuclei.NUCLEI / "images")
        if train_ds is None:
            train_ds, val_ds = nuclei.build_data(cfg)
        print(f"=== {name}: layers {layers} overrides {overrides}; load {common.load_avg()}", flush=True)
        res, results = nuclei.run_ours(cfg, train_ds, val_ds, budget, name=name, seed=args.seed,
                                       max_val_images=args.max_val_images)
        res["layers"], res["overrides"] = layers, overrides
        res["losses"] = cfg.model.losses.model_dump(mode="json")
        save_results_json(results, out / f"{name}.json")
        summary["variants"][name] = res
        common.write_json(summary, out / "summary.json")
        print(markdown_table({name: res}), flush=True)
    summary["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    summary["load_end"] = common.load_avg()
    common.write_json(summary, out / "summary.json")
    print("\n" + summary["hardware"] + "\n" + summary["budget"] + "\n")
    print(markdown_table(summary["variants"]))
    return summary


if __name__ == "__main__":
    main()
