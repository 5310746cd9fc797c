"""Per-class thresholds (``roi.score_thr_per_class``) travel with the model and change exactly what
predict keeps: every checkpoint format keeps them, Predictor / load_model(...).predict / the ONNX
graph apply them, and ``--score-thr`` overrides them."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from swin_maskrcnn import Predictor, SwinMaskRCNN, load_model
from swin_maskrcnn.apps.cli import main
from swin_maskrcnn.apps.export import export_safetensors
from swin_maskrcnn.checkpoint.format import LIGHTNING_PREFIX, META_KEY
from swin_maskrcnn.checkpoint.native import build_meta, save_checkpoint
from swin_maskrcnn.checkpoint.safe_load import CheckpointError
from swin_maskrcnn.modeling.config import tiny_model_config
from swin_maskrcnn.modeling.meta import ModelMeta

NAMES = ["rect", "ellipse", "ring"]
IDS = {3: 0, 7: 1, 9: 2}


def _cfg(**roi):
    return tiny_model_config(num_classes=3, fpn_channels=32, roi_fc_dims=64, mask_head_channels=16,
                             rpn=dict(max_per_img_test=60), roi=dict(max_per_img=1000, **roi), test_scale=None)


def _image(seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:96, 0:128]
    base = np.stack([128 + 100 * np.sin(xx / 9.0), 128 + 100 * np.cos(yy / 7.0), (xx + yy) % 256], -1)
    return np.clip(base + rng.normal(0, 20, (96, 128, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def weights():
    torch.manual_seed(0)
    return SwinMaskRCNN(_cfg()).state_dict()


def _model(weights, **roi):
    m = SwinMaskRCNN(_cfg(**roi), meta=ModelMeta(list(NAMES), None))
    m.load_state_dict(weights)
    return m.eval()


def _thresholds(all_dets):
    """rect: a detection's own score (>= keeps it), ellipse: above every ellipse score, ring: none."""
    s, lab = all_dets["scores"], all_dets["labels"]
    rect = torch.sort(s[lab == 0]).values
    return {"rect": float(rect[len(rect) // 2]), "ellipse": float(s[lab == 1].max()) + 1e-3}


def _expected(all_dets, thr, base_thr):
    s, lab = all_dets["scores"], all_dets["labels"]
    keep = torch.zeros_like(s, dtype=torch.bool)
    keep |= (lab == 0) & (s >= thr["rect"])
    keep |= (lab == 1) & (s >= thr["ellipse"])
    keep |= (lab == 2) & (s > base_thr)
    return keep


def _assert_kept(out, all_dets, keep):
    assert torch.equal(out["labels"], all_dets["labels"][keep])
    assert torch.equal(out["scores"], all_dets["scores"][keep])
    assert torch.equal(out["boxes"], all_dets["boxes"][keep])
    assert torch.equal(out["masks"], all_dets["masks"][keep])


def test_predict_keeps_exactly_what_the_thresholds_say(weights, tmp_path):
    image = _image()
    (all_dets,) = _model(weights, score_thr=0.0).predict([image])
    assert 50 < len(all_dets["scores"]) < 1000  # no top-k cut: the comparison is exact
    thr = _thresholds(all_dets)
    base = float(torch.sort(all_dets["scores"][all_dets["labels"] == 2]).values[3])  # ring uses roi.score_thr
    keep = _expected(all_dets, thr, base)
    assert 0 < int(keep.sum()) < len(keep) and int(((all_dets["labels"] == 0) & keep).sum()) > 0
    model = _model(weights, score_thr=base, score_thr_per_class=thr)
    (out,) = model.predict([image])
    _assert_kept(out, all_dets, keep)
    # the same from a checkpoint, through load_model and Predictor
    path = save_checkpoint(tmp_path / "m.pt", model, model.cfg, NAMES, IDS)
    (out,) = load_model(path).predict([image])
    _assert_kept(out, all_dets, keep)
    (r,) = Predictor(path, device="cpu", scale=None).predict([image])
    _assert_kept(r, all_dets, keep)
    assert set(r["class_names"]) <= {"rect", "ring"}


def test_every_format_keeps_them(weights, tmp_path):
    thr = {"rect": 0.31, "ring": 0.7}
    model = _model(weights, score_thr=0.05, score_thr_per_class=thr)
    native = save_checkpoint(tmp_path / "m.pt", model, model.cfg, NAMES, IDS)
    sft = export_safetensors(native, tmp_path / "m.safetensors")
    lightning = tmp_path / "last.ckpt"  # what training's on_save_checkpoint writes (the same build_meta)
    torch.save({META_KEY: build_meta(model.cfg, NAMES, IDS, 5), "global_step": 5,
                "state_dict": {LIGHTNING_PREFIX + k: v for k, v in model.state_dict().items()}}, lightning)
    assert main(["export", "--format", "safetensors", "--checkpoint", str(lightning), "--out",
                 str(tmp_path / "l.safetensors")]) == 0
    for p in (native, sft, lightning, tmp_path / "l.safetensors"):
        loaded = load_model(p)
        assert loaded.cfg.roi.score_thr_per_class == thr, p
        assert loaded.cfg == model.cfg
    # export --thresholds takes them from an analysis.json onto a checkpoint without them
    plain = save_checkpoint(tmp_path / "plain.pt", _model(weights), _model(weights).cfg, NAMES, IDS)
    analysis = tmp_path / "analysis.json"
    analysis.write_text(json.dumps({"thresholds": {"beta": 1.0, "per_class": {
        n: {"score": t, "precision": 1.0, "recall": 1.0, "f": 1.0} for n, t in thr.items()}}}))
    assert main(["export", "--format", "safetensors", "--checkpoint", str(plain), "--out",
                 str(tmp_path / "t.safetensors"), "--thresholds", str(analysis)]) == 0
    assert load_model(tmp_path / "t.safetensors").cfg.roi.score_thr_per_class == thr


def test_score_thr_option_overrides_and_bad_names(weights, tmp_path):
    image = _image()
    (all_dets,) = _model(weights, score_thr=0.0).predict([image])
    thr = _thresholds(all_dets)
    model = _model(weights, score_thr=0.0, score_thr_per_class=thr)
    path = save_checkpoint(tmp_path / "m.pt", model, model.cfg, NAMES, IDS)
    from PIL import Image

    Image.fromarray(image).save(tmp_path / "a.png")
    for extra, n_expected in (([], int(_expected(all_dets, thr, 0.0).sum())), (["--score-thr", "0.0"], len(all_dets["scores"]))):
        out = tmp_path / "p.json"
        assert main(["predict", "--checkpoint", str(path), "--out", str(out), "--no-resize", "--no-progress", "--precision", "fp32",
                     "--device", "cpu", *extra, str(tmp_path / "a.png")]) == 0
        assert len(json.loads(out.read_text())) == n_expected
    with pytest.raises(CheckpointError, match=r"names classes the model does not have: \['disc'\]"):
        load_model(path, roi={"score_thr_per_class": {"disc": 0.5}})
    with pytest.raises(ValueError, match="thresholds must be in"):
        _cfg(score_thr_per_class={"rect": 1.5})


def test_onnx_graph_applies_them(weights, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from swin_maskrcnn.apps.onnx_export import export_onnx
    from swin_maskrcnn.apps.onnx_runtime import OnnxPredictor

    image = _image(1)
    (all_dets,) = _model(weights, score_thr=0.0).predict([image])
    thr = _thresholds(all_dets)
    rect = torch.sort(all_dets["scores"][all_dets["labels"] == 0]).values
    k = len(rect) // 2  # halfway between two rect scores: onnxruntime's scores differ by ~1e-6
    thr["rect"] = float(rect[k - 1] + rect[k]) / 2
    base = 0.2
    model = _model(weights, score_thr=base, score_thr_per_class=thr)
    (ref,) = model.predict([image], resize=False)
    out = OnnxPredictor(export_onnx(model, tmp_path / "m.onnx"), threads=1)(image)
    keep = _expected(all_dets, thr, base)
    np.testing.assert_array_equal(out["labels"], ref["labels"].numpy())
    np.testing.assert_allclose(out["scores"], ref["scores"].numpy(), atol=1e-4)
    assert len(out["scores"]) == int(keep.sum())
