"""Optional speed-ups that change nothing in the model's definition: ``torch.compile`` of the dense
part and bf16 inference.

* :func:`compile_dense` compiles the backbone and the FPN in place (``nn.Module.compile``: the
  state_dict keys stay the same, so checkpoints are unaffected). Only the dense part is compiled:
  proposals, NMS, RoI sampling and mask pasting have data-dependent shapes and would recompile or
  break the graph on every image. Compilation happens on the first forward of each input size
  (``dynamic=None``: a second size makes the graph shape-generic); its cost and measured effect
  are in ``docs/performance.md``.
* :func:`inference_model` is what ``precision="bf16"`` runs: :func:`bf16_copy`, a copy of the model
  with every floating weight in bf16 and the convolutions channels_last, converted once. Its dense
  parts (backbone, FPN, RPN convs, box head FCs, mask head convs) and RoIAlign
  (``roi_heads/roi_align_nhwc.py``) then run in bf16 without autocast; the model's own code casts
  to fp32 where bf16 would cost accuracy: RPN scores and deltas before decoding and NMS, the box
  head's scores and deltas, the mask logits; its box-head NMS takes the best candidates first
  (``bbox_head.top_first_nms``). The fp32 model is never modified and its path is unchanged (those
  casts are no-ops in fp32). Measured on Swin-T at 1 thread: 3.6-3.9x faster than fp32, 1.8-1.9x
  faster than autocast's per-op casts (``docs/performance.md``).
* :func:`inference_autocast` is ``torch.autocast`` with bf16 on the model's device, or a no-op: the
  per-call autocast path, kept for comparison (``benchmarks/backend_speed.py``).
* :func:`resolve_precision` turns ``precision="auto"`` into ``"bf16"`` where the hardware executes
  bf16 natively (a CPU with AMX-BF16 or AVX512-BF16, a CUDA GPU with bf16 support) and ``"fp32"``
  elsewhere, and logs the choice. On a CPU without those instructions bf16 autocast is emulated
  and several times *slower* than fp32 (5x on the AVX2 EPYC of ``docs/performance.md``), so "auto"
  never picks it there.
"""
from __future__ import annotations

import contextlib
import copy
import logging
from pathlib import Path
from typing import ContextManager, Iterable, Literal, Optional

import torch
from torch import nn

from .config import COMPILE_MODES

log = logging.getLogger(__name__)


def compile_dense(model: nn.Module, mode: Optional[str] = "default") -> nn.Module:
    """``torch.compile`` the ``backbone`` and ``neck`` of a :class:`SwinMaskRCNN` in place (a no-op
    for ``mode=None``); returns the model."""
    if mode is None:
        return model
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown torch.compile mode {mode!r}; one of {', '.join(COMPILE_MODES)}")
    for name in ("backbone", "neck"):
        part = getattr(model, name, None)
        if not isinstance(part, nn.Module):
            raise TypeError(f"compile_dense needs a model with a '{name}' module, got {type(model).__name__}")
        part.compile(mode=mode)
    log.info("torch.compile(mode=%r) of backbone and neck: compiled on the first forward of each input size", mode)
    return model


#: the values ``--precision`` / ``precision=`` accept
PRECISIONS = ("auto", "fp32", "bf16")
#: /proc/cpuinfo flags of native bf16 arithmetic: AMX tiles (Sapphire Rapids+) or AVX512-BF16
#: (Cooper Lake, Zen 4+). Either makes oneDNN's bf16 matmuls / convolutions faster than fp32.
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> Optional[frozenset[str]]:
    """The ``flags`` of the first processor in ``cpuinfo`` (Linux), or None where it cannot be read."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return None


def cpu_has_native_bf16(flags: Optional[Iterable[str]] = None) -> bool:
    """Whether this CPU runs bf16 natively (AMX-BF16 or AVX512-BF16).

    ``flags``: CPU feature flags as in /proc/cpuinfo (default: read them; where there is no
    /proc/cpuinfo, torch's own CPUID probe ``torch.cpu._is_amx_tile_supported`` /
    ``_is_avx512_bf16_supported`` decides, and False if torch has neither)."""
    if flags is None:
        flags = cpu_flags()
    if flags is not None:
        return any(f in set(flags) for f in CPU_BF16_FLAGS)
    probes = [getattr(torch.cpu, n, None) for n in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(bool(p()) for p in probes if callable(p))


def resolve_precision(
    precision: str, device: torch.device | str = "cpu", flags: Optional[Iterable[str]] = None
) -> Literal["fp32", "bf16"]:
    """``"fp32"`` / ``"bf16"`` as given; ``"auto"`` -> bf16 on a CUDA GPU with bf16
    (``torch.cuda.is_bf16_supported``) or a CPU with native bf16 (:func:`cpu_has_native_bf16` of
    ``flags``), fp32 on anything else (incl. other device types). The automatic choice is logged."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision  # type: ignore[return-value]
    dev = torch.device(device)
    if dev.type == "cuda":
        ok = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        why = "this CUDA GPU supports bf16" if ok else "this CUDA GPU has no bf16"
    elif dev.type == "cpu":
        ok = cpu_has_native_bf16(flags)
        why = ("the CPU has native bf16 (" + "/".join(CPU_BF16_FLAGS) + ")") if ok else \
            "the CPU has no native bf16 (no " + " or ".join(CPU_BF16_FLAGS) + "), where bf16 would be slower"
    else:
        ok, why = False, f"device type {dev.type!r} is not probed for bf16"
    chosen: Literal["fp32", "bf16"] = "bf16" if ok else "fp32"
    log.info("precision auto -> %s on %s: %s", chosen, dev, why)
    return chosen


def inference_autocast(device: torch.device | str, precision: Literal["fp32", "bf16"] = "fp32") -> ContextManager:
    """bf16 autocast on ``device``'s type for ``precision='bf16'`` (or ``'auto'`` resolved to bf16 by
    :func:`resolve_precision`), else a no-op context."""
    if precision == "auto":
        precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def floating_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of ``model``'s first floating parameter (float32 for a model without one)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def bf16_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` for bf16 inference: every floating parameter and buffer in bf16, the
    convolution weights (and the backbone's output maps) channels_last, no gradients, eval mode.
    ``model`` itself is not modified (its fp32 weights stay as they were).

    channels_last because oneDNN runs bf16 convolutions in NHWC: on NCHW maps every call reorders
    its input and output (a 1x1 FPN lateral on the stride-4 map: 140 ms NCHW vs 3 ms channels_last,
    1 thread)."""
    out = copy.deepcopy(model).to(torch.bfloat16).to(memory_format=torch.channels_last).eval()
    out.requires_grad_(False)
    backbone = getattr(out, "backbone", None)
    if backbone is not None and hasattr(backbone, "out_memory_format"):
        backbone.out_memory_format = torch.channels_last
    return out


def inference_model(model: nn.Module, precision: str) -> nn.Module:
    """The module that runs inference at ``precision`` (``fp32`` / ``bf16`` / ``auto``, see
    :func:`resolve_precision`): ``model`` itself for fp32 or when its weights are bf16 already,
    else :func:`bf16_copy` of it (converted once per call: callers convert before their loop)."""
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    precision = resolve_precision(precision, device)
    if precision == "fp32" or floating_dtype(model) == torch.bfloat16:
        return model
    return bf16_copy(model)


#: the modules of :class:`~swin_maskrcnn.modeling.detector.SwinMaskRCNN` whose convolutions
#: :func:`channels_last_convolutions` converts (the Swin backbone has no convolution past its patch
#: embedding; its output maps are made channels_last instead)
CONV_MODULES = ("neck", "rpn_head", "roi_head.mask_head")


def channels_last_convolutions(model: nn.Module) -> nn.Module:
    """Put the convolutions of ``model`` (FPN, RPN head, mask head: :data:`CONV_MODULES`) and the
    backbone's output maps in channels_last, in place; returns the model. Values are unchanged; only
    the memory layout of those weights (and of the maps they see) is.

    For bf16-mixed training on the CPU: oneDNN computes bf16 convolutions in NHWC, so on NCHW maps
    every forward and backward call reorders its input, output and gradients. Measured on the
    Swin-T training step (``benchmarks/train_step_bf16.py``): bf16 10.5 CPU-s, channels_last 8.3 s
    (fp32 26.9 s). fp32 training keeps the NCHW layout (its kernels, and the parity tests, are those)."""
    for name in CONV_MODULES:
        part: nn.Module = model
        for attr in name.split("."):
            part = getattr(part, attr)
        part.to(memory_format=torch.channels_last)
    backbone = getattr(model, "backbone", None)
    if backbone is not None and hasattr(backbone, "out_memory_format"):
        backbone.out_memory_format = torch.channels_last
    return model
