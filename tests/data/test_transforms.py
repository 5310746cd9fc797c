"""Transforms keep image, boxes, masks and labels aligned; mmdet's resize rounding; crop semantics."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from swin_maskrcnn.data.transforms import (
    MMDET_MS_SCALES,
    Compose,
    RandomAbsoluteCrop,
    RandomChoice,
    RandomChoiceResize,
    RandomHorizontalFlip,
    Resize,
    build_test_transforms,
    build_train_transforms,
    masks_to_boxes,
    rescale_size,
    resize_to,
    unwrap_target,
)

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

# label -> colour painted into the image under the instance's mask (label/mask/image pairing check)
COLORS = {0: (255, 0, 0), 1: (0, 255, 0), 2: (0, 0, 255), 3: (255, 255, 0), 4: (0, 255, 255)}
BACKGROUND = (40, 40, 40)


def mmcv_rescale(w: int, h: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv.rescale_size written out independently: s = min(long_max/long, short_max/short),
    new = int(x * s + 0.5)."""
    s = min(max(scale) / max(w, h), min(scale) / min(w, h))
    return int(w * s + 0.5), int(h * s + 0.5)


def make_scene(h: int, w: int, rects: list[tuple[int, int, int, int, int]]):
    """Image (3,H,W) uint8 and target with one exact rectangle mask per (x1, y1, x2, y2, label),
    the rectangle painted in the label's colour."""
    image = torch.zeros((3, h, w), dtype=torch.uint8)
    for c in range(3):
        image[c] = BACKGROUND[c]
    masks = torch.zeros((len(rects), h, w), dtype=torch.uint8)
    boxes, labels = [], []
    for i, (x1, y1, x2, y2, lab) in enumerate(rects):
        masks[i, y1:y2, x1:x2] = 1
        for c in range(3):
            image[c, y1:y2, x1:x2] = COLORS[lab][c]
        boxes.append([x1, y1, x2, y2])
        labels.append(lab)
    target = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "masks": masks,
        "image_id": 7,
        "orig_size": (h, w),
        "img_size": (h, w),
        "scale_factor": (1.0, 1.0),
    }
    return image, target


def erode(mask: torch.Tensor, r: int) -> torch.Tensor:
    """Pixels at distance > r (Chebyshev) from any non-mask pixel, outside the image counting as
    non-mask (bilinear resampling blends colours within about one source pixel of an edge)."""
    m = torch.nn.functional.pad(mask.float()[None, None], (r, r, r, r), value=0.0)
    return (1 - torch.nn.functional.max_pool2d(1 - m, 2 * r + 1, stride=1))[0, 0] > 0.5


def check_aligned(image, target, n_before_per_label: dict[int, int], box_tol: float, erode_r: int):
    """The invariants every pipeline must keep."""
    image = image.as_subclass(torch.Tensor)
    t = unwrap_target(target)
    h, w = image.shape[-2:]
    boxes, labels, masks = t["boxes"], t["labels"], t["masks"]
    n = len(labels)
    assert boxes.shape == (n, 4) and masks.shape == (n, h, w)
    assert t["img_size"] == (h, w)
    assert masks.dtype == torch.uint8 and boxes.dtype == torch.float32 and labels.dtype == torch.int64
    if n:
        assert (masks.flatten(1).sum(1) > 0).all(), "an instance with an empty mask survived"
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert (boxes[:, 0::2] >= 0).all() and (boxes[:, 0::2] <= w).all()
        assert (boxes[:, 1::2] >= 0).all() and (boxes[:, 1::2] <= h).all()
        tight = masks_to_boxes(masks)
        err = (tight - boxes).abs().max().item()
        assert err <= box_tol, f"box vs mask tight box differ by {err} > {box_tol}\n{boxes}\n{tight}"
    for lab, cnt in enumerate(torch.bincount(labels, minlength=5).tolist()):
        assert cnt <= n_before_per_label.get(lab, 0)
    # the image under each mask has that instance's label colour
    for i in range(n):
        core = erode(masks[i], erode_r)
        if core.any():
            color = torch.tensor(COLORS[int(labels[i])], dtype=torch.float32)[:, None]
            pix = image[:, core].float()
            if image.is_floating_point():
                pix = pix * 255
            assert (pix - color).abs().max() <= 3, f"instance {i} label {int(labels[i])}: mask sits on other colours"


# ------------------------------------------------------------------------------------ resize
@pytest.mark.parametrize(
    "w,h,expected",
    [
        (640, 480, (1067, 800)),
        (500, 375, (1067, 800)),
        (427, 640, (800, 1199)),
        (2000, 100, (1333, 67)),
        (1333, 800, (1333, 800)),
        (333, 500, (800, 1201)),
    ],
)
def test_rescale_size_matches_mmcv(w, h, expected):
    assert mmcv_rescale(w, h, (1333, 800)) == expected
    assert rescale_size((w, h), (1333, 800))[0] == expected
    assert rescale_size((w, h), (800, 1333))[0] == expected  # order of the pair does not matter


def test_resize_image_boxes_masks_and_scale_factor():
    image, target = make_scene(48, 64, [(8, 4, 24, 20, 1), (40, 30, 60, 46, 2)])
    out_img, out = Resize((1333, 800))(image, target)
    nw, nh = mmcv_rescale(64, 48, (1333, 800))
    assert tuple(out_img.shape) == (3, nh, nw) == (3, 800, 1067)
    sx, sy = nw / 64, nh / 48
    assert out["scale_factor"] == pytest.approx((sx, sy))
    assert out["img_size"] == (nh, nw) and out["orig_size"] == (48, 64)
    expected = target["boxes"] * torch.tensor([sx, sy, sx, sy])
    assert torch.allclose(out["boxes"].as_subclass(torch.Tensor), expected, atol=1e-4)
    check_aligned(out_img, out, {1: 1, 2: 1}, box_tol=1.0 + 1e-3, erode_r=int(math.ceil(sx)) + 1)
    # nearest mask: dst pixel j is inside iff floor(j * src/dst) is inside (cv2 INTER_NEAREST)
    cols = torch.arange(nw)
    src = torch.floor(cols * (64 / nw)).long()
    expected_row = ((src >= 8) & (src < 24)).to(torch.uint8)
    row = out["masks"][0, int(12 * sy)]
    assert torch.equal(row.as_subclass(torch.Tensor), expected_row)


def test_resize_non_keep_ratio_and_test_transforms():
    image, target = make_scene(50, 70, [(10, 10, 30, 40, 0)])
    img2, t2 = Resize((100, 60), keep_ratio=False)(image, target)
    assert tuple(img2.shape[-2:]) == (60, 100)
    assert t2["scale_factor"] == pytest.approx((100 / 70, 60 / 50))
    img3, t3 = build_test_transforms((1333, 800))(image, target)
    assert tuple(img3.shape[-2:]) == (800, 1120)  # min(1333/70, 800/50) = 16 -> 1120 x 800
    assert t3["scale_factor"] == pytest.approx((16.0, 16.0))
    img4, t4 = build_test_transforms(None)(image, target)
    assert torch.equal(img4.as_subclass(torch.Tensor), image) and t4["scale_factor"] == (1.0, 1.0)


# ------------------------------------------------------------------------------------ flip
def test_flip_boxes_masks_image():
    image, target = make_scene(40, 50, [(3, 5, 13, 25, 0), (30, 10, 49, 30, 3)])
    img, out = RandomHorizontalFlip.flip(image, target)
    W = 50
    b = target["boxes"]
    expected = torch.stack([W - b[:, 2], b[:, 1], W - b[:, 0], b[:, 3]], dim=1)
    assert torch.equal(out["boxes"].as_subclass(torch.Tensor), expected)
    assert torch.equal(out["masks"].as_subclass(torch.Tensor), target["masks"].flip(-1))
    assert torch.equal(img.as_subclass(torch.Tensor), image.flip(-1))
    check_aligned(img, out, {0: 1, 3: 1}, box_tol=0.0, erode_r=0)
    # p=0 never flips, p=1 always flips
    img0, _ = RandomHorizontalFlip(0.0)(image, target)
    img1, _ = RandomHorizontalFlip(1.0)(image, target)
    assert torch.equal(img0.as_subclass(torch.Tensor), image)
    assert torch.equal(img1.as_subclass(torch.Tensor), image.flip(-1))


# ------------------------------------------------------------------------------------ crop
def test_crop_drops_instances_from_boxes_masks_labels_together():
    h, w = 60, 80
    image, target = make_scene(h, w, [(2, 2, 12, 12, 0), (30, 20, 50, 40, 1), (60, 45, 78, 58, 2)])
    # a 4th instance: two diagonal blobs; its box spans the crop centre, its pixels are outside
    extra = torch.zeros((1, h, w), dtype=torch.uint8)
    extra[0, 14:17, 14:17] = 1
    extra[0, 56:59, 2:5] = 1
    target["masks"] = torch.cat([target["masks"], extra])
    target["boxes"] = torch.cat([target["boxes"], torch.tensor([[2.0, 14.0, 17.0, 59.0]])])
    target["labels"] = torch.cat([target["labels"], torch.tensor([4])])
    crop = RandomAbsoluteCrop((10, 40))
    img, out = crop.crop(image, target, top=18, left=10, height=30, width=45)
    # instance 0 (label 0) entirely outside; instance 3 (label 2) outside; label-4 box overlaps the
    # window but its mask is empty there -> dropped; only label 1 survives, clipped/translated
    assert out["labels"].tolist() == [1]
    assert out["masks"].shape == (1, 30, 45) and out["boxes"].shape == (1, 4)
    assert out["boxes"].as_subclass(torch.Tensor).tolist() == [[20.0, 2.0, 40.0, 22.0]]
    assert torch.equal(out["masks"][0].as_subclass(torch.Tensor), target["masks"][1, 18:48, 10:55])
    assert torch.equal(img.as_subclass(torch.Tensor), image[:, 18:48, 10:55])
    assert out["img_size"] == (30, 45) and out["scale_factor"] == (1.0, 1.0)
    # box clipped at the crop border
    img, out = crop.crop(image, target, top=25, left=35, height=30, width=40)
    assert out["labels"].tolist() == [1, 2]
    assert out["boxes"][0].as_subclass(torch.Tensor).tolist() == [0.0, 0.0, 15.0, 15.0]
    check_aligned(img, out, {1: 1, 2: 1}, box_tol=0.0, erode_r=1)


def test_crop_size_range_is_mmdet_absolute_range():
    torch.manual_seed(0)
    crop = RandomAbsoluteCrop((20, 30))
    hs, ws = set(), set()
    for _ in range(400):
        top, left, ch, cw = crop.sample_window(50, 25)
        hs.add(ch)
        ws.add(cw)
        assert 0 <= top <= 50 - ch and 0 <= left <= 25 - cw
    assert hs == set(range(20, 31))  # [min(h, 20), min(h, 30)]
    assert ws == set(range(20, 26))  # width 25 < 30: [20, 25]
    # image smaller than the lower bound: the crop is the whole side
    assert {crop.sample_window(10, 12)[2:] for _ in range(20)} == {(10, 12)}


def test_negative_crop_disallowed_keeps_instances():
    image, target = make_scene(100, 100, [(0, 0, 6, 6, 0)])
    torch.manual_seed(1)
    crop = RandomAbsoluteCrop((20, 30), allow_negative_crop=False, max_tries=50)
    for _ in range(10):
        _, out = crop(image, target)
        assert len(out["labels"]) == 1


def test_empty_targets_pass_every_transform():
    image, target = make_scene(37, 53, [])
    pipes = [
        Resize((100, 60)),
        RandomHorizontalFlip(1.0),
        RandomChoiceResize([(90, 40), (120, 70)]),
        RandomAbsoluteCrop((10, 20)),
        build_train_transforms("1x", scale=(100, 60)),
        build_train_transforms("ms_crop_3x", ms_scales=[(100, 50)], crop_pre_scales=[(80, 40)], crop_size=(20, 30)),
        build_train_transforms("none"),
        build_test_transforms((100, 60)),
    ]
    torch.manual_seed(0)
    for p in pipes:
        img, out = p(image, target)
        h, w = img.shape[-2:]
        t = unwrap_target(out)
        assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,) and t["masks"].shape == (0, h, w)


def test_random_choice_uses_every_option():
    torch.manual_seed(0)
    rc = RandomChoice([Resize((30, 30), keep_ratio=False), [Resize((20, 20), keep_ratio=False)]])
    image, target = make_scene(10, 10, [])
    sizes = {tuple(rc(image, target)[0].shape[-2:]) for _ in range(30)}
    assert sizes == {(30, 30), (20, 20)}
    with pytest.raises(ValueError):
        build_train_transforms("2x")


def test_presets_structure():
    assert MMDET_MS_SCALES[0] == (1333, 480) and MMDET_MS_SCALES[-1] == (1333, 800) and len(MMDET_MS_SCALES) == 11
    one_x = build_train_transforms("1x")
    assert isinstance(one_x.transforms[0], Resize) and one_x.transforms[0].scale == (1333, 800)
    assert isinstance(one_x.transforms[1], RandomHorizontalFlip) and one_x.transforms[1].p == 0.5
    ms = build_train_transforms("ms_crop_3x")
    assert isinstance(ms.transforms[0], RandomHorizontalFlip) and isinstance(ms.transforms[1], RandomChoice)
    crop_branch = ms.transforms[1].options[1].transforms
    assert [type(t).__name__ for t in crop_branch] == ["RandomChoiceResize", "RandomAbsoluteCrop", "RandomChoiceResize"]
    assert crop_branch[1].crop_size == (384, 600) and crop_branch[1].allow_negative_crop


# ------------------------------------------------------------------------------------ properties
@st.composite
def scenes(draw):
    h = draw(st.integers(64, 160))
    w = draw(st.integers(64, 160))
    rects = []
    # one optional rectangle per cell of a 2x2 grid: no overlaps, so each colour is unambiguous
    for cy in range(2):
        for cx in range(2):
            if not draw(st.booleans()):
                continue
            y0, y1c = cy * h // 2, (cy + 1) * h // 2
            x0, x1c = cx * w // 2, (cx + 1) * w // 2
            x1 = draw(st.integers(x0, x1c - 4))
            x2 = draw(st.integers(x1 + 3, x1c))
            y1 = draw(st.integers(y0, y1c - 4))
            y2 = draw(st.integers(y1 + 3, y1c))
            rects.append((x1, y1, x2, y2, draw(st.integers(0, 4))))
    return h, w, rects


def test_resize_drops_an_instance_whose_mask_a_downscale_empties():
    # nearest resize samples source column floor(j * 72 / 64), j < 64: at most 70, so column 71 is never read
    masks = torch.zeros((3, 76, 72), dtype=torch.uint8)
    masks[0, 33:38, 71] = 1  # a 1-px sliver in the last column: vanishes
    masks[1, 10:20, 10:20] = 1  # an ordinary object: kept
    masks[2, 40:50, 60:70] = 1  # kept
    target = {"boxes": torch.tensor([[71.0, 33.0, 72.0, 38.0], [10.0, 10.0, 20.0, 20.0], [60.0, 40.0, 70.0, 50.0]]),
              "labels": torch.tensor([4, 1, 2]), "masks": masks, "ann_ids": [101, 102, 103]}
    image = torch.zeros((3, 76, 72), dtype=torch.uint8)
    img, out = resize_to(image, target, 68, 64)
    out = unwrap_target(out)
    assert img.shape[-2:] == (68, 64)
    assert out["labels"].tolist() == [1, 2] and out["ann_ids"] == [102, 103]  # box, mask, label, id together
    assert out["masks"].shape == (2, 68, 64) and (out["masks"].flatten(1).sum(1) > 0).all()
    assert torch.allclose(out["boxes"][0], torch.tensor([10 * 64 / 72, 10 * 68 / 76, 20 * 64 / 72, 20 * 68 / 76]))
    # an upscale keeps every pixel column, so nothing is dropped
    _, up = resize_to(image, {k: (v.clone() if isinstance(v, torch.Tensor) else list(v)) for k, v in target.items()}, 95, 90)
    assert unwrap_target(up)["labels"].tolist() == [4, 1, 2]


MS = [(200, 64), (200, 80), (200, 96)]
PRE = [(200, 80), (200, 100)]
CROP = (48, 80)
# largest single-step upscale of these pipelines: short side 96 from a crop side >= 48
MAX_STEP_SCALE = 96 / 48


@settings(max_examples=20, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(scene=scenes(), seed=st.integers(0, 2**31 - 1), kind=st.sampled_from(["1x", "ms_crop_3x", "crop_branch", "mixed"]))
@example(scene=(64, 64, [(48, 32, 51, 35, 0)]), seed=4412, kind="crop_branch")  # found by this test: a crop
# leaves a 1-px sliver at the border, the last resize (76x72 -> 68x64) samples none of its pixels
def test_alignment_property(scene, seed, kind):
    h, w, rects = scene
    image, target = make_scene(h, w, rects)
    before = {}
    for r in rects:
        before[r[4]] = before.get(r[4], 0) + 1
    torch.manual_seed(seed)
    if kind == "1x":
        pipe = build_train_transforms("1x", scale=(200, 96))
        tol = 1.0 + 1e-3  # one resize: < 1 px
    elif kind == "ms_crop_3x":
        pipe = build_train_transforms("ms_crop_3x", ms_scales=MS, crop_pre_scales=PRE, crop_size=CROP)
        tol = MAX_STEP_SCALE + 1.0 + 1e-3  # resize, crop, resize: s2 * (<1) + (<1)
    elif kind == "crop_branch":
        pipe = Compose([RandomChoiceResize(PRE), RandomAbsoluteCrop(CROP), RandomHorizontalFlip(0.5), RandomChoiceResize(MS)])
        tol = MAX_STEP_SCALE + 1.0 + 1e-3
    else:  # crop first (exact), then flip and one resize
        pipe = Compose([RandomAbsoluteCrop(CROP), RandomHorizontalFlip(0.5), Resize((200, 96))])
        tol = 1.0 + 1e-3
    img, out = pipe(image, target)
    check_aligned(img, out, before, box_tol=tol, erode_r=4)
    # scale_factor is the cumulative resize factor: a full image resize reproduces it
    if kind == "1x":
        assert out["scale_factor"][0] == pytest.approx(img.shape[-1] / w)
        assert out["scale_factor"][1] == pytest.approx(img.shape[-2] / h)


# ------------------------------------------------------------------------------------ real images
@pytest.mark.skipif(not (DATA / "coco128_seg").is_dir(), reason=f"real dataset not found under {DATA}")
def test_coco128_images_through_ms_crop_3x():
    from swin_maskrcnn.data.coco import CocoInstanceDataset

    ds = CocoInstanceDataset(
        DATA / "coco128_seg/annotations/val.json",
        DATA / "coco128_seg/images",
        transforms=Compose(
            [RandomChoiceResize([(1333, 400), (1333, 500), (1333, 600)]), RandomAbsoluteCrop((384, 600)), RandomChoiceResize(MMDET_MS_SCALES)]
        ),
    )
    full = CocoInstanceDataset(
        DATA / "coco128_seg/annotations/val.json", DATA / "coco128_seg/images", transforms=build_train_transforms("ms_crop_3x")
    )
    torch.manual_seed(3)
    for i in range(4):
        for d in (ds, full):
            image, t = d[i]
            h, w = image.shape[-2:]
            n = len(t["labels"])
            assert image.dtype == torch.float32 and 0.0 <= image.min() and image.max() <= 1.0
            assert t["boxes"].shape == (n, 4) and t["masks"].shape == (n, h, w)
            assert min(h, w) <= 800 and max(h, w) <= 1333
            if n:
                assert (t["masks"].flatten(1).sum(1) > 0).all()
                tight = masks_to_boxes(t["masks"])
                s = max(t["scale_factor"])
                # mmdet semantics: a crop clips the box (not recomputed from the mask), so a
                # non-convex object's box may be looser than its mask; the mask must lie inside
                # its box (polygon boxes vs rasterised masks differ by up to ~4 px at the original
                # size, hence the tolerance)
                tol = 4.0 * s + 3.0
                b = t["boxes"]
                assert (tight[:, :2] >= b[:, :2] - tol).all() and (tight[:, 2:] <= b[:, 2:] + tol).all()
                assert (t["labels"] >= 0).all() and (t["labels"] < 80).all()
