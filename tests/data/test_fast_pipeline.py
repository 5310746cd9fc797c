"""The fast data pipeline (issue 21 part 2) gives exactly what the dense one gave.

Reference: the dataset's ``__getitem__`` as it was before LazyMasks (dense (N, H, W) masks from
``get_raw_target``, a (3, H, W)-contiguous uint8 image, the transforms' dense branches, ``to_float_image``
and ``unwrap_target``), written out below. The new path (masks as :class:`LazyMasks` through the
transforms, the image in its channels-last view, uint8 images on request) must give the same images,
boxes, labels, masks, ignore boxes and bookkeeping, bit for bit: every step is a pixel gather or the
same torch kernel, so there is no tolerance.

Synthetic COCO files: JPEG and PNG images of several sizes and orientations (upscaled and downscaled by
the 1333x800 resize), multi-part polygons, compressed and uncompressed RLE, crowd annotations (dropped
or ignore boxes), 1-px slivers (vanish in downscales and crops), objects on the borders; the 1x,
ms-crop 3x (with and without ``recompute_bbox`` and negative crops), test and no transforms, under
many seeds (flips and crops both ways).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from swin_maskrcnn.data import CocoInstanceDataset, build_test_transforms, build_train_transforms
from swin_maskrcnn.data import lazy_masks as lazy_masks_module
from swin_maskrcnn.data.lazy_masks import LazyMasks, nearest_source_index
from swin_maskrcnn.data.rle_box import decode_rle_box, rle_counts
from swin_maskrcnn.data.transforms import Compose, RandomHorizontalFlip, Resize, to_float_image, unwrap_target
from swin_maskrcnn.modeling.preprocess import to_chw_255

from conftest import COCO128, needs_coco128

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SIZES = [(640, 480, "jpg"), (427, 640, "png"), (1700, 900, "jpg"), (300, 200, "png"), (2100, 1400, "jpg")]


def _runs(m: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts (column-major, starting with zeros)."""
    flat = m.flatten(order="F")
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat[0] else runs


def _make_dataset_files(root: Path) -> tuple[Path, Path]:
    g = np.random.default_rng(21)
    img_dir = root / "images"
    img_dir.mkdir()
    images, anns = [], []
    aid = 1
    for k, (w, h, ext) in enumerate(SIZES):
        name = f"im{k}.{ext}"
        yy, xx = np.mgrid[0:h, 0:w]
        arr = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), ((xx + yy) % 256)], -1)
        arr = (arr + g.integers(0, 40, arr.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(arr).save(img_dir / name, quality=90)
        images.append({"id": 10 + k, "file_name": name, "width": w, "height": h})

        def add(segm, bbox, **extra):
            nonlocal aid
            anns.append({"id": aid, "image_id": 10 + k, "category_id": int(g.choice([1, 5, 9])), "segmentation": segm,
                         "bbox": [float(v) for v in bbox], "area": float(bbox[2] * bbox[3]), "iscrowd": 0, **extra})
            aid += 1

        for _ in range(4):  # polygons, some with two parts, some on the border
            x0, y0 = float(g.uniform(-5, w * 0.7)), float(g.uniform(-5, h * 0.7))
            bw, bh = float(g.uniform(8, w * 0.4)), float(g.uniform(8, h * 0.4))
            poly = [x0, y0, x0 + bw, y0 + 0.3 * bh, x0 + 0.7 * bw, y0 + bh, x0 + 0.1 * bw, y0 + 0.8 * bh]
            poly = [float(np.clip(v, 0, w if i % 2 == 0 else h)) for i, v in enumerate(poly)]
            parts = [poly]
            if g.random() < 0.5:
                cx, cy = min(x0 + bw * 0.5, w - 6.0), min(y0 + bh * 0.5, h - 6.0)
                parts.append([cx, cy, cx + 5, cy, cx + 5, cy + 5, cx, cy + 5])
            xs, ys = [v for p in parts for v in p[0::2]], [v for p in parts for v in p[1::2]]
            add(parts, [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)])
        m = np.zeros((h, w), dtype=np.uint8)  # compressed RLE blob with a hole
        y0, x0 = int(h * 0.3), int(w * 0.4)
        m[y0:y0 + h // 4, x0:x0 + w // 5] = 1
        m[y0 + 3:y0 + 6, x0 + 3:x0 + 6] = 0
        rle = mask_utils.encode(np.asfortranarray(m))
        add({"size": [h, w], "counts": rle["counts"].decode("ascii")}, [x0, y0, w // 5, h // 4])
        m = np.zeros((h, w), dtype=np.uint8)  # uncompressed RLE: a 1-px vertical sliver and a 1-px row
        m[10:60, w - 3] = 1
        add({"size": [h, w], "counts": _runs(m)}, [w - 3, 10, 1, 50])
        m = np.zeros((h, w), dtype=np.uint8)
        m[h // 2, 5:w // 2] = 1
        add({"size": [h, w], "counts": _runs(m)}, [5, h // 2, w // 2 - 5, 1])
        m = np.zeros((h, w), dtype=np.uint8)  # a crowd region (RLE) and an "ignore": 1 polygon
        m[: h // 3, : w // 3] = 1
        crle = mask_utils.encode(np.asfortranarray(m))
        add({"size": [h, w], "counts": crle["counts"].decode("ascii")}, [0, 0, w // 3, h // 3], iscrowd=1)
        add([[w * 0.6, h * 0.6, w * 0.9, h * 0.6, w * 0.9, h * 0.9]], [w * 0.6, h * 0.6, w * 0.3, h * 0.3], ignore=1)
    images.append({"id": 99, "file_name": "empty.png", "width": 320, "height": 240})  # no annotation
    Image.fromarray(np.full((240, 320, 3), 77, np.uint8)).save(img_dir / "empty.png")
    cats = [{"id": c, "name": f"c{c}"} for c in (1, 5, 9)]
    ann = root / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return ann, img_dir


@pytest.fixture(scope="module")
def coco_files(tmp_path_factory):
    return _make_dataset_files(tmp_path_factory.mktemp("fast_pipeline"))


def reference_item(ds: CocoInstanceDataset, i: int) -> tuple[torch.Tensor, dict]:
    """``CocoInstanceDataset.__getitem__`` before the fast pipeline (dense masks all the way)."""
    arr = ds.load_image(i)
    target = ds.get_raw_target(i)
    assert isinstance(target["masks"], torch.Tensor)
    image = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
    if ds.transforms is not None:
        image, target = ds.transforms(image, target)
    return to_float_image(image), unwrap_target(target)


def _assert_same(got: tuple[torch.Tensor, dict], ref: tuple[torch.Tensor, dict], what: str) -> None:
    (im, t), (rim, rt) = got, ref
    assert im.dtype == rim.dtype and im.is_contiguous(), what
    assert torch.equal(im, rim), what
    assert set(t) == set(rt), what
    for key, value in rt.items():
        if isinstance(value, torch.Tensor):
            assert t[key].dtype == value.dtype and torch.equal(t[key], value), f"{what}: {key}"
            assert not isinstance(t[key], (tv_tensors.TVTensor, LazyMasks)), f"{what}: {key}"
        else:
            assert t[key] == value, f"{what}: {key}"


PIPELINES = {
    "1x": lambda: build_train_transforms("1x"),
    "1x_flip": lambda: build_train_transforms("1x", flip_prob=1.0),
    "3x": lambda: build_train_transforms("ms_crop_3x"),
    "3x_recompute_no_negative": lambda: build_train_transforms("ms_crop_3x", crop_recompute_bbox=True,
                                                               allow_negative_crop=False),
    "3x_small": lambda: build_train_transforms("ms_crop_3x", ms_scales=[(333, 120), (200, 90)],
                                               crop_pre_scales=[(500, 150)], crop_size=(40, 90)),
    "test": lambda: build_test_transforms((1333, 800)),
    "none": lambda: None,
    "empty_compose": lambda: Compose([]),
}


@pytest.mark.parametrize("crowd", ["drop", "ignore"])
@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
def test_fast_pipeline_equals_dense_reference(coco_files, pipeline, crowd):
    ann, img_dir = coco_files
    ds = CocoInstanceDataset(ann, img_dir, transforms=PIPELINES[pipeline](), crowd=crowd)
    assert ds.transforms is None or ds.transforms.supports_lazy_masks()
    seeds = range(6) if pipeline.startswith("3x") else range(2)
    n_inst = n_vanished_or_cropped = 0
    for i in range(len(ds)):
        raw = len(ds.get_raw_target(i)["labels"])
        for seed in seeds:
            torch.manual_seed(seed)
            got = ds[i]
            torch.manual_seed(seed)
            ref = reference_item(ds, i)
            _assert_same(got, ref, f"{pipeline} image {i} seed {seed}")
            n_inst += len(ref[1]["labels"])
            n_vanished_or_cropped += raw - len(ref[1]["labels"])
    assert n_inst > 0
    if pipeline.startswith("3x") or pipeline in ("1x", "1x_flip"):
        assert n_vanished_or_cropped > 0  # the cases that drop instances were exercised


@needs_coco128
@pytest.mark.parametrize("kind", ["1x", "ms_crop_3x"])
def test_fast_pipeline_equals_dense_reference_on_coco128(kind):
    """The same on real photos and polygons (coco128_seg train, 24 images, 2 seeds each)."""
    ds = CocoInstanceDataset(COCO128 / "annotations/train.json", COCO128 / "images", transforms=build_train_transforms(kind))
    for i in range(24):
        for seed in (0, 1):
            torch.manual_seed(seed)
            got = ds[i]
            torch.manual_seed(seed)
            _assert_same(got, reference_item(ds, i), f"coco128 {kind} image {i} seed {seed}")


def test_uint8_images_give_the_model_the_same_input(coco_files):
    ann, img_dir = coco_files
    fl = CocoInstanceDataset(ann, img_dir, transforms=build_train_transforms("ms_crop_3x"))
    u8 = CocoInstanceDataset(ann, img_dir, transforms=build_train_transforms("ms_crop_3x"), image_dtype="uint8")
    for i in range(len(fl)):
        torch.manual_seed(i)
        fim, ft = fl[i]
        torch.manual_seed(i)
        uim, ut = u8[i]
        assert uim.dtype == torch.uint8 and uim.is_contiguous()
        assert torch.equal(uim.float().div(255.0), fim)
        assert torch.equal(to_chw_255(uim), to_chw_255(fim))  # the model's 0..255 input: identical
        assert torch.equal(ut["masks"], ft["masks"]) and torch.equal(ut["boxes"], ft["boxes"])
    u = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(u.float().div(255.0) * 255.0, u.float())  # the closed form behind it, all 256 values
    with pytest.raises(ValueError, match="image_dtype"):
        CocoInstanceDataset(ann, img_dir, image_dtype="float16")  # type: ignore[arg-type]


def test_custom_transform_gets_dense_masks(coco_files):
    ann, img_dir = coco_files
    seen = []

    def custom(image, target):
        seen.append(type(target["masks"]))
        return image, target

    ds = CocoInstanceDataset(ann, img_dir, transforms=Compose([Resize((400, 300)), custom, RandomHorizontalFlip(1.0)]))
    assert not ds.transforms.supports_lazy_masks()
    got = ds[0]
    _assert_same(got, reference_item(ds, 0), "custom")
    assert seen and all(issubclass(c, torch.Tensor) for c in seen)
    ds_fn = CocoInstanceDataset(ann, img_dir, transforms=custom)  # a bare callable
    _assert_same(ds_fn[1], reference_item(ds_fn, 1), "bare callable")


# ---------------------------------------------------------------------------------- LazyMasks itself
def _random_masks(g: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    m = np.zeros((n, h, w), np.uint8)
    for k in range(n):
        if g.random() < 0.2:
            continue  # an empty mask
        y0, x0 = g.integers(0, h), g.integers(0, w)
        y1, x1 = g.integers(y0, h + 1), g.integers(x0, w + 1)
        m[k, y0:y1, x0:x1] = g.random((y1 - y0, x1 - x0)) < 0.5
    return m


def test_lazy_masks_equal_dense_ops_random_chains():
    """400 random chains of 4 resizes (up and down, any ratio) / flips / crops / selections: dense() and
    nonempty() equal torchvision's dense ops at every step."""
    g = np.random.default_rng(0)
    for trial in range(400):
        n, h, w = int(g.integers(0, 5)), int(g.integers(1, 60)), int(g.integers(1, 60))
        m = _random_masks(g, n, h, w)
        dense = torch.from_numpy(m)
        lazy = LazyMasks.from_dense(m)
        for step in range(4):
            op = int(g.integers(0, 4))
            hh, ww = dense.shape[-2:]
            if op == 0:
                nh, nw = int(g.integers(1, 120)), int(g.integers(1, 120))
                dense = F.resize(tv_tensors.Mask(dense), [nh, nw], interpolation=InterpolationMode.NEAREST)
                lazy = lazy.resized(nh, nw)
            elif op == 1:
                dense, lazy = F.horizontal_flip(tv_tensors.Mask(dense)), lazy.flipped()
            elif op == 2:
                ch, cw = int(g.integers(1, hh + 1)), int(g.integers(1, ww + 1))
                top, left = int(g.integers(0, hh - ch + 1)), int(g.integers(0, ww - cw + 1))
                dense, lazy = F.crop(tv_tensors.Mask(dense), top, left, ch, cw), lazy.cropped(top, left, ch, cw)
            else:
                keep = torch.from_numpy(g.random(dense.shape[0]) < 0.6)
                dense, lazy = dense[keep], lazy[keep]
            dense = dense.as_subclass(torch.Tensor)
            assert lazy.shape == tuple(dense.shape), (trial, step)
            assert torch.equal(lazy.dense(), dense), (trial, step, op)
            assert torch.equal(lazy.nonempty(), dense.flatten(1).ne(0).any(1)), (trial, step, op)


@pytest.mark.parametrize("src,dst", [(480, 800), (640, 1067), (427, 800), (1400, 1333), (2100, 1333), (900, 706),
                                     (600, 384), (384, 800), (7, 3), (3, 7), (1, 5), (5, 1), (800, 1600)])
def test_nearest_source_index_is_the_dense_resize(src, dst):
    """At the recipes' real sizes: the index a mask resize takes each row / column from."""
    idx = torch.arange(src)
    for axis in (0, 1):
        m = (idx.view(1, src, 1) if axis == 0 else idx.view(1, 1, src)).remainder(251).to(torch.uint8)
        other = idx.div(251, rounding_mode="floor").to(torch.uint8)
        other = other.view(1, src, 1) if axis == 0 else other.view(1, 1, src)
        size = [dst, 1] if axis == 0 else [1, dst]
        lo = F.resize(tv_tensors.Mask(m), size, interpolation=InterpolationMode.NEAREST).flatten().long()
        hi = F.resize(tv_tensors.Mask(other), size, interpolation=InterpolationMode.NEAREST).flatten().long()
        assert np.array_equal(nearest_source_index(src, dst, axis), (lo + 251 * hi).numpy())
        # floor(i * src / dst), clipped (torch's float32 formula; holds at these sizes)
        expect = np.minimum(np.floor(np.arange(dst, dtype=np.float32) * np.float32(src / dst)), src - 1)
        assert np.array_equal(nearest_source_index(src, dst, axis), expect.astype(np.int64))


def test_lazy_from_rles_matches_pycocotools(coco_files):
    ann, img_dir = coco_files
    ds = CocoInstanceDataset(ann, img_dir)
    for i in range(len(ds)):
        dense = ds.get_raw_target(i)["masks"]
        lazy = ds._raw_target(i, lazy=True)["masks"]
        assert isinstance(lazy, LazyMasks) and torch.equal(lazy.dense(), dense)
        # each crop holds its instance's every pixel, and nothing else is stored
        assert sum(c.size for c in lazy.crops) <= dense.numel()


# ---------------------------------------------------------------------------------- loader workers
def test_worker_outputs_are_allocated_in_shared_memory(monkeypatch):
    from swin_maskrcnn.data import coco

    assert not coco.output_tensor((2, 3), torch.uint8).is_shared()
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: object())
    t = coco.output_tensor((2, 3, 5), torch.float32)
    assert t.is_shared() and t.is_contiguous() and t.shape == (2, 3, 5) and t.dtype == torch.float32
    assert coco.output_tensor((0, 4, 4), torch.uint8).shape == (0, 4, 4)


#: run in a fresh interpreter: forking DataLoader workers from the pytest process, after the OpenVINO /
#: onnxruntime tests have started their thread pools, left it to crash (SIGSEGV) at a later test's
#: subprocess exit (tests/inference/test_sliced_memory.py); the comparison itself is the same
_LOADER_SCRIPT = """
import sys
import torch
from swin_maskrcnn.data import CocoInstanceDataset, build_train_transforms
from swin_maskrcnn.data.loader import RunBatchSampler, build_train_loader

ann, img_dir, image_dtype = sys.argv[1:4]
ds = CocoInstanceDataset(ann, img_dir, transforms=build_train_transforms("ms_crop_3x"), image_dtype=image_dtype)

def batches(workers):
    sampler = RunBatchSampler(ds.aspect_ratios(), batch_size=2, num_batches=4, seed=3)
    loader = build_train_loader(ds, sampler, num_workers=workers, seed=3)
    if workers:
        assert loader.persistent_workers
    first = list(loader)
    if workers:  # persistent: a second pass reuses the workers and gives the same batches
        assert list(loader)[0][1][0]["image_id"] == first[0][1][0]["image_id"]
    return first

n = 0
for (im0, t0), (im2, t2) in zip(batches(0), batches(2), strict=True):
    assert len(im0) == len(im2)
    for a, b, ta, tb in zip(im0, im2, t0, t2):
        assert a.dtype == getattr(torch, image_dtype) and torch.equal(a, b)
        for key in ("boxes", "labels", "masks"):
            assert torch.equal(ta[key], tb[key]), key
        assert ta["image_id"] == tb["image_id"]
        n += 1
print("compared", n)
"""


@pytest.mark.parametrize("image_dtype", ["uint8", "float32"])
def test_training_loader_with_workers_equals_in_process(coco_files, image_dtype):
    """build_train_loader with 2 workers (shared-memory outputs, persistent workers) gives the batches of
    the in-process loader, bit for bit (in a fresh interpreter, see ``_LOADER_SCRIPT``)."""
    import subprocess
    import sys

    ann, img_dir = coco_files
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", _LOADER_SCRIPT, str(ann), str(img_dir), image_dtype],
                         capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("compared ") and int(last.split()[1]) >= 4, out.stdout  # 4 batches of 1-2 images


# ---------------------------------------------------------------------------------- RLE inside a box
def _runs_of(m: np.ndarray) -> np.ndarray:
    flat = m.flatten(order="F")
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    runs = np.diff(bounds)
    return np.concatenate([[0], runs]) if flat[0] else runs


def test_rle_box_decode_equals_pycocotools():
    """3000 random masks (empty, full, noisy, blocky) and boxes: the run lengths are pycocotools' and the
    block is pycocotools' decode cut to the box; a long-run image too (5-group numbers)."""
    g = np.random.default_rng(5)
    for _ in range(3000):
        h, w = int(g.integers(1, 70)), int(g.integers(1, 70))
        m = (g.random((h, w)) < g.random()).astype(np.uint8)
        if g.random() < 0.3:
            m = np.zeros_like(m)
            m[g.integers(0, h):g.integers(0, h + 1), g.integers(0, w):g.integers(0, w + 1)] = 1
        if g.random() < 0.05:
            m[:] = 1
        rle = mask_utils.encode(np.asfortranarray(m))
        assert np.array_equal(rle_counts(rle["counts"]), _runs_of(m))
        x0, y0 = int(g.integers(0, w + 1)), int(g.integers(0, h + 1))
        bw, bh = int(g.integers(0, w - x0 + 1)), int(g.integers(0, h - y0 + 1))
        got = decode_rle_box(rle["counts"], h, w, x0, y0, bw, bh)
        assert got is not None and got.flags.c_contiguous and np.array_equal(got, m[y0:y0 + bh, x0:x0 + bw])
    m = np.zeros((3000, 4000), np.uint8)
    m[1000:2500, 100:3900] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    assert np.array_equal(decode_rle_box(rle["counts"], 3000, 4000, 90, 990, 3820, 1520), m[990:2510, 90:3910])


def test_rle_box_refuses_what_is_not_a_well_formed_rle():
    m = np.zeros((6, 5), np.uint8)
    m[1:4, 2:4] = 1
    counts = mask_utils.encode(np.asfortranarray(m))["counts"]
    assert decode_rle_box(counts, 6, 5, 2, 1, 2, 3) is not None
    assert decode_rle_box(counts, 6, 6, 2, 1, 2, 3) is None  # runs do not add up to h * w
    assert decode_rle_box(counts + b"o", 6, 5, 2, 1, 2, 3) is None  # a truncated number (0x20 set on the last char)
    assert rle_counts(b"0") is not None and rle_counts(b"0" + bytes([48 + 0x10])) is None  # a negative run
    assert decode_rle_box(counts, 6, 5, 4, 1, 2, 3) is None  # box outside the image


def test_lazy_from_rles_falls_back_to_pycocotools(monkeypatch):
    """Where the box decoder refuses, pycocotools decodes (the mask is the same either way here)."""
    g = np.random.default_rng(8)
    masks = [(g.random((30, 40)) < p).astype(np.uint8) for p in (0.0, 0.02, 0.5)]
    rles = [mask_utils.encode(np.asfortranarray(m)) for m in masks]
    rles[1] = {"size": rles[1]["size"], "counts": rles[1]["counts"].decode("ascii")}  # str counts work too
    want = torch.from_numpy(np.stack(masks))
    assert torch.equal(LazyMasks.from_rles(rles, 30, 40).dense(), want)
    monkeypatch.setattr(lazy_masks_module, "decode_rle_box", lambda *a: None)
    assert torch.equal(LazyMasks.from_rles(rles, 30, 40).dense(), want)
