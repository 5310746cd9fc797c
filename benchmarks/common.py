"""Shared helpers of the real-data benchmarks (overfit_coco128, nuclei, loss_ablation).

Budgets are measured in PROCESS CPU time (``time.process_time()``, torch limited to 2 threads), not
wall time: the benchmark machine is shared, and a CPU-time budget gives every model the same amount
of compute whatever the load. Wall time and the load average are recorded next to every result.

``train()`` of the package stops on a step count, not on a CPU-time budget, so the benchmarks drive
training with :func:`train_budgeted`: a minimal loop over the project's own dataset, transforms,
collate, ``build_optimizer`` (mmdet AdamW parameter groups) and the model's loss dict, plus
gradient clipping at ``model.losses.clip_grad_norm`` (as ``train()`` does through Lightning). The
learning rate is linear warmup over the first 5 % of the CPU budget, then constant, then x0.1 from
``decay_at`` (80 %) of the CPU budget on (a step schedule measured in budget, since the number of steps is not known up front).
"""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from swin_maskrcnn.io_utils import atomic_write  # noqa: E402  (after the sys.path line above)

DATA = REPO.parent / "shared" / "data"
BENCH_OUT = REPO / "bench_out"


# ------------------------------------------------------------------------------------------------
# environment
# ------------------------------------------------------------------------------------------------
def set_threads(n: int = 1) -> None:
    """Torch intra-op threads. Default 1: on the shared 2-core machine (load 4-7) two OpenMP threads
    were measured 5-9x SLOWER per training step than one (in CPU and in wall time; an AdamW step of
    the tiny model took 1.6 s with 2 threads vs 0.016 s with 1), because the threads spin-wait for
    each other while descheduled. One thread makes CPU time a fair measure of compute."""
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set
        pass


def hardware_line() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except Exception:  # noqa: BLE001 - lscpu missing is fine
        pass
    return (f"{model}, {os.cpu_count()} logical cores visible, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), python {platform.python_version()}")


def load_avg() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def write_json(obj: Any, path: Path) -> Path:
    """``obj`` as indented JSON (numpy, tensor and Path values converted), written atomically."""
    return atomic_write(path, lambda f: json.dump(obj, f, indent=2, default=_json_default))


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))


class CpuClock:
    """Process CPU seconds and wall seconds since construction."""

    def __init__(self) -> None:
        self.cpu0 = time.process_time()
        self.wall0 = time.time()

    @property
    def cpu(self) -> float:
        return time.process_time() - self.cpu0

    @property
    def wall(self) -> float:
        return time.time() - self.wall0


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
def infinite_batches(dataset, batch_size: int, seed: int = 0) -> Iterator[tuple[list, list]]:
    """Endless shuffled batches (epoch e uses permutation seeded by seed + e); the project's collate."""
    from swin_maskrcnn.data.loader import collate

    n = len(dataset)
    epoch = 0
    while True:
        g = torch.Generator()
        g.manual_seed(seed + epoch)
        order = torch.randperm(n, generator=g).tolist()
        for i in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            # augmentation (flip) uses torch's global RNG: make it reproducible per (epoch, index)
            items = []
            for j in order[i:i + batch_size]:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(hash((seed, epoch, j)) & 0x7FFFFFFF)
                    items.append(dataset[j])
            yield collate(items)
        epoch += 1


def make_nuclei_split(ann: Path, out_dir: Path, every: int = 5) -> tuple[Path, Path]:
    """Deterministic split of dsb2018_nuclei/annotations/train.json: images sorted by id, every
    ``every``-th one (positions 4, 9, 14, ... i.e. index % every == every - 1) goes to val.
    Writes ``out_dir/train.json`` and ``out_dir/val.json`` once (kept when they already exist)."""
    out_dir = Path(out_dir)
    tr, va = out_dir / "train.json", out_dir / "val.json"
    if tr.is_file() and va.is_file():
        return tr, va
    d = json.loads(Path(ann).read_text())
    imgs = sorted(d["images"], key=lambda im: im["id"])
    val_ids = {im["id"] for k, im in enumerate(imgs) if k % every == every - 1}
    for name, keep in (("train", lambda i: i not in val_ids), ("val", lambda i: i in val_ids)):
        sub = dict(d)
        sub["images"] = [im for im in imgs if keep(im["id"])]
        sub["annotations"] = [a for a in d["annotations"] if keep(a["image_id"])]
        write_json(sub, out_dir / f"{name}.json")
    return tr, va


# ------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------
def budget_lr_factor(cpu_frac: float, warmup_frac: float = 0.05, warmup_start: float = 0.001,
                     decay_at: float = 0.8, gamma: float = 0.1) -> float:
    """lr / base lr at ``cpu_frac`` of the CPU budget: linear warmup from ``warmup_start`` over the
    first ``warmup_frac`` of the budget, then 1, then ``gamma`` from ``decay_at`` on. Measured in
    budget, not steps, so a slow model (few steps) and a fast one get the same schedule shape."""
    if warmup_frac > 0 and cpu_frac < warmup_frac:
        f = warmup_start + (1.0 - warmup_start) * cpu_frac / warmup_frac
    else:
        f = 1.0
    return f * (gamma if cpu_frac >= decay_at else 1.0)


def train_budgeted(
    model: torch.nn.Module,
    batches: Iterator[tuple[list, list]],
    loss_fn: Callable[[torch.nn.Module, list, list], dict],
    optimizer: torch.optim.Optimizer,
    budget_cpu_s: float,
    warmup_frac: float = 0.05,
    decay_at: float = 0.8,
    clip_grad_norm: Optional[float] = None,
    max_steps: Optional[int] = None,
    log_every: int = 20,
    name: str = "",
    step_seed: int = 0,
    stop_fn: Optional[Callable[[int], bool]] = None,
) -> dict[str, Any]:
    """Trains until ``budget_cpu_s`` process CPU seconds (data loading included) or ``max_steps``.

    ``loss_fn(model, images, targets)`` returns the loss dict (only losses), which is summed.
    ``stop_fn(step)`` (optional, called after each step) may end training early (e.g. overfit
    target reached); its CPU time counts too. Returns steps, CPU/wall seconds and a loss history.
    """
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    clock = CpuClock()
    step = 0
    history: list[tuple[int, float]] = []
    last_losses: dict[str, float] = {}
    model.train()
    stopped_early = False
    while clock.cpu < budget_cpu_s and (max_steps is None or step < max_steps):
        f = budget_lr_factor(clock.cpu / budget_cpu_s, warmup_frac, decay_at=decay_at)
        for g, lr in zip(optimizer.param_groups, base_lrs):
            g["lr"] = lr * f
        images, targets = next(batches)
        torch.manual_seed(step_seed * 1_000_003 + step)  # sampler / drop-path randomness
        losses = loss_fn(model, images, targets)  # both models' loss dicts hold only losses
        total = torch.stack([v.float() for v in losses.values()]).sum()
        if not torch.isfinite(total):
            raise FloatingPointError(f"{name}: non-finite loss at step {step}: "
                                     + ", ".join(f"{k}={float(v):.4g}" for k, v in losses.items()))
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        optimizer.step()
        step += 1
        last_losses = {k: float(v.detach()) for k, v in losses.items()}
        history.append((step, float(total.detach())))
        if log_every and step % log_every == 0:
            recent = np.mean([h[1] for h in history[-log_every:]])
            print(f"[{name}] step {step} loss {recent:.4f} lr x{f:.3g} cpu {clock.cpu:.0f}/{budget_cpu_s:.0f}s "
                  f"wall {clock.wall:.0f}s load {load_avg()}", flush=True)
        if stop_fn is not None and stop_fn(step):
            stopped_early = True
            break
    for g, lr in zip(optimizer.param_groups, base_lrs):
        g["lr"] = lr
    return {
        "steps": step,
        "cpu_s": clock.cpu,
        "wall_s": clock.wall,
        "stopped_early": stopped_early,
        "final_losses": last_losses,
        "loss_first_20": float(np.mean([h[1] for h in history[:20]])) if history else math.nan,
        "loss_last_20": float(np.mean([h[1] for h in history[-20:]])) if history else math.nan,
    }


def ours_loss_fn(model, images, targets):
    return model(images, targets)


# ------------------------------------------------------------------------------------------------
# evaluation
# ------------------------------------------------------------------------------------------------
SUMMARY_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def short_metrics(metrics: dict) -> dict:
    out = {}
    for t in ("bbox", "segm"):
        if t in metrics:
            out[t] = {k: float(metrics[t][k]) for k in SUMMARY_KEYS if k in metrics[t]}
            for k, v in metrics[t].items():
                if k.startswith("AR@"):
                    out[t][k] = float(v)
    return out


def evaluate_ours(model, dataset, max_dets=(1, 100, 400)) -> tuple[dict, list[dict], float]:
    """evaluate_model on a CocoInstanceDataset with test transforms; (metrics, results, cpu_s)."""
    from swin_maskrcnn.evaluation import evaluate_model

    c = CpuClock()
    metrics, results = evaluate_model(model, dataset, batch_size=1, max_dets=max_dets, progress=False)
    return metrics, results, c.cpu
