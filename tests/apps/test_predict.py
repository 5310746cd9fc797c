"""``swin-maskrcnn predict`` and :class:`Predictor` on files and folders, with our checkpoint and an
mmdet one; the visualisation; ``--max-per-img``; unreadable images; no heavy imports.

The reference for every prediction is the model's own ``predict`` on the image read by the
training reader (``load_rgb_image``), independent of the command's batching, JSON writing and
category mapping; RLE masks are decoded with pycocotools and compared pixel for pixel.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from swin_maskrcnn import Predictor, SwinMaskRCNN, load_model
from swin_maskrcnn.apps.cli import main
from swin_maskrcnn.apps.visualize import PALETTE, draw_detections
from swin_maskrcnn.checkpoint.native import save_checkpoint
from swin_maskrcnn.data.images import load_rgb_image
from swin_maskrcnn.modeling.config import tiny_model_config

from conftest import FIXTURES
from conftest import make_tiny_coco, tiny_train_config

MMDET_CKPT = FIXTURES / "mmdet_tiny_seed11" / "checkpoint.pth"
SCALE = (128, 96)


def _exif_rotated_jpeg(path: Path, arr: np.ndarray) -> None:
    """A JPEG stored landscape with EXIF orientation 6 (display rotated 90° clockwise: portrait)."""
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(path, exif=exif.tobytes(), quality=95)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A folder (with a sub-folder) of RGB, grayscale, RGBA, 16-bit and EXIF-rotated images, one
    corrupt file, one non-image file; and a loose image file outside it."""
    root = tmp_path_factory.mktemp("predict_inputs")
    rng = np.random.default_rng(0)

    def rgb(h, w):
        a = rng.integers(0, 80, size=(h, w, 3), dtype=np.uint8)
        a[h // 4: h // 2, w // 4: w // 2] = (220, 60, 60)
        return a

    folder = root / "photos"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(rgb(96, 120)).save(folder / "a_rgb.png")
    Image.fromarray(rgb(80, 64)[..., 0]).save(folder / "b_gray.png")
    Image.fromarray(np.dstack([rgb(72, 100), np.full((72, 100), 128, np.uint8)])).save(folder / "sub" / "c_rgba.PNG")
    Image.fromarray((rng.integers(0, 65535, size=(64, 90))).astype(np.uint16)).save(folder / "sub" / "d_16bit.png")
    _exif_rotated_jpeg(folder / "sub" / "e_exif.jpg", rgb(60, 100))
    (folder / "sub" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "notes.txt").write_text("not an image")
    loose = root / "loose.jpg"
    Image.fromarray(rgb(100, 90)).save(loose, quality=95)
    return {"folder": folder, "loose": loose}


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    """Our model_final.pt format, with a training config (test scale 128x96), names and dataset ids."""
    root = tmp_path_factory.mktemp("predict_ckpt")
    ann, imgs = make_tiny_coco(root / "data", n_images=1)
    cfg = tiny_train_config(ann, imgs, root / "runs", "p")
    cfg.model = tiny_model_config(num_classes=2, fpn_channels=32, roi_fc_dims=64, mask_head_channels=16,
                                  roi=dict(max_per_img=30), test_scale=SCALE)
    torch.manual_seed(0)
    model = SwinMaskRCNN(cfg.model).eval()
    return save_checkpoint(root / "model_final.pt", model, cfg, ["rect", "ellipse"], {3: 0, 7: 1})


GOOD = ["a_rgb.png", "b_gray.png", "sub/c_rgba.PNG", "sub/d_16bit.png", "sub/e_exif.jpg"]


def _by_image(results: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in results:
        out.setdefault(r["image"], []).append(r)
    return out


def _check_against_model(results_of_image: list[dict], model, path: Path, scale, label_of) -> None:
    """The JSON entries of one image equal the model's predict on the image as training reads it."""
    from pycocotools import mask as mask_utils

    image = load_rgb_image(path)
    (ref,) = model.predict([image], resize=scale is not None, scale=scale or (1333, 800))
    assert len(results_of_image) == len(ref["scores"])
    for r, box, score, label, mask in zip(results_of_image, ref["boxes"], ref["scores"], ref["labels"], ref["masks"]):
        x1, y1, x2, y2 = box.tolist()
        assert r["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=1e-4)
        assert r["score"] == pytest.approx(float(score), abs=1e-6)
        assert r["category_id"] == label_of(int(label))
        assert r["segmentation"]["size"] == list(image.shape[:2])
        assert np.array_equal(mask_utils.decode(r["segmentation"]).astype(bool), mask.numpy())


def test_predict_folder_and_file_with_our_checkpoint(ours, inputs, tmp_path, capsys):
    out, viz = tmp_path / "preds.json", tmp_path / "viz"
    rc = main(["predict", "--checkpoint", str(ours), "--out", str(out), "--viz", str(viz), "--device", "cpu",
               "--no-progress", "--precision", "fp32", str(inputs["folder"]), str(inputs["loose"])])
    err = capsys.readouterr().err
    assert rc == 1  # the broken jpeg
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and "broken.jpg" in error_lines[0]
    results = json.loads(out.read_text())
    per = _by_image(results)
    folder = inputs["folder"]
    assert set(per) <= {str(folder / g) for g in GOOD} | {str(inputs["loose"])}
    model = load_model(ours)
    assert model.cfg.roi.max_per_img == 30
    for name in GOOD:
        path = folder / name
        entries = per.get(str(path), [])
        assert all(e["file_name"] == name for e in entries)
        _check_against_model(entries, model, path, SCALE, {0: 3, 1: 7}.__getitem__)
    assert {e["file_name"] for e in per[str(inputs["loose"])]} == {"loose.jpg"}
    # EXIF orientation applied: the stored 100x60 landscape is predicted as 60x100 portrait
    exif = per[str(folder / "sub" / "e_exif.jpg")]
    assert exif and exif[0]["segmentation"]["size"] == [100, 60]
    # one PNG per readable image, at the image's size (after EXIF; upscaled x6 to >= 512 px), mirroring the folders
    pngs = sorted(p.relative_to(viz).as_posix() for p in viz.rglob("*.png"))
    assert pngs == sorted(["a_rgb.png", "b_gray.png", "sub/c_rgba.png", "sub/d_16bit.png", "sub/e_exif.png", "loose.png"])
    with Image.open(viz / "sub" / "e_exif.png") as im:
        assert im.size == (60 * 6, 100 * 6)


def test_predict_with_a_swin_v2_checkpoint(inputs, tmp_path):
    """The same command with a Swin V2 backbone: the JSON equals the loaded model's predict."""
    root = tmp_path / "v2"
    ann, imgs = make_tiny_coco(root / "data", n_images=1)
    cfg = tiny_train_config(ann, imgs, root / "runs", "p2")
    cfg.model = tiny_model_config(num_classes=2, backbone_version=2, fpn_channels=32, roi_fc_dims=64,
                                  mask_head_channels=16, roi=dict(max_per_img=30), test_scale=SCALE)
    torch.manual_seed(0)
    ckpt = save_checkpoint(root / "model_final.pt", SwinMaskRCNN(cfg.model).eval(), cfg, ["rect", "ellipse"], {3: 0, 7: 1})
    out = tmp_path / "preds.json"
    folder = inputs["folder"]
    assert main(["predict", "--checkpoint", str(ckpt), "--out", str(out), "--device", "cpu", "--no-progress", "--precision", "fp32",
                 str(folder / "a_rgb.png"), str(folder / "sub" / "e_exif.jpg")]) == 0
    per = _by_image(json.loads(out.read_text()))
    model = load_model(ckpt)
    assert model.cfg.resolved_backbone_version() == 2 and model.cfg.window_size == 8
    for name in ("a_rgb.png", "sub/e_exif.jpg"):
        assert per.get(str(folder / name))  # 30 random-weight detections each
        _check_against_model(per[str(folder / name)], model, folder / name, SCALE, {0: 3, 1: 7}.__getitem__)


def test_predict_cli_precision_bf16_runs_the_bf16_copy(ours, inputs, tmp_path):
    """``--precision bf16`` writes what ``Predictor(precision='bf16')`` returns, which is not fp32's."""
    image = str(inputs["folder"] / "a_rgb.png")
    out = tmp_path / "bf.json"
    assert main(["predict", "--checkpoint", str(ours), "--out", str(out), "--no-progress", "--precision", "bf16",
                 "--device", "cpu", image]) == 0
    got = [r["score"] for r in json.loads(out.read_text())]
    (bf,) = Predictor(ours, device="cpu", precision="bf16").predict(image)
    (fp,) = Predictor(ours, device="cpu", precision="fp32").predict(image)
    assert got == pytest.approx(bf["scores"].tolist(), abs=1e-6)
    assert len(got) == len(fp["scores"]) and got != pytest.approx(fp["scores"].tolist(), abs=1e-6)


def test_max_per_img_and_score_thr(ours, inputs, tmp_path):
    image = str(inputs["folder"] / "a_rgb.png")
    out = tmp_path / "p.json"
    assert main(["predict", "--checkpoint", str(ours), "--out", str(out), "--no-progress", "--precision", "fp32", "--device", "cpu", image]) == 0
    n_default = len(json.loads(out.read_text()))
    assert n_default == 30  # the checkpoint's max_per_img, not mmdet's 100 and not shape-inferred
    assert main(["predict", "--checkpoint", str(ours), "--out", str(out), "--no-progress", "--precision", "fp32", "--device", "cpu",
                 "--max-per-img", "4", image]) == 0
    capped = json.loads(out.read_text())
    assert len(capped) == 4
    assert main(["predict", "--checkpoint", str(ours), "--out", str(out), "--no-progress", "--precision", "fp32", "--device", "cpu",
                 "--max-per-img", "200", "--score-thr", "0.4", image]) == 0
    high = json.loads(out.read_text())
    assert all(r["score"] > 0.4 for r in high) and len(high) < 200


def test_predict_with_an_mmdet_checkpoint_no_resize(inputs, tmp_path, capsys):
    out = tmp_path / "mm.json"
    # the fixture's random weights score below mmdet's 0.05 on these images: threshold 0, cap 10
    assert main(["predict", "--checkpoint", str(MMDET_CKPT), "--out", str(out), "--no-resize", "--no-progress", "--precision", "fp32",
                 "--device", "cpu", "--score-thr", "0", "--max-per-img", "10",
                 str(inputs["loose"]), str(inputs["folder"] / "a_rgb.png")]) == 0
    assert "20 detections on 2 images" in capsys.readouterr().out
    per = _by_image(json.loads(out.read_text()))
    model = load_model(MMDET_CKPT, roi={"score_thr": 0.0, "max_per_img": 10})
    assert len(per) == 2
    for image in (inputs["loose"], inputs["folder"] / "a_rgb.png"):
        # an mmdet checkpoint stores no dataset ids: category_id = label + 1
        _check_against_model(per[str(image)], model, image, None, lambda lab: lab + 1)


def test_predictor_api_matches_the_command(ours, inputs, tmp_path):
    folder = inputs["folder"]
    paths = [folder / g for g in GOOD]
    p = Predictor(ours, device="cpu")
    assert p.scale == SCALE  # the checkpoint's test scale
    results = p.predict(paths)
    model = load_model(ours)
    # batches: images are padded to the batch's largest (as mmdet does), so compare batch for batch
    batched = Predictor(ours, device="cpu", batch_size=3).predict(paths)
    arrays = [load_rgb_image(x) for x in paths]
    for got, ref in zip(batched, model.predict(arrays[:3], scale=SCALE) + model.predict(arrays[3:], scale=SCALE)):
        assert torch.equal(got["boxes"], ref["boxes"]) and torch.equal(got["masks"], ref["masks"])
    for path, r in zip(paths, results):
        assert r["image"] == str(path)
        (ref,) = model.predict([load_rgb_image(path)], scale=SCALE)
        for k in ("boxes", "scores", "labels", "masks"):
            assert torch.equal(r[k], ref[k]), (path, k)
        assert r["category_ids"].tolist() == [{0: 3, 1: 7}[int(v)] for v in ref["labels"]]
        assert r["class_names"] == [["rect", "ellipse"][int(v)] for v in ref["labels"]]
    # arrays, a model object, overrides only with a path
    arr = load_rgb_image(paths[0])
    (from_array,) = Predictor(model, device="cpu", scale=SCALE).predict(arr)
    assert torch.equal(from_array["boxes"], results[0]["boxes"]) and from_array["image"] is None
    assert len(Predictor(ours, device="cpu", roi={"max_per_img": 2}).predict(arr)[0]["scores"]) == 2
    with pytest.raises(ValueError, match="need a checkpoint path"):
        Predictor(model, roi={"max_per_img": 2})
    with pytest.raises(ValueError, match="broken.jpg"):
        p.predict([folder / "sub" / "broken.jpg"])


def test_predict_imports_no_lightning_pycocotools_matplotlib(ours, inputs):
    code = (
        "import sys\n"
        "from swin_maskrcnn import Predictor\n"
        f"r = Predictor({str(ours)!r}, device='cpu').predict([{str(inputs['loose'])!r}])\n"
        "assert len(r) == 1\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'lightning', 'pytorch_lightning', 'pycocotools', "
        "'matplotlib', 'tensorboard'})\n"
        "print('heavy', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "heavy []" in out.stdout


def test_missing_input_is_an_error_line_and_exit_1(ours, inputs, tmp_path, capsys):
    out = tmp_path / "p.json"
    rc = main(["predict", "--checkpoint", str(ours), "--out", str(out), "--no-progress", "--precision", "fp32", "--device", "cpu",
               str(tmp_path / "nope.jpg"), str(inputs["loose"])])
    assert rc == 1
    assert "nope.jpg: no such file or folder" in capsys.readouterr().err
    assert {r["image"] for r in json.loads(out.read_text())} == {str(inputs["loose"])}


def test_draw_detections_blends_masks_and_draws_boxes():
    image = np.zeros((40, 50, 3), np.uint8)
    mask = np.zeros((1, 40, 50), bool)
    mask[0, 20:30, 10:40] = True
    out = draw_detections(image, [[5, 5, 45, 35]], [1], ["a", "b"], masks=mask, scores=[0.9], alpha=0.5, scale=1)
    assert out.shape == (3, 40, 50) and out.dtype == torch.uint8
    colour = torch.tensor(PALETTE[1], dtype=torch.float32)
    # inside the mask, away from the box outline and label: alpha blend of black and the class colour
    assert torch.allclose(out[:, 25, 25].float(), colour * 0.5, atol=1)
    assert out[:, 2, 2].tolist() == [0, 0, 0]  # outside box and mask
    assert out[:, 35, 30].tolist() == list(PALETTE[1])  # the box's bottom edge
    big = draw_detections(image, [[5, 5, 45, 35]], [1], ["a", "b"], masks=mask, scale=3)
    assert big.shape == (3, 120, 150)
    empty = draw_detections(image, np.zeros((0, 4)), [], ["a"], masks=np.zeros((0, 40, 50), bool), scale=1)
    assert torch.equal(empty, torch.zeros(3, 40, 50, dtype=torch.uint8))


def test_small_images_are_upscaled_and_low_scores_not_drawn():
    image = np.zeros((128, 96, 3), np.uint8)
    boxes = [[10, 10, 60, 60], [20, 70, 80, 120]]
    out = draw_detections(image, boxes, [0, 1], ["a", "b"], scores=[0.9, 0.2])
    assert out.shape == (3, 512, 384)  # 128 px long side x4 -> 512
    assert out[:, 60 * 4, 30 * 4].tolist() == list(PALETTE[0])  # the kept box's bottom edge
    assert out[:, 120 * 4 - 1, 50 * 4].tolist() == [0, 0, 0]  # the 0.2 box is not drawn
    both = draw_detections(image, boxes, [0, 1], ["a", "b"], scores=[0.9, 0.2], score_thr=0.1)
    assert both[:, 120 * 4, 50 * 4].tolist() == list(PALETTE[1])
    # the label is a patch of the class colour above the box, tall enough to read (a 15 px font)
    col = both[:, : 10 * 4, 10 * 4 + 1]  # the patch's left margin, beside the text
    patch = (col == torch.tensor(PALETTE[0])[:, None]).all(0)
    assert patch.sum() >= 14 and patch[-1]


def test_predict_and_evaluate_default_to_auto_precision():
    from swin_maskrcnn.apps.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["predict", "--checkpoint", "c", "--out", "o", "x.png"]).precision == "auto"
    assert parser.parse_args(["evaluate", "--checkpoint", "c", "--ann", "a", "--images", "i"]).precision == "auto"


def test_predictor_precision_bf16_is_the_models_bf16_copy_and_auto_is_resolved(ours, inputs, caplog):
    """``precision='bf16'`` equals ``bf16_copy(model).predict`` and leaves a given model's fp32 weights
    as they were; ``auto`` resolves (and logs) by the CPU."""
    import logging

    from swin_maskrcnn.modeling.acceleration import bf16_copy, cpu_has_native_bf16

    image = load_rgb_image(inputs["loose"])
    model = load_model(ours)
    (ref,) = bf16_copy(model).predict([image])
    (got,) = Predictor(ours, device="cpu", precision="bf16").predict(image)
    assert torch.equal(got["boxes"], ref["boxes"]) and torch.equal(got["masks"], ref["masks"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    p = Predictor(model, device="cpu", precision="bf16")
    (again,) = p.predict(image)
    assert torch.equal(again["boxes"], ref["boxes"]) and p.runner is not model
    assert all(torch.equal(v, before[k]) and v.dtype == before[k].dtype for k, v in model.state_dict().items())
    with caplog.at_level(logging.INFO, logger="swin_maskrcnn.modeling.acceleration"):
        p = Predictor(ours, device="cpu", precision="auto")
    assert p.precision == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert any("precision auto ->" in r.getMessage() for r in caplog.records)
    assert Predictor(ours, device="cpu").precision == "fp32"  # the Python API's default stays fp32
