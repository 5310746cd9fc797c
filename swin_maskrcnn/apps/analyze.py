"""``swin-maskrcnn analyze``: what kind of mistakes a model makes, and which threshold to deploy.

    swin-maskrcnn analyze --ann GT.json (--results R.json | --checkpoint CK --images DIR) --out DIR
        [--iou 0.5] [--score-thr 0.3] [--beta 1] [--worst 8] [--display-thr 0.3]
        [--write-thresholds OUT]

With ``--checkpoint`` the images of ``GT.json`` (under ``--images``) are predicted first with
:class:`~swin_maskrcnn.apps.predict.Predictor` (the predict path; the checkpoint's own per-class
thresholds are not applied, so that the analysis sees every detection down to ``roi.score_thr``).
With ``--results`` a COCO results file is read (ours, or any other tool's). Writes
``DIR/analysis.json``::

    {"bbox": {"AP", "errors": {cls, loc, both, dupe, bkg, missed}, "dAP": {...}, ...},
     "segm": {...}, "confusion": {"iou", "score_thr", "labels", "matrix"},
     "thresholds": {"beta", "per_class": {name: {"score", "precision", "recall", "f"}}}, ...}

AP is COCOeval's (``evaluate``'s code, 0-1); the error counts and dAP are TIDE's
(:mod:`swin_maskrcnn.diagnostics.errors`); the confusion matrix is at ``--iou`` / ``--score-thr``;
the thresholds maximise F-beta per class. With images (``--images``), the ``--worst`` images with
the most errors are drawn into ``DIR/worst/`` and ``DIR/report.html`` shows everything. With
``--checkpoint`` the predictions are also written to ``DIR/results.json``.
``--write-thresholds OUT`` (needs ``--checkpoint``) writes the checkpoint again with the chosen
thresholds as ``roi.score_thr_per_class`` (``.safetensors`` by that suffix, else our ``.pt``).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from .options import HelpFormatter

log = logging.getLogger(__name__)

__all__ = ["analyze", "predict_for_analysis", "write_thresholds", "register_subcommand"]


def analyze(coco: Any, results: Sequence[dict], iou: float = 0.5, score_thr: float = 0.3, beta: float = 1.0,
            max_dets: int = 100) -> tuple[dict[str, Any], dict[str, Any]]:
    """(analysis.json content, extras for drawing: ``tide`` per iou type, ``curves`` per class).

    ``results`` are checked entries (:func:`~swin_maskrcnn.diagnostics.inputs.load_results`)."""
    from ..diagnostics.confusion import confusion_matrix
    from ..diagnostics.errors import tide_errors
    from ..diagnostics.thresholds import choose_thresholds
    from ..evaluation import evaluate_coco

    clean = [{k: v for k, v in r.items() if not k.startswith("_")} for r in results]
    types = ["bbox"] + (["segm"] if results and all(r.get("segmentation") is not None for r in results) else [])
    if not results:
        types = ["bbox", "segm"]
    metrics = evaluate_coco(coco, clean, iou_types=types, max_dets=(1, 10, max_dets)) if clean else {}
    out: dict[str, Any] = {}
    tide: dict[str, Any] = {}
    for t in types:
        r = tide_errors(coco, results, t, max_dets=max_dets)
        tide[t] = r
        m = metrics.get(t, {"AP": 0.0})
        out[t] = {"AP": float(m["AP"]), "errors": r.errors, "dAP": r.dAP, "tide_AP50": r.ap,
                  **{k: m[k] for k in ("AP50", "AP75", "APs", "APm", "APl") if k in m},
                  "per_class_AP": m.get("per_class_AP", {})}
    out["confusion"] = confusion_matrix(coco, results, iou=iou, score_thr=score_thr, max_dets=max_dets)
    chosen, curves = choose_thresholds(coco, results, beta=beta, max_dets=max_dets)
    out["thresholds"] = {"beta": float(beta), "per_class": chosen}
    per_img = tide["bbox"].errors_per_image
    ranked = sorted(per_img, key=lambda i: (-per_img[i], i))
    out["images"] = {"num_images": len(coco.imgs), "num_results": len(results),
                     "errors_per_image": {str(i): per_img[i] for i in ranked}}
    return out, {"tide": tide, "curves": curves, "ranked": ranked}


def predict_for_analysis(checkpoint: str, coco: Any, image_dir: Path, args: argparse.Namespace) -> list[dict]:
    """COCO results for every image of ``coco`` (found as ``image_dir / file_name``), predicted
    with ``checkpoint`` through :class:`~swin_maskrcnn.apps.predict.Predictor`."""
    from tqdm.auto import tqdm

    from ..data.validation import DataError
    from .predict import Predictor, to_coco_results

    roi: dict[str, Any] = {"score_thr_per_class": {}}
    if args.max_per_img is not None:
        roi["max_per_img"] = args.max_per_img
    from ..inference import options

    scale: Any = None if args.no_resize else (tuple(args.scale) if args.scale else "model")
    slicing, tta = options.from_args(args)  # --slice / --tta: predicted as `predict --slice` does
    predictor = Predictor(checkpoint, device=args.device, batch_size=args.batch_size, scale=scale, roi=roi,
                          slicing=slicing, tta=tta)
    ids = sorted(coco.imgs)
    paths = [image_dir / coco.imgs[i]["file_name"] for i in ids]
    results: list[dict] = []
    with tqdm(total=len(ids), desc="predict", unit="img", disable=args.no_progress, file=sys.stderr) as bar:
        for k, r in predictor.iter_predict(paths):
            if isinstance(r, Exception):
                raise DataError(f"image {ids[k]} ({paths[k]}): {r}")
            results.extend(dict(e, image_id=ids[k]) for e in to_coco_results(r))
            bar.update(1)
    return results


def write_thresholds(checkpoint: str, per_class: dict[str, dict[str, float]], out: Path) -> Path:
    """``checkpoint`` rewritten with ``roi.score_thr_per_class`` = the chosen scores; a
    ``.safetensors`` ``out`` gets our safetensors file, anything else our ``.pt``."""
    from ..checkpoint.loader import load_checkpoint
    from ..checkpoint.native import build_meta, save_checkpoint, save_safetensors

    thresholds = {name: float(v["score"]) for name, v in per_class.items()}
    model, cfg, meta = load_checkpoint(checkpoint, roi={"score_thr_per_class": thresholds})
    if out.suffix == ".safetensors":
        out_meta = build_meta(model.cfg, meta["class_names"], meta["cat_id_to_label"], meta.get("global_step"))
        return save_safetensors(out, model, out_meta)
    return save_checkpoint(out, model, model.cfg, meta["class_names"], meta["cat_id_to_label"], meta.get("global_step"))


def _summary(analysis: dict[str, Any]) -> list[str]:
    lines = []
    for t in ("bbox", "segm"):
        if t in analysis:
            a = analysis[t]
            errs = " ".join(f"{k} {v}" for k, v in a["errors"].items())
            daps = " ".join(f"{k} {v:.3f}" for k, v in a["dAP"].items())
            lines.append(f"{t}: AP {a['AP']:.4f}; errors {errs}; dAP {daps}")
    thr = analysis["thresholds"]
    lines.append(f"thresholds (F{thr['beta']:g}): " + ", ".join(
        f"{n} {v['score']:.3f} (P {v['precision']:.2f} R {v['recall']:.2f})" for n, v in thr["per_class"].items()))
    return lines


# ------------------------------------------------------------------------------------------------
# command line (plugged into swin_maskrcnn.apps.cli)
# ------------------------------------------------------------------------------------------------
def register_subcommand(sub: Any) -> None:
    p = sub.add_parser(
        "analyze",
        help="error breakdown (TIDE), confusion matrix, per-class thresholds and a report",
        description=(
            "Analyse detections against COCO ground truth: COCO AP, TIDE's error types with their dAP, a confusion "
            "matrix, the F-beta-best score threshold per class, the worst images and report.html. Give a results "
            "file, or a checkpoint and the images to predict."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("--ann", required=True, help="COCO annotation json (the ground truth)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--results", help="COCO results json (image_id or file_name, category_id, bbox, score, segmentation)")
    src.add_argument("--checkpoint", help="checkpoint to predict with (needs --images)")
    p.add_argument("--images", default=None, help="folder of the images named in --ann (needed with --checkpoint; "
                                                  "with --results it enables the drawings)")
    p.add_argument("--out", required=True, help="output folder (analysis.json, report.html, PNGs)")
    p.add_argument("--iou", type=float, default=0.5, help="IoU of a match in the confusion matrix")
    p.add_argument("--score-thr", type=float, default=0.3, help="detections counted in the confusion matrix")
    p.add_argument("--beta", type=float, default=1.0, help="F-beta of the per-class thresholds (2: recall counts more)")
    p.add_argument("--worst", type=int, default=8, metavar="K", help="draw the K images with the most errors")
    p.add_argument("--display-thr", type=float, default=0.3, help="drawings show detections scoring at least this")
    p.add_argument("--max-dets", type=int, default=100, help="detections per image analysed (the best-scoring)")
    p.add_argument("--write-thresholds", metavar="OUT", default=None,
                   help="write the checkpoint with the chosen thresholds as roi.score_thr_per_class (.pt or .safetensors)")
    p.add_argument("--no-report", action="store_true", help="write analysis.json only")
    g = p.add_argument_group("prediction (with --checkpoint)")
    g.add_argument("--batch-size", type=int, default=1, help="images per forward pass")
    g.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    size = g.add_mutually_exclusive_group()
    size.add_argument("--scale", type=int, nargs=2, default=None, metavar=("LONG", "SHORT"),
                      help="keep-ratio test resize (default: the checkpoint's test scale)")
    size.add_argument("--no-resize", action="store_true", help="feed images at their own size")
    g.add_argument("--max-per-img", type=int, default=None, help="detections per image (default: the checkpoint's)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    from ..inference import options

    options.add_arguments(p)  # --slice ... / --tta, as predict and evaluate take them (with --checkpoint)
    p.set_defaults(func=_cmd_analyze)


def _check_args(args: argparse.Namespace) -> None:
    from ..training.config import ConfigError

    if args.checkpoint and not args.images:
        raise ConfigError("--checkpoint needs --images (the folder of the images named in --ann)")
    if not args.checkpoint and (args.slice is not None or args.tta or args.tta_scales is not None):
        raise ConfigError("--slice / --tta need --checkpoint (they change how the images are predicted)")
    if args.write_thresholds and not args.checkpoint:
        raise ConfigError("--write-thresholds needs --checkpoint (the model the thresholds are written into)")
    for name in ("iou", "score_thr", "display_thr"):
        v = getattr(args, name)
        if not 0.0 <= v <= 1.0:
            raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1], got {v}")
    if args.beta <= 0:
        raise ConfigError(f"--beta must be > 0, got {args.beta}")
    if args.worst < 0 or args.max_dets < 1 or args.batch_size < 1:
        raise ConfigError("--worst must be >= 0, --max-dets and --batch-size >= 1")
    if args.images and not Path(args.images).is_dir():
        from ..data.validation import DataFileNotFoundError

        raise DataFileNotFoundError(f"image folder not found: {args.images}")


def _cmd_analyze(args: argparse.Namespace) -> int:
    from ..diagnostics.inputs import load_ground_truth, load_results
    from ..io_utils import atomic_write, json_ready

    _check_args(args)
    t0 = time.perf_counter()
    out_dir = Path(args.out)
    coco = load_ground_truth(args.ann)
    if args.checkpoint:
        raw = predict_for_analysis(args.checkpoint, coco, Path(args.images), args)
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(out_dir / "results.json", lambda f: json.dump(raw, f))  # to analyse again with --results
        results = load_results(raw, coco, name=f"predictions of {args.checkpoint}")
    else:
        results = load_results(args.results, coco)
    t_pred = time.perf_counter()
    analysis, extras = analyze(coco, results, iou=args.iou, score_thr=args.score_thr, beta=args.beta,
                               max_dets=args.max_dets)
    t_an = time.perf_counter()
    analysis["inputs"] = {"ann": str(args.ann), "results": args.results, "checkpoint": args.checkpoint,
                          "images": args.images, "display_thr": args.display_thr}
    out_dir.mkdir(parents=True, exist_ok=True)
    if not args.no_report:
        from .report import write_report

        analysis["report"] = str(write_report(out_dir, analysis, extras, coco, results,
                                              Path(args.images) if args.images else None,
                                              worst=args.worst, display_thr=args.display_thr))
    analysis["seconds"] = {"predict": round(t_pred - t0, 3), "analyze": round(t_an - t_pred, 3),
                           "total": round(time.perf_counter() - t0, 3)}
    path = atomic_write(out_dir / "analysis.json", lambda f: json.dump(json_ready(analysis), f, indent=1))
    if args.write_thresholds:
        written = write_thresholds(args.checkpoint, analysis["thresholds"]["per_class"], Path(args.write_thresholds))
        print(f"checkpoint with per-class thresholds written to {written}")
    for line in _summary(analysis):
        print(line)
    print(f"analysis written to {path}" + (f", report {analysis['report']}" if "report" in analysis else ""))
    return 0
