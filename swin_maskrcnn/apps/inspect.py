"""``swin-maskrcnn inspect``: know the data before training.

    swin-maskrcnn inspect --config CFG [key=value ...] [--split train|val|both] [--checkpoint CK] --out DIR [--gallery N]
    swin-maskrcnn inspect --ann A.json --images DIR [key=value ...] [--checkpoint CK] --out DIR

Reads the annotation file(s) and the image headers (the start-up checks of training, with images that
would fail them counted instead of stopping), computes :func:`~swin_maskrcnn.diagnostics.data_report.build_report`
with the anchor fit of :mod:`swin_maskrcnn.diagnostics.anchor_fit`, prints a short text report (problems
first, each with its fix and the override line to paste) and writes into ``DIR`` only:
``report.json``, ``report.txt``, ``sizes.png``, ``anchor_fit.png``, ``classes.png`` (matplotlib, the
``[demo]`` extra; skipped with a warning without it) and ``gallery/`` (``--gallery N`` images with their
ground truth drawn by :func:`~swin_maskrcnn.apps.visualize.draw_detections`, crowd regions as ``crowd``).
No weights are needed; ``--checkpoint`` only supplies the model settings (anchors, caps) and the class
names to compare with. With ``--ann`` and no ``--config`` the data and model settings are the defaults
(mmdet's COCO recipe), or the checkpoint's.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..io_utils import atomic_write, json_ready
from .options import HelpFormatter

log = logging.getLogger(__name__)

__all__ = ["register_subcommand", "run_inspect", "format_text", "write_plots", "write_gallery"]


# ------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------
def _checkpoint_settings(path: str) -> tuple[dict[str, Any], Optional[dict[str, Any]], Optional[list[str]]]:
    """(model config dict, training config dict or None, class names or None) of a checkpoint; no model is built."""
    from ..checkpoint.loader import read_checkpoint
    from ..checkpoint.mmdet import infer_model_config

    sd, meta = read_checkpoint(path)
    if meta.get("model_config") is None:
        model = infer_model_config(sd).model_dump(mode="json")
    else:
        model = dict(meta["model_config"])
    return model, meta.get("train_config"), meta.get("class_names")


def resolve_config(args: argparse.Namespace) -> tuple[Any, Optional[list[str]]]:
    """(TrainConfig, checkpoint class names or None) from --config / --ann and the overrides."""
    from ..training.config import ConfigError, apply_overrides, config_from_dict, load_yaml

    ck_model = ck_train = ck_names = None
    if args.checkpoint:
        ck_model, ck_train, ck_names = _checkpoint_settings(args.checkpoint)
    if args.config:
        if args.ann or args.images:
            raise ConfigError("inspect: give --config or --ann/--images, not both (override data.train_ann=... instead)")
        data = load_yaml(args.config)
        source = str(args.config)
    else:
        if not (args.ann and args.images):
            raise ConfigError("inspect: needs --config CFG, or --ann A.json with --images DIR")
        data_section = dict((ck_train or {}).get("data") or {})
        for k in ("train_ann", "train_images", "val_ann", "val_images"):
            data_section.pop(k, None)
        data_section.update(train_ann=str(args.ann), train_images=str(args.images))
        data = {"data": data_section}
        source = f"--ann {args.ann}"
    if ck_model is not None:
        data["model"] = ck_model  # the trained model's anchors and caps
    elif not args.config:
        data.setdefault("model", {})
    data = apply_overrides(data, args.overrides)
    if "model" in data and not args.config and ck_model is None and "num_classes" not in data["model"]:
        from ..data.validation import check_categories, read_coco_json

        cats, _ = check_categories(read_coco_json(args.ann), Path(args.ann).name)
        data["model"]["num_classes"] = len(cats)
    return config_from_dict(data, source + (" with overrides " + " ".join(args.overrides) if args.overrides else "")), ck_names


# ------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------
def _split_files(cfg: Any, split: str) -> list[tuple[str, str, str]]:
    from ..training.config import ConfigError

    out = []
    if split in ("train", "both"):
        out.append(("train", cfg.data.train_ann, cfg.data.train_images))
    if split in ("val", "both"):
        if cfg.data.val_ann is None:
            if split == "val":
                raise ConfigError("inspect --split val: the config has no data.val_ann / data.val_images")
        else:
            out.append(("val", cfg.data.val_ann, cfg.data.val_images))
    return out


def inspect_split(cfg: Any, role: str, ann: str, images: str, ck_names: Optional[list[str]],
                  progress: bool = True) -> tuple[dict[str, Any], Any, Any]:
    """(report dict, dataset, anchor fit) of one split."""
    from ..data.coco import CocoInstanceDataset
    from ..diagnostics.anchor_fit import fit_anchors
    from ..diagnostics.data_report import build_report

    t0 = time.perf_counter()
    dataset = CocoInstanceDataset(ann, images, filter_empty_gt=False, min_size=0, bad_images="skip")
    t_read = time.perf_counter() - t0
    train = role == "train"
    fit = fit_anchors(dataset, cfg.model, data_cfg=cfg.data if train else None,
                      scale=None if train else cfg.model.test_scale, progress=progress)
    if not train:
        fit.boxes.scale_note = f"model.test_scale {cfg.model.test_scale} (the val split as evaluation sees it)"
    max_dets = cfg.model.eval_max_dets() or list(cfg.runtime.val_max_dets)
    report = build_report(dataset, cfg.model, cfg.data, anchor_fit=fit, eval_max_dets=max_dets,
                          checkpoint_class_names=ck_names, train_split=train)
    report["split"] = role
    report["seconds"] = {"read_and_check": round(t_read, 3), "anchor_fit": round(fit.seconds, 3),
                         "total": round(time.perf_counter() - t0, 3)}
    return report, dataset, fit


def run_inspect(args: argparse.Namespace) -> dict[str, Any]:
    """Everything ``inspect`` does; returns the report written to ``DIR/report.json``."""
    t0 = time.perf_counter()
    cfg, ck_names = resolve_config(args)
    out = Path(args.out)
    splits = _split_files(cfg, args.split)
    reports, first = {}, None
    for role, ann, images in splits:
        report, dataset, fit = inspect_split(cfg, role, ann, images, ck_names, progress=not args.no_progress)
        reports[role] = report
        if first is None:
            first = (report, dataset, fit)
    assert first is not None
    report, dataset, fit = first
    full = dict(report)
    if len(reports) > 1:
        full["splits"] = reports
    out.mkdir(parents=True, exist_ok=True)
    if not args.no_plots:
        written = write_plots(report, fit, dataset, out)
        full["plots"] = [p.name for p in written]
    if args.gallery:
        full["gallery"] = [str(p.relative_to(out)) for p in write_gallery(dataset, out / "gallery", args.gallery)]
    full["seconds"] = dict(report["seconds"], total_command=round(time.perf_counter() - t0, 3))
    text = "\n\n".join(format_text(r, cfg) for r in reports.values())
    atomic_write(out / "report.json", lambda f: f.write(json.dumps(json_ready(full), indent=1)))
    atomic_write(out / "report.txt", lambda f: f.write(text + "\n"))
    print(text)
    print(f"\nwritten to {out}/ (report.json, report.txt{', plots' if not args.no_plots else ''}"
          f"{', gallery/' if args.gallery else ''}) in {time.perf_counter() - t0:.1f} s")
    return full


# ------------------------------------------------------------------------------------------------
# text
# ------------------------------------------------------------------------------------------------
def _pct(v: Optional[float]) -> str:
    return "-" if v is None else f"{100 * v:.1f} %"


def format_text(report: dict[str, Any], cfg: Any = None) -> str:
    """The text report: problems first (each with its fix), then the tables."""
    lines = [f"== {report.get('split', 'data')}: {report['file']}"]
    probs = report["problems"]
    lines.append(f"problems ({len(probs)}):" if probs else "problems: none")
    for p in probs:
        lines.append(f"  [{p['severity']}] {p['kind']} ({p['count']}): {p['message']}")
        lines.append(f"      fix: {p['fix']}")
    im = report["images"]
    rf = im["resize_factor"]
    lines.append("")
    lines.append(f"images: {im['count']} ({im['skipped']} skipped by the checks, {im['without_annotations']} without "
                 f"annotations" + (f", {im['used_for_training']} used for training" if im.get("used_for_training") is not None else "")
                 + ")")
    lines.append(f"  width {im['width']['min']} / {im['width']['median']:g} / {im['width']['max']}, height "
                 f"{im['height']['min']} / {im['height']['median']:g} / {im['height']['max']} (min / median / max); "
                 f"resize factor to {rf['scale']}: {rf['min']:.3g} / {rf['median']:.3g} / {rf['max']:.3g}")
    classes = report["classes"]
    lines.append(f"classes: {len(classes)}, imbalance ratio {report['imbalance_ratio']:.1f}")
    lines.append(f"  {'id':>5} {'label':>5} {'name':<20} {'instances':>9} {'images':>7}")
    shown = sorted(classes, key=lambda c: -c["instances"])
    for c in shown[:15]:
        lines.append(f"  {c['category_id']:>5} {c['label']:>5} {c['name'][:20]:<20} {c['instances']:>9} {c['images']:>7}")
    if len(shown) > 15:
        lines.append(f"  ... {len(shown) - 15} more (report.json, classes.png)")
    ipi = report["instances_per_image"]
    caps = ", ".join(f"{k} {v}" for k, v in ipi["caps"].items())
    lines.append(f"instances per image: max {ipi['max']}, p99 {ipi['p99']:.1f}, mean {ipi['mean']:.2f} (caps: {caps})")
    cr = report.get("crowd_regions")
    if cr and cr["annotations"]:
        fr = cr["image_area_fraction"]
        lines.append(f"crowd annotations: {report['crowd']} (iscrowd=1: {cr['iscrowd']}, \"ignore\": 1: {cr['ignore_flag']}) "
                     f"in {cr['images']} images; {cr['degenerate']} under 1 px / outside, {cr['malformed']} malformed; "
                     f"image area covered {_pct(fr['mean'])} mean / {_pct(fr['max'])} max of those images, "
                     f"{_pct(fr['overall'])} of all")
        lines.append("  per class: " + ", ".join(f"{k} {v}" for k, v in sorted(cr["per_class"].items())))
        lines.append(f"  training: {cr['training']}")
    else:
        lines.append(f"crowd annotations: {report['crowd']}")
    af = report.get("anchor_fit")
    if af:
        cur, sug = af["current"], af["suggested"]
        lines.append(f"anchor fit: {af['num_boxes']} boxes at {af['scale_note']}; IoU thresholds pos {af['pos_iou_thr']}"
                     f" / min_pos {af['min_pos_iou']}")
        lines.append(f"  {'':<10} {'scales':<16} {'ratios':<20} {'bpr':>8} {'bpr_min_pos':>12} {'unmatched':>9}")
        for name, a in (("current", cur), ("suggested", sug)):
            lines.append(f"  {name:<10} {str(a['anchor_scales']):<16} {str(a['anchor_ratios']):<20} {_pct(a['bpr']):>8} "
                         f"{_pct(a['bpr_min_pos']):>12} {a['unmatched']:>9}")
        lines.append("  per size (sqrt area, px): " + "; ".join(
            f"{r['size']}: {r['boxes']} boxes, bpr {_pct(r['bpr'])} -> {_pct(s['bpr'])}"
            for r, s in zip(af["per_size"]["current"], af["per_size"]["suggested"])))
        lines.append("  per level of the best anchor (current): " + "; ".join(
            f"{r['level']} ({'/'.join(f'{v:g}' for v in r['anchor_sizes'])} px): {r['boxes']} boxes, bpr {_pct(r['bpr'])}"
            for r in af["per_level"]["current"]))
        if cur != sug:
            lines.append(f"  to use the suggested anchors: {af['override']}   (or model.rpn.auto_anchors=true)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# plots
# ------------------------------------------------------------------------------------------------
def write_plots(report: dict[str, Any], fit: Any, dataset: Any, out: Path) -> list[Path]:
    """sizes.png, anchor_fit.png, classes.png (matplotlib, imported here; none without it)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plots (pip install 'swin-maskrcnn[demo]')")
        return []
    written = []
    sizes = fit.boxes.sizes.numpy()
    labels = fit.boxes.labels.numpy()
    names = list(dataset.class_names)

    # sizes.png: object size per class with the anchor sizes of each level
    fig, ax = plt.subplots(figsize=(9, 4.8))
    hi = max(1024.0, float(sizes.max()) * 1.2 if sizes.size else 1024.0)
    bins = np.geomspace(1.0, hi, 49)
    order = np.argsort([-(labels == k).sum() for k in range(len(names))])
    top = [int(k) for k in order[:8] if (labels == k).any()]
    for k in top:
        ax.hist(sizes[labels == k], bins=bins, histtype="step", linewidth=1.8, label=f"{names[k]} ({(labels == k).sum()})")
    rest = ~np.isin(labels, top)
    if rest.any():
        ax.hist(sizes[rest], bins=bins, histtype="step", linewidth=1.2, color="grey", label=f"other classes ({rest.sum()})")
    ax.set_xscale("log")
    ymax = ax.get_ylim()[1]
    for which, style, colour in (("current", "--", "black"), ("suggested", ":", "tab:red")):
        st = getattr(fit, which)
        if which == "suggested" and not fit.changed:
            continue
        for li, stride in enumerate(fit.strides):
            for s in st.anchor_scales:
                ax.axvline(stride * s, linestyle=style, color=colour, linewidth=1)
                ax.text(stride * s, ymax * (0.97 if which == "current" else 0.88), f"P{li + 2}", rotation=90,
                        va="top", ha="right", fontsize=8, color=colour)
    ax.plot([], [], "--", color="black", label=f"current anchors (scales {fit.current.anchor_scales})")
    if fit.changed:
        ax.plot([], [], ":", color="tab:red", label=f"suggested anchors (scales {fit.suggested.anchor_scales})")
    ax.set_xlabel("object size after the training resize: sqrt(box area), px (log scale)")
    ax.set_ylabel("objects")
    ax.set_title(f"object sizes ({len(sizes)} boxes at {fit.boxes.scale}) and anchor sizes (stride x scale) per level",
                 fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    written.append(out / "sizes.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    # anchor_fit.png: fraction of objects whose best anchor reaches each IoU
    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = np.linspace(0, 1, 201)
    for which, colour in (("current", "black"), ("suggested", "tab:red")):
        st = getattr(fit, which)
        best = st.best_iou.numpy()
        frac = [(best >= t).mean() if best.size else 0.0 for t in x]
        ax.plot(x, frac, color=colour, linewidth=2, linestyle="-" if which == "current" else "--",
                label=f"{which}: scales {st.anchor_scales}, ratios {st.anchor_ratios} (bpr {st.bpr:.1%}, "
                      f"unmatched {st.unmatched})")
    for thr, name, style in ((fit.min_pos_iou, "rpn.min_pos_iou", ":"), (fit.pos_iou_thr, "rpn.pos_iou_thr", "-.")):
        ax.axvline(thr, color="grey", linestyle=style, label=f"{name} {thr:g}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("IoU of the best anchor")
    ax.set_ylabel("fraction of objects with a best anchor at >= IoU")
    ax.set_title(f"anchor fit of {fit.num_boxes} boxes", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    written.append(out / "anchor_fit.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    # classes.png: instances and images per class
    classes = sorted(report["classes"], key=lambda c: c["instances"])
    n = len(classes)
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.22 * n + 1.2)))
    y = np.arange(n)
    ax.barh(y + 0.2, [c["instances"] for c in classes], height=0.4, label="instances", color="tab:blue")
    ax.barh(y - 0.2, [c["images"] for c in classes], height=0.4, label="images", color="tab:orange")
    ax.set_yticks(y)
    ax.set_yticklabels([f"{c['name']} ({c['category_id']})" for c in classes], fontsize=8 if n > 20 else 9)
    if max((c["instances"] for c in classes), default=0) > 50 * max(1, min((c["instances"] for c in classes if c["instances"]), default=1)):
        ax.set_xscale("symlog", linthresh=1)
    ax.set_ylim(-0.6, n - 0.4)
    ax.set_xlabel("count")
    ax.set_title(f"instances and images per class (imbalance ratio {report['imbalance_ratio']:.1f})", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    written.append(out / "classes.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    return written


# ------------------------------------------------------------------------------------------------
# gallery
# ------------------------------------------------------------------------------------------------
def gallery_indices(dataset: Any, n: int) -> list[int]:
    """The densest image, then images with crowd regions, then evenly spaced ones (dataset indices)."""
    if n <= 0 or len(dataset) == 0:
        return []
    counts = [int(dataset.instance_boxes(i)[1].numel()) for i in range(len(dataset))]
    chosen = [int(np.argmax(counts))]
    crowd = [i for i, img_id in enumerate(dataset.img_ids)
             if any(a.get("iscrowd") for a in dataset.coco.imgToAnns.get(img_id, []))]
    for i in crowd + [int(v) for v in np.linspace(0, len(dataset) - 1, n)]:
        if len(chosen) >= n:
            break
        if i not in chosen:
            chosen.append(i)
    return chosen[:n]


def write_gallery(dataset: Any, folder: Path, n: int) -> list[Path]:
    """``n`` images with their ground truth (masks, boxes, class names; crowd regions labelled ``crowd``)."""
    import torch

    from .visualize import display_scale, draw_detections, save_png

    paths = []
    names = list(dataset.class_names) + ["crowd"]
    for i in gallery_indices(dataset, n):
        image = dataset.load_image(i)
        target = dataset.get_raw_target(i)
        s = display_scale(int(image.shape[0]), int(image.shape[1]))  # (H, W, 3)
        drawn = draw_detections(image, target["boxes"], target["labels"], names, masks=target["masks"].bool(), scale=s)
        img_id = dataset.img_ids[i]
        crowd = [a for a in dataset.coco.imgToAnns.get(img_id, []) if a.get("iscrowd")]
        if crowd:
            with warnings.catch_warnings():  # pycocotools vs numpy 2 "copy keyword" deprecation
                warnings.simplefilter("ignore", DeprecationWarning)
                masks = torch.from_numpy(np.stack([dataset.coco.annToMask(a) for a in crowd])).bool()
            boxes = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in crowd]
            masks = masks.repeat_interleave(s, dim=1).repeat_interleave(s, dim=2)  # onto the upscaled picture
            boxes = [[v * s for v in b] for b in boxes]
            drawn = draw_detections(drawn, boxes, [len(names) - 1] * len(crowd), names, masks=masks, alpha=0.3, scale=1)
        stem = Path(dataset.coco.imgs[img_id]["file_name"]).stem
        paths.append(save_png(drawn, folder / f"{img_id}_{stem}.png"))
    return paths


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------
def register_subcommand(sub: Any) -> None:
    p = sub.add_parser(
        "inspect",
        help="report on a data set before training: problems and fixes, classes, object counts, anchor fit",
        description=(
            "Inspect a COCO data set as training will see it: images the start-up checks would skip, images "
            "without annotations, classes and their counts, objects per image against the model's caps, crowd "
            "annotations, and how well the RPN's anchors fit the objects after the training resize, with the "
            "anchors that fit best. Prints problems first, each with the config key to set. Writes only into --out."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("--config", default=None, help="training config YAML (its data and model sections are used)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides (e.g. model.rpn.anchor_scales=[2])")
    p.add_argument("--ann", default=None, help="COCO annotation json (instead of --config)")
    p.add_argument("--images", default=None, help="folder of the images named in --ann")
    p.add_argument("--split", choices=["train", "val", "both"], default="train", help="which split of the config")
    p.add_argument("--checkpoint", default=None,
                   help="take the model settings (anchors, caps) and class names from this checkpoint (no weights are run)")
    p.add_argument("--out", required=True, help="output folder (report.json, report.txt, PNGs, gallery/)")
    p.add_argument("--gallery", type=int, default=0, metavar="N", help="draw the ground truth of N images into DIR/gallery/")
    p.add_argument("--no-plots", action="store_true", help="no PNG plots")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_inspect)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from ..training.config import ConfigError

    if args.gallery < 0:
        raise ConfigError(f"--gallery must be >= 0, got {args.gallery}")
    run_inspect(args)
    return 0
