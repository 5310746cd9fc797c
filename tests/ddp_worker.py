"""Entry point of the multi-process tests (tests/test_distributed.py), not a test itself:

    python tests/ddp_worker.py CONFIG.yaml RECORD_DIR

trains with ``train(cfg, callbacks=[Record(RECORD_DIR)])``. Under ``runtime.strategy=ddp`` with
``runtime.devices=2`` Lightning re-runs this same command for rank 1. ``Record`` writes, per rank,
the image ids of every training batch (``batches_rank{r}.json``), the gradients of the first
optimizer step as the optimizer sees them (after DDP's all-reduce; ``grads_rank{r}.pt``) and the
returned summary (``summary_rank{r}.json``).
"""
from __future__ import annotations

import json
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

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append({"step": int(trainer.global_step), "batch_idx": int(batch_idx),
                             "ids": [int(t["image_id"]) for t in batch[1]]})

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step == 0:
            self.first_grads = {n: p.grad.detach().clone() for n, p in pl_module.model.named_parameters()
                                if p.grad is not None}
            torch.save(self.first_grads, self.out / f"grads_rank{trainer.global_rank}.pt")

    def on_train_end(self, trainer, pl_module):
        (self.out / f"batches_rank{trainer.global_rank}.json").write_text(json.dumps(self.batches))


def main(argv: list[str]) -> int:
    from lightning.pytorch.utilities import rank_zero_only

    from swin_maskrcnn.training.config import load_config
    from swin_maskrcnn.training.train import train

    torch.set_num_threads(1)
    cfg = load_config(argv[0])
    out = Path(argv[1])
    summary = train(cfg, callbacks=[Record(out)])
    (out / f"summary_rank{rank_zero_only.rank}.json").write_text(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
