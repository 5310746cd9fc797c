"""``data.crowd``: crowd / "ignore" annotations as the targets' ``ignore_boxes`` through every transform.

Coordinates after each transform are written by hand (resize: x * new_w / w; flip: W - x;
crop: translate and clip, empty ones dropped).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from swin_maskrcnn.data.coco import CocoInstanceDataset
from swin_maskrcnn.data.transforms import (
    Compose,
    RandomAbsoluteCrop,
    RandomHorizontalFlip,
    Resize,
    build_train_transforms,
    unwrap_target,
)
from swin_maskrcnn.data.validation import DataError


def _target(h=40, w=60):
    masks = torch.zeros(1, h, w, dtype=torch.uint8)
    masks[0, 5:15, 5:15] = 1
    return dict(
        boxes=torch.tensor([[5.0, 5, 15, 15]]),
        labels=torch.tensor([1]),
        masks=masks,
        ignore_boxes=torch.tensor([[30.0, 10, 50, 30], [0, 30, 10, 40]]),
    )


def test_resize_scales_and_clips_ignore_boxes():
    img = torch.zeros(3, 40, 60, dtype=torch.uint8)
    tgt = _target()
    tgt["ignore_boxes"] = torch.tensor([[30.0, 10, 50, 30], [0, 30, 70, 45]])  # second one sticks out
    _, out = Compose([Resize((120, 80), keep_ratio=False)])(img, tgt)  # exactly 120 x 80 (w x h): x2, y2
    out = unwrap_target(out)
    assert out["ignore_boxes"].tolist() == [[60.0, 20, 100, 60], [0, 60, 120, 80]]
    assert out["ignore_boxes"].dtype == torch.float32


def test_flip_mirrors_ignore_boxes():
    img = torch.zeros(3, 40, 60, dtype=torch.uint8)
    _, out = RandomHorizontalFlip.flip(img, _target())
    assert unwrap_target(out)["ignore_boxes"].tolist() == [[10.0, 10, 30, 30], [50, 30, 60, 40]]


def test_crop_translates_clips_and_drops_empty_ignore_boxes():
    img = torch.zeros(3, 40, 60, dtype=torch.uint8)
    # window rows 0..25, cols 20..60: region 0 -> [10, 10, 30, 25]; region 1 (x 0..10) is outside -> dropped
    _, out = RandomAbsoluteCrop().crop(img, _target(), top=0, left=20, height=25, width=40)
    out = unwrap_target(out)
    assert out["ignore_boxes"].tolist() == [[10.0, 10, 30, 25]]
    assert out["labels"].numel() == 0  # the instance (x 5..15) left the window; ignore boxes are separate


def test_ms_crop_pipeline_keeps_ignore_boxes_inside_the_image():
    img = torch.zeros(3, 400, 600, dtype=torch.uint8)
    tgt = _target(400, 600)
    tgt["ignore_boxes"] = tgt["ignore_boxes"] * 10
    torch.manual_seed(0)
    tf = build_train_transforms("ms_crop_3x")
    for _ in range(10):
        out_img, out = tf(img, tgt)
        out = unwrap_target(out)
        h, w = out_img.shape[-2:]
        ig = out["ignore_boxes"]
        assert ig.ndim == 2 and ig.shape[1] == 4
        assert (ig[:, 0] >= 0).all() and (ig[:, 2] <= w).all() and (ig[:, 1] >= 0).all() and (ig[:, 3] <= h).all()
        assert ((ig[:, 2] > ig[:, 0]) & (ig[:, 3] > ig[:, 1])).all()


def test_targets_without_ignore_boxes_stay_without():
    img = torch.zeros(3, 40, 60, dtype=torch.uint8)
    tgt = _target()
    del tgt["ignore_boxes"]
    _, out = build_train_transforms("1x", scale=(120, 80))(img, tgt)
    assert "ignore_boxes" not in unwrap_target(out)


# ---------------------------------------------------------------------------------- dataset
def _coco(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    Image.new("RGB", (60, 40), (120, 60, 30)).save(tmp_path / "images" / "a.png")
    sq = lambda x, y, s: [[x, y, x + s, y, x + s, y + s, x, y + s]]  # noqa: E731
    anns = [
        dict(id=1, image_id=1, category_id=3, bbox=[5, 5, 10, 10], segmentation=sq(5, 5, 10), area=100, iscrowd=0),
        # COCO crowd: RLE segmentation, iscrowd=1, box partly outside the image (clipped)
        dict(id=2, image_id=1, category_id=3, bbox=[30, 10, 40, 20], area=400, iscrowd=1,
             segmentation={"size": [40, 60], "counts": [0, 2400]}),
        # "ignore": 1 convention (CityPersons-style), polygon
        dict(id=3, image_id=1, category_id=7, bbox=[0, 30, 10, 10], segmentation=sq(0, 30, 10), area=100,
             iscrowd=0, ignore=1),
    ]
    data = dict(images=[dict(id=1, file_name="a.png", width=60, height=40)], annotations=anns,
                categories=[dict(id=3, name="cat"), dict(id=7, name="dog")])
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path


def test_crowd_drop_is_the_default_and_adds_no_key(tmp_path):
    ann = _coco(tmp_path)
    ds = CocoInstanceDataset(ann, tmp_path / "images")
    _, tgt = ds[0]
    assert "ignore_boxes" not in tgt
    assert tgt["boxes"].tolist() == [[5.0, 5, 15, 15]]
    assert ds.num_crowd == 2 and ds.num_ignore_boxes() == 0


def test_crowd_ignore_gives_clipped_ignore_boxes(tmp_path):
    ann = _coco(tmp_path)
    ds = CocoInstanceDataset(ann, tmp_path / "images", crowd="ignore",
                             transforms=Compose([Resize((120, 80), keep_ratio=False)]))
    _, tgt = ds[0]
    assert tgt["boxes"].tolist() == [[10.0, 10, 30, 30]]
    # [30, 10, 70, 30] clipped to x <= 60, then x2 / y2; [0, 30, 10, 40] x2 / y2
    assert tgt["ignore_boxes"].tolist() == [[60.0, 20, 120, 60], [0, 60, 20, 80]]
    assert ds.num_ignore_boxes() == 2
    # COCOeval's ground truth is the whole file
    assert len(ds.coco.getAnnIds(imgIds=[1], iscrowd=None)) == 3


def test_crowd_ignore_bad_box_is_named(tmp_path):
    ann = _coco(tmp_path)
    data = json.loads(ann.read_text())
    data["annotations"][1]["bbox"] = [1, 2, "x"]
    ann.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"image id 1 \(a.png\), annotation id 2: malformed bbox"):
        CocoInstanceDataset(ann, tmp_path / "images", crowd="ignore")


def test_train_config_crowd_key(tmp_path):
    from swin_maskrcnn.training.config import ConfigError, config_from_dict

    base = dict(data=dict(train_ann="a.json", train_images="img"))
    assert config_from_dict(base).data.crowd == "drop"
    assert config_from_dict({**base, "data": {**base["data"], "crowd": "ignore"}}).data.crowd == "ignore"
    with pytest.raises(ConfigError, match="data.crowd"):
        config_from_dict({**base, "data": {**base["data"], "crowd": "keep"}})
