"""Entry point of the multi-process tests (tests/training/test_distributed.py), not a test itself:

    python tests/training/ddp_worker.py CONFIG.yaml RECORD_DIR

trains with ``train(cfg, callbacks=[Record(RECORD_DIR)])``. Under ``runtime.strategy=ddp`` with
``runtime.devices=2`` Lightning re-runs this same command for rank 1. ``Record`` writes, per rank,
the image ids of every training batch (``batches_rank{r}.json``), the gradients of the first
optimizer step as the optimizer sees them (after DDP's all-reduce; ``grads_rank{r}.pt``) and the
returned summary (``summary_rank{r}.json``) and a checksum of the parameters before and after each
step (``params_rank{r}.json``). With ``DDP_TEST_NAN_LOSS=R:K`` in the environment, rank ``R``'s
``K``-th training loss computation (0-based) returns a NaN ``loss_cls``: a fault on one rank only.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch


class Record(L.Callback):
    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.batches: list[dict[str, Any]] = []
        self.first_grads: dict[str, torch.Tensor] = {}
        self.checksums: dict[int, list] = {}  # step -> [before, after]
        self._step = 0

    @staticmethod
    def _checksum(pl_module) -> float:
        return float(sum(p.detach().double().abs().sum() for p in pl_module.model.parameters()))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append({"step": int(trainer.global_step), "batch_idx": int(batch_idx),
                             "ids": [int(t["image_id"]) for t in batch[1]]})
        self._step = int(trainer.global_step)  # with accumulation, several batches share a step
        self.checksums.setdefault(self._step, [self._checksum(pl_module), None])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.checksums[self._step][1] = self._checksum(pl_module)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step == 0:
            self.first_grads = {n: p.grad.detach().clone() for n, p in pl_module.model.named_parameters()
                                if p.grad is not None}
            torch.save(self.first_grads, self.out / f"grads_rank{trainer.global_rank}.pt")

    def on_train_end(self, trainer, pl_module):
        (self.out / f"batches_rank{trainer.global_rank}.json").write_text(json.dumps(self.batches))
        (self.out / f"params_rank{trainer.global_rank}.json").write_text(json.dumps(self.checksums))


def poison_one_rank(spec: str) -> None:
    """``"R:K"``: rank R's K-th training loss computation returns a NaN loss_cls (see the module docstring)."""
    from lightning.pytorch.utilities import rank_zero_only

    from swin_maskrcnn.modeling.detector import SwinMaskRCNN

    rank, call = (int(v) for v in spec.split(":"))
    original = SwinMaskRCNN.losses_and_stats
    calls = {"n": 0}

    def losses_and_stats(self, images, targets):
        out, stats = original(self, images, targets)
        if rank_zero_only.rank == rank and calls["n"] == call:
            out["loss_cls"] = out["loss_cls"] * float("nan")
        calls["n"] += 1
        return out, stats

    SwinMaskRCNN.losses_and_stats = losses_and_stats


def main(argv: list[str]) -> int:
    from lightning.pytorch.utilities import rank_zero_only

    from swin_maskrcnn.training.config import load_config
    from swin_maskrcnn.training.train import train

    torch.set_num_threads(1)
    if os.environ.get("DDP_TEST_NAN_LOSS"):
        poison_one_rank(os.environ["DDP_TEST_NAN_LOSS"])
    cfg = load_config(argv[0])
    out = Path(argv[1])
    summary = train(cfg, callbacks=[Record(out)])
    (out / f"summary_rank{rank_zero_only.rank}.json").write_text(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
