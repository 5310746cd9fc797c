"""Speed of the training data pipeline: images per second per worker, ours against mmdet 3.3's own
pipeline on the same images, and our training DataLoader's throughput with 0, 1, 2, ... workers.

    python benchmarks/data_speed.py                                  # 40 images x 3 reps, workers 0 1 2
    python benchmarks/data_speed.py --images 40 --reps 3 --workers 0 1 2
    python benchmarks/data_speed.py --repo /path/to/old/checkout     # time an older tree ("before")
    python benchmarks/data_speed.py --workers 0 1 2 16               # a GPU machine (no mmdet venv there)

Per worker (one process, torch 1 thread, what ONE DataLoader worker does per image). Subjects:

* ``ours_1x`` / ``ours_3x``: ``CocoInstanceDataset[i]`` of coco128_seg's train split with the
  recipes' training transforms (``build_train_transforms("1x")``: Resize 1333x800 keep-ratio ->
  RandomFlip 0.5; ``"ms_crop_3x"``: RandomFlip -> RandomChoice(multi-scale 480..800 | 400/500/600 ->
  RandomCrop 384..600 -> multi-scale)): JPEG decode, RLE/polygon rasterising, the transforms, the
  float image and the uint8 (N, H, W) masks the model gets;
* ``mmdet_1x`` / ``mmdet_3x``: mmdet 3.3's ``train_pipeline`` of its packaged Swin-T configs
  (``mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py``: LoadImageFromFile, LoadAnnotations with masks,
  Resize, RandomFlip, PackDetInputs; ``..._ms-crop-3x_coco.py``: the same with the RandomChoice of
  the 3x recipe), built with ``mmengine.dataset.Compose`` from the config, run in a second process
  under the mmdet venv (``--mmdet-python``) on the same images and annotations (the data infos
  mmdet's ``CocoDataset.parse_data_info`` makes: xyxy boxes, labels, polygons, ``ignore_flag``).
  mmdet's PackDetInputs leaves the image uint8 and the masks as numpy ``BitmapMasks`` (its
  data_preprocessor casts on the GPU); ours returns the float image and mask tensors, so ours does
  a little more per image.

Every repetition runs each subject over the same ``--images`` images, one subject after the other
(ours_1x, mmdet_1x, ours_3x, mmdet_3x), every sample timed on its own with a per-(rep, image) seed,
after one warm-up pass per subject. A repetition's images/s is images / summed sample time; the
figure is the median over repetitions (and the median per-sample time beside it). The ratios
are ours / mmdet of the same run.

DataLoader: the training loader as ``train`` builds it (``SeededSamples`` + ``RunBatchSampler``,
batch 2, the 1x pipeline, ``build_train_loader``: pin_memory when CUDA is there, persistent
workers; in a worker each sample's image and masks are allocated in shared memory, so sending them
costs no copy) with each ``--workers`` count, over ``--loader-images`` images; images/s is counted
from the first batch on (worker start-up excluded), median over repetitions. On the shared 2-core
machine the workers compete with the main process and the other jobs.

The 50 images/s training goal on 8 workers needs 50 / 8 = 6.25 images/s per worker.
"""
from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
#: shared/ next to the checkout (the main checkout), one level further up (a worktree in wt/), or inside it (the
#: device machine's copy)
SHARED_CANDIDATES = [REPO / "shared", REPO.parent / "shared", REPO.parent.parent / "shared"]
MMDET_TOOL_CANDIDATES = [p / "tools" / "mmdet_reference" for p in SHARED_CANDIDATES]
DATA_CANDIDATES = [p / "data" / "coco128_seg" for p in SHARED_CANDIDATES]
MMDET_CONFIGS = {"1x": "configs/swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py",
                 "3x": "configs/swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py"}
OURS_KIND = {"1x": "1x", "3x": "ms_crop_3x"}
GOAL_PER_WORKER = 50.0 / 8.0

log = logging.getLogger("data_speed")


def first_existing(paths: list[Path]) -> Optional[Path]:
    return next((p for p in paths if p.exists()), None)


def sample_seed(rep: int, i: int) -> int:
    return 1_000_003 * (rep + 1) + i


# ------------------------------------------------------------------------------------------------
# mmdet worker (runs under the mmdet venv; imports nothing of ours)
# ------------------------------------------------------------------------------------------------
def mmdet_worker(tool: str) -> None:
    """Serves {"cmd": "run", "pipeline", "infos", "seeds"} lines: runs mmdet's train pipeline on every
    data info (seeded), replies the per-sample seconds."""
    import random

    import numpy as np
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, tool)
    import mmcv_ext_shim  # noqa: E402

    mmcv_ext_shim.install()
    import mmdet  # noqa: E402
    from mmengine.config import Config  # noqa: E402
    from mmengine.dataset import Compose  # noqa: E402
    from mmdet.utils import register_all_modules  # noqa: E402

    register_all_modules()
    pipelines = {}
    for name, rel in MMDET_CONFIGS.items():
        cfg = Config.fromfile(os.path.join(os.path.dirname(mmdet.__file__), ".mim", rel))
        pipelines[name] = Compose(cfg.train_pipeline)
    print(json.dumps({"ready": True, "mmdet": mmdet.__version__,
                      "pipelines": {k: [t["type"] for t in Config.fromfile(os.path.join(
                          os.path.dirname(mmdet.__file__), ".mim", v)).train_pipeline] for k, v in MMDET_CONFIGS.items()}}),
          flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if req["cmd"] == "quit":
            break
        pipe = pipelines[req["pipeline"]]
        times, sizes = [], []
        for info, seed in zip(req["infos"], req["seeds"]):
            random.seed(seed)
            np.random.seed(seed % (2**32))
            t0 = time.perf_counter()
            out = pipe(dict(info, instances=[dict(x) for x in info["instances"]]))
            times.append(time.perf_counter() - t0)
            sizes.append(list(out["inputs"].shape[-2:]))
        print(json.dumps({"times": times, "sizes": sizes}), flush=True)


class MmdetProcess:
    """The mmdet worker process, driven one JSON line per request."""

    def __init__(self, python: str, tool: Path) -> None:
        cmd = [python, str(Path(__file__).resolve()), "--mmdet-worker", "--tool", str(tool)]
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, env=env)
        self.hello = self.ask(None)

    def ask(self, req: Optional[dict]) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if req is not None:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"mmdet worker exited (code {self.proc.poll()}); see its stderr above")
        return json.loads(line)

    def close(self) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)
        except Exception:  # noqa: BLE001 - best effort
            self.proc.kill()


def mmdet_infos(ds: Any, n: int) -> list[dict]:
    """mmdet ``CocoDataset.parse_data_info`` records of our dataset's first ``n`` images (same files,
    same annotations; crowd annotations as ``ignore_flag=1``)."""
    infos = []
    for i in range(n):
        img_id = ds.img_ids[i]
        im = ds.coco.imgs[img_id]
        instances = []
        for ann in ds.coco.imgToAnns.get(img_id, []):
            x, y, w, h = ann["bbox"]
            inter_w = max(0, min(x + w, im["width"]) - max(x, 0))
            inter_h = max(0, min(y + h, im["height"]) - max(y, 0))
            if inter_w * inter_h == 0 or ann.get("area", 1) <= 0 or w < 1 or h < 1:
                continue
            instances.append({"ignore_flag": int(ann.get("iscrowd", 0)), "bbox": [x, y, x + w, y + h],
                              "bbox_label": ds.cat_id_to_label[ann["category_id"]], "mask": ann["segmentation"]})
        infos.append({"img_path": str(ds.image_path(img_id)), "img_id": img_id, "seg_map_path": None,
                      "height": im["height"], "width": im["width"], "instances": instances})
    return infos


# ------------------------------------------------------------------------------------------------
# ours
# ------------------------------------------------------------------------------------------------
def data_files(data: Optional[Path], out_dir: Path) -> tuple[Path, Path, str]:
    """(annotation file, image folder, description): coco128_seg's train split, or, where it is not there
    (a GPU machine gets the checkout without ../shared), a synthetic COCO set of 64 train images of
    480x640 with up to 8 shapes each (RLE masks, PNG), written once under ``out_dir``."""
    if data is not None and data.is_dir():
        return data / "annotations" / "train.json", data / "images", f"coco128_seg ({data})"
    from swin_maskrcnn.data.synthetic import ShapeParams, generate_dataset

    root = out_dir / "synthetic_480x640"
    ann = root / "annotations" / "train.json"
    if not ann.is_file():
        log.warning("coco128_seg not found (looked in %s): generating a synthetic set in %s",
                    [str(p) for p in DATA_CANDIDATES], root)
        generate_dataset(root, {"train": 64}, image_size=(480, 640), seed=0, params=ShapeParams(max_objects=8))
    return ann, root / "images" / "train", f"synthetic shapes, 64 images 480x640, PNG + RLE ({root})"


def our_dataset(ann: Path, images: Path, kind: str):
    from swin_maskrcnn.data.coco import CocoInstanceDataset
    from swin_maskrcnn.data.transforms import build_train_transforms

    kw = {}
    if "image_dtype" in inspect.signature(CocoInstanceDataset).parameters:
        kw["image_dtype"] = "uint8"  # what train() uses (an older tree had float32 images only)
    return CocoInstanceDataset(ann, images, transforms=build_train_transforms(OURS_KIND[kind]), **kw)


def run_ours(ds: Any, seeds: list[int]) -> list[float]:
    import torch

    times = []
    for i, seed in enumerate(seeds):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            t0 = time.perf_counter()
            ds[i]
            times.append(time.perf_counter() - t0)
    return times


def loader_speed(ds: Any, workers: int, n_images: int, batch_size: int, seed: int) -> float:
    """Images/s of the training loader from the first batch on (worker start-up excluded)."""
    import torch
    from swin_maskrcnn.data import loader as L

    n_batches = max(2, n_images // batch_size)
    sampler = L.RunBatchSampler(ds.aspect_ratios(), batch_size=batch_size, num_batches=n_batches, seed=seed)
    if hasattr(L, "build_train_loader"):
        dl = L.build_train_loader(ds, sampler, num_workers=workers, seed=seed)
    else:  # an older tree: the loader train.py built there
        g = torch.Generator()
        g.manual_seed(seed)
        dl = torch.utils.data.DataLoader(L.SeededSamples(ds), batch_sampler=sampler, num_workers=workers,
                                         collate_fn=L.collate, generator=g, pin_memory=torch.cuda.is_available())
    it = iter(dl)
    next(it)
    t0 = time.perf_counter()
    count = 0
    for images, _ in it:
        count += len(images)
    dt = time.perf_counter() - t0
    del it, dl
    return count / dt


# ------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=40, help="images per subject and repetition (per-worker part)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workers", type=int, nargs="*", default=[0, 1, 2], help="DataLoader worker counts (none: skip)")
    ap.add_argument("--loader-images", type=int, default=None,
                    help="images per DataLoader run (default: max(64, 16 x workers x batch size), so that every "
                         "worker serves several batches after its start-up)")
    ap.add_argument("--loader-reps", type=int, default=None, help="DataLoader repetitions (default --reps)")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--pipelines", nargs="+", default=["1x", "3x"], choices=["1x", "3x"])
    ap.add_argument("--data", type=Path, default=first_existing(DATA_CANDIDATES),
                    help="coco128_seg folder (default: found next to the checkout; missing: a synthetic set)")
    ap.add_argument("--repo", type=Path, default=REPO, help="import swin_maskrcnn from this source tree")
    ap.add_argument("--mmdet-python", default="/work/mmdet-venv/bin/python",
                    help="the mmdet venv's python (skipped when missing)")
    ap.add_argument("--no-mmdet", action="store_true")
    ap.add_argument("--out", type=Path, default=REPO / "bench_out" / "data_speed" / "data_speed.json")
    ap.add_argument("--mmdet-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tool", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mmdet_worker:
        mmdet_worker(args.tool)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("swin_maskrcnn").setLevel(logging.WARNING)
    sys.path.insert(0, str(args.repo.resolve()))
    if args.repo.resolve() != REPO:
        sys.path.insert(1, str(REPO))
    import torch

    torch.set_num_threads(1)
    ann, images, data_desc = data_files(args.data, REPO / "bench_out" / "data_speed")  # not under --out: 60 MB of PNGs
    import swin_maskrcnn

    log.info("swin_maskrcnn from %s; data %s; torch %s, %d cores", Path(swin_maskrcnn.__file__).parent, data_desc,
             torch.__version__, os.cpu_count())
    datasets = {k: our_dataset(ann, images, k) for k in args.pipelines}
    n = min(args.images, len(datasets[args.pipelines[0]]))
    tool = first_existing(MMDET_TOOL_CANDIDATES)
    mm: Optional[MmdetProcess] = None
    if not args.no_mmdet and Path(args.mmdet_python).exists() and tool is not None:
        mm = MmdetProcess(args.mmdet_python, tool)
        log.info("mmdet worker ready: mmdet %s, pipelines %s", mm.hello["mmdet"], mm.hello["pipelines"])
        infos = mmdet_infos(datasets[args.pipelines[0]], n)
    else:
        log.warning("mmdet venv not used (%s missing or --no-mmdet): ours only", args.mmdet_python)

    subjects = [s for k in args.pipelines for s in ([f"ours_{k}"] + ([f"mmdet_{k}"] if mm else []))]
    times: dict[str, list[list[float]]] = {s: [] for s in subjects}
    for rep in range(-1, args.reps):  # rep -1: warm-up, excluded
        seeds = [sample_seed(max(rep, 0), i) for i in range(n)]
        for s in subjects:
            who, kind = s.split("_")
            if who == "ours":
                t = run_ours(datasets[kind], seeds)
            else:
                assert mm is not None
                t = mm.ask({"cmd": "run", "pipeline": kind, "infos": infos, "seeds": seeds})["times"]
            if rep >= 0:
                times[s].append(t)
        if rep >= 0:
            log.info("rep %d: %s", rep, ", ".join(f"{s} {n / sum(times[s][-1]):.1f} img/s" for s in subjects))
    if mm is not None:
        mm.close()

    per_worker = {}
    for s in subjects:
        per_worker[s] = {
            "img_per_s": statistics.median(n / sum(t) for t in times[s]),
            "img_per_s_reps": [n / sum(t) for t in times[s]],
            "median_ms": 1e3 * statistics.median(x for t in times[s] for x in t),
        }

    loader: dict[str, Any] = {}
    if args.workers:
        lreps = args.loader_reps or args.reps
        runs: dict[int, list[float]] = {w: [] for w in args.workers}
        for _ in range(lreps):
            for w in args.workers:
                n_img = args.loader_images or max(64, 16 * w * args.batch_size)
                runs[w].append(loader_speed(datasets[args.pipelines[0]], w, n_img, args.batch_size, 0))
        loader = {str(w): {"img_per_s": statistics.median(v), "reps": v} for w, v in runs.items()}
        loader["pipeline"] = args.pipelines[0]

    result = {"args": {k: str(v) for k, v in vars(args).items()}, "images": n, "per_worker": per_worker,
              "loader": loader, "goal_per_worker": GOAL_PER_WORKER, "cores": os.cpu_count(),
              "load_avg": list(os.getloadavg()), "torch": torch.__version__, "data": data_desc,
              "swin_maskrcnn": str(Path(swin_maskrcnn.__file__).parent)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))

    print(f"\ndata: {data_desc}")
    print(f"per worker ({n} images x {args.reps} reps, 1 thread, medians; goal >= 1.5x mmdet and >= "
          f"{GOAL_PER_WORKER:.2f} img/s for 50 img/s on 8 workers)")
    print(f"{'subject':<10} {'img/s':>8} {'ms/img (median)':>16} {'vs mmdet':>9}")
    for s in subjects:
        who, kind = s.split("_")
        ratio = ""
        if who == "ours" and f"mmdet_{kind}" in per_worker:
            ratio = f"{per_worker[s]['img_per_s'] / per_worker[f'mmdet_{kind}']['img_per_s']:.2f}x"
        print(f"{s:<10} {per_worker[s]['img_per_s']:>8.1f} {per_worker[s]['median_ms']:>16.1f} {ratio:>9}")
    if loader:
        print(f"\nDataLoader ({loader['pipeline']} pipeline, batch {args.batch_size}, "
              f"{args.loader_images or 'max(64, 16 x workers x batch)'} images, medians of {args.loader_reps or args.reps}; "
              f"pin_memory={torch.cuda.is_available()}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
        for w in args.workers:
            print(f"  {w:>2} workers: {loader[str(w)]['img_per_s']:.1f} img/s")
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
