"""Speed of our Swin-T Mask R-CNN against mmdet's own, torchvision's R50-FPN Mask R-CNN and, for the
backbone alone, torchvision's ``swin_t`` features (and our Swin V2 backbone against ``swin_v2_t``'s).
One command, a table at the end.

    python benchmarks/speed.py                                   # the full matrix (long on 2 cores)
    python benchmarks/speed.py --cases infer1 --dtypes fp32 --threads 1 --reps 3
    python benchmarks/speed.py --device cuda --threads 16        # on a GPU machine
    python benchmarks/speed.py --cases backbone_v2 --dtypes fp32 --threads 1 --reps 5   # V2: no mmdet needed

Subjects, with the same inputs (800x1216 synthetic RGB images, 5 instances each for training):

* ``ours``: ``SwinMaskRCNN`` loaded with :func:`swin_maskrcnn.load_model` from an mmdet checkpoint;
* ``mmdet``: mmdet 3.3's own model from its packaged Swin-T config, loaded with the SAME checkpoint,
  running in a second process under the mmdet venv (``--mmdet-python``, default
  ``/work/.mmdet-venv/bin/python``; it imports ``../shared/tools/mmdet_reference/make_fixture.py`` for
  the config, model build and the compiled-op shim). The checkpoint is written once by that process:
  mmdet's seeded random init with the classifier bias calibrated on the benchmark image so that
  both models return close to 100 detections (make_fixture's ``reinit_weights_`` and
  ``calibrate_cls_bias_``), and cached under ``bench_out/speed/``;
* ``tv_r50``: ``torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None,
  weights_backbone=None)``, ``box_score_thresh=0`` so it too returns 100 detections with masks;
* ``bb_ours`` / ``bb_mmdet`` / ``bb_tv_swin_t``: the backbones alone on one normalised image
  (torchvision: ``swin_t().features``, random init);
* ``bb_ours_v2`` / ``bb_tv_swin_v2_t`` (case ``backbone_v2``): our Swin V2 backbone (``swinv2_t``,
  its four output norms included) and torchvision's ``swin_v2_t().features``, the same random
  torchvision weights loaded into ours with ``load_imagenet_backbone``, on the same image.

Pairing: every repetition runs each subject of a case once, in a fixed order, one after the
other (the mmdet process waits on a pipe while ours runs, and the reverse), so slow phases of the
shared machine hit all subjects alike; a warm-up run per subject and case is excluded; the figure
is the median. Each run also records its process CPU time (``time.process_time()`` of the
subject's own process): on a machine shared with other jobs, the CPU-time ratio of 1-thread runs
is the steadier figure. Inference is ``model(images)`` in eval mode under ``torch.no_grad()`` (mmdet:
``data_preprocessor`` + ``predict(rescale=True)``), masks pasted at the image size; bf16 inference
is bf16 autocast for every subject except ``ours``, which runs what ``predict --precision bf16`` runs
(``acceleration.bf16_copy``: the model converted to bf16 once, no autocast). A training step
is forward with targets, the sum of the losses, backward and an AdamW step with learning rate 0
(the full optimiser arithmetic runs but the weights stay as loaded, so later cases still compare
equal models). Peak memory is what the call needs on top of the loaded models: the peak RSS of the subject's
process during a timed run (``VmHWM`` after resetting it through ``/proc/self/clear_refs``) minus
its RSS just before, or ``torch.cuda.max_memory_allocated`` minus the allocated memory before the
call on a GPU (each process holds other models, so absolute RSS would not compare). FLOPs are counted once per
subject and case with ``torch.utils.flop_counter.FlopCounterMode`` during the warm-up run
(matmul/conv/SDPA FLOPs);
achieved GFLOP/s = FLOPs / busy time, shown against the machine's matrix-multiply peak measured
at start-up the same way (best of 5 square matmuls, per dtype and thread count); busy time is the
process CPU time per thread on a CPU (wall time would count the time other jobs held the cores)
and the wall time on a GPU. "first call s" is the wall time of the excluded warm-up run (with the
FLOP count; under ``--compile`` also the compilation, so time that with ``--no-flops``).

Allocator: ``--malloc system`` (default) runs both processes with glibc's malloc defaults, which
unmap every freed block above 32 MiB, so each large tensor costs fresh, kernel-zeroed pages;
``--malloc keep`` applies :func:`swin_maskrcnn.runtime.keep_freed_memory` (what the
``swin-maskrcnn`` CLI and ``train()`` do) in BOTH processes, so the ratio stays a comparison of
the implementations. Peak-memory figures under ``keep`` are not comparable (the retained heap
counts before the call).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
MMDET_TOOL = REPO.parent / "shared" / "tools" / "mmdet_reference"
OUT_DIR = REPO / "bench_out" / "speed"
H, W = 800, 1216
CASES = {
    "infer1": "inference, 1 image",
    "infer2": "inference, batch of 2",
    "train2": "training step, batch of 2",
    "backbone": "backbone alone, 1 image",
    "backbone_v2": "Swin V2 backbone alone, 1 image",
}
PEERS = {"infer1": ["mmdet", "tv_r50"], "infer2": ["mmdet", "tv_r50"], "train2": ["mmdet", "tv_r50"],
         "backbone": ["bb_mmdet", "bb_tv_swin_t"], "backbone_v2": ["bb_tv_swin_v2_t"]}
OURS = {"infer1": "ours", "infer2": "ours", "train2": "ours", "backbone": "bb_ours", "backbone_v2": "bb_ours_v2"}
#: subjects that need the calibrated mmdet checkpoint (written by the mmdet worker when missing)
NEED_CKPT = {"ours", "bb_ours", "mmdet", "bb_mmdet"}
log = logging.getLogger("speed")


# ------------------------------------------------------------------------------------------------
# shared by both processes (no swin_maskrcnn / mmdet import here)
# ------------------------------------------------------------------------------------------------
def make_scenes(n: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` synthetic 800x1216 RGB uint8 images (smooth noise + 5 filled shapes each) with their
    5 boxes (xyxy), labels and bool masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    imgs, boxes, labels, masks = [], [], [], []
    for _ in range(n):
        base = rng.integers(0, 256, size=(H // 16 + 1, W // 16 + 1, 3)).astype(np.float32)
        img = np.repeat(np.repeat(base, 16, 0), 16, 1)[:H, :W] * 0.6 + rng.normal(0, 20, (H, W, 3))
        bx, lb, mk = [], [], []
        for k in range(5):
            w, h = rng.integers(80, 400, size=2)
            x0, y0 = rng.integers(0, W - w), rng.integers(0, H - h)
            m = ((xx - x0 - w / 2) / (w / 2)) ** 2 + ((yy - y0 - h / 2) / (h / 2)) ** 2 <= 1 if k % 2 else \
                (xx >= x0) & (xx < x0 + w) & (yy >= y0) & (yy < y0 + h)
            img[m] = rng.integers(0, 256, size=3)
            ys, xs = np.nonzero(m)
            bx.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            lb.append(int(rng.integers(0, 80)))
            mk.append(m)
        imgs.append(np.clip(img, 0, 255).astype(np.uint8))
        boxes.append(np.array(bx, np.float32))
        labels.append(np.array(lb, np.int64))
        masks.append(np.stack(mk))
    return {"images": np.stack(imgs), "boxes": np.stack(boxes), "labels": np.stack(labels), "masks": np.stack(masks)}


def _rss(field: str) -> Optional[int]:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_reset(device: str) -> Optional[int]:
    """Start a peak-memory window; returns the baseline (bytes in use now)."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return int(torch.cuda.memory_allocated())
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    return _rss("VmRSS")


def peak_read(device: str, baseline: Optional[int]) -> Optional[int]:
    """Peak bytes above ``baseline`` since :func:`peak_reset` (CUDA allocated, else process RSS
    high-water mark): the memory the call itself needed on top of the loaded models."""
    peak = int(torch.cuda.max_memory_allocated()) if device == "cuda" else _rss("VmHWM")
    return None if peak is None or baseline is None else peak - baseline


def autocast(dtype: str, device: str):
    if dtype == "bf16":
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str) -> tuple[float, float, Optional[int]]:
    """(wall seconds, process CPU seconds, peak bytes above the baseline) of one call."""
    base = peak_reset(device)
    sync(device)
    c, t = time.process_time(), time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t, time.process_time() - c, peak_read(device, base)


def warm_up(fn: Callable[[], Any], flops: bool) -> tuple[Any, Optional[int]]:
    """The excluded warm-up run; with ``flops`` it runs under ``FlopCounterMode`` and returns the
    count too (so counting costs no extra run)."""
    if not flops:
        return fn(), None
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        out = fn()
    return out, int(fc.get_total_flops())


def train_fn(model, loss_call: Callable[[], dict], opt, dtype: str, device: str) -> Callable[[], None]:
    """One training step: forward (autocast for bf16), sum of ``loss*``, backward, AdamW step."""

    def step() -> None:
        model.train()
        with autocast(dtype, device):
            losses = loss_call()
        # ours and torchvision return only losses; mmdet's loss dict also holds "acc", and its RPN
        # losses are per-level lists (summed of their means here, as mmdet's parse_losses does)
        total = sum(sum(x.float().mean() for x in v) if isinstance(v, (list, tuple)) else v.float()
                    for k, v in losses.items() if k.startswith("loss"))
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()

    return step


def adamw_lr0(model) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.0, weight_decay=0.05)


def n_dets(out) -> int:
    return int(sum(len(o["boxes"]) if isinstance(o, dict) else len(o.pred_instances) for o in out))


# ------------------------------------------------------------------------------------------------
# mmdet worker (runs under the mmdet venv: python speed.py --worker)
# ------------------------------------------------------------------------------------------------
class MmdetWorker:
    def __init__(self, ckpt: Path, scenes_npz: Path, device: str) -> None:
        sys.path.insert(0, str(MMDET_TOOL))
        import make_fixture as mf  # noqa: F401 - installs the mmcv._ext shim on import
        from mmdet.utils import register_all_modules
        from mmengine.runner import load_checkpoint

        register_all_modules()
        self.mf, self.device = mf, device
        ns = argparse.Namespace(model="swin_t", cfg_options=None, resize="mmdet", scale=(1333, 800))
        cfg = mf.load_config(ns)
        self.model = mf.build_model(cfg)
        sc = np.load(scenes_npz)
        scenes = [dict(rgb=sc["images"][i], boxes=sc["boxes"][i].tolist(), labels=sc["labels"][i].tolist(),
                       masks=list(sc["masks"][i])) for i in range(len(sc["images"]))]
        test_pipe, train_pipe = mf.pipeline_cfgs(cfg, ns)
        self.data_test = mf.make_data(scenes, test_pipe, with_gt=False)
        self.data_train = mf.make_data(scenes, train_pipe, with_gt=True)
        if not ckpt.is_file():
            import copy

            mf.reinit_weights_(self.model, 7)
            self.model.eval()
            with torch.no_grad():
                b = self.model.data_preprocessor(copy.deepcopy(self.sub(self.data_test, 2)), False)
            mf.calibrate_cls_bias_(self.model, b, (80, 100), 7)
            mf.calibrate_mask_logits_(self.model, b)
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            tmp = ckpt.with_suffix(".tmp")
            torch.save({"state_dict": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
                        "meta": {"dataset_meta": {"classes": list(mf.class_names(80))}}}, tmp)
            os.replace(tmp, ckpt)
        load_checkpoint(self.model, str(ckpt), map_location="cpu", strict=True, logger="silent")
        self.model.to(device)
        self.opt = adamw_lr0(self.model)
        self.fn: Optional[Callable[[], Any]] = None

    @staticmethod
    def sub(data: dict, n: int) -> dict:
        return {k: v[:n] for k, v in data.items()}

    def prepare(self, case: str, dtype: str, flops: bool) -> dict:
        import copy

        m, dev = self.model, self.device
        if case in ("infer1", "infer2"):
            data = self.sub(self.data_test, 1 if case == "infer1" else 2)

            def fn():
                m.eval()
                with torch.no_grad(), autocast(dtype, dev):
                    b = m.data_preprocessor(copy.deepcopy(data), False)
                    return m.predict(b["inputs"], b["data_samples"], rescale=True)
        elif case == "train2":
            data = self.sub(self.data_train, 2)

            def loss_call():
                b = m.data_preprocessor(copy.deepcopy(data), True)
                return m.loss(b["inputs"], b["data_samples"])

            fn = train_fn(m, loss_call, self.opt, dtype, dev)
        elif case == "backbone":
            with torch.no_grad():
                x = m.data_preprocessor(copy.deepcopy(self.sub(self.data_test, 1)), False)["inputs"]

            def fn():
                m.eval()
                with torch.no_grad(), autocast(dtype, dev):
                    return m.backbone(x)
        else:
            raise ValueError(case)
        self.fn = fn
        out, n_flops = warm_up(fn, flops)
        return {"dets": n_dets(out) if case.startswith("infer") else None, "flops": n_flops}

    def serve(self) -> None:
        for line in sys.stdin:
            req = json.loads(line)
            cmd = req["cmd"]
            if cmd == "quit":
                break
            torch.set_num_threads(req.get("threads", torch.get_num_threads()))
            if cmd == "prepare":
                try:
                    res = self.prepare(req["case"], req["dtype"], req["flops"])
                except Exception as e:  # noqa: BLE001 - e.g. an op without a bf16 kernel: reported, not fatal
                    self.fn = None
                    res = {"error": error_text(e)}
            elif cmd == "run":
                t, cpu, peak = timed(self.fn, self.device)
                res = {"time": t, "cpu": cpu, "peak": peak}
            else:
                raise ValueError(cmd)
            print(json.dumps(res), flush=True)


class RemoteSubject:
    """The mmdet worker process, driven line by line over its stdin/stdout."""

    def __init__(self, python: str, ckpt: Path, scenes_npz: Path, device: str, threads: int, malloc: str) -> None:
        cmd = [python, str(Path(__file__).resolve()), "--worker", "--ckpt", str(ckpt), "--scenes", str(scenes_npz),
               "--device", device, "--threads", str(threads), "--malloc", malloc]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.ask(None)  # the worker's "ready" line (model built, checkpoint written or loaded)

    def ask(self, req: Optional[dict]) -> dict:
        if req is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"mmdet worker exited (code {self.proc.poll()}); see its stderr above")
        return json.loads(line)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.flush()
        self.proc.wait(timeout=60)


def apply_malloc(mode: str) -> None:
    """``keep``: :func:`swin_maskrcnn.runtime.keep_freed_memory` in this process (glibc malloc keeps
    freed memory for reuse); ``mmap``: every block above 128 KiB is its own mapping, so RSS follows
    the live tensors; ``system``: glibc's defaults. Both processes get the same mode."""
    if mode == "system":
        return
    sys.path.insert(0, str(REPO))
    from swin_maskrcnn import runtime  # plain ctypes; imports no torch model code

    ok = runtime.keep_freed_memory() if mode == "keep" else runtime.mallopt(runtime.M_MMAP_THRESHOLD, 128 * 1024)
    if not ok:
        raise SystemExit(f"--malloc {mode}: not applicable here (not glibc, or {runtime.ENV_OPT_OUT} is set)")


def error_text(e: BaseException) -> str:
    """One line for a table cell: the exception type and the first line of its message."""
    first = (str(e).splitlines() or [""])[0]
    return f"{type(e).__name__}: {first[:300]}"


def worker_main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    apply_malloc(args.malloc)
    torch.set_num_threads(args.threads[0])
    w = MmdetWorker(Path(args.ckpt), Path(args.scenes), args.device)
    print(json.dumps({"ready": True}), flush=True)
    w.serve()


# ------------------------------------------------------------------------------------------------
# in-process subjects
# ------------------------------------------------------------------------------------------------
class LocalSubjects:
    """ours / tv_r50 / bb_ours / bb_tv_swin_t / bb_ours_v2 / bb_tv_swin_v2_t, built once; ``prepare``
    returns the timed closure. Without ``ckpt`` (no subject needs it) ``ours`` is not built."""

    def __init__(self, ckpt: Optional[Path], scenes: dict[str, np.ndarray], device: str, compile_mode: Optional[str],
                 repo: Path = REPO) -> None:
        import torchvision

        sys.path.insert(0, str(repo))
        from swin_maskrcnn import load_model
        from swin_maskrcnn.checkpoint.imagenet import load_imagenet_backbone
        from swin_maskrcnn.modeling.backbone.swin_v2 import SwinTransformerV2
        from swin_maskrcnn.modeling.config import ModelConfig

        import swin_maskrcnn

        log.info("ours: %s", swin_maskrcnn.__file__)
        self.device = device
        self.ours = load_model(ckpt).to(device) if ckpt is not None else None
        torch.manual_seed(0)
        tv_v2 = torchvision.models.swin_v2_t(weights=None)
        self.tv_swin_v2 = tv_v2.features.to(device).eval()
        self.ours_v2 = SwinTransformerV2.from_config(ModelConfig(variant="swinv2_t"))
        load_imagenet_backbone(self.ours_v2, tv_v2.state_dict())
        self.ours_v2 = self.ours_v2.to(device).eval()
        # bf16 inference of ours is what predict / evaluate run: a bf16 copy of the model (no autocast);
        # an older tree (--repo) without it runs bf16 autocast as it did
        try:
            from swin_maskrcnn.modeling.acceleration import bf16_copy
        except ImportError:
            bf16_copy = None
        self.ours_bf16 = bf16_copy(self.ours) if bf16_copy is not None and self.ours is not None else None
        if compile_mode and self.ours is not None:
            from swin_maskrcnn.modeling.acceleration import compile_dense

            compile_dense(self.ours, compile_mode)
            if self.ours_bf16 is not None:
                compile_dense(self.ours_bf16, compile_mode)
        torch.manual_seed(0)
        self.tv = torchvision.models.detection.maskrcnn_resnet50_fpn(
            weights=None, weights_backbone=None, num_classes=91, box_score_thresh=0.0).to(device)
        self.tv_swin = torchvision.models.swin_t(weights=None).features.to(device).eval()
        self.images = [torch.from_numpy(im).permute(2, 0, 1).float().div(255).to(device) for im in scenes["images"]]
        self.targets = [dict(boxes=torch.from_numpy(b).to(device), labels=torch.from_numpy(lb).to(device),
                             masks=torch.from_numpy(m).to(torch.uint8).to(device))
                        for b, lb, m in zip(scenes["boxes"], scenes["labels"], scenes["masks"])]
        self.opt = {"tv_r50": adamw_lr0(self.tv)}
        if self.ours is not None:
            self.opt["ours"] = adamw_lr0(self.ours)
        mean = torch.tensor([123.675, 116.28, 103.53], device=device)[:, None, None]
        std = torch.tensor([58.395, 57.12, 57.375], device=device)[:, None, None]
        self.norm_img = ((self.images[0] * 255 - mean) / std)[None]

    def prepare(self, name: str, case: str, dtype: str) -> Callable[[], Any]:
        dev = self.device
        n = 1 if case in ("infer1", "backbone") else 2
        ims, tgts = self.images[:n], self.targets[:n]
        if name in ("ours", "tv_r50"):
            model = self.ours if name == "ours" else self.tv
            if case == "train2":
                off = 1 if name == "tv_r50" else 0  # torchvision's class 0 is the background
                tg = [dict(t, labels=t["labels"] + off) for t in tgts]
                return train_fn(model, lambda: model(ims, tg), self.opt[name], dtype, dev)

            if name == "ours" and dtype == "bf16" and self.ours_bf16 is not None:
                copy_ = self.ours_bf16

                def infer_bf16_copy():
                    with torch.no_grad():
                        return copy_(ims)
                return infer_bf16_copy

            def infer():
                model.eval()
                with torch.no_grad(), autocast(dtype, dev):
                    return model(ims)
            return infer
        if name in ("bb_ours", "bb_tv_swin_t", "bb_ours_v2", "bb_tv_swin_v2_t"):
            x = self.norm_img
            if name == "bb_ours":
                bb = self.ours.backbone
                bb.eval()
                fn = lambda: bb(x)  # noqa: E731
            else:
                net = {"bb_tv_swin_t": self.tv_swin, "bb_ours_v2": self.ours_v2, "bb_tv_swin_v2_t": self.tv_swin_v2}[name]
                fn = lambda: net(x)  # noqa: E731

            def run():
                with torch.no_grad(), autocast(dtype, dev):
                    return fn()
            return run
        raise ValueError(name)


# ------------------------------------------------------------------------------------------------
# matmul peak, hardware line, table
# ------------------------------------------------------------------------------------------------
def matmul_peak(dtype: str, threads: int, device: str, n: int = 1536) -> float:
    """Best GFLOP/s of an n x n x n matmul (5 tries) at this thread count."""
    torch.set_num_threads(threads)
    dt = torch.bfloat16 if dtype == "bf16" else torch.float32
    if device == "cuda":
        n = 8192
    a = torch.randn(n, n, device=device).to(dt)
    b = torch.randn(n, n, device=device).to(dt)
    a @ b
    runs = [timed(lambda: a @ b, device) for _ in range(5)]
    # CPU: busy time per thread (process CPU time / threads), steady on a shared machine; GPU: wall
    best = min(r[0] if device == "cuda" else r[1] / threads for r in runs)
    return 2 * n**3 / best / 1e9


def hardware_line(device: str) -> str:
    import platform

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(Exception):
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
    line = f"{cpu}, {os.cpu_count()} logical cores, torch {torch.__version__}"
    if device == "cuda":
        line += f", GPU {torch.cuda.get_device_name()}"
    with contextlib.suppress(OSError):
        line += f", load average {os.getloadavg()[0]:.2f} at start"
    return line


def fmt_mem(b: Optional[int]) -> str:
    return "-" if b is None else f"{b / 2**30:.2f} GiB"


def table(rows: list[dict]) -> str:
    head = ("| case | dtype | threads | subject | median s | ours / subject | CPU s | ours / subject (CPU) "
            "| peak mem (above models) | GFLOP | GFLOP/s | % of matmul peak | dets | first call s |")
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['case']} | {r['dtype']} | {r['threads']} | {r['subject']} | cannot run: {r['error']} |"
                         + " |" * 9)
            continue
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}"
        cratio = "" if r["cpu_ratio"] is None else f"{r['cpu_ratio']:.2f}"
        gf = "-" if r.get("flops") is None else f"{r['flops'] / 1e9:.0f}"
        busy = r["median"] if r.get("device") == "cuda" else r["cpu"] / r["threads"]
        gfs = "-" if r.get("flops") is None else f"{r['flops'] / 1e9 / busy:.1f}"
        pct = "-" if r.get("flops") is None else f"{100 * r['flops'] / 1e9 / busy / r['peak_gflops']:.0f}"
        lines.append(f"| {r['case']} | {r['dtype']} | {r['threads']} | {r['subject']} | {r['median']:.3f} | {ratio} "
                     f"| {r['cpu']:.3f} | {cratio} "
                     f"| {fmt_mem(r['peak'])} | {gf} | {gfs} | {pct} | {'' if r.get('dets') is None else r['dets']} "
                     f"| {r.get('warmup_s', float('nan')):.1f} |")
    return "\n".join(lines)


class LocalSubject:
    """One of :class:`LocalSubjects` (ours / tv_r50 / bb_ours / bb_tv_swin_t), timed in this process."""

    def __init__(self, local: LocalSubjects, name: str, device: str) -> None:
        self.local, self.name, self.device = local, name, device
        self.fn: Optional[Callable[[], Any]] = None

    def prepare(self, case: str, dtype: str, threads: int, flops: bool) -> dict:
        """Build and warm up (and compile); info: ``flops``, ``dets``, or ``error``."""
        try:
            self.fn = self.local.prepare(self.name, case, dtype)
            out, n_flops = warm_up(self.fn, flops)
            return {"flops": n_flops, "dets": n_dets(out) if case.startswith("infer") else None}
        except Exception as e:  # noqa: BLE001 - reported in the table, the others still run
            self.fn = None
            return {"error": error_text(e)}

    def run(self, threads: int) -> tuple[float, float, Optional[int]]:
        """(wall s, CPU s, peak bytes or None) of one repetition."""
        assert self.fn is not None
        return timed(self.fn, self.device)


class MmdetSubject:
    """mmdet / bb_mmdet, timed in the worker process of the mmdet venv (:class:`RemoteSubject`)."""

    def __init__(self, remote: RemoteSubject, name: str) -> None:
        self.remote, self.name = remote, name

    def prepare(self, case: str, dtype: str, threads: int, flops: bool) -> dict:
        return self.remote.ask({"cmd": "prepare", "case": case, "dtype": dtype, "threads": threads, "flops": flops})

    def run(self, threads: int) -> tuple[float, float, Optional[int]]:
        r = self.remote.ask({"cmd": "run", "threads": threads})
        return r["time"], r["cpu"], r["peak"]


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--subjects", nargs="+", default=None,
                    help="restrict to these subjects (ours, mmdet, tv_r50, bb_ours, bb_mmdet, bb_tv_swin_t, "
                    "bb_ours_v2, bb_tv_swin_v2_t)")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions per subject (after 1 warm-up)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--compile", default=None, choices=["default", "reduce-overhead", "max-autotune"],
                    help="torch.compile our backbone with this mode (compile time is reported)")
    ap.add_argument("--freeze", action="store_true",
                    help="with --compile: inductor's freezing (weights as constants, prepacked oneDNN kernels; "
                    "inference only: torch._inductor.config.freezing = True for the whole process)")
    ap.add_argument("--no-flops", action="store_true", help="skip the FLOP counts")
    ap.add_argument("--malloc", default="system", choices=["system", "keep", "mmap"],
                    help="glibc malloc in BOTH processes: its defaults, or swin_maskrcnn.runtime.keep_freed_memory "
                    "(what the swin-maskrcnn CLI and train() use; peak-memory figures are then not comparable), "
                    "or mmap: every block above 128 KiB mapped on its own, so that the peak-RSS column measures "
                    "the live tensors (use this run for memory, not for time)")
    ap.add_argument("--repo", type=Path, default=REPO,
                    help="import swin_maskrcnn from this source tree (e.g. a checkout of an older commit)")
    ap.add_argument("--mmdet-python", default="/work/.mmdet-venv/bin/python")
    ap.add_argument("--out", type=Path, default=OUT_DIR / "speed.json")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--scenes", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.freeze and (not args.compile or "train2" in args.cases):
        ap.error("--freeze needs --compile and inference cases only (frozen weights cannot train)")
    return args


def measure(subjects: list[Any], case: str, dtype: str, threads: int, reps: int, device: str, flops: bool,
            peak_gflops: float) -> list[dict]:
    """Rows of one (case, dtype, threads): every subject prepared, then ``reps`` alternating
    repetitions; the first subject is ours, the ratios are ours / theirs (a failed subject gets an
    ``error`` row)."""
    torch.set_num_threads(threads)
    info: dict[str, dict] = {}
    for s in subjects:
        t1 = time.perf_counter()
        info[s.name] = dict(s.prepare(case, dtype, threads, flops))
        info[s.name]["warmup_s"] = time.perf_counter() - t1
        if "error" in info[s.name]:
            log.warning("%s %s %s: cannot run: %s", case, dtype, s.name, info[s.name]["error"])
    rows = [dict(case=case, dtype=dtype, threads=threads, subject=s.name, device=device, error=info[s.name]["error"])
            for s in subjects if "error" in info[s.name]]
    subjects = [s for s in subjects if "error" not in info[s.name]]
    if not subjects:
        return rows
    times: dict[str, list[float]] = {s.name: [] for s in subjects}
    cpus: dict[str, list[float]] = {s.name: [] for s in subjects}
    mems: dict[str, list[int]] = {s.name: [] for s in subjects}
    for rep in range(reps):
        for s in subjects:
            t, cpu, peak = s.run(threads)
            times[s.name].append(t)
            cpus[s.name].append(cpu)
            if peak is not None:
                mems[s.name].append(peak)
            log.info("%s %s %dt rep %d %s: %.3f s (CPU %.3f s)", case, dtype, threads, rep, s.name, t, cpu)
    first = subjects[0].name
    ours_med, ours_cpu = statistics.median(times[first]), statistics.median(cpus[first])
    for s in subjects:
        med, cmed = statistics.median(times[s.name]), statistics.median(cpus[s.name])
        rows.append(dict(case=case, dtype=dtype, threads=threads, subject=s.name, median=med, device=device,
                         times=times[s.name], cpu=cmed, cpus=cpus[s.name],
                         ratio=None if s.name == first else ours_med / med,
                         cpu_ratio=None if s.name == first else ours_cpu / cmed,
                         peak=max(mems[s.name]) if mems[s.name] else None, peak_gflops=peak_gflops,
                         **info[s.name]))
    return rows


def bf16_speedups(rows: list[dict], device: str) -> list[str]:
    """fp32 median / bf16 median of each subject (wall time on cuda, CPU time on the CPU)."""
    key = "median" if device == "cuda" else "cpu"
    out = []
    for r in rows:
        if r["dtype"] == "bf16" and "error" not in r:
            for q in rows:
                if q["dtype"] == "fp32" and "error" not in q and (q["case"], q["threads"], q["subject"]) == (r["case"], r["threads"], r["subject"]):
                    out.append(f"{r['case']} {r['threads']}t {r['subject']}: bf16 {q[key] / r[key]:.2f}x faster than fp32 "
                               f"({'wall' if key == 'median' else 'CPU'} time)")
    return out


def main() -> None:
    args = parse_args()
    if args.worker:
        return worker_main(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    apply_malloc(args.malloc)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    if args.freeze:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
    hw = hardware_line(args.device)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    scenes_npz = OUT_DIR / "scenes.npz"
    scenes = make_scenes()
    np.savez(scenes_npz, **scenes)
    ckpt = OUT_DIR / "mmdet_swin_t_calibrated.pth"
    wanted = set(args.subjects or sum(([OURS[c]] + PEERS[c] for c in args.cases), []))
    need_ckpt = bool(wanted & NEED_CKPT)
    need_mmdet = bool(wanted & {"mmdet", "bb_mmdet"}) or (need_ckpt and not ckpt.is_file())
    remote = None
    if need_mmdet:
        log.info("starting the mmdet worker (%s)", args.mmdet_python)
        remote = RemoteSubject(args.mmdet_python, ckpt, scenes_npz, args.device, args.threads[0], args.malloc)
    t0 = time.perf_counter()
    local = LocalSubjects(ckpt if need_ckpt else None, scenes, args.device, args.compile, args.repo)
    log.info("local subjects built in %.1f s", time.perf_counter() - t0)

    def subject(name: str) -> Any:
        if name in ("mmdet", "bb_mmdet"):
            assert remote is not None
            return MmdetSubject(remote, name)
        return LocalSubject(local, name, args.device)

    peaks = {(d, t): matmul_peak(d, t, args.device) for d in args.dtypes for t in args.threads}
    log.info("matmul peaks GFLOP/s: %s", {f"{d}/{t}": round(v, 1) for (d, t), v in peaks.items()})
    rows: list[dict] = []
    try:
        for case in args.cases:
            names = [s for s in [OURS[case]] + PEERS[case] if s in wanted]
            for dtype in args.dtypes:
                for threads in args.threads:
                    new = measure([subject(n) for n in names], case, dtype, threads, args.reps, args.device,
                                  not args.no_flops, peaks[(dtype, threads)])
                    rows.extend(new)
                    if any("error" not in r for r in new):
                        print(table([r for r in new if "error" not in r]), flush=True)
                    write_json(args, hw, peaks, rows)  # after every case: a later failure keeps what was measured
    finally:
        if remote is not None:
            remote.close()
    speedups = bf16_speedups(rows, args.device)
    text = (f"{hw}\nmatmul peak GFLOP/s: " + ", ".join(f"{d} {t}t {v:.0f}" for (d, t), v in peaks.items())
            + f"\nmedians of {args.reps} alternating repetitions after 1 warm-up; device {args.device}; malloc {args.malloc}"
            + (f"; ours compiled ({args.compile}{', freezing' if args.freeze else ''})" if args.compile else "")
            + "\n\n" + table(rows)
            + ("\n\n" + "\n".join(speedups) if speedups else ""))
    write_json(args, hw, peaks, rows)
    print("\n" + text)


def write_json(args: argparse.Namespace, hw: str, peaks: dict, rows: list[dict]) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"hardware": hw, "matmul_peak_gflops": {f"{d}/{t}": v for (d, t), v in peaks.items()},
                               "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2))
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
