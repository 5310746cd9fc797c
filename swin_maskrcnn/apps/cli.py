"""Command line: ``swin-maskrcnn {train,evaluate,...}``.

    swin-maskrcnn train --config configs/swin_t_coco_1x.yaml data.train_ann=... [key=value ...]
                        [--losses configs/losses/seed.yaml] [--resume runs/x/checkpoints/last.ckpt]
    swin-maskrcnn evaluate --checkpoint runs/x/checkpoints/best.ckpt --ann val.json --images val/
                           [--max-dets 1 10 100] [--out metrics.json]

    swin-maskrcnn predict --checkpoint CKPT --out preds.json [--viz DIR] IMAGE_OR_DIR...
    swin-maskrcnn export --format safetensors --checkpoint CKPT --out model.safetensors
    swin-maskrcnn demo [--out demo_out]

Each subcommand adds its parser with ``set_defaults(func=handler)``, where ``handler(args) -> int``
returns the exit code; ``predict``, ``export`` and ``demo`` register themselves from their modules in
``swin_maskrcnn.apps`` (``register_subcommand(subparsers)``).

Library code logs through ``logging``; this module configures it (``--log-level``) and prints the
final metrics.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from ..io_utils import OutputWriteError, json_ready
from ..runtime import keep_freed_memory
from . import demo, export, predict
from ..modeling.config import COMPILE_MODES
from ..training.config import ConfigError
from ..training.nonfinite import NonFiniteTrainingError

log = logging.getLogger("swin_maskrcnn.apps.cli")


# ------------------------------------------------------------------------------------------------
# train
# ------------------------------------------------------------------------------------------------
def _add_train(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train a model from a YAML config",
        description=(
            "Train Swin Mask R-CNN. The config is a YAML file (see configs/); 'key.sub=value' arguments "
            "override single values (value parsed as YAML, e.g. optim.lr=2e-4 data.scale=[1024,640]). "
            "Unknown keys and out-of-range values are errors naming the key. The resolved config is saved "
            "as config.yaml in the run folder (runtime.out_dir/runtime.run_name)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", required=True, help="training config YAML (e.g. configs/swin_t_coco_1x.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides, applied last")
    p.add_argument("--losses", metavar="YAML", default=None,
                   help="loss preset merged over the config before the overrides (e.g. configs/losses/seed.yaml)")
    p.add_argument("--layer", metavar="YAML", action="append", default=[],
                   help="extra partial config merged over the config (repeatable, after --losses)")
    p.add_argument("--resume", metavar="CKPT_OR_RUN", default=None,
                   help="Lightning checkpoint to resume (model, optimiser, schedule, step and data order), or a run "
                        "folder: its newest complete checkpoint (a file cut short by a killed job is skipped)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=_cmd_train, trains=True)


def _cmd_train(args: argparse.Namespace) -> int:
    from ..training.config import dump_config, load_config

    layers = ([args.losses] if args.losses else []) + list(args.layer)
    cfg = load_config(args.config, args.overrides, layers=layers)
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    from ..training.train import train

    from lightning.pytorch.utilities import rank_zero_only

    summary = train(cfg, resume=args.resume, name_hint=Path(args.config).stem)
    if rank_zero_only.rank == 0:  # one summary, also under DDP (every rank runs this command)
        print(json.dumps(summary, indent=1, default=str))
    return 0


# ------------------------------------------------------------------------------------------------
# evaluate
# ------------------------------------------------------------------------------------------------
def _add_evaluate(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate",
        help="COCO bbox + segm evaluation of a checkpoint",
        description=(
            "Evaluate a checkpoint (ours .pt, a Lightning .ckpt from 'train', or an mmdet .pth) on a COCO "
            "annotation file with pycocotools' COCOeval. The checkpoint's category mapping must match the "
            "annotation file's categories."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint file")
    p.add_argument("--ann", required=True, help="COCO annotation json")
    p.add_argument("--images", required=True, help="folder of the images named in the json")
    p.add_argument("--max-dets", type=int, nargs=3, default=None, metavar=("D1", "D2", "D3"),
                   help="COCOeval maxDets; AP is reported at the largest (default: 1 10 100, or the checkpoint's "
                        "model.max_instances as the largest: 1 100 N)")
    p.add_argument("--out", default=None, help="write the metrics (incl. per-class AP) to this JSON file")
    p.add_argument("--results", default=None, help="also write the COCO-format detections to this JSON file")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass")
    p.add_argument("--max-images", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--scale", type=int, nargs=2, default=None, metavar=("LONG", "SHORT"),
                   help="test resize (default: the checkpoint's model.test_scale)")
    p.add_argument("--no-resize", action="store_true", help="feed images at their own size")
    p.add_argument("--score-thr", type=float, default=None, help="override the model's score threshold")
    p.add_argument("--max-per-img", type=int, default=None,
                   help="detections per image (default: the checkpoint's roi.max_per_img); set it to at least "
                        "the largest --max-dets")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: run the model under bf16 autocast (CPU or GPU; see docs/performance.md for the AP change)")
    p.add_argument("--compile", choices=list(COMPILE_MODES), default=None,
                   help="torch.compile the backbone and FPN with this mode (compiles on the first images)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--bad-images", choices=["error", "skip"], default="error",
                   help="images that are missing, unreadable or not of the JSON's size: stop with an error naming "
                        "them, or leave them out of the evaluation (logged)")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import torch

    from ..checkpoint.loader import load_checkpoint
    from ..data.coco import CocoInstanceDataset
    from ..data.transforms import build_test_transforms
    from ..data.validation import require_instances
    from ..evaluation import evaluate_model, save_results_json
    from ..modeling.acceleration import compile_dense
    from ..training.config import _atomic_write_text

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.max_images is not None and args.max_images < 1:
        raise ConfigError(f"--max-images must be >= 1, got {args.max_images}")
    if args.max_per_img is not None and args.max_per_img < 1:
        raise ConfigError(f"--max-per-img must be >= 1, got {args.max_per_img}")
    # the data first: its start-up checks are cheap and name the broken file before a model is loaded
    dataset = CocoInstanceDataset(args.ann, args.images, bad_images=args.bad_images)
    require_instances(dataset, "--ann")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    roi = {k: v for k, v in (("score_thr", args.score_thr), ("max_per_img", args.max_per_img)) if v is not None}
    model, cfg, meta = load_checkpoint(args.checkpoint, map_location=device, **({"roi": roi} if roi else {}))
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
    metrics, results = evaluate_model(
        model, dataset, batch_size=args.batch_size, max_images=args.max_images,
        max_dets=tuple(args.max_dets), progress=not args.no_progress, score_thr=float(cfg.roi.score_thr),
        precision=args.precision,
    )
    metrics = {"checkpoint": str(args.checkpoint), "ann": str(args.ann), **metrics}
    if args.out:
        _atomic_write_text(Path(args.out), json.dumps(json_ready(metrics), indent=1))
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


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swin-maskrcnn",
        description="Swin Transformer Mask R-CNN (mmdetection 3.3 semantics): train, evaluate, predict, export.",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="logging level of the library and Lightning (DEBUG also logs the traceback of an error)")
    parser.add_argument("--debug", action="store_true",
                        help="let errors in the input (config, data, checkpoint) raise with their Python traceback")
    parser.add_argument("--system-malloc", action="store_true",
                        help="leave glibc malloc's defaults (by default freed memory is kept for reuse, which avoids "
                        "page faults on every large tensor; for train and demo the same as the override "
                        "runtime.keep_freed_memory=false; see swin_maskrcnn.runtime)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_train(sub)
    _add_evaluate(sub)
    predict.register_subcommand(sub)
    export.register_subcommand(sub)
    demo.register_subcommand(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(None if argv is None else list(argv))
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    apply_malloc_setting(args)
    try:
        return int(args.func(args) or 0)
    except (OutputWriteError, NonFiniteTrainingError) as e:  # disk full / diverged: the message says it all
        if args.debug:
            raise
        log.debug("traceback of the error below", exc_info=True)
        print(f"swin-maskrcnn {args.command}: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - only the input errors below are caught, the rest re-raised
        if args.debug or not is_input_error(e):
            raise
        # a mistake in the config, the data or a checkpoint: one message naming it, no traceback
        log.debug("traceback of the error below", exc_info=True)
        print(f"swin-maskrcnn {args.command}: error: {e}", file=sys.stderr)
        return 2


def apply_malloc_setting(args: argparse.Namespace) -> None:
    """The one rule for freed-memory reuse (:func:`swin_maskrcnn.runtime.keep_freed_memory`).

    A command that trains (``train``, ``demo``: its parser sets ``trains=True``) leaves the decision to
    its config's ``runtime.keep_freed_memory``, which :func:`~swin_maskrcnn.training.train.train`
    applies; ``--system-malloc`` becomes the override ``runtime.keep_freed_memory=false`` (so the saved
    config.yaml says what ran). Every other command keeps freed memory unless ``--system-malloc`` is
    given. ``SWIN_MASKRCNN_SYSTEM_MALLOC=1`` turns it off everywhere (checked by ``keep_freed_memory``).
    """
    if getattr(args, "trains", False):
        if args.system_malloc:
            args.overrides = [*args.overrides, "runtime.keep_freed_memory=false"]
        return
    if not args.system_malloc:
        keep_freed_memory()


def is_input_error(exc: BaseException) -> bool:
    """True for the library's own errors about its input (config, data, checkpoint, a missing file)
    and Lightning's MisconfigurationException: the message says what to fix; a traceback would only
    bury it. Anything else is a bug and keeps its traceback."""
    from ..checkpoint.safe_load import CheckpointError
    from ..data.validation import DataError

    if isinstance(exc, (ConfigError, DataError, CheckpointError, FileNotFoundError)):
        return True
    return any(c.__name__ == "MisconfigurationException" for c in type(exc).__mro__)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
