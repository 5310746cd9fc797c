"""``swin-maskrcnn predict`` never loses a batch: a 14000x14000 PNG above PIL's decompression-bomb
limit, a truncated file, CMYK and 1-bit files and a failing prediction are one error line each
while the other images are predicted; ``--max-image-pixels`` raises the limit; results are written
as they come to ``OUT.partial``, a SIGTERM (real, to a real subprocess) keeps them and says how
many, and ``--resume`` continues to the same ``preds.json`` as an uninterrupted run.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from swin_maskrcnn import SwinMaskRCNN
from swin_maskrcnn.apps.cli import main
from swin_maskrcnn.apps.partial_results import partial_path
from swin_maskrcnn.checkpoint.native import save_checkpoint
from swin_maskrcnn.data.images import ImageTooLargeError, default_max_pixels, load_rgb_image
from swin_maskrcnn.modeling.config import tiny_model_config

from conftest import make_tiny_coco, tiny_train_config

def _default_signals() -> None:
    """In the child: SIGINT as in a terminal (a test runner started in the background ignores it, and
    an ignored signal stays ignored, as for any well-behaved program)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


WORKER = Path(__file__).resolve().parents[1] / "integration" / "signal_worker.py"
BIG = 14000


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("pf_ckpt")
    ann, imgs = make_tiny_coco(root / "data", n_images=1)
    cfg = tiny_train_config(ann, imgs, root / "runs", "p")
    cfg.model = tiny_model_config(num_classes=2, fpn_channels=32, roi_fc_dims=64, mask_head_channels=16,
                                  roi=dict(max_per_img=30), test_scale=(128, 96))
    torch.manual_seed(0)
    return save_checkpoint(root / "model_final.pt", SwinMaskRCNN(cfg.model).eval(), cfg, ["rect", "ellipse"],
                           {3: 0, 7: 1})


def _rgb(rng, h, w):
    a = rng.integers(0, 80, size=(h, w, 3), dtype=np.uint8)
    a[h // 4: h // 2, w // 4: w // 2] = (220, 60, 60)
    return a


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Good RGB images, a CMYK JPEG, a 1-bit PNG, a truncated PNG and a 14000x14000 PNG
    (mostly one grey: cheap to make and small on disk)."""
    root = tmp_path_factory.mktemp("pf_images") / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name, (h, w) in (("a.png", (96, 120)), ("b.png", (80, 100))):
        Image.fromarray(_rgb(rng, h, w)).save(root / name)
    Image.fromarray(_rgb(rng, 90, 110)).convert("CMYK").save(root / "c_cmyk.jpg", quality=95)
    Image.fromarray(_rgb(rng, 70, 90)[..., 0] > 100).save(root / "d_1bit.png")
    good = root / "a.png"
    data = good.read_bytes()
    (root / "e_truncated.png").write_bytes(data[: len(data) // 2])
    t0 = time.time()
    big = Image.new("L", (BIG, BIG), 40)
    big.paste(200, (6000, 6000, 8000, 7000))
    big.save(root / "f_big.png", compress_level=1)
    made_in = time.time() - t0
    size = (root / "f_big.png").stat().st_size
    assert size < 4 * 2**20 and made_in < 30, (size, made_in)  # a 196-megapixel file that costs ~1 MiB and ~2 s
    return root


def _args(ckpt, out, *extra):
    return ["predict", "--checkpoint", str(ckpt), "--out", str(out), "--no-progress", "--score-thr", "0",
            "--max-per-img", "2", *map(str, extra)]


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("swin-maskrcnn predict: error:")]


def test_a_folder_with_a_huge_a_truncated_and_odd_images_predicts_the_others(ckpt, folder, tmp_path, capsys):
    out = tmp_path / "preds.json"
    assert main(_args(ckpt, out, folder)) == 1
    cap = capsys.readouterr()
    errors = _errors(cap.err)
    assert len(errors) == 2 and "Traceback" not in cap.err, cap.err
    trunc, big = errors  # in file order
    assert "f_big.png" in big and f"{BIG}x{BIG} = 196,000,000 pixels" in big
    assert f"{default_max_pixels():,}" in big and "--max-image-pixels 196000000" in big
    assert "e_truncated.png" in trunc
    results = json.loads(out.read_text())
    assert sorted({r["file_name"] for r in results}) == ["a.png", "b.png", "c_cmyk.jpg", "d_1bit.png"]
    assert "on 4 images written" in cap.out and "2 inputs failed" in cap.out
    assert not partial_path(out).exists()


def test_max_image_pixels_sets_the_limit_both_ways(ckpt, folder, tmp_path, capsys):
    # below an ordinary image: that image is refused, naming the explicit limit
    out = tmp_path / "small_limit.json"
    assert main(_args(ckpt, out, "--max-image-pixels", 100 * 100, folder / "a.png", folder / "b.png")) == 1
    (line,) = _errors(capsys.readouterr().err)
    assert "a.png: 120x96 = 11,520 pixels is above the --max-image-pixels" in line and "of 10,000 pixels" in line
    assert {r["file_name"] for r in json.loads(out.read_text())} == {"b.png"}
    # above the 14000x14000 image: it decodes (the reader's array, as predict gets it)
    arr = load_rgb_image(folder / "f_big.png", max_pixels=BIG * BIG)
    assert arr.shape == (BIG, BIG, 3) and arr[6500, 7000].tolist() == [200, 200, 200]
    del arr
    with pytest.raises(ImageTooLargeError, match="PIL's decompression-bomb limit"):
        load_rgb_image(folder / "f_big.png")


def test_a_prediction_that_fails_is_one_error_line_also_inside_a_batch(ckpt, folder, tmp_path, capsys, monkeypatch):
    """A model failure on one image (e.g. its pasted masks do not fit in memory) inside a batch of 2:
    the batch is predicted again image by image, the failing one is an error line."""
    original = SwinMaskRCNN.predict

    def predict(self, images, *a, **k):
        if any(int(im.shape[1]) == 100 for im in images):  # b.png is 100 px wide
            raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 7840000000 bytes.")
        return original(self, images, *a, **k)

    monkeypatch.setattr(SwinMaskRCNN, "predict", predict)
    out = tmp_path / "preds.json"
    assert main(_args(ckpt, out, "--batch-size", 2, folder / "a.png", folder / "b.png", folder / "c_cmyk.jpg")) == 1
    (line,) = _errors(capsys.readouterr().err)
    assert "b.png: prediction failed (RuntimeError: DefaultCPUAllocator: not enough memory" in line
    assert {r["file_name"] for r in json.loads(out.read_text())} == {"a.png", "c_cmyk.jpg"}


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    root = tmp_path_factory.mktemp("pf_many") / "imgs"
    root.mkdir()
    rng = np.random.default_rng(1)
    for i in range(10):
        Image.fromarray(_rgb(rng, 80 + 4 * i, 100)).save(root / f"img_{i:02d}.png")
    return root


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "swin-maskrcnn"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "swin_maskrcnn.apps.cli"]


def test_sigterm_during_a_folder_keeps_the_results_and_resume_finishes_it(ckpt, many, tmp_path, capsys):
    """A real SIGTERM to a real `predict` right after its 4th image: exit 143, the 4 images' results
    in preds.json.partial, no preds.json, a line saying so; the printed command (with --resume)
    predicts only the other 6 and writes the preds.json of an uninterrupted run."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = tmp_path / "preds.json"
    args = _args(ckpt, out, many)
    proc = subprocess.run([sys.executable, str(WORKER), "SIGTERM@image:4", "--", *args], capture_output=True,
                          text=True, env=env, timeout=300, cwd=str(tmp_path), preexec_fn=_default_signals)
    assert proc.returncode == 143, proc.stderr[-3000:]
    assert "stopped by SIGTERM after 4 of 10 images: their results are kept in" in proc.stderr
    assert not out.exists()
    lines = partial_path(out).read_text().splitlines()
    assert len(lines) == 1 + 4 and [json.loads(x)["file_name"] for x in lines[1:]] == [f"img_{i:02d}.png" for i in range(4)]
    again = shlex.split(proc.stderr.strip().splitlines()[-1])
    assert again[0] == "swin-maskrcnn" and again[-1] == "--resume"
    resumed = subprocess.run([sys.executable, str(WORKER), "none", "--", *again[1:]], capture_output=True, text=True,
                             env=env, timeout=300, cwd=str(tmp_path), preexec_fn=_default_signals)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "4 images already predicted" in resumed.stderr and not partial_path(out).exists()
    reference = tmp_path / "reference.json"
    assert main(_args(ckpt, reference, many)) == 0
    assert json.loads(out.read_text()) == json.loads(reference.read_text())


def test_resume_rules(ckpt, many, tmp_path, capsys, caplog):
    """A run killed mid-line resumes without the cut line; a leftover partial file needs --resume;
    other settings than the partial file's are refused."""
    out = tmp_path / "p.json"
    files = sorted(many.iterdir())[:3]
    assert main(_args(ckpt, out, *files)) == 0
    reference = json.loads(out.read_text())
    # as if killed: the header, one complete line and half of the next
    out.unlink()
    part = partial_path(out)
    assert main(_args(ckpt, tmp_path / "full.json", *files[:2])) == 0  # to have the lines of 2 images
    from swin_maskrcnn.apps.partial_results import PartialResults

    capsys.readouterr()
    settings = {"score_thr": 0.0, "max_per_img": 2, "scale": [128, 96], "batch_size": 1, "max_image_pixels": None,
                "slicing": None, "tta": None}
    writer = PartialResults(out, str(ckpt), settings)
    writer.start(resume=False)
    full = json.loads((tmp_path / "full.json").read_text())
    first = [r for r in full if r["file_name"] == files[0].name]
    writer.add(str(files[0]), files[0].name, first)
    writer.close()
    with open(part, "a") as f:
        f.write('{"image": "' + str(files[1]) + '", "file_name": "img_0')  # cut short
    assert main(_args(ckpt, out, *files)) == 2
    assert "pass --resume to continue it" in capsys.readouterr().err
    caplog.set_level("INFO", logger="swin_maskrcnn")
    assert main(_args(ckpt, out, "--resume", *files)) == 0
    assert "1 images already predicted" in caplog.text and "incomplete line" in caplog.text
    assert json.loads(out.read_text()) == reference
    # other settings than the partial file's
    writer = PartialResults(out, str(ckpt), settings)
    writer.start(resume=False)
    writer.close()
    assert main(["predict", "--checkpoint", str(ckpt), "--out", str(out), "--no-progress", "--score-thr", "0.5",
                 "--max-per-img", "2", "--resume", *map(str, files)]) == 2
    assert "was made with settings" in capsys.readouterr().err
