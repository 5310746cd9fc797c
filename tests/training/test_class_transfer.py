"""Fine-tuning onto new classes: class-specific rows kept by class name (training/class_transfer.py)."""
from __future__ import annotations

import json

import pytest
import torch

from swin_maskrcnn.checkpoint.native import save_checkpoint
from swin_maskrcnn.errors import CheckpointError, ConfigError, InputError
from swin_maskrcnn.modeling.config import tiny_model_config
from swin_maskrcnn.modeling.detector import SwinMaskRCNN
from swin_maskrcnn.training.train import init_weights_from

SRC = ["cat", "dog", "bird", "horse"]
CLS, REG, MSK = "roi_head.bbox_head.fc_cls.", "roi_head.bbox_head.fc_reg.", "roi_head.mask_head.conv_logits."


def _model(n: int, seed: int, **kw) -> SwinMaskRCNN:
    torch.manual_seed(seed)
    return SwinMaskRCNN(tiny_model_config(num_classes=n, fpn_channels=16, roi_fc_dims=32, mask_head_channels=8, **kw))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    torch.set_num_threads(1)
    m = _model(len(SRC), seed=1)
    with torch.no_grad():  # distinct rows everywhere (fresh biases are often all zero)
        for k, v in m.state_dict().items():
            if k.startswith((CLS, REG, MSK)):
                v.copy_(torch.randn_like(v))
    path = tmp_path_factory.mktemp("ckpt") / "src.pt"
    save_checkpoint(path, m, m.cfg, SRC, None)
    return path, {k: v.clone() for k, v in m.state_dict().items()}


def _rows(t: torch.Tensor, cls: int, per: int) -> torch.Tensor:
    return t[cls * per:(cls + 1) * per]


def test_rows_copied_by_name_fresh_rows_kept_and_report(source, tmp_path):
    path, src = source
    names = ["dog", "widget", "cat"]
    m = _model(3, seed=5)
    fresh = _model(3, seed=5).state_dict()  # the same init, to compare the new class with
    run_dir = tmp_path / "run"
    skipped = init_weights_from(m, str(path), names, None, run_dir)
    assert skipped == []
    sd = m.state_dict()
    src_idx = {"dog": 1, "cat": 0}
    for p in ("weight", "bias"):
        for prefix, per in ((CLS, 1), (REG, 4), (MSK, 1)):
            k = prefix + p
            for i, n in enumerate(names):
                if n in src_idx:
                    assert torch.equal(_rows(sd[k], i, per), _rows(src[k], src_idx[n], per)), (k, n)
                else:
                    assert torch.equal(_rows(sd[k], i, per), _rows(fresh[k], i, per)), (k, n)
                    for j in range(len(SRC)):
                        assert not torch.equal(_rows(sd[k], i, per), _rows(src[k], j, per))
        assert torch.equal(sd[CLS + p][-1], src[CLS + p][-1])  # background row, last on both sides
        assert sd[CLS + p].shape[0] == 4 and src[CLS + p].shape[0] == 5
    for k, v in sd.items():  # everything else: the checkpoint's
        if not k.startswith((CLS, REG, MSK)):
            assert torch.equal(v, src[k]), k
    rep = json.loads((run_dir / "transfer_report.json").read_text())
    assert [(c["class"], c["source"], c["source_index"]) for c in rep["classes"]] == [
        ("dog", "dog", 1), ("widget", None, None), ("cat", "cat", 0)]
    assert rep["tensors_reinitialised"] == 0 and rep["tensors_loaded"] == len(sd)
    assert rep["class_tensors"][CLS + "weight"] == {"rows_copied": 3, "rows_fresh": 1}
    assert rep["class_tensors"][REG + "bias"] == {"rows_copied": 8, "rows_fresh": 4}
    txt = (run_dir / "transfer_report.txt").read_text().splitlines()
    assert "dog <- dog (1)" in txt and "widget: new" in txt and "cat <- cat (0)" in txt


def test_class_map_renames(source, tmp_path):
    path, src = source
    m = _model(2, seed=3)
    init_weights_from(m, str(path), ["kitty", "bird"], {"kitty": "cat"}, tmp_path)
    sd = m.state_dict()
    assert torch.equal(_rows(sd[REG + "weight"], 0, 4), _rows(src[REG + "weight"], 0, 4))
    assert torch.equal(sd[MSK + "bias"][1], src[MSK + "bias"][2])
    assert "kitty <- cat (0)" in (tmp_path / "transfer_report.txt").read_text()


@pytest.mark.parametrize("cmap, word", [({"zebra": "cat"}, "'zebra' is not a dataset class"),
                                        ({"kitty": "lion"}, "'lion' is not a class of the checkpoint")])
def test_class_map_unknown_class_refused(source, cmap, word):
    with pytest.raises(ConfigError, match="init.class_map") as e:
        init_weights_from(_model(2, seed=0), str(source[0]), ["kitty", "bird"], cmap)
    assert word in str(e.value) and isinstance(e.value, InputError)


def test_backbone_mismatch_refused(source):
    torch.manual_seed(0)
    cfg = tiny_model_config(num_classes=2, fpn_channels=24, roi_fc_dims=32, mask_head_channels=8)
    other = SwinMaskRCNN(cfg)
    with pytest.raises(CheckpointError, match=r"init.checkpoint=.*does not fit the configured model.*neck"):
        init_weights_from(other, str(source[0]), ["cat", "dog"])


def test_num_classes_refusals(tmp_path):
    from tests.conftest import make_tiny_coco, tiny_train_config
    from swin_maskrcnn.data.coco import CocoInstanceDataset
    from swin_maskrcnn.training.config import check_num_classes

    ann, imgs = make_tiny_coco(tmp_path, n_images=1)
    ds = CocoInstanceDataset(ann, imgs)
    cfg = tiny_train_config(ann, imgs, tmp_path, "r")
    check_num_classes(cfg, ds)  # 2 == 2
    for n, word in ((3, "counts foreground classes only (the background row"), (5, "have 2 categories")):
        bad = cfg.model_copy(update={"model": cfg.model.model_copy(update={"num_classes": n})})
        with pytest.raises(ConfigError, match=f"model.num_classes={n}") as e:
            check_num_classes(bad, ds)
        assert word in str(e.value)


def test_without_class_names_keeps_old_behaviour(source):
    m = _model(2, seed=0)
    skipped = init_weights_from(m, str(source[0]))
    assert sorted(skipped) == sorted(p + s for p in (CLS, REG, MSK) for s in ("weight", "bias"))
    with pytest.raises(ConfigError, match="init.class_map"):
        init_weights_from(_model(4, seed=0), str(source[0]), None, {"a": "cat"})


def test_build_model_transfers_and_logs(tmp_path, caplog):
    import logging

    from tests.conftest import make_tiny_coco, tiny_train_config
    from swin_maskrcnn.training.train import build_model

    ann, imgs = make_tiny_coco(tmp_path, n_images=1)
    cfg = tiny_train_config(ann, imgs, tmp_path, "r")
    torch.manual_seed(2)
    src_model = SwinMaskRCNN(cfg.model.model_copy(update={"num_classes": 4}))
    ck = save_checkpoint(tmp_path / "src.pt", src_model, src_model.cfg, SRC, None)
    cfg = cfg.model_copy(update={"init": cfg.init.model_copy(update={"checkpoint": str(ck),
                                                                      "class_map": {"rect": "horse"}})})
    with caplog.at_level(logging.INFO, logger="swin_maskrcnn"):
        m = build_model(cfg, None, ["rect", "ellipse"], tmp_path / "run")
    assert "rect <- horse (3)" in caplog.text and "ellipse: new" in caplog.text
    assert torch.equal(m.state_dict()[MSK + "weight"][0], src_model.state_dict()[MSK + "weight"][3])
    assert (tmp_path / "run" / "transfer_report.txt").read_text() in caplog.text + "\n"


def test_map_classes_false_gives_fresh_heads(source, tmp_path):
    """init.map_classes: false: every class-specific tensor equals a fresh init of the same seed
    (also for classes the checkpoint has by name and when the count matches), everything else
    equals the checkpoint; the report says so; build_model passes the switch."""
    path, src = source
    keys = sorted(p + s for p in (CLS, REG, MSK) for s in ("weight", "bias"))
    for names in (["dog", "widget", "cat"], list(SRC)):
        m = _model(len(names), seed=5)
        fresh = _model(len(names), seed=5).state_dict()
        skipped = init_weights_from(m, str(path), names, None, tmp_path / "run", map_classes=False)
        assert sorted(skipped) == keys
        sd = m.state_dict()
        for k, v in sd.items():
            if k.startswith((CLS, REG, MSK)):
                assert torch.equal(v, fresh[k]), k
            else:
                assert torch.equal(v, src[k]), k
        rep = json.loads((tmp_path / "run" / "transfer_report.json").read_text())
        assert rep["map_classes"] is False and rep["classes"] is None and rep["tensors_reinitialised"] == 6
        txt = (tmp_path / "run" / "transfer_report.txt").read_text()
        assert "fresh: " + CLS + "weight" in txt and "<-" not in txt
    with pytest.raises(ConfigError, match="init.map_classes"):
        init_weights_from(_model(3, seed=0), str(path), ["dog", "cat", "bird"], {"dog": "cat"}, map_classes=False)


def test_build_model_map_classes_false(tmp_path):
    from tests.conftest import make_tiny_coco, tiny_train_config
    from swin_maskrcnn.training.train import build_model

    ann, imgs = make_tiny_coco(tmp_path, n_images=1)
    cfg = tiny_train_config(ann, imgs, tmp_path, "r")
    torch.manual_seed(2)
    src_model = SwinMaskRCNN(cfg.model.model_copy(update={"num_classes": 2}))
    ck = save_checkpoint(tmp_path / "src.pt", src_model, src_model.cfg, ["rect", "ellipse"], None)
    for flag, same in ((True, True), (False, False)):
        c = cfg.model_copy(update={"init": cfg.init.model_copy(update={"checkpoint": str(ck), "map_classes": flag})})
        m = build_model(c, None, ["rect", "ellipse"], tmp_path / f"run{flag}")
        assert torch.equal(m.state_dict()[MSK + "weight"], src_model.state_dict()[MSK + "weight"]) is same
        assert json.loads((tmp_path / f"run{flag}" / "transfer_report.json").read_text())["map_classes"] is flag
