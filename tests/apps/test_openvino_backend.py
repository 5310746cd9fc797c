"""OpenVINO: ``export --format openvino`` and ``Predictor(..., backend="openvino")`` / ``predict --backend``.

The tiny seeded model of the ONNX tests (random weights: ~uniform class scores, so all 40 detection
slots are filled and the per-class NMS has thousands of candidates) is exported by the CLI as ONNX
and as an IR. In fp32 OpenVINO must give onnxruntime's outputs within the ONNX path's own
tolerances (docs/deployment.md): the same labels, boxes within 1e-3 relative, scores within 1e-4,
pasted-mask IoU >= 0.99. bf16 is checked for being applied (the compiled model's precision), not
for equal rankings: near-uniform scores of random weights reorder under bf16 rounding. Skips when
openvino (the [openvino] extra) or onnx/onnxruntime (the [export] extra) is missing.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

ov = pytest.importorskip("openvino", reason="the OpenVINO backend needs the [openvino] extra")
pytest.importorskip("onnx", reason="OpenVINO export goes through ONNX: the [export] extra")
pytest.importorskip("onnxruntime", reason="the reference backend needs the [export] extra")

from swin_maskrcnn import Predictor, SwinMaskRCNN  # noqa: E402
from swin_maskrcnn.apps.cli import main as cli_main  # noqa: E402
from swin_maskrcnn.apps.onnx_runtime import OnnxPredictor  # noqa: E402
from swin_maskrcnn.apps.openvino_runtime import OpenVinoPredictor  # noqa: E402
from swin_maskrcnn.checkpoint.native import save_checkpoint  # noqa: E402
from swin_maskrcnn.modeling.acceleration import cpu_has_native_bf16  # noqa: E402
from swin_maskrcnn.modeling.config import tiny_model_config  # noqa: E402

NAMES = ["cell", "disc", "ring"]
SIZES = [(150, 201), (224, 224)]


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 100 * np.sin(xx / 9.0), 128 + 100 * np.cos(yy / 7.0), (xx + yy) % 256], -1)
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    inter = (a & b).sum(axis=(1, 2))
    union = (a | b).sum(axis=(1, 2))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("openvino")
    torch.manual_seed(0)
    cfg = tiny_model_config(num_classes=3, test_scale=(256, 192))
    cfg = cfg.model_copy(update={"roi": cfg.roi.model_copy(update={"max_per_img": 40})})
    model = SwinMaskRCNN(cfg).eval()
    ckpt = save_checkpoint(folder / "model_final.pt", model, model.cfg, NAMES, {7: 0, 3: 1, 9: 2})
    onnx_path, xml = folder / "tiny.onnx", folder / "tiny.xml"
    assert cli_main(["export", "--format", "onnx", "--checkpoint", str(ckpt), "--out", str(onnx_path)]) == 0
    assert cli_main(["export", "--format", "openvino", "--checkpoint", str(ckpt), "--out", str(xml)]) == 0
    return {"ckpt": ckpt, "onnx": onnx_path, "xml": xml}


def test_export_writes_ir_weights_and_metadata(exported):
    xml = exported["xml"]
    assert xml.with_suffix(".bin").stat().st_size > 1000
    meta = json.loads(xml.with_suffix(".json").read_text())
    assert meta["class_names"] == NAMES and meta["label_to_cat_id"] == {"0": 7, "1": 3, "2": 9}
    assert meta["model_config"]["test_scale"] == [256, 192] and meta["num_classes"] == 3
    model = ov.Core().read_model(str(xml))
    assert [p.get_element_type().get_type_name() for p in model.inputs] == ["u8"]
    assert sorted(n for o in model.outputs for n in o.get_names() if n in {"boxes", "scores", "labels", "masks"}) == \
        ["boxes", "labels", "masks", "scores"]


def test_export_openvino_wants_an_xml_name(exported, tmp_path, capsys):
    assert cli_main(["export", "--format", "openvino", "--checkpoint", str(exported["ckpt"]),
                     "--out", str(tmp_path / "model.onnx")]) == 2
    assert ".xml" in capsys.readouterr().err


@pytest.mark.parametrize("size", SIZES)
def test_fp32_equals_onnxruntime_within_the_onnx_tolerance(exported, size):
    image = _image(*size)
    ref = OnnxPredictor(exported["onnx"], threads=1)(image)
    got = OpenVinoPredictor(exported["xml"], threads=1, precision="fp32")(image)
    assert len(ref["labels"]) == 40
    np.testing.assert_array_equal(got["labels"], ref["labels"])
    np.testing.assert_allclose(got["boxes"], ref["boxes"], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(got["scores"], ref["scores"], atol=1e-4)
    assert _iou(got["masks"], ref["masks"]).min() >= 0.99


def test_predictor_backends_agree_with_each_other_and_with_torch(exported):
    """The graph backends apply predict's resize and paste: torch, onnxruntime and OpenVINO agree."""
    image = _image(150, 201, seed=3)
    (t,) = Predictor(exported["ckpt"], device="cpu", precision="fp32").predict(image)
    (o,) = Predictor(exported["onnx"], backend="onnxruntime", threads=1).predict(image)
    (v,) = Predictor(exported["xml"], backend="openvino", precision="fp32", threads=1).predict(image)
    for r in (o, v):
        assert r["masks"].shape == t["masks"].shape == (40, 150, 201)
        assert torch.equal(r["labels"], t["labels"])
        torch.testing.assert_close(r["boxes"], t["boxes"], rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(r["scores"], t["scores"], rtol=0, atol=1e-4)
        assert _iou(r["masks"].numpy(), t["masks"].numpy()).min() >= 0.99
        assert r["class_names"] == t["class_names"] and torch.equal(r["category_ids"], t["category_ids"])


def test_bf16_is_applied_where_the_cpu_has_it(exported):
    p = OpenVinoPredictor(exported["xml"], threads=1, precision="auto")
    assert p.precision == ("bf16" if cpu_has_native_bf16() else "fp32")
    if not cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16")
    bf = OpenVinoPredictor(exported["xml"], threads=1, precision="bf16")
    assert bf.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16
    out = bf(_image(224, 224))
    assert out["boxes"].shape == (40, 4) and out["masks"].shape == (40, 224, 224)
    assert np.all(np.diff(out["scores"]) <= 0)


def test_predict_cli_with_openvino_equals_onnxruntime(exported, tmp_path):
    from PIL import Image

    img = tmp_path / "a.png"
    Image.fromarray(_image(150, 201, seed=5)).save(img)
    outs = {}
    for backend, model in (("onnxruntime", exported["onnx"]), ("openvino", exported["xml"])):
        out = tmp_path / f"{backend}.json"
        assert cli_main(["predict", "--checkpoint", str(model), "--backend", backend, "--precision", "fp32",
                         "--out", str(out), "--no-progress", str(img)]) == 0
        outs[backend] = json.loads(out.read_text())
    a, b = outs["onnxruntime"], outs["openvino"]
    assert len(a) == len(b) == 40
    assert [r["category_id"] for r in a] == [r["category_id"] for r in b]
    np.testing.assert_allclose([r["bbox"] for r in a], [r["bbox"] for r in b], rtol=1e-3, atol=1e-3)


def test_onnxruntime_backend_refuses_bf16_and_graph_backends_refuse_overrides(exported):
    with pytest.raises(ValueError, match="bf16"):
        Predictor(exported["onnx"], backend="onnxruntime", precision="bf16")
    with pytest.raises(ValueError, match="overrides"):
        Predictor(exported["xml"], backend="openvino", roi={"score_thr": 0.5})
    with pytest.raises(ValueError, match="backend"):
        Predictor(exported["xml"], backend="tensorrt")


def test_openvino_runtime_needs_no_torch(exported, tmp_path):
    """The OpenVINO runtime module runs the IR in a process where ``import torch`` fails."""
    import subprocess
    import sys

    image = _image(150, 201, seed=4)
    ref = OpenVinoPredictor(exported["xml"], threads=1, precision="fp32")(image)
    np.save(tmp_path / "image.npy", image)
    script = f"""
import sys
sys.modules["torch"] = None  # any import of torch now raises ImportError
import numpy as np
from swin_maskrcnn.apps.openvino_runtime import OpenVinoPredictor
out = OpenVinoPredictor({str(exported["xml"])!r}, threads=1, precision="fp32")(np.load({str(tmp_path / 'image.npy')!r}))
np.savez({str(tmp_path / 'out.npz')!r}, **out)
assert sys.modules["torch"] is None
"""
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=repo, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = np.load(tmp_path / "out.npz")
    for key in ("boxes", "scores", "labels", "mask_probs", "masks"):
        np.testing.assert_array_equal(got[key], ref[key])


def test_predict_cli_refuses_roi_overrides_for_a_graph(exported, tmp_path, capsys):
    assert cli_main(["predict", "--checkpoint", str(exported["xml"]), "--backend", "openvino", "--score-thr", "0.5",
                     "--out", str(tmp_path / "o.json"), str(tmp_path)]) == 2
    assert "baked in" in capsys.readouterr().err
