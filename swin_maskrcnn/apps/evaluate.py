"""``swin-maskrcnn evaluate``: COCO bbox + segm evaluation of a checkpoint.

    swin-maskrcnn evaluate --checkpoint runs/x/checkpoints/best.ckpt --ann val.json --images val/
                           [--max-dets 1 10 100] [--out metrics.json] [--results detections.json]

The data is checked before a model is loaded; the checkpoint's category mapping must match the
annotation file's categories. Metrics come from pycocotools' COCOeval
(:func:`swin_maskrcnn.evaluation.evaluate_model`).
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..modeling.config import COMPILE_MODES
from .options import HelpFormatter, add_inference_arguments, default_device, roi_overrides

log = logging.getLogger(__name__)

__all__ = ["register_subcommand"]


def register_subcommand(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate",
        help="COCO bbox + segm evaluation of a checkpoint",
        description=(
            "Evaluate a checkpoint (ours .pt, a Lightning .ckpt from 'train', or an mmdet .pth) on a COCO "
            "annotation file with pycocotools' COCOeval. The checkpoint's category mapping must match the "
            "annotation file's categories."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint file")
    p.add_argument("--ann", required=True, help="COCO annotation json")
    p.add_argument("--images", required=True, help="folder of the images named in the json")
    p.add_argument("--max-dets", type=int, nargs=3, default=None, metavar=("D1", "D2", "D3"),
                   help="COCOeval maxDets; AP is reported at the largest (default: 1 10 100, or the checkpoint's "
                        "model.max_instances as the largest: 1 100 N)")
    p.add_argument("--out", default=None, help="write the metrics (incl. per-class AP) to this JSON file")
    p.add_argument("--results", default=None, help="also write the COCO-format detections to this JSON file")
    add_inference_arguments(p)
    p.add_argument("--max-images", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--scale", type=int, nargs=2, default=None, metavar=("LONG", "SHORT"),
                   help="test resize (default: the checkpoint's model.test_scale)")
    p.add_argument("--no-resize", action="store_true", help="feed images at their own size")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="bf16: run a bf16 copy of the model (see docs/performance.md for the AP change); auto: bf16 "
                        "on a CPU with AMX-BF16 / AVX512-BF16 or a CUDA GPU with bf16, fp32 elsewhere (logged)")
    p.add_argument("--compile", choices=list(COMPILE_MODES), default=None,
                   help="torch.compile the backbone and FPN with this mode (compiles on the first images)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--bad-images", choices=["error", "skip"], default="error",
                   help="images that are missing, unreadable or not of the JSON's size: stop with an error naming "
                        "them, or leave them out of the evaluation (logged)")
    from ..inference import options

    options.add_arguments(p)  # --slice ... / --tta: evaluated at the images' full resolution
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ..checkpoint.loader import load_checkpoint
    from ..data.coco import CocoInstanceDataset
    from ..data.transforms import build_test_transforms
    from ..data.validation import require_instances
    from ..coco_results import save_results_json
    from ..evaluation import evaluate_model
    from ..io_utils import atomic_write, json_ready
    from ..modeling.acceleration import compile_dense, inference_model

    from ..inference import options

    roi = roi_overrides(args)
    slicing, tta = options.from_args(args)
    if args.max_images is not None and args.max_images < 1:
        raise ConfigError(f"--max-images must be >= 1, got {args.max_images}")
    # the data first: its start-up checks are cheap and name the broken file before a model is loaded
    dataset = CocoInstanceDataset(args.ann, args.images, bad_images=args.bad_images)
    require_instances(dataset, "--ann")
    model, cfg, meta = load_checkpoint(args.checkpoint, map_location=default_device(args.device),
                                       **({"roi": roi} if roi else {}))
    model = inference_model(model, args.precision)  # bf16: converted once, before any compile
    compile_dense(model, args.compile)
    if args.max_dets is None:
        args.max_dets = cfg.eval_max_dets() or [1, 10, 100]
        if cfg.max_instances is not None:
            log.info("maxDets %s (model.max_instances=%d)", args.max_dets, cfg.max_instances)
    if max(args.max_dets) > cfg.roi.max_per_img:
        log.warning("--max-dets %d exceeds the model's max_per_img %d: AP at %d detections is computed from at most "
                    "%d per image; pass --max-per-img %d", max(args.max_dets), cfg.roi.max_per_img,
                    max(args.max_dets), cfg.roi.max_per_img, max(args.max_dets))

    if args.no_resize:
        scale = None
    elif args.scale is not None:
        scale = tuple(args.scale)
    else:
        scale = cfg.test_scale
    dataset.transforms = build_test_transforms(scale)
    if len(dataset.cat_ids) != cfg.num_classes:
        raise ConfigError(
            f"the checkpoint has {cfg.num_classes} classes but {args.ann} has {len(dataset.cat_ids)} categories"
        )
    mapping = meta.get("cat_id_to_label")
    if mapping is not None and mapping != dataset.cat_id_to_label:
        raise ConfigError(
            f"the checkpoint's category ids {sorted(mapping)[:10]} differ from {args.ann}'s "
            f"{dataset.cat_ids[:10]}: predictions would be mapped to the wrong categories"
        )
    if mapping is None:
        log.warning("%s stores no category mapping: label i is taken as the i-th category of %s by id",
                    args.checkpoint, args.ann)
    if slicing is not None or tta is not None:
        from ..evaluation import summarize_predictions
        from ..inference.evaluation import predict_coco_results_large

        n = len(dataset) if args.max_images is None else min(len(dataset), args.max_images)
        results, image_ids, counts = predict_coco_results_large(
            model, dataset, range(n), slicing, tta, test_scale=scale, precision=args.precision,
            progress=not args.no_progress, score_thr=float(cfg.roi.score_thr))
        metrics = summarize_predictions(dataset, results, image_ids, counts, max_dets=tuple(args.max_dets))
    else:
        metrics, results = evaluate_model(
            model, dataset, batch_size=args.batch_size, max_images=args.max_images,
            max_dets=tuple(args.max_dets), progress=not args.no_progress, score_thr=float(cfg.roi.score_thr),
            precision=args.precision,
        )
    metrics = {"checkpoint": str(args.checkpoint), "ann": str(args.ann), **metrics}
    if args.out:
        text = json.dumps(json_ready(metrics), indent=1)
        atomic_write(Path(args.out), lambda f: f.write(text))
        log.info("metrics written to %s", args.out)
    if args.results:
        save_results_json(results, args.results)
    for t in ("bbox", "segm"):
        if t in metrics:
            m = metrics[t]
            print(f"{t}: AP {m['AP']:.4f} AP50 {m['AP50']:.4f} AP75 {m['AP75']:.4f} "
                  f"APs {m['APs']:.4f} APm {m['APm']:.4f} APl {m['APl']:.4f}")
    print(f"images {metrics['num_images']}, predictions/image above score_thr {metrics['mean_num_predictions']:.2f}")
    return 0
