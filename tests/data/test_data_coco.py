"""CocoInstanceDataset on the real datasets and on hand-made broken files; image decoding; batching."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from swin_maskrcnn.data import (
    DataError,
    AspectRatioGroupedBatchSampler,
    CocoInstanceDataset,
    build_dataloader,
    build_test_transforms,
    collate,
    pil_to_rgb_uint8,
)

from conftest import COCO128, NUCLEI, needs_coco128, needs_nuclei

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def coco128_val():
    return CocoInstanceDataset(COCO128 / "annotations/val.json", COCO128 / "images")


@pytest.fixture(scope="module")
def nuclei():
    return CocoInstanceDataset(NUCLEI / "annotations/train.json", NUCLEI / "images")


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _check_masks_vs_pycocotools(ds: CocoInstanceDataset, indices) -> int:
    """Every instance's decoded mask has the pixel count pycocotools' annToMask gives."""
    n = 0
    for i in indices:
        img_id = ds.img_ids[i]
        anns = [a for a in ds.coco.imgToAnns[img_id] if not a.get("iscrowd", 0)]
        t = ds.get_raw_target(i)
        masks, labels = t["masks"].numpy(), t["labels"].tolist()
        assert len(anns) == len(labels)
        for k, ann in enumerate(anns):
            ref = ds.coco.annToMask(ann)
            assert masks[k].shape == ref.shape
            assert int(masks[k].sum(dtype=np.int64)) == int(ref.sum(dtype=np.int64))
            assert np.array_equal(masks[k], ref)
            assert labels[k] == ds.cat_id_to_label[ann["category_id"]]
            n += 1
    return n


# ---------------------------------------------------------------------------------- real data
@needs_coco128
@pytest.mark.parametrize("split,n_img,n_ann", [("train", 102, 739), ("val", 26, 190)])
def test_coco128_counts_labels(split, n_img, n_ann):
    ann_file = COCO128 / f"annotations/{split}.json"
    raw = _json(ann_file)
    ds = CocoInstanceDataset(ann_file, COCO128 / "images", num_classes=80)
    assert len(ds) == len(raw["images"]) == n_img
    assert sum(ds.get_image_info(i)["num_instances"] for i in range(len(ds))) == len(raw["annotations"]) == n_ann
    assert len(ds.cat_ids) == len(raw["categories"]) == 80
    assert ds.cat_ids == sorted(c["id"] for c in raw["categories"])
    assert ds.cat_id_to_label[1] == 0 and ds.class_names[0] == "person"
    assert ds.cat_id_to_label[90] == 79 and ds.class_names[79] == "toothbrush"
    assert all(ds.label_to_cat_id[ds.cat_id_to_label[c]] == c for c in ds.cat_ids)
    assert sorted(ds.label_to_cat_id) == list(range(80))
    assert ds.aspect_ratios() == [im["width"] / im["height"] for im in raw["images"]]


@needs_coco128
def test_coco128_polygon_masks_match_pycocotools(coco128_val):
    assert _check_masks_vs_pycocotools(coco128_val, range(len(coco128_val))) == 190


@needs_coco128
def test_coco128_empty_image_and_filter():
    ann_file = COCO128 / "annotations/train.json"
    ds = CocoInstanceDataset(ann_file, COCO128 / "images")
    idx = [ds.get_image_info(i)["file_name"] for i in range(len(ds))].index("000000000250.jpg")
    image, t = ds[idx]
    h, w = image.shape[-2:]
    assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,) and t["masks"].shape == (0, h, w)
    filtered = CocoInstanceDataset(ann_file, COCO128 / "images", filter_empty_gt=True)
    assert len(filtered) == 101
    assert ds.coco.imgs[ds.img_ids[idx]]["id"] not in filtered.img_ids
    small = CocoInstanceDataset(ann_file, COCO128 / "images", min_size=481)  # mmdet: min(w, h) >= min_size
    expect = sum(1 for im in _json(ann_file)["images"] if min(im["width"], im["height"]) >= 481)
    assert len(small) == expect and 0 < expect < 102


@needs_coco128
def test_coco128_output_is_scaled_once_not_normalised(coco128_val):
    image, t = coco128_val[0]
    info = coco128_val.get_image_info(0)
    raw = np.array(Image.open(info["path"]).convert("RGB"))
    assert image.dtype == torch.float32 and image.shape == (3, info["height"], info["width"])
    # exactly /255 of the decoded pixels: no mean/std normalisation in the data pipeline
    assert torch.equal((image * 255).round().to(torch.uint8).permute(1, 2, 0), torch.from_numpy(raw))
    # and through the test resize: a natural photo, values in [0, 1], means well away from 0
    ds = CocoInstanceDataset(COCO128 / "annotations/val.json", COCO128 / "images", transforms=build_test_transforms())
    for i in range(3):
        image, t = ds[i]
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        mean, std = image.mean(dim=(1, 2)), image.std(dim=(1, 2))
        assert ((mean > 0.1) & (mean < 0.9)).all(), mean
        assert ((std > 0.03) & (std < 0.5)).all(), std
        assert max(image.shape[-2:]) <= 1333 and min(image.shape[-2:]) <= 800
        sw, sh = t["scale_factor"]
        h0, w0 = t["orig_size"]
        assert sw == pytest.approx(image.shape[-1] / w0) and sh == pytest.approx(image.shape[-2] / h0)


@needs_coco128
def test_coco128_grayscale_jpeg_becomes_rgb():
    ds = CocoInstanceDataset(COCO128 / "annotations/train.json", COCO128 / "images")
    names = [ds.get_image_info(i)["file_name"] for i in range(len(ds))]
    if "000000000086.jpg" not in names:
        ds = CocoInstanceDataset(COCO128 / "annotations/val.json", COCO128 / "images")
        names = [ds.get_image_info(i)["file_name"] for i in range(len(ds))]
    image, _ = ds[names.index("000000000086.jpg")]
    assert image.shape[0] == 3
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


@needs_nuclei
def test_nuclei_counts_and_rle_masks(nuclei):
    raw = _json(NUCLEI / "annotations/train.json")
    assert len(nuclei) == len(raw["images"]) == 531
    total = sum(nuclei.get_image_info(i)["num_instances"] for i in range(len(nuclei)))
    assert total == len(raw["annotations"]) == 22807
    assert nuclei.cat_ids == [1] and nuclei.class_names == ["nucleus"]
    idx = [0, 1, 2] + [i for i in range(len(nuclei)) if nuclei.get_image_info(i)["num_instances"] > 300][:1]
    assert _check_masks_vs_pycocotools(nuclei, idx) > 300
    # compressed RLE: boxes are the json boxes (xywh -> xyxy), areas are the json areas
    t = nuclei.get_raw_target(0)
    anns = nuclei.coco.imgToAnns[nuclei.img_ids[0]]
    ref = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns])
    assert torch.allclose(t["boxes"], ref.float())
    assert t["masks"].numpy().reshape(len(anns), -1).sum(axis=1, dtype=np.int64).tolist() == [a["area"] for a in anns]
    assert (t["labels"] == 0).all()


# ---------------------------------------------------------------------------------- synthetic files
def _write_png(path: Path, w: int, h: int, color=(120, 60, 30)) -> None:
    Image.new("RGB", (w, h), color).save(path)


def _square(x, y, s):
    return [[x, y, x + s, y, x + s, y + s, x, y + s]]


def _make_coco(tmp_path: Path, anns: list[dict], images=None, cats=None, write_images=True, name="ann.json") -> Path:
    images = images or [{"id": 11, "file_name": "a.png", "width": 40, "height": 30}]
    cats = cats or [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
    img_dir = tmp_path / "images"
    img_dir.mkdir(exist_ok=True)
    if write_images:
        for im in images:
            _write_png(img_dir / im["file_name"], im["width"], im["height"])
    for k, a in enumerate(anns):
        a.setdefault("id", 100 + k)
        a.setdefault("image_id", images[0]["id"])
        a.setdefault("iscrowd", 0)
        a.setdefault("category_id", 3)
        if "area" not in a:
            a["area"] = 1.0
    path = tmp_path / name
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def test_missing_image_file_names_file_image_and_annotation(tmp_path):
    ann = _make_coco(tmp_path, [{"id": 501, "bbox": [1, 1, 5, 5], "segmentation": _square(1, 1, 5)}], write_images=False)
    with pytest.raises(FileNotFoundError) as exc:
        CocoInstanceDataset(ann, tmp_path / "images")
    msg = str(exc.value)
    assert "a.png" in msg and "image id 11" in msg and "501" in msg and "ann.json" in msg


def test_unreadable_image_names_file_image_and_annotation(tmp_path):
    ann = _make_coco(tmp_path, [{"id": 502, "bbox": [1, 1, 5, 5], "segmentation": _square(1, 1, 5)}])
    ds = CocoInstanceDataset(ann, tmp_path / "images")
    (tmp_path / "images" / "a.png").write_bytes(b"this is not a png")
    # found by the start-up header read ...
    with pytest.raises(DataError) as exc:
        CocoInstanceDataset(ann, tmp_path / "images")
    msg = str(exc.value)
    assert "a.png" in msg and "image id 11" in msg and "502" in msg and "not an image" in msg
    # ... and, should a file change after start-up, again when it is loaded
    with pytest.raises(DataError) as exc:
        ds[0]
    msg = str(exc.value)
    assert "a.png" in msg and "image id 11" in msg and "502" in msg


def test_image_size_mismatch_is_an_error(tmp_path):
    ann = _make_coco(tmp_path, [{"id": 503, "bbox": [1, 1, 5, 5], "segmentation": _square(1, 1, 5)}])
    ds = CocoInstanceDataset(ann, tmp_path / "images")
    _write_png(tmp_path / "images" / "a.png", 30, 40)  # swapped
    with pytest.raises(DataError, match="swapped") as exc:
        CocoInstanceDataset(ann, tmp_path / "images")
    assert "image id 11" in str(exc.value) and "503" in str(exc.value)
    with pytest.raises(DataError, match="swapped"):
        ds[0]


def test_unknown_category_is_an_error(tmp_path):
    ann = _make_coco(tmp_path, [{"id": 504, "category_id": 99, "bbox": [1, 1, 5, 5], "segmentation": _square(1, 1, 5)}])
    with pytest.raises(ValueError) as exc:
        CocoInstanceDataset(ann, tmp_path / "images")
    msg = str(exc.value)
    assert "ann.json" in msg and "image id 11" in msg and "annotation id 504" in msg and "99" in msg


def test_num_classes_mismatch_is_an_error(tmp_path):
    ann = _make_coco(tmp_path, [{"bbox": [1, 1, 5, 5], "segmentation": _square(1, 1, 5)}])
    with pytest.raises(ValueError) as exc:
        CocoInstanceDataset(ann, tmp_path / "images", num_classes=5)
    msg = str(exc.value)
    assert "ann.json" in msg and "5" in msg and "2 categories" in msg
    assert len(CocoInstanceDataset(ann, tmp_path / "images", num_classes=2)) == 1


def test_skipped_and_repaired_annotations_are_logged(tmp_path, caplog):
    anns = [
        {"id": 601, "bbox": [1, 1, 5, 5], "segmentation": [[1, 1, 6, 1]]},  # bad polygon (4 coords)
        {"id": 602, "bbox": [2, 2, 0, 4], "segmentation": _square(2, 2, 4)},  # zero-area box
        {"id": 603, "bbox": [30, 20, 15, 15], "segmentation": _square(30, 20, 9)},  # partly outside -> clipped
        {"id": 604, "bbox": [3, 3, 6, 6], "segmentation": _square(3, 3, 6) + [[1, 2, 3]]},  # one odd part dropped
        {"id": 605, "bbox": [1, 1, 4, 4], "segmentation": _square(20, 15, 4)},  # mask far from its box
        {"id": 606, "bbox": [50, 50, 5, 5], "segmentation": _square(1, 1, 3)},  # box outside the image
        {"id": 607, "category_id": 7, "bbox": [10, 10, 8, 8], "segmentation": _square(10, 10, 8)},  # fine
        {"id": 608, "bbox": [0, 0, 40, 30], "segmentation": _square(0, 0, 30), "iscrowd": 1},  # crowd
    ]
    ann = _make_coco(tmp_path, anns)
    with caplog.at_level(logging.WARNING, logger="swin_maskrcnn.data.coco"):
        ds = CocoInstanceDataset(ann, tmp_path / "images")
    text = caplog.text
    for ann_id in (601, 602, 603, 604, 605, 606):
        lines = [r.getMessage() for r in caplog.records if f"annotation id {ann_id}" in r.getMessage()]
        assert lines, f"no warning for annotation {ann_id}:\n{text}"
        assert all("ann.json" in m and "image id 11" in m for m in lines)
    assert "bad polygon" in text and "width or height < 1 px" in text and "clipped" in text
    assert "607" not in text and "608" not in text
    _, t = ds[0]
    # kept: 603 (clipped), 604 (valid part), 607; skipped: 601, 602, 605, 606; crowd 608 dropped
    assert t["labels"].tolist() == [0, 0, 1]
    assert t["boxes"].tolist() == [[30.0, 20.0, 40.0, 30.0], [3.0, 3.0, 9.0, 9.0], [10.0, 10.0, 18.0, 18.0]]
    assert t["masks"].shape == (3, 30, 40)
    assert int(t["masks"][2].sum()) == int(ds.coco.annToMask(ds.coco.anns[607]).sum())
    # the crowd annotation is still in the ground truth used by COCOeval
    assert 608 in ds.coco.anns and ds.coco.anns[608]["iscrowd"] == 1


def test_uncompressed_and_compressed_rle(tmp_path):
    m = np.zeros((30, 40), dtype=np.uint8)
    m[5:12, 7:20] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    compressed = {"size": [30, 40], "counts": rle["counts"].decode("ascii")}
    # uncompressed: column-major run lengths starting with zeros
    flat = m.flatten(order="F")
    runs, cur, n = [], 0, 0
    for v in flat:
        if v != cur:
            runs.append(n)
            cur, n = v, 0
        n += 1
    runs.append(n)
    anns = [
        {"id": 701, "bbox": [7, 5, 13, 7], "segmentation": compressed},
        {"id": 702, "bbox": [7, 5, 13, 7], "segmentation": {"size": [30, 40], "counts": runs}},
    ]
    ann = _make_coco(tmp_path, anns)
    ds = CocoInstanceDataset(ann, tmp_path / "images")
    _, t = ds[0]
    assert np.array_equal(t["masks"][0].numpy(), m) and np.array_equal(t["masks"][1].numpy(), m)
    bad = _make_coco(tmp_path, [{"id": 703, "bbox": [7, 5, 13, 7], "segmentation": {"size": [31, 40], "counts": runs}}], name="bad.json")
    with pytest.raises(ValueError, match="annotation id 703"):
        CocoInstanceDataset(bad, tmp_path / "images")


# ---------------------------------------------------------------------------------- image modes
def _single_image_dataset(tmp_path: Path, img: Image.Image, fmt: str, w: int, h: int, **save_kw) -> CocoInstanceDataset:
    img_dir = tmp_path / "images"
    img_dir.mkdir(exist_ok=True)
    name = f"x.{fmt}"
    img.save(img_dir / name, **save_kw)
    ann = _make_coco(tmp_path, [], images=[{"id": 1, "file_name": name, "width": w, "height": h}], write_images=False)
    return CocoInstanceDataset(ann, img_dir)


def test_exif_rotated_jpeg(tmp_path):
    # stored 40 wide x 20 high: left half red, right half blue. Orientation 6 = rotate 90 deg
    # clockwise for display -> 20 wide x 40 high with red on top.
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    ds = _single_image_dataset(tmp_path, Image.fromarray(arr), "jpg", 20, 40, exif=exif, quality=95)
    image, t = ds[0]
    assert image.shape == (3, 40, 20) and t["orig_size"] == (40, 20)
    top, bottom = image[:, 2:18].mean(dim=(1, 2)), image[:, 22:38].mean(dim=(1, 2))
    assert top[0] > 0.8 and top[2] < 0.2 and bottom[2] > 0.8 and bottom[0] < 0.2


def test_grayscale_palette_rgba_16bit(tmp_path):
    gray = Image.fromarray(np.full((6, 8), 128, dtype=np.uint8), mode="L")
    (tmp_path / "l").mkdir()
    image, _ = _single_image_dataset(tmp_path / "l", gray, "png", 8, 6)[0]
    assert image.shape == (3, 6, 8) and torch.allclose(image, torch.full((3, 6, 8), 128 / 255))

    pal = Image.new("P", (8, 6))
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.putpixel((0, 0), 1)
    (tmp_path / "p").mkdir()
    image, _ = _single_image_dataset(tmp_path / "p", pal, "png", 8, 6)[0]
    assert (image[:, 0, 0] * 255).round().tolist() == [200, 100, 50]
    assert (image[:, 1, 1] * 255).round().tolist() == [10, 20, 30]

    rgba = np.zeros((6, 8, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 250, 5, 60, 0  # fully transparent
    (tmp_path / "rgba").mkdir()
    image, _ = _single_image_dataset(tmp_path / "rgba", Image.fromarray(rgba, mode="RGBA"), "png", 8, 6)[0]
    assert (image[:, 3, 3] * 255).round().tolist() == [250, 5, 60]

    vals = np.array([[0, 1000, 32768, 65535]] * 2, dtype=np.uint16)
    (tmp_path / "i16").mkdir()
    img16 = Image.fromarray(vals)  # mode I;16
    image, _ = _single_image_dataset(tmp_path / "i16", img16, "png", 4, 2)[0]
    expected = np.rint(vals[0].astype(np.float64) * 255 / 65535)  # full-range scaling, not clipping at 255
    assert image.shape == (3, 2, 4)
    assert (image[0, 0] * 255).round().tolist() == expected.tolist() == [0, 4, 128, 255]
    assert torch.equal(image[0], image[2])
    # the same data as a 32-bit 'I' image (how some Pillow versions open 16-bit PNGs)
    arr = pil_to_rgb_uint8(Image.fromarray(vals.astype(np.int32), mode="I"))
    assert arr[0, :, 0].tolist() == [0, 4, 128, 255]


# ---------------------------------------------------------------------------------- batching
def _orientation(ar: float) -> int:
    return 0 if ar >= 1 else 1


def test_aspect_ratio_sampler_properties():
    g = torch.Generator().manual_seed(5)
    ratios = (torch.rand(53, generator=g) * 1.5 + 0.4).tolist()
    s = AspectRatioGroupedBatchSampler(ratios, batch_size=4, shuffle=True, seed=3)
    s.set_epoch(0)
    batches = list(s)
    assert len(batches) == len(s)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(53))  # each index exactly once
    for b in batches:
        assert 1 <= len(b) <= 4
        assert len({_orientation(ratios[i]) for i in b}) == 1  # orientation-homogeneous
    assert sum(len(b) < 4 for b in batches) <= 2  # at most one leftover per bucket
    # deterministic for a seed, different across epochs and seeds
    s2 = AspectRatioGroupedBatchSampler(ratios, batch_size=4, shuffle=True, seed=3)
    s2.set_epoch(0)
    assert list(s2) == batches
    s2.set_epoch(1)
    assert list(s2) != batches
    s3 = AspectRatioGroupedBatchSampler(ratios, batch_size=4, shuffle=True, seed=4)
    s3.set_epoch(0)
    assert list(s3) != batches
    # without set_epoch the order still changes from one epoch to the next
    s4 = AspectRatioGroupedBatchSampler(ratios, batch_size=4, seed=3)
    assert list(s4) == batches and list(s4) != batches
    # drop_last keeps only full batches
    s5 = AspectRatioGroupedBatchSampler(ratios, batch_size=4, seed=3, drop_last=True)
    full = list(s5)
    assert all(len(b) == 4 for b in full) and len(full) == len(s5)
    # no shuffle: visiting order is the index order
    s6 = AspectRatioGroupedBatchSampler([1.0, 0.5, 2.0, 0.7, 1.2], batch_size=2, shuffle=False)
    assert list(s6) == [[0, 2], [1, 3], [4]]


def test_collate_keeps_lists():
    a = (torch.zeros(3, 4, 5), {"image_id": 1})
    b = (torch.zeros(3, 6, 2), {"image_id": 2})
    images, targets = collate([a, b])
    assert [im.shape for im in images] == [(3, 4, 5), (3, 6, 2)]
    assert [t["image_id"] for t in targets] == [1, 2]


@needs_coco128
def test_dataloader_groups_real_images(coco128_val):
    loader = build_dataloader(coco128_val, batch_size=3, num_workers=0, shuffle=True, group_by_aspect_ratio=True, seed=0)
    seen = []
    for images, targets in loader:
        assert isinstance(images, list) and isinstance(targets, list) and len(images) == len(targets)
        orient = {_orientation(im.shape[-1] / im.shape[-2]) for im in images}
        assert len(orient) == 1
        for im, t in zip(images, targets):
            assert im.shape[-2:] == t["masks"].shape[-2:] and t["img_size"] == tuple(im.shape[-2:])
        seen += [t["image_id"] for t in targets]
    assert sorted(seen) == sorted(coco128_val.img_ids)
    plain = build_dataloader(torch.utils.data.Subset(coco128_val, [0, 1, 2]), 2, group_by_aspect_ratio=True, seed=1)
    assert sum(len(b[0]) for b in plain) == 3
