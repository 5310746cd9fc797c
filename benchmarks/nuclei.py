"""Nuclei from scratch: our small Swin Mask R-CNN vs torchvision's Mask R-CNN R50-FPN, same data,
same input size, same CPU-time budget each.

    python benchmarks/nuclei.py                      # defaults: our split, 6 CPU-minutes per model
    python benchmarks/nuclei.py --train-ann A --train-images D --val-ann B --val-images E --minutes M --out DIR
    python benchmarks/nuclei.py --models ours --anchors default,config,auto --minutes 6   # anchors compared

Default data: a deterministic split of ``../shared/data/dsb2018_nuclei/annotations/train.json``
(images sorted by id, every 5th -> val; 425 train / 106 val images), written once to
``bench_out/nuclei_split/{train,val}.json``.

Both models train from random init (no pretrained weights exist here) with the same optimiser
recipe (AdamW, lr and weight decay from ``--config``, warmup over the first 5 % of the budget, x0.1
at 80 %), the same training images (our pipeline: keep-ratio resize to ``data.scale`` + flip,
batch ``data.batch_size``) and the same CPU budget: ``--minutes`` x 60 seconds of process CPU time
(data loading included, model construction and evaluation excluded) at ``--threads`` torch threads.
Peer: ``torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None,
num_classes=2, box_detections_per_img=400, min_size=short, max_size=long)``, i.e. torchvision's
defaults otherwise (anchors 32-512 px, BatchNorm since nothing is pretrained).

Evaluation: COCOeval bbox and segm with maxDets [1, 100, 400] on the val images (AP read at 400).
Ours sees the val images through our test pipeline (resize to ``model.test_scale``) and predicts at
the original size; the peer gets the original images and resizes them internally to the same scale.
Writes ``DIR/ours.json``, ``DIR/peer.json`` (COCO results) and ``DIR/summary.json``.
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
from common import BENCH_OUT, DATA, REPO, CpuClock  # noqa: E402

DEFAULT_MINUTES = 6.0
DEFAULT_CONFIG = REPO / "configs" / "nuclei.yaml"
NUCLEI = DATA / "dsb2018_nuclei"
SPLIT_DIR = BENCH_OUT / "nuclei_split"
SCORE_THRS = (0.05, 0.3, 0.5)


def load_cfg(config: Path, overrides: Sequence[str] = (), layers: Sequence[str] = (),
             train_ann=None, train_images=None, val_ann=None, val_images=None):
    from swin_maskrcnn.training.config import load_config

    ov = list(overrides)
    for key, val in (("data.train_ann", train_ann), ("data.train_images", train_images),
                     ("data.val_ann", val_ann), ("data.val_images", val_images)):
        if val is not None:
            ov.append(f"{key}={val}")
    return load_config(config, ov, layers)


def build_data(cfg):
    from swin_maskrcnn.data.coco import CocoInstanceDataset
    from swin_maskrcnn.data.transforms import build_test_transforms, build_train_transforms

    d = cfg.data
    train_ds = CocoInstanceDataset(d.train_ann, d.train_images,
                                   transforms=build_train_transforms("1x", scale=tuple(d.scale), flip_prob=d.flip_prob),
                                   filter_empty_gt=d.filter_empty_gt, min_size=d.min_size,
                                   num_classes=cfg.model.num_classes)
    val_ds = CocoInstanceDataset(d.val_ann, d.val_images,
                                 transforms=build_test_transforms(cfg.model.test_scale))
    return train_ds, val_ds


# ------------------------------------------------------------------------------------------------
# ours
# ------------------------------------------------------------------------------------------------
def run_ours(cfg, train_ds, val_ds, budget_cpu_s: float, name: str = "ours", seed: int = 0,
             max_val_images: Optional[int] = None) -> tuple[dict, list[dict]]:
    from swin_maskrcnn import SwinMaskRCNN
    from swin_maskrcnn.training.optim import build_optimizer

    torch.manual_seed(seed)
    model = SwinMaskRCNN(cfg.model)
    opt = build_optimizer(model, cfg.optim)
    n_params = sum(p.numel() for p in model.parameters())
    load0 = common.load_avg()
    train_info = common.train_budgeted(
        model, common.infinite_batches(train_ds, cfg.data.batch_size, seed=cfg.data.seed), common.ours_loss_fn, opt,
        budget_cpu_s, clip_grad_norm=cfg.model.losses.clip_grad_norm, name=name, step_seed=seed)
    train_info["load_start"], train_info["load_end"] = load0, common.load_avg()
    ds = val_ds if max_val_images is None else torch.utils.data.Subset(val_ds, list(range(min(max_val_images, len(val_ds)))))
    clock = CpuClock()
    metrics, results, _ = common.evaluate_ours(model, ds)
    desc = (f"SwinMaskRCNN ({cfg.model.variant}, embed {cfg.model.resolved_embed_dims()}, "
            f"depths {list(cfg.model.resolved_depths())}), {n_params / 1e6:.2f} M params")
    return _record(desc, n_params, train_info, clock, metrics, results), results


def _record(desc: str, n_params: int, train_info: dict, clock: CpuClock, metrics: dict, results: list[dict]) -> dict:
    """One model's entry of summary.json: training info, evaluation cost, COCO metrics, score counts."""
    n_img = metrics["num_images"]
    return {
        "model": desc,
        "params": n_params,
        "train": train_info,
        "eval_cpu_s": clock.cpu,
        "eval_wall_s": clock.wall,
        "num_val_images": n_img,
        "metrics": common.short_metrics(metrics),
        "preds_per_image": _counts_by_image(results, n_img),
    }


def _counts_by_image(results: list[dict], n_images: int) -> dict[str, float]:
    return {f"score>={t}": (sum(1 for r in results if r["score"] >= t) / n_images if n_images else 0.0)
            for t in SCORE_THRS}


def anchor_variant(cfg, variant: str, train_ds) -> tuple[Any, dict]:
    """(config with the variant's anchors, what they are and their fit to the training boxes)."""
    from swin_maskrcnn.diagnostics.anchor_fit import fit_anchors

    rpn = cfg.model.rpn
    if variant == "config":
        scales, ratios = list(rpn.anchor_scales), list(rpn.anchor_ratios)
    elif variant == "default":
        scales, ratios = [8.0], [0.5, 1.0, 2.0]
    elif variant == "auto":
        fit = fit_anchors(train_ds, cfg.model, data_cfg=cfg.data)
        scales, ratios = fit.suggested.anchor_scales, fit.suggested.anchor_ratios
    else:
        raise SystemExit(f"unknown anchor variant {variant!r} (config, default, auto)")
    vcfg = cfg.model_copy(deep=True)
    vcfg.model.rpn.anchor_scales, vcfg.model.rpn.anchor_ratios = list(scales), list(ratios)
    fit = fit_anchors(train_ds, vcfg.model, data_cfg=cfg.data, search=False)
    info = {"anchor_scales": scales, "anchor_ratios": ratios, **{k: v for k, v in fit.current.as_dict().items()
                                                                 if k in ("bpr", "bpr_min_pos", "unmatched")}}
    print(f"anchors {variant}: {info}", flush=True)
    return vcfg, info


# ------------------------------------------------------------------------------------------------
# peer
# ------------------------------------------------------------------------------------------------
def build_peer(cfg):
    import torchvision

    long_side, short_side = cfg.data.scale
    return torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=cfg.model.num_classes + 1,
        box_detections_per_img=400, min_size=short_side, max_size=long_side)


def peer_loss_fn(model, images, targets):
    tv_targets = [dict(boxes=t["boxes"], labels=t["labels"] + 1, masks=t["masks"]) for t in targets]
    return model(images, tv_targets)


def evaluate_peer(model, val_ds, max_images: Optional[int] = None) -> tuple[dict, list[dict]]:
    """Original images in (the model resizes them to its min/max size), masks back at the original size."""
    from swin_maskrcnn.evaluation import evaluate_coco, predictions_to_coco_results

    n = len(val_ds) if max_images is None else min(len(val_ds), max_images)
    model.eval()
    results: list[dict] = []
    ids = []
    with torch.no_grad():
        for i in range(n):
            arr = val_ds.load_image(i)
            img = torch.from_numpy(arr).permute(2, 0, 1).float().div(255.0)
            out = model([img])[0]
            pred = {"boxes": out["boxes"], "scores": out["scores"], "labels": out["labels"] - 1,
                    "masks": (out["masks"][:, 0] >= 0.5)}
            img_id = val_ds.img_ids[i]
            ids.append(img_id)
            results.extend(predictions_to_coco_results([pred], [img_id], val_ds.label_to_cat_id))
    metrics = evaluate_coco(val_ds.coco, results, max_dets=(1, 100, 400), class_names=val_ds.class_names, img_ids=ids)
    metrics["num_images"] = len(ids)
    return metrics, results


def run_peer(cfg, train_ds, val_ds, budget_cpu_s: float, seed: int = 0,
             max_val_images: Optional[int] = None) -> tuple[dict, list[dict]]:
    from swin_maskrcnn.training.optim import build_optimizer

    torch.manual_seed(seed)
    model = build_peer(cfg)
    # same recipe as ours: AdamW, no weight decay on norms and biases
    oc = cfg.optim.model_copy(update={"no_decay_keys": ["bn", "norm", "bias"]})
    opt = build_optimizer(model, oc)
    n_params = sum(p.numel() for p in model.parameters())
    load0 = common.load_avg()
    train_info = common.train_budgeted(
        model, common.infinite_batches(train_ds, cfg.data.batch_size, seed=cfg.data.seed), peer_loss_fn, opt,
        budget_cpu_s, clip_grad_norm=None, name="peer", step_seed=seed, log_every=5)
    train_info["load_start"], train_info["load_end"] = load0, common.load_avg()
    clock = CpuClock()
    metrics, results = evaluate_peer(model, val_ds, max_val_images)
    desc = f"torchvision maskrcnn_resnet50_fpn (from scratch), {n_params / 1e6:.2f} M params"
    return _record(desc, n_params, train_info, clock, metrics, results), results


# ------------------------------------------------------------------------------------------------
def fmt_table(rows: dict[str, dict]) -> str:
    head = (f"{'model':<14} {'steps':>6} {'train CPU s':>11} {'wall s':>7} | {'bbox AP':>7} {'AP50':>6} {'AP75':>6} | "
            f"{'segm AP':>7} {'AP50':>6} {'AP75':>6} | preds/img >=0.05 / >=0.5")
    lines = [head, "-" * len(head)]
    for name, r in rows.items():
        b, s = r["metrics"]["bbox"], r["metrics"]["segm"]
        p = r["preds_per_image"]
        lines.append(
            f"{name:<14} {r['train']['steps']:>6} {r['train']['cpu_s']:>11.0f} {r['train']['wall_s']:>7.0f} | "
            f"{b['AP']:>7.4f} {b['AP50']:>6.4f} {b['AP75']:>6.4f} | {s['AP']:>7.4f} {s['AP50']:>6.4f} {s['AP75']:>6.4f} | "
            f"{p['score>=0.05']:.1f} / {p['score>=0.5']:.1f}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-ann", default=None, help="default: bench_out/nuclei_split/train.json (made on first run)")
    ap.add_argument("--train-images", default=str(NUCLEI / "images"))
    ap.add_argument("--val-ann", default=None, help="default: bench_out/nuclei_split/val.json")
    ap.add_argument("--val-images", default=str(NUCLEI / "images"))
    ap.add_argument("--minutes", type=float, default=DEFAULT_MINUTES, help="CPU-minutes (process CPU time) per model")
    ap.add_argument("--out", default=str(BENCH_OUT / "nuclei"))
    ap.add_argument("--config", default=str(DEFAULT_CONFIG))
    ap.add_argument("--models", default="ours,peer", help="comma list of ours, peer")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (see common.set_threads)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-val-images", type=int, default=None)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides (dotted keys)")
    ap.add_argument("--anchors", default=None,
                    help="comma list of anchor variants to train ours with, each its own run on the same budget: "
                         "config (the config's, nuclei.yaml's hand-picked scale 2), default (mmdet's scale 8), "
                         "auto (fitted to the training split, as model.rpn.auto_anchors); results ours-<variant>")
    args = ap.parse_args(argv)

    common.set_threads(args.threads)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.train_ann is None or args.val_ann is None:
        tr, va = common.make_nuclei_split(NUCLEI / "annotations" / "train.json", SPLIT_DIR)
        args.train_ann = args.train_ann or str(tr)
        args.val_ann = args.val_ann or str(va)
    cfg = load_cfg(Path(args.config), args.set, train_ann=args.train_ann, train_images=args.train_images,
                   val_ann=args.val_ann, val_images=args.val_images)
    if args.minutes <= 0:
        print(f"split ready: {args.train_ann}, {args.val_ann}")
        return {}
    train_ds, val_ds = build_data(cfg)
    budget = args.minutes * 60.0
    summary: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "hardware": common.hardware_line(),
        "budget": f"{args.minutes} CPU-minutes ({budget:.0f} s process CPU time) per model, torch threads {args.threads}",
        "data": {"train_ann": args.train_ann, "val_ann": args.val_ann, "train_images": len(train_ds),
                 "val_images": len(val_ds), "scale": list(cfg.data.scale), "test_scale": cfg.model.test_scale,
                 "batch_size": cfg.data.batch_size},
        "optim": {"type": cfg.optim.type, "lr": cfg.optim.lr, "weight_decay": cfg.optim.weight_decay,
                  "schedule": "warmup 5% of budget, x0.1 at 80% of budget"},
        "config": args.config,
        "overrides": args.set,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "results": {},
    }
    runs: list[tuple[str, Any]] = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        if name == "ours" and args.anchors:
            for variant in [v.strip() for v in args.anchors.split(",") if v.strip()]:
                vcfg, info = anchor_variant(cfg, variant, train_ds)
                summary.setdefault("anchors", {})[f"ours-{variant}"] = info
                runs.append((f"ours-{variant}", vcfg))
        else:
            runs.append((name, cfg))
    for name, run_cfg in runs:
        print(f"=== {name}: {budget:.0f} CPU-s, load {common.load_avg()}", flush=True)
        if name.startswith("ours"):
            res, results = run_ours(run_cfg, train_ds, val_ds, budget, name=name, seed=args.seed,
                                    max_val_images=args.max_val_images)
        elif name == "peer":
            res, results = run_peer(cfg, train_ds, val_ds, budget, seed=args.seed, max_val_images=args.max_val_images)
        else:
            raise SystemExit(f"unknown model {name!r}")
        from swin_maskrcnn.evaluation import save_results_json

        save_results_json(results, out_dir / f"{name}.json")
        summary["results"][name] = res
        common.write_json(summary, out_dir / "summary.json")
        print(fmt_table({name: res}), flush=True)
    summary["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    summary["load_end"] = common.load_avg()
    common.write_json(summary, out_dir / "summary.json")
    print("\n" + summary["hardware"] + "\n" + summary["budget"])
    print(fmt_table(summary["results"]))
    return summary


if __name__ == "__main__":
    main()
