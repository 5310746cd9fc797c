"""Faults during training: non-finite steps are skipped and counted (and stop the run after K in a
row), a SIGKILLed run resumes to the uninterrupted run's weights, a truncated checkpoint is never
resumed from, and an unwritable or full output folder is reported before training and never costs
the last good checkpoint."""
from __future__ import annotations

import errno
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from swin_maskrcnn.apps.cli import main as cli_main
from swin_maskrcnn.io_utils import OutputWriteError, atomic_write
from swin_maskrcnn.modeling.detector import SwinMaskRCNN
from swin_maskrcnn.training.checkpoint_io import checkpoint_step, resolve_resume
from swin_maskrcnn.training.config import ConfigError, TrainConfig, config_from_dict, save_config
from swin_maskrcnn.training.nonfinite import NonFiniteTrainingError
from swin_maskrcnn.training.train import train
from conftest import make_tiny_coco, read_metrics_csv, tiny_train_config


def fast_config(ann: Path, imgs: Path, out: Path, name: str, max_steps: int, **runtime) -> TrainConfig:
    """tiny_train_config without validation and probe (only training steps and checkpoints)."""
    rt = dict(probe_every_n_steps=0, checkpoint_every_n_steps=max_steps)
    rt.update(runtime)
    d = tiny_train_config(ann, imgs, out, name, max_steps=max_steps, **rt).model_dump(mode="json")
    d["data"].update(val_ann=None, val_images=None)
    return config_from_dict(d)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_coco(tmp_path_factory.mktemp("coco"))


# ------------------------------------------------------------------------------------------------
# non-finite loss / gradients
# ------------------------------------------------------------------------------------------------
class NanGradient(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss with non-finite gradients."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


def poison(monkeypatch, loss_calls=(), grad_calls=(), from_call=None):
    """Make the detector's training losses hold a NaN loss_cls on the given (0-based) training
    calls (or on every call from ``from_call`` on), and NaN gradients through loss_mask on others."""
    original = SwinMaskRCNN.losses_and_stats
    calls = {"n": 0}

    def losses_and_stats(self, images, targets):
        out, stats = original(self, images, targets)
        k = calls["n"]
        calls["n"] += 1
        if k in loss_calls or (from_call is not None and k >= from_call):
            out["loss_cls"] = out["loss_cls"] * float("nan")
        if k in grad_calls:
            out["loss_mask"] = NanGradient.apply(out["loss_mask"])
        return out, stats

    monkeypatch.setattr(SwinMaskRCNN, "losses_and_stats", losses_and_stats)


class Recorder(L.Callback):
    """Parameters before/after every step, the batch's image ids, and AdamW's step counts at the end."""

    def __init__(self) -> None:
        self.before, self.after, self.ids = {}, {}, {}
        self.adam_steps: set[float] = set()

    @staticmethod
    def _params(pl_module):
        return {k: v.detach().clone() for k, v in pl_module.model.named_parameters()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.ids[trainer.global_step] = [int(t["image_id"]) for t in batch[1]]
        self.before[trainer.global_step] = self._params(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after[trainer.global_step - 1] = self._params(pl_module)

    def on_train_end(self, trainer, pl_module):
        opt = trainer.optimizers[0]
        self.adam_steps = {float(s["step"]) for s in opt.state.values()}


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_nonfinite_loss_and_gradient_steps_are_skipped_and_counted(tiny_data, tmp_path, monkeypatch):
    ann, imgs = tiny_data
    poison(monkeypatch, loss_calls={2}, grad_calls={3})
    rec = Recorder()
    s = train(fast_config(ann, imgs, tmp_path, "nan", max_steps=6), callbacks=[rec])
    assert s["global_step"] == 6  # the run goes on
    for step in (2, 3):  # skipped: not one parameter moved
        assert _same(rec.before[step], rec.after[step]), step
    for step in (0, 1, 4, 5):  # the other steps update
        assert not _same(rec.before[step], rec.after[step]), step
    assert rec.adam_steps == {4.0}  # AdamW's own state saw 6 - 2 updates, no more
    nf = s["nonfinite"]
    assert nf["skipped_steps"] == 2
    assert [(e["step"], e["reason"]) for e in nf["events"]] == [(2, "loss"), (3, "gradients")]
    assert nf["events"][0]["image_ids"] == rec.ids[2] and nf["events"][1]["image_ids"] == rec.ids[3]
    assert list(nf["events"][0]["loss_terms"]) == ["loss_cls"]
    rows = read_metrics_csv(Path(s["run_dir"]))
    counts = {int(float(r["step"])): float(r["train/nonfinite_skipped"]) for r in rows if r.get("train/nonfinite_skipped")}
    assert [counts[k] for k in range(1, 7)] == [0, 0, 1, 2, 2, 2]  # row k: after k steps
    losses = {int(float(r["step"])): float(r["train/loss"]) for r in rows if r.get("train/loss")}
    assert [k for k in range(1, 7) if not math.isfinite(losses[k])] == [3]  # NaN loss logged, not the last one
    # the run's files are complete: the final checkpoint resumes / loads
    assert checkpoint_step(s["last_checkpoint"]) == 6


def test_consecutive_nonfinite_steps_stop_the_run_with_a_diagnosis(tiny_data, tmp_path, monkeypatch):
    ann, imgs = tiny_data
    poison(monkeypatch, from_call=2)
    rec = Recorder()
    cfg = fast_config(ann, imgs, tmp_path, "diverged", max_steps=10, max_consecutive_nonfinite=3)
    with pytest.raises(NonFiniteTrainingError) as info:
        train(cfg, callbacks=[rec])
    msg = str(info.value)
    assert "3 consecutive steps (2..4)" in msg and "runtime.max_consecutive_nonfinite=3" in msg
    assert f"learning rate {cfg.optim.lr:.3g}" in msg and "precision 32-true" in msg
    images = sorted({i for s in (2, 3, 4) for i in rec.ids[s]})
    assert f"image ids of those batches: {images}" in msg
    assert max(rec.ids) == 4  # stopped at the third skip, not at max_steps
    assert _same(rec.before[2], rec.after[3])


# ------------------------------------------------------------------------------------------------
# resume only from complete checkpoints
# ------------------------------------------------------------------------------------------------
def _fake_ckpt(path: Path, step: int) -> Path:
    torch.save({"global_step": step, "state_dict": {"model.w": torch.full((64,), float(step))}}, path)
    return path


def test_resume_picks_the_newest_complete_checkpoint(tmp_path):
    run = tmp_path / "run"
    ck = run / "checkpoints"
    ck.mkdir(parents=True)
    _fake_ckpt(ck / "step_0000002.ckpt", 2)
    good = _fake_ckpt(ck / "step_0000004.ckpt", 4)
    (ck / "last.ckpt").symlink_to("step_0000004.ckpt")
    data = _fake_ckpt(tmp_path / "full.ckpt", 6).read_bytes()
    (ck / "step_0000006.ckpt").write_bytes(data[: len(data) // 2])  # newer, but cut short
    (ck / ".step_0000008.ckpt.x1y2.tmp").write_bytes(data[:100])  # an interrupted atomic write
    assert checkpoint_step(ck / "step_0000006.ckpt") is None
    assert resolve_resume(run) == good.resolve() and resolve_resume(ck) == good.resolve()
    assert resolve_resume(ck / "last.ckpt") == ck / "last.ckpt"
    with pytest.raises(ConfigError, match=r"step_0000006.ckpt: truncated .*newest complete checkpoint there is .*step_0000004"):
        resolve_resume(ck / "step_0000006.ckpt")
    with pytest.raises(ConfigError, match="no such file"):
        resolve_resume(ck / "missing.ckpt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        resolve_resume(empty)


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "swin-maskrcnn"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "swin_maskrcnn.apps.cli"]


def test_sigkill_mid_run_resumes_to_the_uninterrupted_weights(tiny_data, tmp_path):
    """A real `swin-maskrcnn train` subprocess, SIGKILLed after its first checkpoint, resumed with
    --resume .../last.ckpt, ends with the weights of an uninterrupted run."""
    ann, imgs = tiny_data
    steps, every = 12, 4
    # the subprocesses run 1 thread (OMP_NUM_THREADS=1): the reference must too, since float sums split
    # over another thread count differ in the last bits and 12 steps of training amplify that
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = train(fast_config(ann, imgs, tmp_path, "reference", max_steps=steps, checkpoint_every_n_steps=every))
    finally:
        torch.set_num_threads(threads)
    cfg = fast_config(ann, imgs, tmp_path, "killed", max_steps=steps, checkpoint_every_n_steps=every)
    yaml_path = save_config(cfg, tmp_path / "killed.yaml")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = tmp_path / "killed"
    first = run / "checkpoints" / f"step_{every:07d}.ckpt"
    log1 = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen(_cli() + ["train", "--config", str(yaml_path)], stdout=log1, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.time() + 240
        # Lightning writes the periodic checkpoint, then last.ckpt: kill once both are complete on disk
        # (each appears only by an atomic rename)
        last = run / "checkpoints" / "last.ckpt"
        while not (first.exists() and last.exists()) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert first.exists() and last.exists(), (tmp_path / "killed.log").read_text()[-3000:]
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        log1.close()
    assert not (run / "model_final.pt").exists()  # it really died mid-run
    ckpts = run / "checkpoints"
    killed_at = checkpoint_step(ckpts / "last.ckpt")
    assert killed_at is not None and every <= killed_at < steps
    # a checkpoint cut short by a kill is never picked: neither a truncated newer file nor a temp file
    data = (ckpts / "last.ckpt").read_bytes()
    (ckpts / "step_0000011.ckpt").write_bytes(data[: len(data) // 3])
    (ckpts / ".step_0000012.ckpt.abcd.tmp").write_bytes(data[:1000])
    assert checkpoint_step(resolve_resume(run)) == killed_at

    resumed = subprocess.run(_cli() + ["train", "--config", str(yaml_path), "--resume", str(ckpts / "last.ckpt")],
                             capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = torch.load(reference["final_model"], weights_only=True)
    b = torch.load(run / "model_final.pt", weights_only=True)
    assert a["global_step"] == b["global_step"] == steps
    for k in a["state_dict"]:
        torch.testing.assert_close(b["state_dict"][k], a["state_dict"][k], rtol=1e-5, atol=1e-6, msg=k)


# ------------------------------------------------------------------------------------------------
# unwritable / full output folder
# ------------------------------------------------------------------------------------------------
def test_unwritable_output_folder_is_reported_before_training(tiny_data, tmp_path, capsys):
    ann, imgs = tiny_data
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the output folder should be")
    cfg = fast_config(ann, imgs, blocker / "runs", "x", max_steps=2)
    with pytest.raises(ConfigError, match=r"runtime.out_dir .*not writable"):
        train(cfg)
    yaml_path = save_config(cfg, tmp_path / "cfg.yaml")
    assert cli_main(["train", "--config", str(yaml_path)]) == 2
    err = capsys.readouterr().err
    assert "runtime.out_dir" in err and "not writable" in err and "Traceback" not in err


def test_too_little_free_space_is_reported_before_training(tiny_data, tmp_path, monkeypatch):
    ann, imgs = tiny_data
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=2**20))  # 1 MiB free
    cfg = fast_config(ann, imgs, tmp_path, "full_disk", max_steps=2)
    with pytest.raises(ConfigError, match=r"runtime.out_dir .*1 MiB free, but one checkpoint needs about \d+ MiB"):
        train(cfg)
    assert not list((tmp_path / "full_disk").rglob("*.ckpt"))


def test_disk_full_mid_write_keeps_the_last_good_checkpoint(tiny_data, tmp_path, monkeypatch):
    """The final last.ckpt write fails half-way (ENOSPC): last.ckpt stays the complete step-4
    checkpoint, no temporary file is left, the error names the file and the cause."""
    ann, imgs = tiny_data
    real_save = torch.save
    armed = {"on": False}

    def failing_save(obj, f, *a, **k):
        if not armed["on"]:
            return real_save(obj, f, *a, **k)
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    class ArmAtEnd(L.Callback):
        def on_train_end(self, trainer, pl_module):
            armed["on"] = True

    monkeypatch.setattr(torch, "save", failing_save)
    cfg = fast_config(ann, imgs, tmp_path, "enospc", max_steps=4, checkpoint_every_n_steps=2)
    with pytest.raises(OutputWriteError, match=r"cannot write .*last.ckpt: No space left on device.*previous file is unchanged"):
        train(cfg, callbacks=[ArmAtEnd()])
    ckpts = tmp_path / "enospc" / "checkpoints"
    assert checkpoint_step(ckpts / "last.ckpt") == 4
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt", "step_0000002.ckpt", "step_0000004.ckpt"]


def test_atomic_write_error_names_the_file_and_keeps_the_old_content(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")

    def write(f):
        f.write("new, partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OutputWriteError) as info:
        atomic_write(target, write)
    assert info.value.errno == errno.ENOSPC and str(target) in str(info.value) and "MiB free" in str(info.value)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_fp16_gradscaler_still_skips_and_lowers_its_scale(tiny_data, tmp_path, monkeypatch):
    """16-mixed with a GradScaler (Lightning's MixedPrecision plugin, CPU scaler): a step with NaN
    gradients is skipped by the scaler, which halves its scale as usual; a step with a NaN loss
    is skipped without touching the scale; both leave the parameters unchanged."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    from swin_maskrcnn.training.module import DetectionModule
    from swin_maskrcnn.training.train import DetectionDataModule, build_datasets

    ann, imgs = tiny_data
    poison(monkeypatch, grad_calls={1}, loss_calls={2})
    cfg = fast_config(ann, imgs, tmp_path, "amp", max_steps=4)
    train_ds, _ = build_datasets(cfg)
    module = DetectionModule(cfg, train_ds.class_names, train_ds.cat_id_to_label)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    scales = {}

    class Scale(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            scales[trainer.global_step - 1] = scaler.get_scale()

    rec = Recorder()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=4, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, use_distributed_sampler=False, callbacks=[rec, Scale()],
                        plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    trainer.fit(module, datamodule=DetectionDataModule(cfg, train_ds))
    assert scales[0] == 2.0**10 and scales[1] == 2.0**9 and scales[2] == 2.0**9
    for step in (1, 2):
        assert _same(rec.before[step], rec.after[step]), step
    assert not _same(rec.before[3], rec.after[3])
    assert [(e.step, e.reason) for e in module.nonfinite.events] == [(1, "gradients"), (2, "loss")]
