"""swin-maskrcnn inspect on data sets with planted facts: every fact with its exact count, the anchor
fit against boxes placed on the anchor grid, the problems with their fixes, the files it writes."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import tiny_train_config, write_box_coco
from swin_maskrcnn.apps.cli import main

CATS = [(1, "a"), (2, "b"), (5, "c"), (9, "none")]


def planted(tmp_path):
    """10 images of 128 x 128; images 8 and 9 (20 %) without annotations; classes a / b / c with 50 / 50 / 2
    instances, 'none' with none; two crowd annotations; 16 x 16 boxes centred on multiples of 4."""
    boxes, per_image = [], [0] * 10
    labels = [1] * 50 + [2] * 50 + [5] * 2
    for n, cat in enumerate(labels):
        k = n % 8
        slot = per_image[k]
        per_image[k] += 1
        boxes.append((k, cat, [8 + 24 * (slot % 5), 8 + 24 * (slot // 5), 16, 16]))
    boxes += [(0, 1, [100, 100, 20, 20], 1), (1, 2, [100, 100, 20, 20], 1)]
    ann, imgs = write_box_coco(tmp_path / "planted", [(128, 128)] * 10, boxes, CATS)
    return ann, imgs, per_image


def run(tmp_path, capsys, *args):
    out = tmp_path / "out"
    code = main(["inspect", *args, "--out", str(out), "--no-progress"])
    printed = capsys.readouterr()
    report = json.loads((out / "report.json").read_text()) if code == 0 else None
    return code, report, printed, out


def test_planted_facts_exact_counts(tmp_path, capsys):
    ann, imgs, per_image = planted(tmp_path)
    code, r, printed, out = run(tmp_path, capsys, "--ann", str(ann), "--images", str(imgs), "data.scale=[128,128]",
                                "--gallery", "3")
    assert code == 0
    assert r["images"]["count"] == 10 and r["images"]["without_annotations"] == 2 and r["images"]["skipped"] == 0
    assert r["images"]["width"] == {"min": 128, "median": 128.0, "max": 128}
    assert r["images"]["used_for_training"] == 8  # filter_empty_gt defaults to true
    by_name = {c["name"]: c for c in r["classes"]}
    assert [(c["category_id"], c["label"], c["instances"]) for c in r["classes"]] == [
        (1, 0, 50), (2, 1, 50), (5, 2, 2), (9, 3, 0)]
    assert by_name["a"]["images"] == 8 and by_name["c"]["images"] == 2 and by_name["none"]["images"] == 0
    assert r["imbalance_ratio"] == 25.0
    assert r["crowd"] == 2
    counts = np.array(per_image, dtype=float)
    assert r["instances_per_image"]["max"] == int(counts.max())
    assert r["instances_per_image"]["mean"] == pytest.approx(102 / 10)
    assert r["instances_per_image"]["p99"] == pytest.approx(float(np.percentile(counts, 99)))
    kinds = {p["kind"]: p for p in r["problems"]}
    assert kinds["class without instances"]["count"] == 1 and "none" in kinds["class without instances"]["message"]
    assert kinds["rare class"]["count"] == 1 and "c (2)" in kinds["rare class"]["message"]
    assert kinds["images without annotations"]["count"] == 2
    assert "9, 10" in kinds["images without annotations"]["message"]  # their image ids
    assert kinds["crowd annotations"]["count"] == 2
    assert "more objects per image than a cap" not in kinds
    # anchors: 16 px boxes against COCO's 32 px P2 anchors (IoU 0.25): no positive anchor for any of them
    af = r["anchor_fit"]
    assert af["current"]["bpr"] == 0.0 and af["current"]["unmatched"] == 102 and af["num_boxes"] == 102
    assert af["suggested"]["bpr"] == 1.0 and af["suggested"]["unmatched"] == 0
    assert kinds["anchors do not fit the objects"]["count"] == 102
    assert kinds["anchors do not fit the objects"]["fix"].startswith(af["override"])
    # text: problems first, each with its fix, and the override line
    text = printed.out
    assert text.index("problems (") < text.index("images: 10")
    assert "fix: " + af["override"] in text
    for name in ("sizes.png", "anchor_fit.png", "classes.png", "report.txt"):
        assert (out / name).stat().st_size > 0
    assert len(list((out / "gallery").glob("*.png"))) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "planted"]  # nothing written elsewhere


def test_dense_image_above_the_caps(tmp_path, capsys):
    boxes = [(0, 1, [4 + 12 * (i % 20), 4 + 12 * (i // 20), 8, 8]) for i in range(300)] + [(1, 1, [10, 10, 30, 30])]
    ann, imgs = write_box_coco(tmp_path / "dense", [(256, 256), (256, 256)], boxes, [(1, "cell")])
    code, r, printed, _ = run(tmp_path, capsys, "--ann", str(ann), "--images", str(imgs), "--no-plots")
    assert code == 0 and r["instances_per_image"]["max"] == 300
    p = next(p for p in r["problems"] if p["kind"] == "more objects per image than a cap")
    assert p["count"] == 1 and "image id 1" in p["message"] and "roi.max_per_img 100" in p["message"]
    assert "eval maxDets 100" in p["message"]
    assert p["fix"].startswith("model.max_instances=300")
    # the fix applied: no cap problem left
    code, r, _, _ = run(tmp_path, capsys, "--ann", str(ann), "--images", str(imgs), "--no-plots",
                        "model.max_instances=300")
    assert r["instances_per_image"]["caps"]["roi.max_per_img"] == 300
    assert not [p for p in r["problems"] if p["kind"] == "more objects per image than a cap"]


def test_config_both_splits_and_checkpoint_names(tmp_path, capsys):
    import yaml

    from swin_maskrcnn import SwinMaskRCNN
    from swin_maskrcnn.checkpoint.native import save_checkpoint
    from swin_maskrcnn.training.config import dump_config

    ann, imgs, _ = planted(tmp_path)
    cfg = tiny_train_config(ann, imgs, tmp_path / "runs", "x")
    cfg.model.num_classes = 4
    path = tmp_path / "cfg.yaml"
    path.write_text(dump_config(cfg))
    ck = save_checkpoint(tmp_path / "m.pt", SwinMaskRCNN(cfg.model), cfg.model, ["a", "b", "c", "zzz"],
                         {1: 0, 2: 1, 5: 2, 9: 3})
    code, r, printed, _ = run(tmp_path, capsys, "--config", str(path), "--split", "both", "--checkpoint", str(ck),
                              "--no-plots")
    assert code == 0 and set(r["splits"]) == {"train", "val"}
    assert r["anchor_fit"]["scale"] == [128, 128]
    p = next(p for p in r["problems"] if p["kind"] == "class names differ from the checkpoint")
    assert "'zzz'" in p["message"] and p["severity"] == "error"
    assert printed.out.count("== ") == 2
    assert yaml.safe_load(path.read_text())["model"]["num_classes"] == 4  # the config is not touched


def test_bad_dataset_one_error_line(tmp_path, capsys):
    ann, imgs = write_box_coco(tmp_path / "bad", [(64, 64)], [(0, 7, [4, 4, 10, 10])], [(1, "a")])
    code = main(["inspect", "--ann", str(ann), "--images", str(imgs), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "annotation id 1" in err[0] and "unknown category_id 7" in err[0] and "ann.json" in err[0]
    assert not (tmp_path / "out").exists()


def test_missing_image_is_counted_as_skipped(tmp_path, capsys):
    ann, imgs = write_box_coco(tmp_path / "miss", [(64, 64), (64, 64)], [(0, 1, [4, 4, 10, 10]), (1, 1, [4, 4, 10, 10])],
                               [(1, "a")])
    (imgs / "im_1.png").unlink()
    code, r, _, _ = run(tmp_path, capsys, "--ann", str(ann), "--images", str(imgs), "--no-plots")
    assert code == 0 and r["images"]["skipped"] == 1
    p = next(p for p in r["problems"] if p["kind"] == "skipped images")
    assert p["count"] == 1 and "missing: 1" in p["message"] and "image ids 2" in p["message"]
    assert p["severity"] == "error" and "data.bad_images=skip" in p["fix"]
