"""A stopped training run keeps its work and says so: real signals to real ``swin-maskrcnn train``
subprocesses (1 thread, tiny model), at a step, during a validation and during a checkpoint write;
a 2-process DDP run signalled on one rank; SLURM requeue; and a second Ctrl-C.

Every stopped run must exit with 128 + the signal, leave a complete ``last.ckpt`` at the step it
reports, ``model_final.pt`` and ``summary.json``, print "stopped by SIG... at step N of M" and the
resume command; running that printed command must end with the weights of an uninterrupted run
(the SIGKILL test's standard, tests/test_faults.py). The signals are sent by the test process
(external, timed by polling the run's files) or by the subprocess to itself at an exact point
(``signal_worker.py``), so no test depends on a sleep winning a race.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from swin_maskrcnn.training.checkpoint_io import checkpoint_step, resolve_resume
from swin_maskrcnn.training.config import TrainConfig, config_from_dict, save_config
from swin_maskrcnn.training.train import train

from conftest import make_tiny_coco, tiny_train_config

def _default_signals() -> None:
    """In the child: SIGINT as in a terminal (a test runner started in the background ignores it, and
    an ignored signal stays ignored, as for any well-behaved program)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


WORKER = Path(__file__).resolve().parent / "signal_worker.py"
STEPS = 8
TIMEOUT = 300


def stop_config(ann: Path, imgs: Path, out: Path, name: str, validation: bool = False, **runtime) -> TrainConfig:
    rt = dict(probe_every_n_steps=0, checkpoint_every_n_steps=4, val_every_n_steps=4, max_val_images=3)
    rt.update(runtime)
    d = tiny_train_config(ann, imgs, out, name, max_steps=STEPS, **rt).model_dump(mode="json")
    if not validation:
        d["data"].update(val_ann=None, val_images=None)
    return config_from_dict(d)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny_coco(tmp_path_factory.mktemp("stop_coco"))


def _reference(data, root: Path, validation: bool) -> dict:
    """The uninterrupted run, at 1 thread like the subprocesses (float sums differ across thread counts)."""
    ann, imgs = data
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(stop_config(ann, imgs, root, "reference", validation=validation))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    return _reference(data, tmp_path_factory.mktemp("ref"), validation=False)


@pytest.fixture(scope="module")
def reference_val(data, tmp_path_factory):
    return _reference(data, tmp_path_factory.mktemp("ref_val"), validation=True)


def _env(**extra: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", **extra)
    for k in ("SWIN_MASKRCNN_RUN_DIR", "SWIN_MASKRCNN_RESUME_CKPT"):
        env.pop(k, None)
    return env


def _worker(trigger: str, args: list[str]) -> list[str]:
    return [sys.executable, str(WORKER), trigger, "--", *args]


def _run(cmd: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=TIMEOUT, cwd=str(cwd),
                          preexec_fn=_default_signals)


def _cli(args: list[str]) -> list[str]:
    script = Path(sys.executable).parent / "swin-maskrcnn"
    return [str(script), *args] if script.is_file() else [sys.executable, "-m", "swin_maskrcnn.apps.cli", *args]


def _check_stopped(proc, run: Path, signame: str, step: int, abandoned=None) -> dict:
    """The stopped run's status, files, summary and lines; returns summary.json."""
    sig = getattr(signal, signame)
    err = proc.stderr
    assert proc.returncode == 128 + sig, f"exit {proc.returncode}\n{err[-4000:]}"
    assert f"stopped by {signame} at step {step} of {STEPS}" in err, err[-4000:]
    ckpts = run / "checkpoints"
    assert checkpoint_step(ckpts / "last.ckpt") == step
    final = torch.load(run / "model_final.pt", weights_only=True)
    assert final["global_step"] == step
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["stopped_by"], summary["global_step"], summary["max_steps"]) == (signame, step, STEPS)
    assert summary["exit_code"] == 128 + sig and summary["abandoned"] == abandoned
    assert summary["stopped_by_signal"] is True and summary["stopped_by_time"] is False
    assert not list(ckpts.glob(".*.tmp"))  # no write was left half done
    assert summary["resume_command"] in err
    return summary


def _resume_as_printed(summary: dict, cwd: Path) -> subprocess.CompletedProcess:
    """Run the printed resume command word for word (swin-maskrcnn from this interpreter's environment)."""
    words = shlex.split(summary["resume_command"])
    assert words[:2] == ["swin-maskrcnn", "train"]
    proc = _run(_cli(words[1:]), _env(), cwd)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _same_weights(reference_final: str, final: Path) -> None:
    a = torch.load(reference_final, weights_only=True)
    b = torch.load(final, weights_only=True)
    assert a["global_step"] == b["global_step"] == STEPS
    for k in a["state_dict"]:
        torch.testing.assert_close(b["state_dict"][k], a["state_dict"][k], rtol=1e-5, atol=1e-6, msg=k)


def _yaml(data, root: Path, name: str, **kw) -> Path:
    ann, imgs = data
    return save_config(stop_config(ann, imgs, root, name, **kw), root / f"{name}.yaml")


# ------------------------------------------------------------------------------------------------
# at a step
# ------------------------------------------------------------------------------------------------
def test_external_sigterm_during_training_saves_exits_143_and_resumes_to_the_same_weights(data, reference, tmp_path):
    """kill -TERM from outside (what SLURM, Kubernetes, docker stop send), once the run is past its
    first periodic checkpoint: the step in progress finishes, then everything is written."""
    yaml_path = _yaml(data, tmp_path, "term", checkpoint_every_n_steps=2)
    run = tmp_path / "term"
    log = open(tmp_path / "term.err", "w+")
    proc = subprocess.Popen(_cli(["train", "--config", str(yaml_path)]), stdout=subprocess.PIPE, stderr=log,
                            text=True, env=_env(), cwd=str(tmp_path), preexec_fn=_default_signals)
    try:
        first = run / "checkpoints" / "step_0000002.ckpt"
        deadline = time.time() + TIMEOUT
        while not first.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert first.exists(), (tmp_path / "term.err").read_text()[-3000:]
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, (tmp_path / "term.err").read_text())
    step = checkpoint_step(run / "checkpoints" / "last.ckpt")
    assert step is not None and 2 <= step < STEPS, done.stderr[-3000:]
    summary = _check_stopped(done, run, "SIGTERM", step, abandoned=summary_abandoned(run))
    assert json.loads(out)["stopped_by"] == "SIGTERM"  # the JSON summary on stdout says it too
    _resume_as_printed(summary, tmp_path)
    _same_weights(reference["final_model"], run / "model_final.pt")


def summary_abandoned(run: Path):
    return json.loads((run / "summary.json").read_text())["abandoned"]


def test_sigint_in_a_step_finishes_the_step(data, reference, tmp_path):
    """Ctrl-C in the forward pass of step 2 (0-based): the step completes (within the grace
    period), the run stops after 3 steps with status 130; the resume gives the same weights."""
    yaml_path = _yaml(data, tmp_path, "int")
    proc = _run(_worker("SIGINT@step:2", ["train", "--config", str(yaml_path)]), _env(), tmp_path)
    assert "TRIGGERED step 2" in proc.stderr
    summary = _check_stopped(proc, tmp_path / "int", "SIGINT", 3)
    assert "Detected KeyboardInterrupt" not in proc.stderr and "Traceback" not in proc.stderr
    _resume_as_printed(summary, tmp_path)
    _same_weights(reference["final_model"], tmp_path / "int" / "model_final.pt")


def test_a_step_that_cannot_finish_in_time_is_abandoned_cleanly(data, reference, tmp_path):
    """runtime.stop_step_grace_s=0: SIGTERM in the forward pass of step 5 abandons it; the
    checkpoint is the state after step 5 (5 steps done, nothing of the 6th) and resumes exactly."""
    yaml_path = _yaml(data, tmp_path, "abandon", stop_step_grace_s=0)
    proc = _run(_worker("SIGTERM@step:5", ["train", "--config", str(yaml_path)]), _env(), tmp_path)
    summary = _check_stopped(proc, tmp_path / "abandon", "SIGTERM", 5, abandoned="step")
    assert "stopped by SIGTERM at step 5 of 8 (step in progress abandoned)" in proc.stderr
    _resume_as_printed(summary, tmp_path)
    _same_weights(reference["final_model"], tmp_path / "abandon" / "model_final.pt")


# ------------------------------------------------------------------------------------------------
# during validation
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_signal_mid_validation_abandons_it_and_the_resume_runs_it_first(data, reference_val, tmp_path, signame):
    """The signal arrives inside the validation at step 4: it is abandoned (no val/step_0000004.json),
    last.ckpt is step 4; the resumed run validates step 4 first (the same metrics as the
    uninterrupted run's) and ends with the same weights and the same final validation."""
    name = f"val_{signame}"
    yaml_path = _yaml(data, tmp_path, name, validation=True)
    proc = _run(_worker(f"{signame}@validation:4", ["train", "--config", str(yaml_path)]), _env(), tmp_path)
    assert "TRIGGERED validation 4" in proc.stderr
    run = tmp_path / name
    summary = _check_stopped(proc, run, signame, 4, abandoned="validation")
    assert not (run / "val" / "step_0000004.json").exists()
    resumed = _resume_as_printed(summary, tmp_path)
    assert "running the validation that was due when this checkpoint was written" in resumed.stderr
    ref_val = Path(reference_val["run_dir"]) / "val"
    for step in (4, 8):
        ours, theirs = (json.loads((d / f"step_{step:07d}.json").read_text()) for d in (run / "val", ref_val))
        assert ours == theirs, step
    _same_weights(reference_val["final_model"], run / "model_final.pt")
    best = json.loads((run / "summary.json").read_text())
    assert best["best_segm_AP"] == reference_val["best_segm_AP"]


def test_signal_in_the_final_validation_runs_it_on_resume(data, reference_val, tmp_path):
    """The validation of the last step is abandoned (exit 143 at step 8 of 8); the resume has no step
    left, runs that validation and ends with the uninterrupted run's final metrics."""
    yaml_path = _yaml(data, tmp_path, "final", validation=True)
    proc = _run(_worker("SIGTERM@validation:8", ["train", "--config", str(yaml_path)]), _env(), tmp_path)
    run = tmp_path / "final"
    summary = _check_stopped(proc, run, "SIGTERM", 8, abandoned="validation")
    assert not (run / "val" / "step_0000008.json").exists()
    _resume_as_printed(summary, tmp_path)
    ref = Path(reference_val["run_dir"]) / "val" / "step_0000008.json"
    assert json.loads((run / "val" / "step_0000008.json").read_text()) == json.loads(ref.read_text())
    done = json.loads((run / "summary.json").read_text())
    assert done["stopped_by"] is None and done["best_segm_AP"] == reference_val["best_segm_AP"]
    assert done["final_metrics"]["val/segm_AP"] == reference_val["final_metrics"]["val/segm_AP"]


# ------------------------------------------------------------------------------------------------
# during a checkpoint write
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_signal_during_a_checkpoint_write_lets_it_complete(data, reference, tmp_path, signame):
    """The signal arrives while step_0000004.ckpt is being written: the write completes (a complete
    file, no temp file), and the run stops there with last.ckpt at step 4."""
    name = f"ckpt_{signame}"
    yaml_path = _yaml(data, tmp_path, name)
    proc = _run(_worker(f"{signame}@checkpoint:step_0000004.ckpt", ["train", "--config", str(yaml_path)]),
                _env(), tmp_path)
    assert "TRIGGERED checkpoint step_0000004.ckpt" in proc.stderr
    run = tmp_path / name
    summary = _check_stopped(proc, run, signame, 4)  # stopped before step 5 began: nothing abandoned
    assert checkpoint_step(run / "checkpoints" / "step_0000004.ckpt") == 4
    _resume_as_printed(summary, tmp_path)
    _same_weights(reference["final_model"], run / "model_final.pt")


def test_second_ctrl_c_stops_at_once_and_keeps_the_older_last_checkpoint(data, tmp_path):
    """Two Ctrl-C while the final last.ckpt is being written: exit 130 at once with one line saying
    so; the write is not completed, and last.ckpt is still the complete step-6 checkpoint."""
    yaml_path = _yaml(data, tmp_path, "twice", checkpoint_every_n_steps=3)
    proc = _run(_worker("SIGINT*2@checkpoint:last.ckpt", ["train", "--config", str(yaml_path)]), _env(), tmp_path)
    run = tmp_path / "twice"
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert "second Ctrl-C: stopped at once, nothing more saved" in proc.stderr
    assert checkpoint_step(run / "checkpoints" / "last.ckpt") == 6
    assert checkpoint_step(resolve_resume(run)) == 6
    assert not (run / "summary.json").exists() and not (run / "model_final.pt").exists()


# ------------------------------------------------------------------------------------------------
# SLURM requeue
# ------------------------------------------------------------------------------------------------
def test_requeue_on_sigusr1_requeues_and_the_same_command_resumes(data, reference, tmp_path):
    """runtime.requeue_on=SIGUSR1 in a SLURM job (SLURM_JOB_ID set, a recording `scontrol` on PATH):
    SIGUSR1 saves, runs `scontrol requeue <job>`, exits 138; the same command started again (what the
    requeued job does) resumes by itself and ends with the uninterrupted run's weights."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "scontrol_calls.txt"
    (bindir / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    (bindir / "scontrol").chmod(0o755)
    env = _env(SLURM_JOB_ID="4242", PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}")
    yaml_path = _yaml(data, tmp_path, "slurm", requeue_on="SIGUSR1")
    args = ["train", "--config", str(yaml_path)]
    proc = _run(_worker("SIGUSR1@step:2", args), env, tmp_path)
    summary = _check_stopped(proc, tmp_path / "slurm", "SIGUSR1", 3)
    assert summary["requeued"] is True and calls.read_text().split() == ["requeue", "4242"]
    again = _run(_cli(args), env, tmp_path)  # the requeued job: the same command, no --resume
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from the newest complete one" in again.stderr
    _same_weights(reference["final_model"], tmp_path / "slurm" / "model_final.pt")
    assert calls.read_text().split() == ["requeue", "4242"]  # not requeued again


# ------------------------------------------------------------------------------------------------
# DDP
# ------------------------------------------------------------------------------------------------
def test_ddp_signal_to_one_rank_stops_both_at_the_same_step(data, tmp_path):
    """2 CPU processes (gloo): SIGTERM to rank 1 only, in step 2. Both ranks stop after step 3 (each
    says so), one last.ckpt at step 3 is written, the launching process exits 143; the printed
    command resumes the 2-process run to its end."""
    ann, imgs = data
    d = stop_config(ann, imgs, tmp_path, "ddp").model_dump(mode="json")
    d["model"]["frozen_stages"] = 1  # as tests/test_distributed.py: no unused parameters under DDP
    d["runtime"].update(devices=2, strategy="ddp")
    yaml_path = save_config(config_from_dict(d), tmp_path / "ddp.yaml")
    proc = _run(_worker("SIGTERM@rank:1@step:2", ["train", "--config", str(yaml_path)]), _env(), tmp_path)
    run = tmp_path / "ddp"
    assert "TRIGGERED step 2" in proc.stderr
    summary = _check_stopped(proc, run, "SIGTERM", 3)
    for rank in (0, 1):
        assert f"rank {rank}: stopping at step 3" in proc.stderr, proc.stderr[-3000:]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]
    resumed = _resume_as_printed(summary, tmp_path)
    assert checkpoint_step(run / "checkpoints" / "last.ckpt") == STEPS, resumed.stderr[-2000:]


def test_stop_signal_config_is_checked(data, tmp_path):
    ann, imgs = data
    from swin_maskrcnn.training.config import ConfigError

    for bad, words in (({"stop_signals": ["SIGKILL"]}, "cannot be caught"), ({"stop_signals": ["SIGFOO"]}, "unknown"),
                       ({"requeue_on": "SIGHUP"}, "must be one of stop_signals")):
        with pytest.raises(ConfigError, match=words):
            stop_config(ann, imgs, tmp_path, "x", **bad)
    cfg = stop_config(ann, imgs, tmp_path, "x", stop_signals=["TERM", "usr1"], requeue_on="USR1")
    assert cfg.runtime.stop_signals == ["SIGTERM", "SIGUSR1"] and cfg.runtime.requeue_on == "SIGUSR1"
    d = cfg.model_dump(mode="json")
    d["runtime"]["run_name"] = None
    with pytest.raises(ConfigError, match="runtime.requeue_on=SIGUSR1 needs runtime.run_name"):
        train(config_from_dict(d))


def test_stop_signals_record_the_first_signal_and_leave_ignored_ones_ignored():
    """In a fresh process, with real signals to itself: the first one is recorded and reaches
    on_signal, a second SIGTERM is ignored, handlers are restored; a signal ignored beforehand stays
    ignored. (A child process, so a wrong handler can only end the child, never the test runner.)"""
    code = textwrap.dedent(
        """
        import os, signal, time
        from swin_maskrcnn.signals import StopSignals, exit_code

        seen = []
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        before_term = signal.getsignal(signal.SIGTERM)
        stop = StopSignals(["SIGTERM", "SIGINT"], on_signal=seen.append).install()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and stop.signals == [signal.SIGTERM]
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.time() + 10
        while not seen and time.time() < deadline:
            time.sleep(0.01)
        assert seen == [signal.SIGTERM] and stop.name == "SIGTERM" and exit_code(stop.signum) == 143, seen
        stop.restore()
        assert signal.getsignal(signal.SIGTERM) is before_term
        print("ok")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", (proc.returncode, proc.stdout, proc.stderr)
