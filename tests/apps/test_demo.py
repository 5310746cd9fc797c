"""Smoke test of the demo pipeline (a few training steps on a handful of tiny images, not the real demo).

The real demo (``make demo``: configs/demo.yaml, minutes of CPU training, mask AP >= 0.5 on held-out
images) is far too long for the test suite.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from PIL import Image

from swin_maskrcnn.apps import demo as demo_mod
from swin_maskrcnn.apps.cli import main as cli_main

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")

TINY = ["--steps", "2", "--train-images", "6", "--val-images", "3", "--image-size", "64", "--threads", "1",
        "runtime.max_val_images=2", "model.rpn.max_per_img_test=50", "model.roi.max_per_img=20"]


def test_demo_cli_smoke(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli_main(["demo", "--out", str(out), "--no-progress", *TINY]) == 0
    stdout = capsys.readouterr().out
    # stdout is exactly one line in the documented format; logs and progress went to stderr
    assert re.fullmatch(r"demo: box AP \d\.\d{3}, mask AP \d\.\d{3}\n", stdout), repr(stdout)

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2
    assert stdout.strip() == demo_mod.demo_line(metrics["box_ap"], metrics["mask_ap"])
    assert metrics["metrics"]["num_images"] == 3  # the whole held-out split
    overlays = sorted((out / "overlays").glob("val_*.png"))
    assert overlays and len(overlays) == len(metrics["overlays"])
    with Image.open(overlays[0]) as im:
        assert im.width > 2 * 64 * 2 and im.mode == "RGB"  # GT | predictions, upscaled
    with Image.open(out / "curves.png") as im:
        assert im.width >= 600
    run = Path(metrics["run_dir"])
    assert (run / "model_final.pt").is_file()
    assert list((run / "csv").glob("version_*/metrics.csv"))
    assert json.loads((out / "data" / "annotations" / "val.json").read_text())["images"]


def test_run_demo_reuses_data_and_restarts_run(tmp_path):
    out = tmp_path / "demo"
    kw = dict(steps=1, train_images=4, val_images=2, image_size=64, threads=1, overlay_images=1,
              overrides=["runtime.max_val_images=1", "model.rpn.max_per_img_test=50"])
    first = demo_mod.run_demo(out, **kw)
    stamp = (out / "data" / "annotations" / "train.json").stat().st_mtime_ns
    second = demo_mod.run_demo(out, **kw)
    assert (out / "data" / "annotations" / "train.json").stat().st_mtime_ns == stamp  # dataset reused
    assert second["box_ap"] == first["box_ap"] and second["mask_ap"] == first["mask_ap"]  # reproducible
    assert len(list((out / "run" / "csv").glob("version_*"))) == 1  # the old run was replaced, not resumed
    assert len(second["overlays"]) == 1


def test_demo_runs_without_matplotlib(tmp_path, monkeypatch):
    """The plot is the optional [demo] extra: without matplotlib the demo still trains and evaluates."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails: as if not installed
    out = tmp_path / "demo"
    result = demo_mod.run_demo(out, steps=1, train_images=4, val_images=2, image_size=64, threads=1,
                               overlay_images=1, overrides=["runtime.max_val_images=1", "model.rpn.max_per_img_test=50"])
    assert result["plot"] is None and not (out / "curves.png").exists()
    assert result["steps"] == 1 and (out / "metrics.json").is_file() and len(result["overlays"]) == 1


def test_recipe_is_a_valid_config(tmp_path):
    raw, demo = demo_mod._load_recipe(demo_mod.default_config_path())
    data = {k: str(tmp_path / k) for k in ("train_ann", "train_images", "val_ann", "val_images")}
    cfg = demo_mod._finish_recipe(raw, demo, "demo.yaml", tmp_path, data, 0, None, False, [])
    assert cfg.model.num_classes == 5 and cfg.model.drop_path_rate == 0.0
    assert cfg.runtime.accelerator == "cpu"
    assert cfg.data.scale == (demo["image_size"], demo["image_size"])
    assert cfg.runtime.val_every_n_steps * demo["val_points"] >= cfg.optim.max_steps
    short = demo_mod._finish_recipe(raw, demo, "demo.yaml", tmp_path, data, 0, 3, False, [])
    assert short.optim.max_steps == 3 and short.optim.warmup_iters < 3


def test_plot_curves_without_validation_rows(tmp_path):
    rows = [{"step": float(s), "train/loss": 3.0 / s, "train/loss_mask": 1.0 / s} for s in range(1, 12)]
    path = demo_mod.plot_curves(rows, tmp_path / "c.png", final=(0.5, 0.4, 11))
    assert path.is_file()


@pytest.mark.parametrize("others, cpus, expected", [(0.0, 2, 2), (0.9, 2, 2), (1.0, 2, 1), (3.5, 2, 1),
                                                    (1.9, 4, 4), (2.0, 4, 2), (5.0, 1, 1)])
def test_default_threads_follows_other_runnable_tasks(monkeypatch, others, cpus, expected):
    # idle machine (fewer than half the CPUs' worth of other runnable tasks): all CPUs; busy: half, at least one
    monkeypatch.setattr(demo_mod.os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    monkeypatch.setattr(demo_mod, "other_runnable", lambda: others)
    monkeypatch.setattr(demo_mod.os, "getloadavg", lambda: (99.0, 0.0, 0.0))  # not consulted
    assert demo_mod.default_threads() == expected


def test_other_runnable_reads_the_run_queue_not_the_load_average(tmp_path, monkeypatch):
    # a machine whose 1-minute load is still high from a finished job, with 3 tasks runnable now (this one + 2)
    fake = tmp_path / "loadavg"
    fake.write_text("1.85 2.32 2.47 3/87 24808\n")
    monkeypatch.setattr(demo_mod, "PROC_LOADAVG", fake)
    assert demo_mod.other_runnable(samples=3, interval_s=0.0) == 2.0
    fake.write_text("1.85 2.32 2.47 1/87 24808\n")  # only this process: idle, whatever the average says
    assert demo_mod.other_runnable(samples=2, interval_s=0.0) == 0.0
    fake.write_text("garbage\n")
    assert demo_mod.other_runnable(samples=1) is None


def test_default_threads_falls_back_to_load_average(monkeypatch):
    monkeypatch.setattr(demo_mod.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(demo_mod, "other_runnable", lambda: None)  # no /proc/loadavg
    monkeypatch.setattr(demo_mod.os, "getloadavg", lambda: (0.2, 0.0, 0.0))
    assert demo_mod.default_threads() == 2
    monkeypatch.setattr(demo_mod.os, "getloadavg", lambda: (1.5, 0.0, 0.0))
    assert demo_mod.default_threads() == 1

    def no_load():
        raise OSError("no load average on this platform")

    monkeypatch.setattr(demo_mod.os, "getloadavg", no_load)
    assert demo_mod.default_threads() == 2
