"""Shared test helpers: fixture paths, the location of ../shared/data, a tiny COCO data set and training config."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pytest
import torch
from PIL import Image

if TYPE_CHECKING:
    from swin_maskrcnn.training.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED_DATA = REPO.parent / "shared" / "data"

torch.set_num_threads(int(os.environ.get("SWIN_MASKRCNN_TEST_THREADS", "2")))


COCO128 = SHARED_DATA / "coco128_seg"
NUCLEI = SHARED_DATA / "dsb2018_nuclei"
needs_coco128 = pytest.mark.skipif(not COCO128.is_dir(), reason=f"coco128_seg not found under {SHARED_DATA}")
needs_nuclei = pytest.mark.skipif(not NUCLEI.is_dir(), reason=f"dsb2018_nuclei not found under {SHARED_DATA}")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA}")
    return SHARED_DATA


STEPS = 50  # the training tests' run length (tests/training/test_training.py)


# ------------------------------------------------------------------------------------------------
# synthetic data
# ------------------------------------------------------------------------------------------------
def make_tiny_coco(root: Path, n_images: int = 6, seed: int = 0,
                   sizes: Sequence[tuple[int, int]] = ((128, 128), (128, 112), (112, 128)),
                   object_sides: tuple[int, int] = (24, 56)) -> tuple[Path, Path]:
    """``n_images`` PNGs (cycling through ``sizes``, (w, h): square, landscape, portrait) of noise
    with 1-3 filled rectangles (category id 3) and ellipses (category id 7) whose sides are drawn
    from ``object_sides``, polygon masks; image k is ``img_00k.png`` with id k + 1. Returns (json, folder)."""
    root = Path(root)
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cats = [{"id": 3, "name": "rect"}, {"id": 7, "name": "ellipse"}]
    images, anns = [], []
    aid = 1
    for i in range(n_images):
        w, h = sizes[i % len(sizes)]
        arr = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
        for _ in range(int(rng.integers(1, 4))):
            bw, bh = int(rng.integers(*object_sides)), int(rng.integers(*object_sides))
            x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            kind = int(rng.integers(0, 2))
            if kind == 0:
                arr[y0:y0 + bh, x0:x0 + bw] = (220, 60, 60)
                poly = [x0, y0, x0 + bw, y0, x0 + bw, y0 + bh, x0, y0 + bh]
            else:
                cx, cy, rx, ry = x0 + bw / 2, y0 + bh / 2, bw / 2, bh / 2
                yy, xx = np.mgrid[0:h, 0:w]
                arr[((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2 <= 1] = (60, 220, 60)
                t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
                poly = np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1).reshape(-1).round(2).tolist()
            anns.append({"id": aid, "image_id": i + 1, "category_id": cats[kind]["id"], "bbox": [x0, y0, bw, bh],
                         "area": float(bw * bh), "iscrowd": 0, "segmentation": [poly]})
            aid += 1
        name = f"img_{i:03d}.png"
        Image.fromarray(arr).save(img_dir / name)
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
    ann = root / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return ann, img_dir


def tiny_train_config(ann: Path, imgs: Path, out_dir: Path, run_name: str, max_steps: int = STEPS, **runtime) -> TrainConfig:
    """Tiny model (narrow heads), small samplers, CPU, everything logged every step."""
    from swin_maskrcnn.modeling.config import tiny_model_config
    from swin_maskrcnn.training.config import config_from_dict

    model = tiny_model_config(
        num_classes=2,
        fpn_channels=32,
        roi_fc_dims=128,
        mask_head_channels=16,
        rpn=dict(nms_pre_train=300, max_per_img_train=100, nms_pre_test=200, max_per_img_test=100),
        roi=dict(num_samples=64, max_per_img=20),
        test_scale=(128, 128),
    ).model_dump(mode="json")
    rt = dict(accelerator="cpu", devices=1, val_every_n_steps=25, checkpoint_every_n_steps=15, log_every_n_steps=1,
              probe_every_n_steps=10, probe_images=2, out_dir=str(out_dir), run_name=run_name, progress_bar=False,
              collapse=dict(grace_steps=0, loss_window=5), seed=0)
    rt.update(runtime)
    return config_from_dict({
        "model": model,
        "data": dict(train_ann=str(ann), train_images=str(imgs), val_ann=str(ann), val_images=str(imgs),
                     transforms="1x", scale=[128, 128], batch_size=2, num_workers=0, min_size=0),
        "optim": dict(lr=2e-4, warmup_iters=5, milestones=[30] if max_steps > 30 else [], max_steps=max_steps),
        "runtime": rt,
    })


def read_metrics_csv(run_dir: Path) -> list[dict[str, str]]:
    files = sorted(Path(run_dir).glob("csv/version_*/metrics.csv"))
    assert files, f"no metrics.csv under {run_dir}"
    with open(files[-1], newline="") as f:
        return list(csv.DictReader(f))


def write_box_coco(root: Path, sizes: Sequence[tuple[int, int]], boxes: Sequence[tuple], categories: Sequence[tuple[int, str]],
                   name: str = "ann.json") -> tuple[Path, Path]:
    """A COCO set of black PNGs of ``sizes`` (w, h) whose annotations are the rectangles ``boxes``:
    ``(image index, category id, [x, y, w, h])`` or ``(..., iscrowd)``; each mask is its box (polygon;
    crowd ones as RLE). Image k has id k + 1 and file ``im_k.png``; annotation ids count from 1. Returns (json, folder)."""
    from pycocotools import mask as mask_utils

    root = Path(root)
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    images = []
    for k, (w, h) in enumerate(sizes):
        fn = f"im_{k}.png"
        if not (img_dir / fn).exists():
            Image.fromarray(np.zeros((h, w, 3), dtype=np.uint8)).save(img_dir / fn)
        images.append({"id": k + 1, "file_name": fn, "width": w, "height": h})
    anns = []
    for aid, item in enumerate(boxes, start=1):
        k, cat, (x, y, bw, bh) = item[:3]
        crowd = int(item[3]) if len(item) > 3 else 0
        w, h = sizes[k]
        if crowd:
            m = np.zeros((h, w), dtype=np.uint8, order="F")
            m[int(y):int(y + bh), int(x):int(x + bw)] = 1
            rle = mask_utils.encode(m)
            segm: object = {"size": [h, w], "counts": rle["counts"].decode("ascii")}
        else:
            segm = [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]
        anns.append({"id": aid, "image_id": k + 1, "category_id": cat, "bbox": [x, y, bw, bh], "area": float(bw * bh),
                     "iscrowd": crowd, "segmentation": segm})
    ann = root / name
    ann.write_text(json.dumps({"images": images, "annotations": anns,
                               "categories": [{"id": c, "name": n} for c, n in categories]}))
    return ann, img_dir
