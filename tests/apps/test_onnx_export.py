"""ONNX export: the graph run by onnxruntime equals ``model.predict(resize=False)``.

A seeded tiny model is saved as a checkpoint and exported once with ``swin-maskrcnn export --format
onnx`` (random weights give ~uniform class scores, so every image has the full ``max_per_img`` = 40
detections and the per-class NMS has thousands of candidates). At two image sizes (one that needs
window padding in every stage, one whose maps are window multiples) onnxruntime's labels equal
PyTorch's, boxes agree within 1e-3 relative, scores within 1e-4, and the numpy-pasted
masks have IoU >= 0.99 with ``predict``'s. The numpy paste is compared with the model's torch paste
on the same inputs, and the runtime module is run in a subprocess where torch cannot be imported.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx", reason="ONNX export needs the [export] extra (pip install 'swin-maskrcnn[export]')")
ort = pytest.importorskip("onnxruntime", reason="ONNX tests need the [export] extra (pip install 'swin-maskrcnn[export]')")

from swin_maskrcnn import SwinMaskRCNN, load_model, tiny_model_config  # noqa: E402
from swin_maskrcnn.apps.cli import main as cli_main  # noqa: E402
from swin_maskrcnn.checkpoint.native import save_checkpoint  # noqa: E402
from swin_maskrcnn.apps.onnx_export import export_onnx  # noqa: E402
from swin_maskrcnn.apps.onnx_runtime import OnnxPredictor, paste_masks  # noqa: E402
from swin_maskrcnn.modeling.postprocess import paste_masks as torch_paste_masks  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MAX_DETS = 40  # fewer than the NMS survivors, so the top-k cut is exercised; keeps the mask head cheap
SIZES = [(150, 201), (224, 224)]  # 150x201: padding to 32 and window padding in all stages; 224: none


def _model(backbone_version: int = 1, **roi) -> SwinMaskRCNN:
    torch.manual_seed(0)
    cfg = tiny_model_config(num_classes=3, backbone_version=backbone_version)
    cfg = cfg.model_copy(update={"roi": cfg.roi.model_copy(update={"max_per_img": MAX_DETS, **roi})})
    return SwinMaskRCNN(cfg).eval()


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # smooth structure plus noise, so features vary across the image
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 100 * np.sin(xx / 9.0), 128 + 100 * np.cos(yy / 7.0), (xx + yy) % 256], -1)
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    inter = (a & b).sum(axis=(1, 2))
    union = (a | b).sum(axis=(1, 2))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


NAMES = ["cell", "disc", "ring"]


@pytest.fixture(scope="module", params=[1, 2], ids=["swin_v1", "swin_v2"])
def exported(tmp_path_factory, request) -> tuple[SwinMaskRCNN, Path]:
    """The tiny model (Swin V1 or V2 backbone) saved as a checkpoint and exported by ``swin-maskrcnn
    export --format onnx``."""
    folder = tmp_path_factory.mktemp(f"onnx_v{request.param}")
    model = _model(request.param)
    ckpt = save_checkpoint(folder / "model_final.pt", model, model.cfg, NAMES, {7: 0, 3: 1, 9: 2})
    path = folder / "tiny.onnx"
    assert cli_main(["export", "--format", "onnx", "--checkpoint", str(ckpt), "--out", str(path)]) == 0
    return load_model(ckpt), path


def test_graph_interface(exported):
    _, path = exported
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert inp.name == "image" and inp.type == "tensor(uint8)" and inp.shape[0] == 3
    assert all(isinstance(d, str) for d in inp.shape[1:]), inp.shape  # dynamic H and W
    outs = {o.name: o for o in sess.get_outputs()}
    assert list(outs) == ["boxes", "scores", "labels", "masks"]
    assert [outs[k].type for k in outs] == ["tensor(float)", "tensor(float)", "tensor(int64)", "tensor(float)"]
    assert outs["masks"].shape[1:] == [28, 28] and outs["boxes"].shape[1:] == [4]
    meta = sess.get_modelmeta().custom_metadata_map
    assert json.loads(meta["mask_thr"]) == 0.5 and json.loads(meta["num_classes"]) == 3
    assert json.loads(meta["class_names"]) == NAMES
    assert json.loads(meta["label_to_cat_id"]) == {"0": 7, "1": 3, "2": 9}
    assert json.loads(meta["model_config"])["roi"]["max_per_img"] == MAX_DETS


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_onnxruntime_matches_predict(exported, size):
    model, path = exported
    image = _image(*size)
    (ref,) = model.predict([image], resize=False)
    out = OnnxPredictor(path, threads=1)(image)
    n = ref["boxes"].shape[0]
    assert n == MAX_DETS, "the seeded tiny model should fill max_per_img"
    assert out["boxes"].shape == (n, 4) and out["mask_probs"].shape == (n, 28, 28)
    np.testing.assert_array_equal(out["labels"], ref["labels"].numpy())
    np.testing.assert_allclose(out["boxes"], ref["boxes"].numpy(), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(out["scores"], ref["scores"].numpy(), rtol=0, atol=1e-4)
    assert out["masks"].shape == tuple(ref["masks"].shape)
    assert mask_iou(out["masks"], ref["masks"].numpy()).min() >= 0.99


def test_no_detections_gives_empty_outputs(tmp_path):
    model = _model(score_thr=0.99)  # ~uniform class scores never exceed it
    image = _image(96, 128)
    (ref,) = model.predict([image], resize=False)
    assert ref["boxes"].shape[0] == 0
    out = OnnxPredictor(export_onnx(model, tmp_path / "empty.onnx"))(image)
    assert out["boxes"].shape == (0, 4) and out["scores"].shape == (0,) and out["labels"].shape == (0,)
    assert out["mask_probs"].shape == (0, 28, 28) and out["masks"].shape == (0, 96, 128)


def test_numpy_paste_equals_the_models_paste():
    g = torch.Generator().manual_seed(1)
    probs = torch.rand(40, 28, 28, generator=g)
    xy = torch.rand(40, 2, generator=g) * torch.tensor([130.0, 90.0]) - 10
    wh = torch.rand(40, 2, generator=g) * 60
    boxes = torch.cat([xy, xy + wh], 1)
    boxes[0] = torch.tensor([10.0, 10.0, 10.0, 30.0])  # zero width
    boxes[1] = torch.tensor([-30.0, -30.0, -5.0, -2.0])  # outside the image
    boxes[2] = torch.tensor([0.0, 0.0, 120.0, 80.0])  # the whole image
    for thr in (0.5, 0.3):
        ref = torch_paste_masks(probs, boxes, 80, 120, thr).numpy()
        got = paste_masks(probs.numpy(), boxes.numpy(), 80, 120, thr)
        assert got.dtype == bool and got.shape == ref.shape
        np.testing.assert_array_equal(got, ref)


def test_runtime_needs_no_torch(exported, tmp_path):
    """The runtime module and the exported graph run in a process where ``import torch`` fails."""
    _, path = exported
    image = _image(*SIZES[0], seed=3)
    ref = OnnxPredictor(path)(image)
    np.save(tmp_path / "image.npy", image)
    script = f"""
import sys
sys.modules["torch"] = None  # any import of torch now raises ImportError
import numpy as np
from swin_maskrcnn.apps.onnx_runtime import OnnxPredictor
out = OnnxPredictor({str(path)!r}, threads=1)(np.load({str(tmp_path / 'image.npy')!r}))
np.savez({str(tmp_path / 'out.npz')!r}, **out)
assert sys.modules["torch"] is None
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = np.load(tmp_path / "out.npz")
    for key in ("boxes", "scores", "labels", "mask_probs", "masks"):
        np.testing.assert_array_equal(got[key], ref[key])


def test_old_opset_is_refused(tmp_path):
    with pytest.raises(ValueError, match="opset >= 16"):
        export_onnx(_model(), tmp_path / "m.onnx", opset=13)
