"""One loader for every checkpoint format, safe reads, and the safetensors export.

The checkpoints are made the way a user gets them: ``swin-maskrcnn train`` (a tiny 2-step run) writes
the Lightning ``.ckpt`` and our ``model_final.pt``, ``swin-maskrcnn export`` the ``.safetensors``, and
mmdet's own tool wrote ``tests/fixtures/mmdet_tiny_seed11/checkpoint.pth``. Predictions are compared
exactly with a model built from the config and the weights directly (not through the loader).
"""
from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from swin_maskrcnn import SwinMaskRCNN, load_model
from swin_maskrcnn.apps.cli import main as cli_main
from swin_maskrcnn.checkpoint.loader import load_checkpoint, read_checkpoint
from swin_maskrcnn.checkpoint.native import save_checkpoint
from swin_maskrcnn.checkpoint.safe_load import (
    CheckpointError,
    TruncatedCheckpointError,
    UnsafeCheckpointError,
    detect_container,
    read_file,
)
from swin_maskrcnn.modeling.config import ModelConfig, tiny_model_config

from conftest import FIXTURES
from conftest import make_tiny_coco, tiny_train_config

NAMES = ["rect", "ellipse"]


def _non_default_model(**extra) -> ModelConfig:
    """Settings that shape inference cannot recover: anchors, thresholds, the detection cap."""
    return tiny_model_config(
        num_classes=2, fpn_channels=32, roi_fc_dims=64, mask_head_channels=16,
        rpn=dict(anchor_scales=[2.0], nms_iou=0.6, nms_pre_test=300, max_per_img_test=500),
        roi=dict(max_per_img=400, score_thr=0.02, nms_iou=0.45),
        **extra,
    )


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.integers(0, 255, size=(96, 120, 3), dtype=np.uint8), rng.integers(0, 255, size=(80, 64, 3), dtype=np.uint8)]


def assert_same_predictions(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert set(x) == set(y)
        for k in x:
            assert torch.equal(x[k], y[k]), k


@pytest.mark.parametrize("backbone_version", [1, 2], ids=["swin_v1", "swin_v2"])
def test_native_checkpoint_keeps_its_model_config(tmp_path, backbone_version):
    """The issue's report: model_final.pt came back with anchor scales [8], max_per_img 100, no names."""
    cfg = _non_default_model(backbone_version=backbone_version)
    torch.manual_seed(0)
    model = SwinMaskRCNN(cfg).eval()
    path = save_checkpoint(tmp_path / "model_final.pt", model, cfg, NAMES, {3: 0, 7: 1})
    loaded = load_model(path)
    assert loaded.cfg == cfg
    assert loaded.cfg.rpn.anchor_scales == [2.0] and loaded.cfg.roi.max_per_img == 400
    assert loaded.class_names == NAMES and loaded.label_to_cat_id == {0: 3, 1: 7}
    ims = _images()
    ref = model.predict(ims, scale=(128, 96))
    assert max(len(r["scores"]) for r in ref) > 100  # the cap matters for this comparison
    assert_same_predictions(loaded.predict(ims, scale=(128, 96)), ref)


# ------------------------------------------------------------------------------------------------
# every format, from a real (tiny) training run
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=[1, 2], ids=["swin_v1", "swin_v2"])
def trained(tmp_path_factory, request):
    """Every format from one tiny run, for a Swin V1 and a Swin V2 backbone."""
    from swin_maskrcnn.training.config import config_from_dict
    from swin_maskrcnn.training.train import train

    root = tmp_path_factory.mktemp(f"formats_v{request.param}")
    ann, imgs = make_tiny_coco(root / "data", n_images=4)
    base = tiny_train_config(ann, imgs, root / "runs", "formats", max_steps=2, val_every_n_steps=100,
                             checkpoint_every_n_steps=100, probe_every_n_steps=100)
    raw = base.model_dump(mode="json")
    raw["model"] = _non_default_model(backbone_version=request.param).model_dump(mode="json")
    raw["model"]["test_scale"] = [160, 96]
    cfg = config_from_dict(raw)
    summary = train(cfg)
    run = Path(summary["run_dir"])
    ckpt = run / "checkpoints" / "last.ckpt"
    sft = root / "model.safetensors"
    assert cli_main(["export", "--format", "safetensors", "--checkpoint", str(ckpt), "--out", str(sft)]) == 0
    # the reference model: the config and the Lightning weights, without the loader
    obj = torch.load(ckpt, map_location="cpu", weights_only=True)
    ref = SwinMaskRCNN(cfg.model).eval()
    ref.load_state_dict({k[len("model."):]: v for k, v in obj["state_dict"].items() if k.startswith("model.")})
    return {"cfg": cfg, "ref": ref, "lightning": ckpt, "native": Path(summary["final_model"]), "safetensors": sft}


@pytest.mark.parametrize("fmt", ["lightning", "native", "safetensors"])
def test_every_format_round_trips_config_names_ids_and_predictions(trained, fmt):
    model, cfg, meta = load_checkpoint(trained[fmt])
    assert meta["source"] == fmt
    assert detect_container(trained[fmt]) == ("safetensors" if fmt == "safetensors" else "zip")
    assert cfg == trained["cfg"].model
    assert model.class_names == NAMES and model.label_to_cat_id == {0: 3, 1: 7}
    from swin_maskrcnn import Predictor

    assert Predictor(trained[fmt], device="cpu").scale == (160, 96)  # the run's test scale
    assert cfg.test_scale == (160, 96)  # the model config carries the test scale
    ims = _images()
    ref = trained["ref"].predict(ims, scale=(160, 96))
    assert max(len(r["scores"]) for r in ref) > 100
    assert_same_predictions(model.predict(ims), ref)
    # overrides apply on top of the restored config
    capped = load_model(trained[fmt], roi={"max_per_img": 5})
    assert capped.cfg.roi.max_per_img == 5 and capped.cfg.roi.score_thr == 0.02
    assert capped.cfg.rpn.anchor_scales == [2.0]
    assert all(len(r["scores"]) <= 5 for r in capped.predict(ims, scale=(160, 96)))


def test_safetensors_export_holds_the_metadata(trained):
    from safetensors import safe_open

    with safe_open(str(trained["safetensors"]), framework="pt") as f:
        md = f.metadata()
        keys = set(f.keys())
    assert md["format"] == "swin_maskrcnn.safetensors"
    assert '"anchor_scales": [2.0]' in md["model_config"]
    assert md["class_names"] == '["rect", "ellipse"]'
    assert md["cat_id_to_label"] == '{"3": 0, "7": 1}'
    assert keys == set(trained["ref"].state_dict())


def test_settings_differ_from_the_defaults(trained):
    """Guard: the round trip would notice a loader that fell back to shape inference."""
    from swin_maskrcnn.checkpoint.mmdet import infer_model_config

    sd, _ = read_checkpoint(trained["native"])
    inferred = infer_model_config(sd)
    assert inferred.rpn.anchor_scales != trained["cfg"].model.rpn.anchor_scales
    assert inferred.roi.max_per_img != trained["cfg"].model.roi.max_per_img
    wrong = SwinMaskRCNN(inferred).eval()
    wrong.load_state_dict(sd)
    ims = _images()
    got = wrong.predict(ims, scale=(160, 96))
    ref = trained["ref"].predict(ims, scale=(160, 96))
    assert [len(r["scores"]) for r in got] != [len(r["scores"]) for r in ref]


def test_mmdet_checkpoint_is_inferred_and_says_so(caplog):
    path = FIXTURES / "mmdet_tiny_seed11" / "checkpoint.pth"
    with caplog.at_level(logging.INFO, logger="swin_maskrcnn.checkpoint.loader"):
        model, cfg, meta = load_checkpoint(path, roi={"max_per_img": 7, "score_thr": 0.0})
    assert meta["source"] == "mmdet"
    assert "inferred from tensor shapes" in caplog.text
    assert cfg.roi.max_per_img == 7 and cfg.num_classes == 5 and model.label_to_cat_id is None
    # the reference: the inferred architecture with the file's weights, loaded directly
    obj = torch.load(path, map_location="cpu", weights_only=True)
    ref = SwinMaskRCNN(cfg).eval()
    ref.load_state_dict(obj["state_dict"])
    ims = _images()
    out = model.predict(ims, resize=False)
    assert all(len(r["scores"]) == 7 for r in out)
    assert_same_predictions(out, ref.predict(ims, resize=False))


@pytest.mark.parametrize(
    "arch", [{}, {"backbone_version": 2}, {"backbone_version": 2, "window_size": 6, "pretrained_window_size": 4}],
    ids=["swin_v1", "swin_v2", "swin_v2_pretrained_window"],
)
def test_bare_state_dict_as_safetensors_loads_by_shape(tmp_path, arch):
    from safetensors.torch import save_file

    cfg = tiny_model_config(num_classes=4, **arch)
    torch.manual_seed(1)
    model = SwinMaskRCNN(cfg).eval()
    path = tmp_path / "weights.bin"  # the name says nothing: the content decides
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    loaded, lcfg, meta = load_checkpoint(path)
    assert meta["source"] == "mmdet" and lcfg.num_classes == 4 and lcfg.resolved_embed_dims() == 32
    assert (lcfg.resolved_backbone_version(), lcfg.window_size, lcfg.pretrained_window_size) == (
        cfg.resolved_backbone_version(), cfg.window_size, cfg.pretrained_window_size
    )
    ims = _images()
    assert_same_predictions(loaded.predict(ims, resize=False), model.predict(ims, resize=False))


# ------------------------------------------------------------------------------------------------
# safe reads
# ------------------------------------------------------------------------------------------------
class CreatesFile:
    """Unpickling this object calls ``open(path, "w")``: the file appears if the pickle is executed."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _tiny_state_dict() -> dict:
    return {"w": torch.ones(2)}


@pytest.mark.parametrize("container", ["zip", "pickle"])
def test_pickle_that_would_run_code_is_refused(tmp_path, container):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pth"
    # torch.save's zip format, and its legacy (pre-1.6) pickle stream
    torch.save({"state_dict": _tiny_state_dict(), "meta": CreatesFile(marker)}, path,
               _use_new_zipfile_serialization=container == "zip")
    assert detect_container(path) == container
    with pytest.raises(UnsafeCheckpointError) as e:
        load_model(path)
    msg = str(e.value)
    assert str(path) in msg and "refused" in msg and "open" in msg and "weights_only" in msg
    assert not marker.exists()
    # the file really is armed: a plain unpickle creates the marker
    armed = tmp_path / "armed.txt"
    pickle.loads(pickle.dumps(CreatesFile(armed)))
    assert armed.exists()


def _good_files(tmp_path) -> dict[str, Path]:
    cfg = tiny_model_config(num_classes=2)
    model = SwinMaskRCNN(cfg)
    files = {"native": save_checkpoint(tmp_path / "m.pt", model, cfg, NAMES, None)}
    legacy = tmp_path / "legacy.pth"
    torch.save({"state_dict": model.state_dict(), "meta": {}}, legacy, _use_new_zipfile_serialization=False)
    files["legacy"] = legacy
    assert cli_main(["export", "--format", "safetensors", "--checkpoint", str(files["native"]),
                     "--out", str(tmp_path / "m.safetensors")]) == 0
    files["safetensors"] = tmp_path / "m.safetensors"
    return files


def test_truncated_files_are_reported_as_truncated(tmp_path):
    for kind, path in _good_files(tmp_path).items():
        data = path.read_bytes()
        assert load_model(path).cfg.num_classes == 2, kind  # intact: loads
        for cut in (len(data) // 2, len(data) - 7, 40):
            bad = tmp_path / f"cut_{cut}_{path.name}"
            bad.write_bytes(data[:cut])
            with pytest.raises(TruncatedCheckpointError, match="truncated") as e:
                load_model(bad)
            assert str(bad) in str(e.value), (kind, cut)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(TruncatedCheckpointError, match="empty"):
        load_model(empty)


def test_unknown_file_is_a_clear_error(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("this is not a checkpoint\n")
    with pytest.raises(CheckpointError, match="not a checkpoint") as e:
        load_model(path)
    assert str(path) in str(e.value)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_model(tmp_path / "nope.pt")


# ------------------------------------------------------------------------------------------------
# export --format onnx: the command's wiring to swin_maskrcnn.apps.onnx_export
# ------------------------------------------------------------------------------------------------
def _native_file(tmp_path) -> Path:
    cfg = tiny_model_config(num_classes=2)
    return save_checkpoint(tmp_path / "m.pt", SwinMaskRCNN(cfg), cfg, NAMES, {3: 0, 7: 1})


def test_export_onnx_calls_the_exporter_with_the_loaded_model(tmp_path, monkeypatch, capsys):
    import sys
    import types

    calls = []

    def export_onnx(model, out_path, opset=None):
        if opset is not None and opset < 16:
            raise ValueError(f"opset {opset} is too old")
        calls.append((model, out_path, opset))
        Path(out_path).write_bytes(b"onnx")
        return Path(out_path)

    fake = types.ModuleType("swin_maskrcnn.apps.onnx_export")
    fake.export_onnx = export_onnx
    monkeypatch.setitem(sys.modules, "swin_maskrcnn.apps.onnx_export", fake)
    path = _native_file(tmp_path)
    out = tmp_path / "m.onnx"
    assert cli_main(["export", "--format", "onnx", "--checkpoint", str(path), "--out", str(out), "--opset", "18"]) == 0
    (model, out_path, opset), = calls
    assert isinstance(model, SwinMaskRCNN) and not model.training
    assert model.class_names == NAMES and model.label_to_cat_id == {0: 3, 1: 7}
    assert Path(out_path) == out and opset == 18 and out.read_bytes() == b"onnx"
    assert f"wrote {out}" in capsys.readouterr().out
    # an argument the exporter rejects is one error line, exit 2
    assert cli_main(["export", "--format", "onnx", "--checkpoint", str(path), "--out", str(out), "--opset", "11"]) == 2
    assert "--format onnx: opset 11 is too old" in capsys.readouterr().err


def test_export_onnx_without_the_exporter_is_a_clear_error(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "swin_maskrcnn.apps.onnx_export", None)  # import fails as if absent
    path = _native_file(tmp_path)
    rc = cli_main(["export", "--format", "onnx", "--checkpoint", str(path), "--out", str(tmp_path / "m.onnx")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "ONNX export is not available" in err and "swin-maskrcnn[export]" in err
    assert cli_main(["export", "--format", "safetensors", "--checkpoint", str(path), "--out",
                     str(tmp_path / "m.safetensors"), "--opset", "17"]) == 2
    assert "--opset applies to --format onnx only" in capsys.readouterr().err


def test_safetensors_header_length_with_low_byte_0x80_is_not_taken_for_a_pickle(tmp_path):
    """A safetensors header of 0x..80 bytes starts the file with the pickle PROTO opcode byte; the
    sniffer must still see safetensors (and report a cut copy of it as truncated)."""
    import json
    import struct

    from safetensors.torch import save_file

    for pad in range(300):  # grow the metadata until the header length's low byte is 0x80
        path = tmp_path / f"t{pad}.safetensors"
        save_file({"w": torch.zeros(3)}, str(path), metadata={"pad": "x" * pad})
        (n,) = struct.unpack("<Q", path.read_bytes()[:8])
        if n & 0xFF == 0x80:
            break
    else:
        raise AssertionError("no padding gave a header length ending in 0x80")
    data = path.read_bytes()
    assert data[:1] == b"\x80" and json.loads(data[8 : 8 + n])["__metadata__"]["pad"] == "x" * pad
    assert detect_container(path) == "safetensors"
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: 8 + n + 4])
    with pytest.raises(TruncatedCheckpointError, match="truncated"):
        read_file(cut)
