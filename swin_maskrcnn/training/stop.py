"""Stopping a training run on a signal (SIGTERM, Ctrl-C, SLURM's SIGUSR1) without losing its work.

:class:`StopController` is the run's first Lightning callback. ``train()`` creates it before it
reads any data, so a signal at any time after start-up is a request, never a crash:

* The handler (:class:`~swin_maskrcnn.signals.StopSignals`, for ``runtime.stop_signals``) only
  records the signal. It replaces Lightning's own SIGTERM handler when training starts (Lightning
  installs one in ``fit``: it logs "Received SIGTERM", makes ``fit`` return as if the run had
  finished, so the process exits 0 with nothing saved, and under DDP it calls a collective from
  inside the handler). Lightning's handlers are restored by Lightning's teardown, ours by ``train()``.
* At the end of every optimizer step the ranks agree (one all-reduce of the signal number under
  DDP, nothing in a single process) and, if any rank got a signal, every rank sets
  ``trainer.should_stop`` at that same step: the step finishes, Lightning's loop ends, and
  ``train()`` writes ``last.ckpt`` (atomically, with optimizer, scheduler, step, data position,
  callbacks and the non-finite counts), ``model_final.pt`` and ``summary.json``, logs
  "stopped by SIGTERM at step N of M" and the resume command, and the CLI exits 128 + the signal.
  ``runtime.max_minutes`` ends the run on the same path (exit status 0: it is the configured budget).
* A step still in its forward/backward ``runtime.stop_step_grace_s`` seconds after the signal is
  abandoned (single process, ``accumulate_grad_batches=1``): :class:`StopRequested` is raised from
  the handler before the optimizer has touched anything, so the saved checkpoint is the state after
  the previous step, exactly. Once the optimizer step has begun it always completes. Under DDP a
  step always completes (the other ranks are inside its collectives).
* A validation in progress is abandoned the same way in a single process (it is read-only); the
  validation that was due at the checkpoint's step then runs first when the run resumes. Under DDP
  the validation completes (its ranks meet in a gather) and the run stops at the same step.
* A checkpoint write in progress is never interrupted (the handler raises nothing then): it
  completes, and since every write is a temp file renamed into place, even a second Ctrl-C or a
  SIGKILL during it leaves the previous complete ``last.ckpt`` in place.
* ``runtime.requeue_on`` (e.g. ``SIGUSR1``): after the save, rank 0 runs ``scontrol requeue`` on
  the SLURM job (as Lightning's SLURM environment does), and a start with the same
  ``runtime.run_name`` resumes from the run's newest complete checkpoint by itself.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import signal
import subprocess
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import lightning as L
import torch

from ..signals import StopSignals, exit_code, parse_signal, signal_name

log = logging.getLogger(__name__)

__all__ = ["StopController", "StopRequested", "requeue_slurm_job", "resume_command"]


#: StopRequested.what when the signal came between two steps: nothing was abandoned
NOTHING_STARTED = "nothing"


class StopRequested(BaseException):
    """Raised from the signal handler to abandon work that leaves no trace when abandoned (a
    validation, the forward/backward of a step before the optimizer ran). A BaseException, like
    KeyboardInterrupt (but not one: Lightning turns KeyboardInterrupt into ``sys.exit(1)``)."""

    def __init__(self, what: str, signum: int) -> None:
        super().__init__(f"{what} abandoned on {signal_name(signum)}")
        self.what = what
        self.signum = signum
        self.signame = signal_name(signum)


class StopController(L.Callback):
    """See the module docstring. ``stop_signum`` / ``stop_step`` / ``abandoned`` describe the stop
    the ranks agreed on (None while running); ``install()`` / ``restore()`` bracket the run."""

    def __init__(self, names: Sequence[str], requeue_on: Optional[str] = None, step_grace_s: float = 5.0,
                 accumulate_grad_batches: int = 1) -> None:
        super().__init__()
        self.signals = StopSignals(names, on_signal=self._on_signal, force_message=self._force_message,
                                   what="training")
        self.requeue_signum = None if requeue_on is None else parse_signal(requeue_on)
        self.step_grace_s = float(step_grace_s)
        self.can_abandon_steps = int(accumulate_grad_batches) == 1
        self.phase = "setup"  # setup | step | optimizer | between | validation
        self.distributed = False
        self.stop_signum: Optional[int] = None
        self.stop_step: Optional[int] = None
        self.abandoned: Optional[str] = None
        self.checkpoint_dir: Optional[Path] = None  # for the second-Ctrl-C message
        self._batch_counter = 0
        self._alarm_batch: Optional[int] = None
        self._step_at_batch_start = 0

    # ------------------------------------------------------------------------------ signals
    def install(self) -> "StopController":
        self.signals.install()
        return self

    def restore(self) -> None:
        self._cancel_alarm()
        self.signals.restore()

    @property
    def stopping(self) -> bool:
        return self.stop_signum is not None

    def _force_message(self) -> str:
        if self.checkpoint_dir is None:
            return "no checkpoint of this run yet"
        return f"the newest complete checkpoint in {self.checkpoint_dir} is kept (resume from the run folder)"

    def _on_signal(self, signum: int) -> None:
        """Inside the handler, first signal: abandon what can be abandoned without a trace."""
        if self.distributed:
            return  # the ranks agree at the end of the step
        if self.phase == "validation":
            raise StopRequested("validation", signum)
        if self.phase == "step" and self.can_abandon_steps:
            if self.step_grace_s <= 0:
                raise StopRequested("step", signum)
            self._alarm_batch = self._batch_counter
            signal.signal(signal.SIGALRM, self._on_alarm)
            signal.setitimer(signal.ITIMER_REAL, self.step_grace_s)

    def _on_alarm(self, signum: int, frame: Any) -> None:
        if self.phase == "step" and self._alarm_batch == self._batch_counter and self.signals.signum is not None:
            log.warning("the step in progress did not finish within runtime.stop_step_grace_s=%g s: abandoning it "
                        "(the checkpoint is the state after the previous step)", self.step_grace_s)
            raise StopRequested("step", self.signals.signum)

    def _cancel_alarm(self) -> None:
        if self._alarm_batch is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            self._alarm_batch = None

    @contextlib.contextmanager
    def validation(self) -> Iterator[None]:
        """Around a validation: a single process abandons it on a signal (StopRequested)."""
        previous = self.phase
        self.phase = "validation"
        try:
            if not self.distributed and self.signals.signum is not None:
                raise StopRequested("validation", self.signals.signum)
            yield
        finally:
            self.phase = previous

    # ------------------------------------------------------------------------------ agreement
    def _agreed_signal(self, trainer: L.Trainer) -> int:
        local = self.signals.signum or 0
        if trainer.world_size == 1 or not torch.distributed.is_available() or not torch.distributed.is_initialized():
            return local
        t = torch.tensor([local], dtype=torch.int64, device=trainer.strategy.root_device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return int(t.item())

    def check(self, trainer: L.Trainer) -> bool:
        """True when the run stops at this step (collective under DDP: every rank calls it at the same points)."""
        if self.stopping:
            return True
        signum = self._agreed_signal(trainer)
        if signum:
            self.stop_now(trainer, signum)
        return self.stopping

    def stop_now(self, trainer: L.Trainer, signum: int, abandoned: Optional[str] = None) -> None:
        self._cancel_alarm()
        self.stop_signum = int(signum)
        self.stop_step = int(trainer.global_step)
        self.abandoned = None if abandoned == NOTHING_STARTED else abandoned
        trainer.should_stop = True
        got = "" if self.signals.signum == signum else ", received by another rank"
        log.warning("rank %d: stopping at step %d of %s (%s%s)%s", trainer.global_rank, trainer.global_step,
                    trainer.max_steps, signal_name(signum), got,
                    f", {self.abandoned} in progress abandoned" if self.abandoned else "")

    # ------------------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.distributed = trainer.world_size > 1
        self.signals.reinstall()  # Lightning's fit has just put its own SIGTERM handler in place
        connector = getattr(trainer, "_signal_connector", None)
        if connector is not None and hasattr(connector, "received_sigterm"):
            connector.received_sigterm = False  # a SIGTERM its handler saw meanwhile is ours to handle
        self.phase = "between"
        self.check(trainer)  # a signal during start-up: stop before the first step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._batch_counter += 1
        self._step_at_batch_start = trainer.global_step
        if not self.distributed and self.can_abandon_steps and self.signals.signum is not None:
            # arrived between steps (a checkpoint write, the next batch's loading): stop before this step begins
            raise StopRequested(NOTHING_STARTED, self.signals.signum)
        self.phase = "step"

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        self.phase = "optimizer"  # from here on the step always completes
        self._cancel_alarm()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.phase = "between"
        self._cancel_alarm()
        if trainer.global_step == self._step_at_batch_start:
            return  # accumulating: the optimizer step is not complete yet
        self.check(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._cancel_alarm()
        self.phase = "between"


def resume_command(config_path: Path, run_dir: Path) -> str:
    """The command that continues this run from its newest complete checkpoint."""
    return " ".join(shlex.quote(str(a)) for a in
                    ("swin-maskrcnn", "train", "--config", str(config_path), "--resume", str(run_dir)))


def requeue_slurm_job() -> Optional[bool]:
    """``scontrol requeue`` this SLURM job (an array task as ``<array job>_<task>``), as Lightning's
    SLURM environment does. True/False: requeued or not; None: not a SLURM job."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{os.environ.get('SLURM_ARRAY_TASK_ID')}" if array_job else os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    if not re.fullmatch(r"[0-9_]+", job):
        log.warning("SLURM job id %r is not a number: not requeued", job)
        return False
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("scontrol requeue %s failed: %s", job, e)
        return False
    if result.returncode != 0:
        log.warning("scontrol requeue %s failed (status %d): %s", job, result.returncode, result.stderr.strip())
        return False
    log.warning("requeued SLURM job %s: it resumes from this run's newest checkpoint when it starts again", job)
    return True


def stop_exit_code(signum: Optional[int]) -> int:
    return 0 if signum is None else exit_code(signum)
