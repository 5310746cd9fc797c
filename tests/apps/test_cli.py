"""The ``swin-maskrcnn`` command line: help of every subcommand, train then evaluate."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml

from pycocotools.coco import COCO

from swin_maskrcnn.apps.cli import build_parser, main
from swin_maskrcnn.errors import ConfigError
from swin_maskrcnn.evaluation import evaluate_coco
from swin_maskrcnn.training.config import save_config

from conftest import make_tiny_coco, tiny_train_config


def _help(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    return capsys.readouterr().out


def test_help(capsys):
    out = _help(["--help"], capsys)
    assert "train" in out and "evaluate" in out
    out = _help(["train", "--help"], capsys)
    for flag in ("--config", "--resume", "--losses", "--print-config", "key=value"):
        assert flag in out
    out = _help(["evaluate", "--help"], capsys)
    for flag in ("--checkpoint", "--ann", "--images", "--max-dets", "--out", "--results", "--batch-size",
                 "--max-images", "--device", "--scale", "--no-resize", "--score-thr", "--max-per-img"):
        assert flag in out


def test_every_action_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.dest != "help":
                assert action.help, f"{name} {action.option_strings or action.dest} has no help"


def test_help_says_each_default_once():
    import re

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, p in sub.choices.items():
        text = " ".join(p.format_help().split())  # argparse wraps lines
        twice = re.findall(r"\(default[^)]*\) \(default[^)]*\)", text)
        assert twice == [], f"{name}: {twice}"
        assert "(default: None)" not in text, name
    evaluate_help = " ".join(sub.choices["evaluate"].format_help().split())
    assert "images per forward pass (default: 1)" in evaluate_help  # argparse's own default still shown


def test_print_config_and_config_errors(capsys):
    repo = Path(__file__).resolve().parents[2]
    cfg = repo / "configs" / "swin_t_coco_1x.yaml"
    assert main(["train", "--config", str(cfg), "--losses", str(repo / "configs/losses/seed.yaml"),
                 "optim.lr=3e-4", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["optim"]["lr"] == 3e-4 and printed["model"]["losses"]["rpn_cls_pos_weight"] == 5.0
    assert main(["train", "--config", str(cfg), "optim.lrr=1", "--print-config"]) == 2
    assert "optim.lrr" in capsys.readouterr().err


def test_losses_files_merge_in_order_and_system_malloc_is_the_config_key(tmp_path, capsys):
    repo = Path(__file__).resolve().parents[2]
    cfg = repo / "configs" / "swin_t_coco_1x.yaml"
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("optim: {lr: 1.0e-3, weight_decay: 0.5}\n")
    second.write_text("optim: {lr: 2.0e-3}\n")
    assert main(["--system-malloc", "train", "--config", str(cfg), "--losses", str(first), "--losses", str(second),
                 "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["optim"]["lr"] == 2e-3 and printed["optim"]["weight_decay"] == 0.5  # later file wins per key
    assert printed["runtime"]["keep_freed_memory"] is False


def test_one_input_error_base_is_what_the_cli_reports_in_one_line(capsys):
    from swin_maskrcnn.apps.cli import is_input_error
    from swin_maskrcnn.checkpoint.safe_load import TruncatedCheckpointError
    from swin_maskrcnn.data.validation import ImageNotFoundError
    from swin_maskrcnn.errors import InputError

    for exc in (ConfigError("a"), ImageNotFoundError("b"), TruncatedCheckpointError("c")):
        assert isinstance(exc, InputError) and is_input_error(exc)
    assert not is_input_error(RuntimeError("a bug"))
    # an error raised by a command: one line on stderr, exit 2, no traceback
    assert main(["evaluate", "--checkpoint", "x.pt", "--ann", "missing.json", "--images", ".",
                 "--batch-size", "0"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "swin-maskrcnn evaluate: error: --batch-size must be >= 1, got 0"


def test_train_then_evaluate(tmp_path, capsys, caplog):
    ann, imgs = make_tiny_coco(tmp_path / "data", n_images=4)
    cfg = tiny_train_config(ann, imgs, tmp_path / "runs", "cli", max_steps=2, val_every_n_steps=2,
                            checkpoint_every_n_steps=1, probe_every_n_steps=1)
    cfg_path = save_config(cfg, tmp_path / "tiny.yaml")
    assert main(["--log-level", "WARNING", "train", "--config", str(cfg_path), "data.seed=1"]) == 0
    out_text = capsys.readouterr().out
    summary = json.loads(out_text[out_text.index("{\n"):])
    assert summary["global_step"] == 2
    run = Path(summary["run_dir"])
    assert (run / "checkpoints" / "step_0000001.ckpt").is_file()
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["seed"] == 1

    out = tmp_path / "metrics.json"
    res = tmp_path / "results.json"
    for ckpt in (summary["last_checkpoint"], summary["final_model"]):
        assert main(["evaluate", "--checkpoint", ckpt, "--ann", str(ann), "--images", str(imgs),
                     "--out", str(out), "--results", str(res), "--max-dets", "1", "10", "20",
                     "--batch-size", "2", "--no-progress", "--device", "cpu"]) == 0
        printed = capsys.readouterr().out
        assert "bbox: AP" in printed and "segm: AP" in printed
        metrics = json.loads(out.read_text())
        for t in ("bbox", "segm"):
            assert {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR@20", "per_class_AP"} <= set(metrics[t])
            assert set(metrics[t]["per_class_AP"]) == {"rect", "ellipse"}
        assert metrics["num_images"] == 4
        # --results holds the detections the metrics were computed from: COCOeval on the file agrees
        again = evaluate_coco(COCO(str(ann)), json.loads(res.read_text()), max_dets=(1, 10, 20))
        for t in ("bbox", "segm"):
            assert again[t]["AP"] == pytest.approx(metrics[t]["AP"], abs=1e-9), t

    # --max-dets above the model's max_per_img (20 here) warns; --max-per-img raises the cap
    def per_image_max(path: Path) -> int:
        from collections import Counter

        return max(Counter(r["image_id"] for r in json.loads(path.read_text())).values())

    base = ["evaluate", "--checkpoint", summary["final_model"], "--ann", str(ann), "--images", str(imgs),
            "--results", str(res), "--max-dets", "1", "10", "100", "--no-progress", "--device", "cpu",
            "--score-thr", "0.0"]
    with caplog.at_level(logging.WARNING, logger="swin_maskrcnn.apps.cli"):
        assert main(base) == 0
    assert "--max-dets 100 exceeds the model's max_per_img 20" in caplog.text
    assert per_image_max(res) == 20
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="swin_maskrcnn.apps.cli"):
        assert main(base + ["--max-per-img", "100"]) == 0
    assert "exceeds" not in caplog.text
    assert 20 < per_image_max(res) <= 100
    capsys.readouterr()

    # a json whose categories differ from the checkpoint's is refused with both numbers
    other = json.loads(Path(ann).read_text())
    other["categories"].append({"id": 9, "name": "extra"})
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(other))
    assert main(["evaluate", "--checkpoint", summary["final_model"], "--ann", str(bad), "--images", str(imgs),
                 "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "2 classes" in err and "3 categories" in err
