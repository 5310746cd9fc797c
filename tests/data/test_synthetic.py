"""The synthetic shapes generator: exact visible-pixel masks, tight boxes, determinism, COCO loading."""
from __future__ import annotations

import hashlib
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from swin_maskrcnn.data.coco import CocoInstanceDataset
from swin_maskrcnn.data.synthetic import (
    CLASS_NAMES,
    _empty_indices,
    ShapeParams,
    generate_dataset,
    main,
    mask_to_annotation,
    render_sample,
    sample_seed_sequence,
)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SIZE = ((56, 72), (64, 88))  # random H, W per image: exercises non-square, varying sizes
PARAMS = ShapeParams(empty_fraction=0.1, size_range=(0.2, 0.6), max_objects=6)
COUNTS = {"train": 30, "val": 10}


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    generate_dataset(out, COUNTS, image_size=SIZE, seed=3, params=PARAMS)
    return out


def _load(ann_file: Path) -> dict:
    return json.loads(Path(ann_file).read_text())


def _decode(segm: dict) -> np.ndarray:
    return mask_utils.decode(segm).astype(bool)


def _anns_by_image(coco: dict) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {im["id"]: [] for im in coco["images"]}
    for a in coco["annotations"]:
        out[a["image_id"]].append(a)
    return out


def test_layout_and_categories(dataset_dir):
    for split, n in COUNTS.items():
        coco = _load(dataset_dir / "annotations" / f"{split}.json")
        assert len(coco["images"]) == n
        assert [c["name"] for c in coco["categories"]] == list(CLASS_NAMES)
        assert len(CLASS_NAMES) >= 4
        for im in coco["images"]:
            path = dataset_dir / "images" / split / im["file_name"]
            with Image.open(path) as img:
                assert img.mode == "RGB"
                assert img.size == (im["width"], im["height"])
            assert SIZE[0][0] <= im["height"] <= SIZE[0][1] and SIZE[1][0] <= im["width"] <= SIZE[1][1]
        for a in coco["annotations"]:
            assert a["iscrowd"] == 0
            assert isinstance(a["segmentation"]["counts"], str)
    train = _load(dataset_dir / "annotations" / "train.json")
    used = {a["category_id"] for a in train["annotations"]}
    assert used == set(range(1, len(CLASS_NAMES) + 1)), "every class should occur in 30 images"
    assert len({(im["height"], im["width"]) for im in train["images"]}) > 1


def test_masks_are_exactly_the_visible_pixels(dataset_dir):
    """json masks == re-rendered visible masks == each shape minus every shape painted after it."""
    for split in COUNTS:
        coco = _load(dataset_dir / "annotations" / f"{split}.json")
        by_image = _anns_by_image(coco)
        planned_empty = _empty_indices(3, split, COUNTS[split], PARAMS.empty_fraction)
        for i, im in enumerate(coco["images"]):
            sample = render_sample(sample_seed_sequence(3, split, i), SIZE, PARAMS, empty=i in planned_empty)
            # the PNG holds exactly the rendered pixels
            png = np.asarray(Image.open(dataset_dir / "images" / split / im["file_name"]).convert("RGB"))
            np.testing.assert_array_equal(png, sample.image)
            anns = by_image[im["id"]]
            assert len(anns) == len(sample.masks)
            for j, (a, vis, label, p) in enumerate(zip(anns, sample.masks, sample.labels, sample.kept)):
                decoded = _decode(a["segmentation"])
                assert decoded.shape == (im["height"], im["width"])
                np.testing.assert_array_equal(decoded, vis)
                assert a["category_id"] == label + 1
                # occlusion: visible = full shape minus the union of every LATER painted shape
                later = np.zeros_like(vis)
                for q in range(p + 1, len(sample.painted_masks)):
                    later |= sample.painted_masks[q]
                np.testing.assert_array_equal(vis, sample.painted_masks[p] & ~later)
                assert sample.painted_labels[p] == label
            # dropped shapes really were (nearly) hidden or too small
            for p, full in enumerate(sample.painted_masks):
                if p in sample.kept:
                    continue
                later = np.zeros_like(full)
                for q in range(p + 1, len(sample.painted_masks)):
                    later |= sample.painted_masks[q]
                area = int((full & ~later).sum())
                assert area < PARAMS.min_visible_area or area < PARAMS.min_visible_fraction * full.sum()


def test_boxes_tight_areas_exact_no_overlap(dataset_dir):
    for split in COUNTS:
        coco = _load(dataset_dir / "annotations" / f"{split}.json")
        for im in coco["images"]:
            anns = _anns_by_image(coco)[im["id"]]
            cover = np.zeros((im["height"], im["width"]), dtype=np.int32)
            for a in anns:
                m = _decode(a["segmentation"])
                ys, xs = np.nonzero(m)
                x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
                assert a["bbox"] == [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]
                assert a["area"] == float(m.sum())
                assert m.sum() >= PARAMS.min_visible_area
                cover += m
            assert cover.max(initial=0) <= 1, f"{split} image {im['id']}: instance masks overlap"


def test_empty_images_present(dataset_dir):
    for split, n in COUNTS.items():
        coco = _load(dataset_dir / "annotations" / f"{split}.json")
        with_anns = {a["image_id"] for a in coco["annotations"]}
        n_empty = sum(im["id"] not in with_anns for im in coco["images"])
        assert n_empty >= round(n * PARAMS.empty_fraction) >= 1
        assert n_empty < n


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_deterministic_given_seed(dataset_dir, tmp_path):
    again = tmp_path / "again"
    generate_dataset(again, COUNTS, image_size=SIZE, seed=3, params=PARAMS)
    assert _digest(again) == _digest(dataset_dir)
    other = tmp_path / "other"
    generate_dataset(other, {"train": 4}, image_size=SIZE, seed=4, params=PARAMS)
    first = _digest(dataset_dir)
    assert all(first[k] != v for k, v in _digest(other).items() if k.startswith("images/"))
    # an image does not depend on how many images the split has
    few = tmp_path / "few"
    generate_dataset(few, {"train": 3}, image_size=SIZE, seed=3, params=PARAMS)
    assert all(first[k] == v for k, v in _digest(few).items() if k.startswith("images/"))


def test_splits_are_different_images(dataset_dir):
    a = np.asarray(Image.open(dataset_dir / "images" / "train" / "000000.png"))
    b = np.asarray(Image.open(dataset_dir / "images" / "val" / "000000.png"))
    assert a.shape != b.shape or not np.array_equal(a, b)


def test_loads_through_coco_dataset_without_warnings(dataset_dir, caplog):
    for split in COUNTS:
        with caplog.at_level(logging.WARNING), warnings.catch_warnings():
            warnings.simplefilter("error")
            warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
            ds = CocoInstanceDataset(dataset_dir / "annotations" / f"{split}.json", dataset_dir / "images" / split,
                                     num_classes=len(CLASS_NAMES))
            coco = _load(dataset_dir / "annotations" / f"{split}.json")
            by_image = _anns_by_image(coco)
            for i in range(len(ds)):
                img, t = ds[i]
                anns = by_image[coco["images"][i]["id"]]
                assert img.shape[0] == 3 and img.dtype.is_floating_point
                assert t["boxes"].shape == (len(anns), 4)
                assert t["masks"].shape[0] == len(anns)
                if anns:
                    np.testing.assert_allclose(t["boxes"][:, 0].numpy(), [a["bbox"][0] for a in anns])
                    np.testing.assert_array_equal(t["masks"][0].numpy().astype(bool), _decode(anns[0]["segmentation"]))
        problems = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert not problems, [r.getMessage() for r in problems]
        assert len(ds) == COUNTS[split] and ds.class_names == list(CLASS_NAMES)


def test_mask_to_annotation_small_cases():
    m = np.zeros((5, 7), dtype=bool)
    m[1:3, 2:6] = True
    m[4, 0] = True  # a second, disconnected piece (an occluded shape can be split)
    a = mask_to_annotation(m)
    assert a["bbox"] == [0.0, 1.0, 6.0, 4.0]
    assert a["area"] == 9.0
    np.testing.assert_array_equal(_decode(a["segmentation"]), m)
    with pytest.raises(ValueError):
        mask_to_annotation(np.zeros((3, 3), dtype=bool))


def test_params_validation():
    with pytest.raises(ValueError):
        ShapeParams(min_objects=3, max_objects=2)
    with pytest.raises(ValueError):
        ShapeParams(size_range=(0.5, 0.1))
    with pytest.raises(ValueError):
        generate_dataset("/nonexistent-never-written", {"../x": 1})


def test_cli(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--train", "3", "--val", "2", "--size", "48x64", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert "train: 3 images" in printed and "val: 2 images" in printed
    coco = _load(tmp_path / "annotations" / "val.json")
    assert [(im["height"], im["width"]) for im in coco["images"]] == [(48, 64), (48, 64)]


# sha256 of the decoded pixels of every PNG and the bytes of every json (sorted paths) of
# generate_dataset(d, {"train": 6, "val": 3}, image_size=64, seed=3, params=P), computed with the
# generator as it was BEFORE ShapeParams.classes and the cross shape were added (commit d4f6b53)
_DEFAULT_OUTPUT_SHA256 = {
    "default": "cc0b17f81a5e46fe32251b4b611be1a26f20ce4985012e43283c3608f0f5b3ce",
    "demo": "2fd8a2e48a5e35565311a5f210ae5c838c813d559374e37246aaa517c94d3cc1",  # max_rotation=20 (configs/demo.yaml)
}


@pytest.mark.parametrize("which", sorted(_DEFAULT_OUTPUT_SHA256))
def test_default_output_unchanged_by_classes_option(tmp_path, which):
    params = ShapeParams() if which == "default" else ShapeParams(max_rotation=20.0)
    generate_dataset(tmp_path, {"train": 6, "val": 3}, image_size=64, seed=3, params=params)
    h = hashlib.sha256()
    for f in sorted(tmp_path.rglob("*")):
        if f.suffix == ".json":
            h.update(f.read_bytes())
        elif f.suffix == ".png":
            h.update(np.asarray(Image.open(f)).tobytes())
    assert h.hexdigest() == _DEFAULT_OUTPUT_SHA256[which]


def test_classes_option_selects_shapes_and_ids(tmp_path):
    from swin_maskrcnn.data.synthetic import SHAPE_NAMES

    assert "cross" in SHAPE_NAMES and "cross" not in CLASS_NAMES
    classes = ("cross", "ring", "rectangle")
    generate_dataset(tmp_path, {"train": 12}, image_size=64, seed=1, params=ShapeParams(classes=classes))
    coco = _load(tmp_path / "annotations" / "train.json")
    assert [(c["id"], c["name"]) for c in coco["categories"]] == [(1, "cross"), (2, "ring"), (3, "rectangle")]
    assert coco["info"]["params"]["classes"] == list(classes)
    assert {a["category_id"] for a in coco["annotations"]} == {1, 2, 3}
    with pytest.raises(ValueError, match="classes"):
        ShapeParams(classes=("cross", "hexagon"))
    with pytest.raises(ValueError, match="classes"):
        ShapeParams(classes=("ring", "ring"))


def test_cross_renders_as_two_perpendicular_bars():
    """An unrotated, unoccluded cross is exactly the union of a horizontal and a vertical bar:
    with the vertical bar t_v px wide (the narrowest rows) and the horizontal one t_h px high (the
    full-width rows), the columns mirror that (narrowest column t_h, t_v full-height columns), the
    area is W * t_h + H * t_v - t_h * t_v (closed form of the union), the corners are empty, the
    bars are thinner than half the length, and the two bar lengths agree within a pixel."""
    params = ShapeParams(classes=("cross",), min_objects=1, max_objects=1, max_rotation=0.0, empty_fraction=0.0,
                         size_range=(0.5, 0.6), pixel_noise=0.0)
    found = 0
    for i in range(20):
        s = render_sample(sample_seed_sequence(5, "x", i), 96, params)
        if not s.masks:
            continue
        m = s.masks[0]
        ys, xs = np.nonzero(m)
        if ys.min() == 0 or xs.min() == 0 or ys.max() == 95 or xs.max() == 95:
            continue  # cut by the border
        found += 1
        crop = m[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
        hh, ww = crop.shape
        assert abs(hh - ww) <= 1
        rows, cols = crop.sum(axis=1), crop.sum(axis=0)
        t_v, t_h = int(rows.min()), int((rows == ww).sum())
        assert int(cols.min()) == t_h and int((cols == hh).sum()) == t_v
        assert 0 < t_v < ww / 2 and 0 < t_h < hh / 2
        assert int(crop.sum()) == ww * t_h + hh * t_v - t_h * t_v
        c = (min(hh, ww) - max(t_h, t_v)) // 2 - 1
        assert c >= 1 and not crop[:c, :c].any() and not crop[-c:, -c:].any()
        assert s.labels == [0]
    assert found >= 3


@pytest.mark.parametrize("classes", [None, ("cross", "ring", "rectangle")])
def test_demo_reuses_generated_data_with_and_without_classes(tmp_path, classes):
    """The demo's reuse check (apps/demo._dataset_matches) recognises both a default dataset (no
    ``classes`` in info.params) and one with other classes; a different class list does not match."""
    from swin_maskrcnn.apps.demo import _dataset_matches

    params = ShapeParams() if classes is None else ShapeParams(classes=classes)
    generate_dataset(tmp_path, {"train": 2}, image_size=32, seed=0, params=params)
    assert ("classes" in _load(tmp_path / "annotations" / "train.json")["info"]["params"]) is (classes is not None)
    assert _dataset_matches(tmp_path, {"train": 2}, 32, 0, params)
    other = ShapeParams(classes=("star", "cross"))
    assert not _dataset_matches(tmp_path, {"train": 2}, 32, 0, other)
