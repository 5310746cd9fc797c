"""End-to-end training on a tiny synthetic COCO dataset (CPU), exact resume, data order, checkpoint
format, and the collapse alarm's decision rule."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch

from swin_maskrcnn.checkpoint.loader import load_checkpoint, read_checkpoint
from swin_maskrcnn.checkpoint.native import save_checkpoint
from swin_maskrcnn.modeling.config import tiny_model_config
from swin_maskrcnn.evaluation import evaluate_model
from swin_maskrcnn.training.monitoring import CollapseDetector
from swin_maskrcnn.training.optim import lr_factor
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from swin_maskrcnn.training.train import build_loggers, train
from swin_maskrcnn.training.config import TrainConfig

from conftest import STEPS, make_tiny_coco, read_metrics_csv, tiny_train_config

RESUME_FROM = 45


def losses_by_step(rows: list[dict[str, str]], key: str = "train/loss") -> dict[int, float]:
    return {int(float(r["step"])): float(r[key]) for r in rows if r.get(key)}  # Lightning 2.4 writes the step as "1.0"


# ------------------------------------------------------------------------------------------------
# the end-to-end run (shared by several tests)
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_coco(tmp_path_factory.mktemp("coco"))


@pytest.fixture(scope="module")
def full_run(tiny_data, tmp_path_factory):
    ann, imgs = tiny_data
    out = tmp_path_factory.mktemp("runs")
    cfg = tiny_train_config(ann, imgs, out, "full")
    summary = train(cfg)
    return cfg, summary


def test_training_writes_checkpoints_logs_and_summary(full_run):
    cfg, s = full_run
    run = Path(s["run_dir"])
    assert s["global_step"] == STEPS
    for name in ("step_0000015.ckpt", "step_0000030.ckpt", "step_0000045.ckpt", "last.ckpt", "best.ckpt"):
        assert (run / "checkpoints" / name).is_file(), name
    assert Path(s["last_checkpoint"]).is_file() and Path(s["best_checkpoint"]).is_file()
    assert Path(s["final_model"]).is_file()
    assert (run / "config.yaml").is_file()
    assert list(run.glob("tensorboard/version_*/events.out.tfevents.*"))
    assert sorted(p.name for p in (run / "val").glob("*.json")) == ["step_0000025.json", "step_0000050.json"]

    rows = read_metrics_csv(run)
    keys = set().union(*(r.keys() for r in rows))
    for k in ("train/loss", "train/loss_rpn_cls", "train/loss_rpn_bbox", "train/loss_cls", "train/loss_bbox",
              "train/loss_mask", "train/share_loss_mask", "train/lr", "train/grad_norm", "train/acc", "train/acc_fg",
              "train/rpn_num_pos", "train/roi_num_pos", "val/segm_AP", "val/bbox_AP", "val/preds_per_image",
              "monitor/probe_preds_per_image", "monitor/collapse_alarm"):
        assert k in keys, k
    loss = losses_by_step(rows)
    assert sorted(loss) == list(range(1, STEPS + 1))  # one row per optimizer step, steps counted from 1
    assert all(np.isfinite(v) for v in loss.values())
    # the logged lr of step k is the schedule's value for 0-based step k - 1
    lrs = losses_by_step(rows, "train/lr")
    for k in (1, 3, 5, 6, 30, 31, 50):
        assert lrs[k] == pytest.approx(cfg.optim.lr * lr_factor(k - 1, cfg.optim), rel=1e-5), k
    # passes over the data: 1 / (batches per data epoch) per step (6 images in batches of 2: 3 or 4 per epoch)
    de = losses_by_step(rows, "train/data_epoch")
    assert sorted(de) == list(range(1, STEPS + 1))
    assert de[1] in (pytest.approx(1 / 4), pytest.approx(1 / 3)) and all(de[k] == pytest.approx(k * de[1], rel=1e-6) for k in de)
    # shares of the total sum to 1
    r = next(r for r in rows if r.get("train/loss"))
    shares = sum(float(r[k]) for k in r if k.startswith("train/share_") and r[k])
    assert shares == pytest.approx(1.0, rel=1e-4)
    # validation rows at steps 25 and 50
    val_steps = sorted(int(float(r["step"])) for r in rows if r.get("val/segm_AP"))
    assert val_steps == [25, 50]
    fm = s["final_metrics"]
    assert "val/segm_AP" in fm and "train/loss" in fm


def test_resume_reproduces_the_uninterrupted_run(full_run, tiny_data, tmp_path):
    cfg, s = full_run
    ann, imgs = tiny_data
    ckpt = Path(s["run_dir"]) / "checkpoints" / f"step_{RESUME_FROM:07d}.ckpt"
    cfg2 = tiny_train_config(ann, imgs, tmp_path, "resumed")
    s2 = train(cfg2, resume=str(ckpt))
    assert s2["global_step"] == STEPS
    assert (Path(s2["run_dir"]) / "config.yaml").is_file()
    full = losses_by_step(read_metrics_csv(Path(s["run_dir"])))
    resumed = losses_by_step(read_metrics_csv(Path(s2["run_dir"])))
    assert sorted(resumed) == list(range(RESUME_FROM + 1, STEPS + 1))
    # the very next step, and every later one, equals the uninterrupted run
    for k in range(RESUME_FROM + 1, STEPS + 1):
        assert resumed[k] == pytest.approx(full[k], rel=1e-6, abs=1e-7), (k, resumed[k], full[k])
    a = torch.load(s["final_model"], weights_only=True)["state_dict"]
    b = torch.load(s2["final_model"], weights_only=True)["state_dict"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_checkpoints_load_and_evaluate(full_run, tiny_data):
    cfg, s = full_run
    ann, imgs = tiny_data
    model, mcfg, meta = load_checkpoint(s["best_checkpoint"])
    assert meta["source"] == "lightning"
    assert meta["class_names"] == ["rect", "ellipse"]
    assert meta["cat_id_to_label"] == {3: 0, 7: 1} and meta["label_to_cat_id"] == {0: 3, 1: 7}
    assert TrainConfig.model_validate(meta["train_config"]) == cfg
    assert mcfg == cfg.model
    native, _, nmeta = load_checkpoint(s["final_model"])
    assert nmeta["source"] == "native" and nmeta["global_step"] == STEPS

    from swin_maskrcnn.data import CocoInstanceDataset, build_test_transforms

    ds = CocoInstanceDataset(ann, imgs, transforms=build_test_transforms((128, 128)))
    metrics, results = evaluate_model(native, ds, batch_size=2, progress=False)
    for t in ("bbox", "segm"):
        for k in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
            assert k in metrics[t]
    assert metrics["num_images"] == len(ds)


def test_init_from_checkpoint_with_another_class_count(full_run):
    from swin_maskrcnn.modeling.config import ModelConfig
    from swin_maskrcnn.modeling.detector import SwinMaskRCNN
    from swin_maskrcnn.training.train import init_weights_from

    cfg, s = full_run
    src = torch.load(s["final_model"], weights_only=True)["state_dict"]
    m3 = SwinMaskRCNN(ModelConfig.model_validate({**cfg.model.model_dump(mode="json"), "num_classes": 3}))
    skipped = init_weights_from(m3, s["final_model"])
    assert sorted(skipped) == sorted(
        f"roi_head.{h}.{p}" for h in ("bbox_head.fc_cls", "bbox_head.fc_reg", "mask_head.conv_logits") for p in ("weight", "bias")
    )
    for k, v in m3.state_dict().items():
        if k not in skipped:
            assert torch.equal(v, src[k]), k
    same = SwinMaskRCNN(cfg.model)
    assert init_weights_from(same, s["last_checkpoint"]) == []  # Lightning .ckpt, every key
    for k, v in same.state_dict().items():
        assert torch.equal(v, src[k]), k


def test_max_minutes_stops_early_and_still_writes_the_run(tiny_data, tmp_path):
    ann, imgs = tiny_data
    # 0.3 s of budget against 10,000 steps: Lightning's timer stops the loop after a few steps
    cfg = tiny_train_config(ann, imgs, tmp_path, "timed", max_steps=10_000, max_minutes=0.005,
                            val_every_n_steps=10_000, checkpoint_every_n_steps=10_000, probe_every_n_steps=0)
    t0 = time.perf_counter()
    s = train(cfg)
    assert time.perf_counter() - t0 < 120
    assert 0 < s["global_step"] < 10_000 and s["stopped_by_time"] is True
    assert Path(s["final_model"]).is_file() and Path(s["last_checkpoint"]).is_file()
    steps = losses_by_step(read_metrics_csv(s["run_dir"]))
    assert steps and max(steps) <= s["global_step"]


def test_keep_last_checkpoints_removes_older_periodic_ones(tiny_data, tmp_path):
    ann, imgs = tiny_data
    cfg = tiny_train_config(ann, imgs, tmp_path, "keep2", max_steps=20, checkpoint_every_n_steps=5,
                            keep_last_checkpoints=2, val_every_n_steps=10, probe_every_n_steps=0)
    s = train(cfg)
    ckpts = Path(s["run_dir"]) / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step_*.ckpt")) == ["step_0000015.ckpt", "step_0000020.ckpt"]
    assert (ckpts / "last.ckpt").exists() and (ckpts / "best.ckpt").is_file()


def test_tensorboard_is_optional(tiny_data, tmp_path, monkeypatch):
    """With tensorboard installed both loggers are built; without it training logs to CSV only."""
    assert [type(x) for x in build_loggers(tmp_path / "with")] == [TensorBoardLogger, CSVLogger]
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard now fails: as if not installed
    assert [type(x) for x in build_loggers(tmp_path / "without")] == [CSVLogger]
    ann, imgs = tiny_data
    cfg = tiny_train_config(ann, imgs, tmp_path, "no_tb", max_steps=3, val_every_n_steps=10_000,
                            checkpoint_every_n_steps=10_000, probe_every_n_steps=0)
    s = train(cfg)
    run = Path(s["run_dir"])
    assert s["global_step"] == 3 and not (run / "tensorboard").exists()
    assert sorted(losses_by_step(read_metrics_csv(run))) == [1, 2, 3]


def test_without_max_minutes_the_run_is_not_stopped_by_time(full_run):
    cfg, s = full_run
    assert cfg.runtime.max_minutes is None
    assert s["stopped_by_time"] is False and s["global_step"] == cfg.optim.max_steps


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    m = torch.nn.Linear(2, 2)
    cfg = tiny_model_config(num_classes=2)
    from swin_maskrcnn.modeling.detector import SwinMaskRCNN

    model = SwinMaskRCNN(cfg)
    path = save_checkpoint(tmp_path / "m.pt", model, cfg, ["a", "b"], {1: 0, 5: 1})
    before = path.read_bytes()

    def broken_save(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, m, cfg, ["a", "b"], {1: 0, 5: 1})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temp file left behind
    sd, meta = read_checkpoint(path)
    assert meta["cat_id_to_label"] == {1: 0, 5: 1} and meta["class_names"] == ["a", "b"]


# ------------------------------------------------------------------------------------------------
# collapse alarm decision rule (synthetic sequences)
# ------------------------------------------------------------------------------------------------
def _feed(det: CollapseDetector, losses, acc_fg: Optional[float] = 50.0, pos: float = 10.0) -> None:
    for v in losses:
        det.record(float(v), acc_fg, pos)


def test_alarm_on_falling_loss_and_zero_predictions():
    det = CollapseDetector(loss_window=10, min_preds_per_image=0.1, grace_steps=0, patience=1)
    _feed(det, np.linspace(2.0, 0.5, 40))
    v = det.check(step=40, preds_per_image=0.0)
    assert v.alarm and v.loss_falling and v.preds_collapsed
    assert "COLLAPSE ALARM" in v.message(40)


def test_no_alarm_on_falling_loss_and_healthy_predictions():
    det = CollapseDetector(loss_window=10, grace_steps=0, patience=1)
    _feed(det, np.linspace(2.0, 0.5, 40), acc_fg=60.0)
    v = det.check(step=40, preds_per_image=12.0)
    assert not v.alarm and v.loss_falling and not v.preds_collapsed and not v.fg_collapsed


def test_no_alarm_on_rising_loss():
    det = CollapseDetector(loss_window=10, grace_steps=0, patience=1)
    _feed(det, np.linspace(0.5, 2.0, 40), acc_fg=0.0)
    v = det.check(step=40, preds_per_image=0.0)
    assert not v.alarm and not v.loss_falling


def test_alarm_on_foreground_accuracy_collapse():
    det = CollapseDetector(loss_window=10, min_fg_acc=5.0, grace_steps=0, patience=1)
    _feed(det, np.linspace(2.0, 0.5, 40), acc_fg=1.0, pos=20.0)
    v = det.check(step=40, preds_per_image=8.0)
    assert v.alarm and v.fg_collapsed and not v.preds_collapsed
    # no positives sampled: accuracy says nothing
    det2 = CollapseDetector(loss_window=10, grace_steps=0, patience=1)
    _feed(det2, np.linspace(2.0, 0.5, 40), acc_fg=0.0, pos=0.0)
    assert not det2.check(step=40, preds_per_image=8.0).alarm


def test_alarm_grace_patience_and_history():
    det = CollapseDetector(loss_window=5, grace_steps=100, patience=2)
    _feed(det, np.linspace(2.0, 1.0, 9))
    assert not det.check(step=200, preds_per_image=0.0).alarm  # fewer than 2 windows of losses
    _feed(det, [0.9])
    assert not det.check(step=50, preds_per_image=0.0).alarm  # within grace
    assert not det.check(step=200, preds_per_image=0.0).alarm  # first of two required probes
    _feed(det, [0.8, 0.7])
    assert det.check(step=300, preds_per_image=0.0).alarm
    assert not det.check(step=400, preds_per_image=5.0).alarm  # recovered: streak resets
