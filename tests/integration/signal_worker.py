"""Entry point of the stop-signal tests (tests/integration/test_stop_signals.py), not a test itself:

    python signal_worker.py TRIGGER -- swin-maskrcnn arguments...

runs ``swin_maskrcnn.apps.cli.main(arguments)`` (exactly ``swin-maskrcnn ...``) and exits with its
status, after arranging for this process to send ITSELF a real signal (``os.kill``) at a precise
point, so that the tests hit a given phase every time instead of racing a timer:

* ``SIGNAME@step:K``: in the forward pass of the training step that starts at global step K;
* ``SIGNAME@validation:K``: inside the validation at step K, before its first image;
* ``SIGNAME@checkpoint:NAME``: while ``NAME`` (e.g. ``last.ckpt``) is being written, after the data
  went to the temporary file and before it is renamed into place; ``SIGINT*2@checkpoint:NAME``
  sends two Ctrl-C there (the second stops at once);
* ``SIGNAME@rank:R@step:K``: as ``step:K``, on DDP rank R only;
* ``SIGNAME@image:K``: ``predict``, right after the K-th image has been predicted;
* ``none``: no signal.

Each injection also prints ``TRIGGERED <what>`` on stderr (flushed) once.
"""
from __future__ import annotations

import os
import signal
import sys
import time


def _send(sig: int, count: int, what: str) -> None:
    print(f"TRIGGERED {what}", file=sys.stderr, flush=True)
    for _ in range(count):
        os.kill(os.getpid(), sig)
        time.sleep(0.05)  # the handler runs at the next bytecode; give it the chance in between


def arm(trigger: str) -> None:
    if trigger == "none":
        return
    signame, _, where = trigger.partition("@")
    count = 1
    if "*" in signame:
        signame, n = signame.split("*")
        count = int(n)
    sig = getattr(signal, signame)
    rank = None
    if where.startswith("rank:"):
        r, _, where = where.partition("@")
        rank = int(r.split(":")[1])
    kind, _, arg = where.partition(":")
    fired = {"done": False}

    def my_rank() -> int:
        return int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))

    if kind == "step":
        from swin_maskrcnn.training.module import DetectionModule

        original = DetectionModule.training_step

        def training_step(self, batch, batch_idx):
            if not fired["done"] and self.global_step == int(arg) and (rank is None or my_rank() == rank):
                fired["done"] = True
                _send(sig, count, f"step {arg}")
            return original(self, batch, batch_idx)

        DetectionModule.training_step = training_step
    elif kind == "validation":
        from swin_maskrcnn.training import module

        original_predict = module.predict_coco_results

        def predict_coco_results(model, dataset, indices, *a, **k):
            if not fired["done"] and module_step["step"] == int(arg):
                fired["done"] = True
                _send(sig, count, f"validation {arg}")
            return original_predict(model, dataset, indices, *a, **k)

        module_step = {"step": -1}
        original_evaluate = module.PeriodicEvaluation.evaluate

        def evaluate(self, trainer, pl_module):
            module_step["step"] = int(trainer.global_step)
            return original_evaluate(self, trainer, pl_module)

        module.PeriodicEvaluation.evaluate = evaluate
        module.predict_coco_results = predict_coco_results
    elif kind == "checkpoint":
        import torch

        from swin_maskrcnn.training import checkpoint_io
        from swin_maskrcnn.io_utils import atomic_write

        def atomic_torch_save(obj, path):
            def write(f):
                torch.save(obj, f)
                if not fired["done"] and os.path.basename(str(path)) == arg:
                    fired["done"] = True
                    _send(sig, count, f"checkpoint {arg}")
            return atomic_write(path, write, binary=True)

        checkpoint_io.atomic_torch_save = atomic_torch_save
    elif kind == "image":  # predict: after the K-th image's prediction (1-based)
        from swin_maskrcnn.apps import predict

        original_run = predict.Predictor._run
        count_images = {"n": 0}

        def _run(self, images, names, keep_images=False):
            out = original_run(self, images, names, keep_images)
            count_images["n"] += len(images)
            if not fired["done"] and count_images["n"] >= int(arg):
                fired["done"] = True
                _send(sig, count, f"image {arg}")
            return out

        predict.Predictor._run = _run
    else:
        raise SystemExit(f"unknown trigger {trigger!r}")


def main() -> int:
    trigger = sys.argv[1]
    assert sys.argv[2] == "--"
    argv = sys.argv[3:]
    arm(trigger)
    from swin_maskrcnn.apps.cli import main as cli_main

    # Lightning's DDP launcher re-runs sys.argv for the other ranks: keep this script's own command line
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
