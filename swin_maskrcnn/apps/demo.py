"""``make demo``: proof, on data the project generates itself, that the detector learns.

:func:`run_demo` (CLI: ``swin-maskrcnn demo [--out DIR] [--steps N] [--seed S]``)

1. generates a synthetic instance-segmentation dataset (:mod:`swin_maskrcnn.data.synthetic`: textured,
   occluding shapes of five classes) with a training split and a held-out ``val`` split,
2. trains a small Swin Mask R-CNN from scratch on the CPU with :func:`swin_maskrcnn.training.train.train`
   (recipe: ``configs/demo.yaml``; a fixed step count, so a run is reproducible),
3. evaluates the final weights on the whole held-out split with COCOeval
   (:func:`swin_maskrcnn.evaluation.evaluate_model`),
4. draws predictions over a few held-out images (``overlays/val_XXXXXX.png``: ground truth left,
   predictions right) and plots the loss and AP curves read from the run's CSV log
   (``curves.png``), and writes ``metrics.json``.

The CLI prints exactly one line on stdout, ``demo: box AP <x.xxx>, mask AP <x.xxx>``; everything
else (logging, Lightning's progress bar) goes to stderr.

``configs/demo.yaml`` is a normal training config plus a ``demo:`` section (dataset size, image
size, number of overlays) that :func:`run_demo` removes before validating the rest as a
:class:`~swin_maskrcnn.training.config.TrainConfig`. The ``data.*`` paths, ``runtime.out_dir`` /
``run_name`` and the seeds are set by :func:`run_demo`.

Output folder::

    out_dir/data/{images,annotations}/    the synthetic dataset (reused when it already matches)
    out_dir/run/                          the training run (config.yaml, csv/, tensorboard/, checkpoints/, model_final.pt)
    out_dir/overlays/val_XXXXXX.png       predictions on held-out images
    out_dir/curves.png                    loss and AP curves
    out_dir/metrics.json                  final COCO metrics and timings
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import importlib.util
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from .options import HelpFormatter

log = logging.getLogger(__name__)

__all__ = ["run_demo", "prepare_demo", "train_demo", "evaluate_demo", "draw_demo", "default_config_path",
           "default_threads", "register_subcommand", "demo_line", "draw_overlay", "plot_curves"]

#: the demo recipe's file name; searched next to the package (installed) and in the repository
CONFIG_NAME = "demo.yaml"
#: predictions drawn in the overlays have at least this score
OVERLAY_SCORE_THR = 0.5


def default_config_path() -> Path:
    """``configs/demo.yaml``: packaged copy (``swin_maskrcnn/configs``) first, else the repository's."""
    package = Path(__file__).resolve().parent.parent
    candidates = (package / "configs" / CONFIG_NAME, package.parent / "configs" / CONFIG_NAME)
    for cand in candidates:
        if cand.is_file():
            return cand
    raise FileNotFoundError(f"{CONFIG_NAME} not found in {candidates[0].parent} or {candidates[1].parent}")


#: the kernel's run-queue figures; field 4 is "runnable/total" scheduling entities right now
PROC_LOADAVG = Path("/proc/loadavg")


def other_runnable(samples: int = 10, interval_s: float = 0.05) -> Optional[float]:
    """Mean number of runnable tasks besides this one over ``samples`` reads of ``/proc/loadavg``
    (``None`` where the file does not exist).

    An instantaneous figure, unlike the load average: the 1-minute average still counts the
    ``pip install`` that ``make demo`` runs just before, which would make an idle machine look busy."""
    counts = []
    try:
        for i in range(samples):
            if i:
                time.sleep(interval_s)
            runnable = PROC_LOADAVG.read_text().split()[3].split("/")[0]
            counts.append(int(runnable) - 1)  # this process is running while it reads the file
    except (OSError, IndexError, ValueError):
        return None
    return max(0.0, sum(counts) / len(counts))


def default_threads() -> int:
    """torch threads for the demo: every CPU of this process when the machine is otherwise idle,
    half of them when it is busy.

    PyTorch's OpenMP threads spin while they wait for each other. On an idle 2-core machine two
    threads make a step ~1.4x faster than one; when other processes compete for the cores the
    spinning threads lose their time slices and a step gets several times SLOWER than with one
    thread (measured up to ~10x with three other 2-thread jobs on 2 cores). ``OMP_WAIT_POLICY=
    PASSIVE`` avoids the collapse but was slower than one thread both idle and busy. "Busy" means
    at least half the CPUs' worth of other runnable tasks at start-up (:func:`other_runnable`;
    the 1-minute load average where ``/proc/loadavg`` is missing). ``--threads`` overrides it."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    others = other_runnable()
    if others is None:
        try:
            others = os.getloadavg()[0]
        except (AttributeError, OSError):
            return cpus
    return cpus if others < 0.5 * cpus else max(1, cpus // 2)


def demo_line(box_ap: float, mask_ap: float) -> str:
    """The CLI's one line of output."""
    return f"demo: box AP {box_ap:.3f}, mask AP {mask_ap:.3f}"


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
def _dataset_matches(data_dir: Path, counts: dict[str, int], image_size: Any, seed: int, params: Any) -> bool:
    """True when ``data_dir`` already holds exactly the dataset these arguments would generate."""
    from ..data.synthetic import params_info

    want_params = json.loads(json.dumps(params_info(params)))
    want_size = json.loads(json.dumps(image_size))
    for split, n in counts.items():
        ann = data_dir / "annotations" / f"{split}.json"
        if not ann.is_file():
            return False
        try:
            coco = json.loads(ann.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        info = coco.get("info") or {}
        if (info.get("seed") != seed or info.get("params") != want_params or info.get("image_size") != want_size
                or len(coco.get("images", [])) != n):
            return False
        if not all((data_dir / "images" / split / im["file_name"]).is_file() for im in coco["images"]):
            return False
    return True


def _generate_data(data_dir: Path, demo: dict[str, Any], seed: int) -> dict[str, Any]:
    from ..data.synthetic import ShapeParams, generate_dataset

    counts = {"train": int(demo["train_images"]), "val": int(demo["val_images"])}
    size = demo["image_size"]
    image_size = int(size) if isinstance(size, (int, float)) else tuple(tuple(s) if isinstance(s, list) else int(s) for s in size)
    params = ShapeParams(**{k: tuple(v) if isinstance(v, list) else v for k, v in (demo.get("shapes") or {}).items()})
    t0 = time.time()
    if _dataset_matches(data_dir, counts, image_size, seed, params):
        log.info("reusing the synthetic dataset in %s", data_dir)
    else:
        for sub in ("images", "annotations"):
            shutil.rmtree(data_dir / sub, ignore_errors=True)
        log.info("generating %d training + %d held-out synthetic images in %s", counts["train"], counts["val"], data_dir)
        generate_dataset(data_dir, counts, image_size=image_size, seed=seed, params=params)
    return {
        "train_ann": str(data_dir / "annotations" / "train.json"),
        "train_images": str(data_dir / "images" / "train"),
        "val_ann": str(data_dir / "annotations" / "val.json"),
        "val_images": str(data_dir / "images" / "val"),
        "seconds": time.time() - t0,
    }


# ------------------------------------------------------------------------------------------------
# config
# ------------------------------------------------------------------------------------------------
DEMO_DEFAULTS: dict[str, Any] = {
    "train_images": 400,
    "val_images": 100,
    "image_size": 128,
    "overlay_images": 6,
    "val_points": 4,
    "shapes": {},
}


def _load_recipe(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(raw training config mapping, demo section with defaults) of the recipe file."""
    from ..errors import ConfigError
    from ..training.config import load_yaml

    raw = load_yaml(path)
    demo = {**DEMO_DEFAULTS, **(raw.pop("demo", None) or {})}
    unknown = sorted(set(demo) - set(DEMO_DEFAULTS))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) in the demo section: {', '.join('demo.' + k for k in unknown)}")
    return raw, demo


def _finish_recipe(raw: dict[str, Any], demo: dict[str, Any], path_hint: str, out_dir: Path, data: dict[str, Any],
                   seed: int, steps: Optional[int], progress: bool, overrides: Sequence[str]) -> Any:
    """Validated TrainConfig: the recipe with the demo's paths, seeds, step count and overrides."""
    from ..training.config import apply_overrides, config_from_dict

    raw = apply_overrides(raw, [
        f"data.train_ann={data['train_ann']}", f"data.train_images={data['train_images']}",
        f"data.val_ann={data['val_ann']}", f"data.val_images={data['val_images']}",
        f"runtime.out_dir={out_dir}", "runtime.run_name=run",
        f"runtime.seed={seed}", f"data.seed={seed}", f"runtime.progress_bar={str(bool(progress)).lower()}",
    ])
    size = demo["image_size"]
    if isinstance(size, (int, float)):  # square images: train and test at their own size
        raw["data"]["scale"] = [int(size), int(size)]
        raw.setdefault("model", {})["test_scale"] = [int(size), int(size)]
    optim = raw.setdefault("optim", {})
    runtime = raw.setdefault("runtime", {})
    if steps is not None:
        if steps < 1:
            from ..errors import ConfigError

            raise ConfigError(f"--steps must be >= 1, got {steps}")
        base_steps = int(optim.get("max_steps", steps))
        optim["max_steps"] = int(steps)
        # keep the schedule's shape: warmup and decay milestones scale with the step count
        if "warmup_iters" in optim:
            optim["warmup_iters"] = min(int(optim["warmup_iters"]), int(round(optim["warmup_iters"] * steps / max(base_steps, 1))))
            if optim["warmup_iters"] >= steps:
                optim["warmup_iters"] = 0
        if optim.get("milestones"):
            ms = sorted({max(1, int(round(m * steps / base_steps))) for m in optim["milestones"]})
            optim["milestones"] = [m for m in ms if m < steps]
    n_steps = int(optim.get("max_steps", 1))
    points = max(1, int(demo.get("val_points", 4)))
    runtime["val_every_n_steps"] = max(1, math.ceil(n_steps / points))
    runtime["checkpoint_every_n_steps"] = n_steps
    raw = apply_overrides(raw, overrides)
    return config_from_dict(raw, path_hint + (" with overrides " + " ".join(overrides) if overrides else ""))


# ------------------------------------------------------------------------------------------------
# pictures
# ------------------------------------------------------------------------------------------------
def draw_overlay(
    image: np.ndarray,
    instances: Sequence[dict[str, Any]],
    class_names: Sequence[str],
    scale: int = 3,
    title: Optional[str] = None,
) -> "Any":
    """(3, H', W') uint8 tensor of ``image`` (H, W, 3 uint8) upscaled ``scale`` times with the instances
    drawn by :func:`~swin_maskrcnn.apps.visualize.draw_detections` (the code ``predict --viz`` uses),
    under an optional title. Each instance has ``mask`` (H, W bool), ``bbox`` [x, y, w, h], ``label``
    (index into ``class_names``) and optionally ``score``."""
    import torch

    from .visualize import add_title, draw_detections

    h, w = image.shape[:2]
    boxes = np.array([[b[0], b[1], b[0] + b[2], b[1] + b[3]] for b in (inst["bbox"] for inst in instances)],
                     dtype=np.float32).reshape(-1, 4)
    masks = np.stack([np.asarray(inst["mask"], dtype=bool) for inst in instances]) if instances else np.zeros((0, h, w), bool)
    scores = [inst["score"] for inst in instances] if instances and all("score" in i for i in instances) else None
    picture = draw_detections(image, boxes, [int(i["label"]) for i in instances], class_names,
                              masks=torch.from_numpy(masks), scores=scores, scale=scale)
    return add_title(picture, title) if title else picture


def _write_overlays(out_dir: Path, val_ds: Any, results: Sequence[dict], num: int) -> list[str]:
    import torch
    from pycocotools import mask as mask_utils

    from ..data.images import load_rgb_image
    from .visualize import save_png

    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("val_*.png"):
        old.unlink()
    coco = val_ds.coco
    cat_to_label = val_ds.cat_id_to_label
    names = val_ds.class_names
    by_image: dict[int, list[dict]] = {}
    for r in results:
        by_image.setdefault(int(r["image_id"]), []).append(r)
    # the first held-out images that have objects (an empty image makes a dull picture)
    ids = [i for i in sorted(coco.getImgIds()) if coco.getAnnIds(imgIds=[i], iscrowd=None)][: max(0, num)]
    paths = []
    for img_id in ids:
        image = load_rgb_image(Path(val_ds.image_dir) / coco.imgs[img_id]["file_name"])
        gt = [{"mask": coco.annToMask(a).astype(bool), "bbox": a["bbox"], "label": cat_to_label[a["category_id"]]}
              for a in coco.loadAnns(coco.getAnnIds(imgIds=[img_id], iscrowd=None))]
        preds = sorted((r for r in by_image.get(img_id, []) if r["score"] >= OVERLAY_SCORE_THR),
                       key=lambda r: r["score"])
        pred = [{"mask": mask_utils.decode(r["segmentation"]).astype(bool), "bbox": r["bbox"],
                 "label": cat_to_label[r["category_id"]], "score": r["score"]} for r in preds]
        left = draw_overlay(image, gt, names, title=f"ground truth ({len(gt)})")
        right = draw_overlay(image, pred, names, title=f"predictions, score >= {OVERLAY_SCORE_THR} ({len(pred)})")
        gap = torch.full((3, left.shape[1], 6), 255, dtype=torch.uint8)
        path = save_png(torch.cat([left, gap, right], dim=2), out_dir / f"val_{img_id:06d}.png")
        paths.append(str(path))
    return paths


def _read_csv_logs(run_dir: Path) -> list[dict[str, float]]:
    """Rows of the run's newest ``csv/version_*/metrics.csv`` (empty cells dropped)."""
    versions = sorted((run_dir / "csv").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[-1]))
    if not versions:
        return []
    rows = []
    with open(versions[-1], newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            parsed = {}
            for k, v in row.items():
                if v not in (None, ""):
                    try:
                        parsed[k] = float(v)
                    except ValueError:
                        pass
            if "step" in parsed:
                rows.append(parsed)
    return rows


def plot_curves(rows: Sequence[dict[str, float]], path: Union[str, Path],
                final: Optional[tuple[float, float, int]] = None) -> Path:
    """Training losses (left) and validation AP (right) over optimizer steps, as a PNG.

    ``final`` = (box AP, mask AP, step) of the final held-out evaluation, drawn as stars."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, (ax_l, ax_r) = plt.subplots(1, 2, figsize=(12, 4.5))
    loss_keys = ["train/loss", "train/loss_rpn_cls", "train/loss_rpn_bbox", "train/loss_cls", "train/loss_bbox",
                 "train/loss_mask"]
    for k in loss_keys:
        pts = [(r["step"], r[k]) for r in rows if k in r and math.isfinite(r[k])]
        if not pts:
            continue
        xs, ys = zip(*pts)
        name = k.split("/", 1)[1]
        total = k == "train/loss"
        win = max(1, len(ys) // 25)
        if total and win > 1:
            ax_l.plot(xs, ys, color="0.8", lw=0.8)
        if win > 1:  # running mean, so the trend is visible through the per-batch noise
            ys = np.convolve(ys, np.ones(win) / win, mode="valid")
            xs = xs[win - 1:]
            name += f" (mean of {win} logs)" if total else ""
        ax_l.plot(xs, ys, color="k" if total else None, lw=2 if total else 1.2, label=name)
    if ax_l.lines:
        ax_l.set_yscale("log")
    ax_l.set_xlabel("optimizer step")
    ax_l.set_title("training losses")
    ax_l.grid(alpha=0.3, which="both")
    if ax_l.get_legend_handles_labels()[0]:
        ax_l.legend(fontsize=8)
    for k, label, c in (("val/bbox_AP", "box AP", "tab:blue"), ("val/segm_AP", "mask AP", "tab:red"),
                        ("val/bbox_AP50", "box AP50", "tab:cyan"), ("val/segm_AP50", "mask AP50", "tab:pink")):
        pts = [(r["step"], r[k]) for r in rows if k in r and r[k] >= 0]
        if pts:
            xs, ys = zip(*pts)
            ax_r.plot(xs, ys, marker="o", color=c, lw=2 if "50" not in k else 1, ls="-" if "50" not in k else "--",
                      label=f"{label} (val subset)")
    if final is not None:
        box, mask, step = final
        ax_r.plot([step], [box], marker="*", ms=14, color="tab:blue", ls="none", label=f"box AP held-out {box:.3f}")
        ax_r.plot([step], [mask], marker="*", ms=14, color="tab:red", ls="none", label=f"mask AP held-out {mask:.3f}")
    ax_r.set_ylim(0, 1)
    ax_r.set_xlabel("optimizer step")
    ax_r.set_title("COCO AP (IoU .50:.95) on held-out images")
    ax_r.grid(alpha=0.3)
    if ax_r.get_legend_handles_labels()[0]:
        ax_r.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------
# the demo
# ------------------------------------------------------------------------------------------------
def prepare_demo(
    out_dir: Path, seed: int, steps: Optional[int], config: Optional[Union[str, Path]], overrides: Sequence[str],
    demo_overrides: dict[str, Any], progress: bool,
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Phase 1: the recipe, the synthetic dataset (reused when it matches) and the validated
    TrainConfig. Returns (config, data paths and generation seconds, demo section)."""
    path = Path(config) if config is not None else default_config_path()
    raw, demo = _load_recipe(path)
    demo.update({k: v for k, v in demo_overrides.items() if v is not None})
    data = _generate_data(out_dir / "data", demo, seed)
    cfg = _finish_recipe(raw, demo, str(path), out_dir, data, seed, steps, progress, overrides)
    return cfg, data, demo


def train_demo(cfg: Any, out_dir: Path) -> tuple[dict[str, Any], float]:
    """Phase 2: train from scratch into ``out_dir/run`` (a previous run there is removed: no resume,
    no stale checkpoints or logs). Returns (the training summary, seconds)."""
    import torch

    from ..training.train import train

    run_dir = out_dir / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    log.info("training %d steps (batch %d, %dx%d px, %d threads) into %s", cfg.optim.max_steps,
             cfg.data.batch_size, *cfg.data.scale, torch.get_num_threads(), run_dir)
    t0 = time.time()
    summary = train(cfg, name_hint="demo")
    return summary, time.time() - t0


def evaluate_demo(summary: dict[str, Any], cfg: Any, data: dict[str, Any]) -> dict[str, Any]:
    """Phase 3: COCOeval of the final weights on the whole held-out split. Returns ``metrics``,
    ``results`` (COCO result dicts), ``val_ds``, ``box_ap`` / ``mask_ap`` (COCOeval's -1 and a missing
    "segm" entry, i.e. no prediction at all, reported as 0) and ``seconds``."""
    from ..checkpoint.loader import load_checkpoint
    from ..data.coco import CocoInstanceDataset
    from ..data.transforms import build_test_transforms
    from ..evaluation import evaluate_model

    t0 = time.time()
    model, _, _ = load_checkpoint(summary["final_model"])
    val_ds = CocoInstanceDataset(data["val_ann"], data["val_images"], transforms=build_test_transforms(cfg.model.test_scale))
    metrics, results = evaluate_model(model, val_ds, batch_size=cfg.data.val_batch_size,
                                      max_dets=tuple(cfg.runtime.val_max_dets), progress=False,
                                      score_thr=float(cfg.model.roi.score_thr))
    return {
        "metrics": metrics, "results": results, "val_ds": val_ds,
        "box_ap": max(float(metrics["bbox"]["AP"]), 0.0),
        "mask_ap": max(float(metrics["segm"]["AP"]), 0.0) if "segm" in metrics else 0.0,
        "seconds": time.time() - t0,
    }


def draw_demo(
    out_dir: Path, evaluation: dict[str, Any], summary: dict[str, Any], overlay_images: int
) -> tuple[list[str], Optional[Path], float]:
    """Phase 4: overlays of held-out images and the loss/AP curves. Returns (overlay paths, plot, seconds).

    The plot needs matplotlib (the optional ``[demo]`` extra); without it ``plot`` is None."""
    t0 = time.time()
    overlays = _write_overlays(out_dir / "overlays", evaluation["val_ds"], evaluation["results"], int(overlay_images))
    rows = _read_csv_logs(Path(summary["run_dir"]))
    final = (evaluation["box_ap"], evaluation["mask_ap"], int(summary["global_step"]))
    if importlib.util.find_spec("matplotlib") is None:
        log.warning("matplotlib is not installed: no curves.png (pip install 'swin-maskrcnn[demo]')")
        return overlays, None, time.time() - t0
    plot = plot_curves(rows, out_dir / "curves.png", final=final)
    return overlays, plot, time.time() - t0


def run_demo(
    out_dir: Union[str, Path] = "demo_out",
    minutes_budget: Optional[float] = 15.0,
    seed: int = 0,
    steps: Optional[int] = None,
    config: Optional[Union[str, Path]] = None,
    overrides: Sequence[str] = (),
    train_images: Optional[int] = None,
    val_images: Optional[int] = None,
    image_size: Optional[int] = None,
    overlay_images: Optional[int] = None,
    threads: Optional[int] = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Generate data, train, evaluate on the held-out split, draw overlays and curves (one function per phase:
    :func:`prepare_demo`, :func:`train_demo`, :func:`evaluate_demo`, :func:`draw_demo`).

    ``steps`` overrides the recipe's ``optim.max_steps`` (warmup scaled with it);
    ``train_images`` / ``val_images`` / ``image_size`` / ``overlay_images`` override the recipe's
    ``demo:`` section, ``overrides`` are ``dotted.key=value`` strings applied to the training
    config last. ``threads``: torch intra-op threads (default: :func:`default_threads`).
    ``minutes_budget`` is not a time limit (the step count is fixed, for reproducibility): a run
    that takes longer logs a warning and reports ``within_budget: False``.

    Returns ``box_ap``, ``mask_ap`` (held-out COCO AP), ``metrics`` (full COCOeval figures),
    ``overlays`` and ``plot`` (paths), ``run_dir``, ``summary`` (of :func:`~swin_maskrcnn.training.train.train`),
    ``steps``, ``timings`` (seconds per phase), ``within_budget``.
    """
    t_start, cpu_start = time.time(), time.process_time()
    import torch

    from ..io_utils import atomic_write

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if threads is None:
        threads = default_threads()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads)))
    try:
        demo_overrides = {"train_images": train_images, "val_images": val_images, "image_size": image_size,
                          "overlay_images": overlay_images}
        cfg, data, demo = prepare_demo(out_dir, seed, steps, config, overrides, demo_overrides, progress)
        summary, train_s = train_demo(cfg, out_dir)
        ev = evaluate_demo(summary, cfg, data)
        overlays, plot, pics_s = draw_demo(out_dir, ev, summary, demo["overlay_images"])
        total_s = time.time() - t_start
        within = minutes_budget is None or total_s <= 60.0 * minutes_budget
        if not within:
            log.warning("the demo took %.1f min, over its budget of %.1f min", total_s / 60, minutes_budget)
        result = {
            "box_ap": ev["box_ap"],
            "mask_ap": ev["mask_ap"],
            "metrics": ev["metrics"],
            "overlays": overlays,
            "plot": None if plot is None else str(plot),
            "run_dir": summary["run_dir"],
            "data": {k: v for k, v in data.items() if k != "seconds"},
            "steps": int(summary["global_step"]),
            "threads": torch.get_num_threads(),
            "summary": summary,
            "timings": {"data_s": data["seconds"], "train_s": train_s, "eval_s": ev["seconds"], "pictures_s": pics_s,
                        "total_s": total_s, "cpu_s": time.process_time() - cpu_start},
            "within_budget": within,
            "minutes_budget": minutes_budget,
        }
        report = {k: v for k, v in result.items() if k != "summary"}
        atomic_write(out_dir / "metrics.json", lambda f: json.dump(report, f, indent=1, default=str))
        log.info("demo finished in %.1f min (data %.0f s, training %.0f s, evaluation %.0f s): box AP %.3f, "
                 "mask AP %.3f on %d held-out images; overlays in %s, curves in %s", total_s / 60, data["seconds"],
                 train_s, ev["seconds"], ev["box_ap"], ev["mask_ap"], ev["metrics"]["num_images"],
                 out_dir / "overlays", plot)
        return result
    finally:
        torch.set_num_threads(previous_threads)


# ------------------------------------------------------------------------------------------------
# command line (plugged into swin_maskrcnn.apps.cli)
# ------------------------------------------------------------------------------------------------
def register_subcommand(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="generate synthetic shapes, train a small model on the CPU, report held-out COCO AP",
        description=(
            "Proof that the detector learns: generates a synthetic instance-segmentation dataset, trains a "
            "small Swin Mask R-CNN from scratch with the recipe in configs/demo.yaml (fixed step count), "
            "evaluates on held-out images with COCOeval, writes overlays and loss/AP curves to --out, and "
            "prints one line 'demo: box AP x, mask AP y' on stdout (everything else goes to stderr)."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("--out", default="demo_out", help="output folder (data, run, overlays, curves, metrics.json)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's optim.max_steps)")
    p.add_argument("--seed", type=int, default=0, help="data, model init and data order seed")
    p.add_argument("--config", default=None, help="recipe YAML (default: configs/demo.yaml)")
    p.add_argument("--train-images", type=int, default=None, help="synthetic training images (default: recipe)")
    p.add_argument("--val-images", type=int, default=None, help="held-out images (default: recipe)")
    p.add_argument("--image-size", type=int, default=None, help="square image side in pixels (default: recipe)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: all CPUs when the machine is idle, half of them when it is busy)")
    p.add_argument("--budget-minutes", type=float, default=15.0, help="warn when the demo takes longer (not a limit)")
    bar = p.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None, help="progress bar on stderr")
    bar.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="training config overrides (e.g. optim.lr=5e-4)")
    p.set_defaults(func=_cmd_demo, trains=True)  # runtime.keep_freed_memory decides (apps.cli.apply_malloc_setting)


def _cmd_demo(args: argparse.Namespace) -> int:
    progress = sys.stderr.isatty() if args.progress is None else bool(args.progress)
    # stdout carries only the final line: Lightning's progress bar and any stray print go to stderr
    with contextlib.redirect_stdout(sys.stderr):
        result = run_demo(
            out_dir=args.out, minutes_budget=args.budget_minutes, seed=args.seed, steps=args.steps,
            config=args.config, overrides=args.overrides, train_images=args.train_images,
            val_images=args.val_images, image_size=args.image_size, threads=args.threads, progress=progress,
        )
    print(demo_line(result["box_ap"], result["mask_ap"]), flush=True)
    return 0
