"""``precision="auto"``: bf16 only where the hardware computes it natively, fp32 elsewhere, logged.

The detection function gets fake /proc/cpuinfo flag sets (and a fake cpuinfo file), so every branch
is exercised on any machine: an AVX2-only CPU (where bf16 autocast was 5x slower than fp32) must get
fp32, AMX-BF16 or AVX512-BF16 must get bf16. The CLI's and Lightning's resolution go through it.
"""
from __future__ import annotations

import logging

import pytest
import torch

from swin_maskrcnn.modeling.acceleration import cpu_flags, cpu_has_native_bf16, inference_autocast, resolve_precision

# flags of real CPUs, abbreviated: the previous round's AVX2 EPYC, an AVX-512 Skylake without bf16,
# Cooper Lake / Zen 4 (AVX512-BF16) and Sapphire Rapids (AMX)
EPYC_AVX2 = {"fpu", "sse4_2", "avx", "avx2", "fma", "f16c"}
SKYLAKE_X = EPYC_AVX2 | {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"}
COOPER_LAKE = SKYLAKE_X | {"avx512_bf16"}
SAPPHIRE_RAPIDS = COOPER_LAKE | {"amx_bf16", "amx_tile", "amx_int8"}


@pytest.mark.parametrize("flags, native", [(EPYC_AVX2, False), (SKYLAKE_X, False), (COOPER_LAKE, True),
                                           ({"amx_bf16"}, True), (SAPPHIRE_RAPIDS, True), (set(), False)])
def test_native_bf16_from_flags(flags, native):
    assert cpu_has_native_bf16(flags) is native
    assert resolve_precision("auto", "cpu", flags=flags) == ("bf16" if native else "fp32")


def test_cpu_without_bf16_never_gets_bf16_and_the_choice_is_logged(caplog):
    with caplog.at_level(logging.INFO, logger="swin_maskrcnn.modeling.acceleration"):
        assert resolve_precision("auto", "cpu", flags=EPYC_AVX2) == "fp32"
        assert resolve_precision("auto", torch.device("cpu"), flags=SAPPHIRE_RAPIDS) == "bf16"
    lines = [r.getMessage() for r in caplog.records]
    assert any("auto -> fp32" in m and "no native bf16" in m for m in lines), lines
    assert any("auto -> bf16" in m for m in lines), lines


def test_explicit_precisions_pass_through_and_bad_values_are_refused():
    assert resolve_precision("bf16", "cpu", flags=EPYC_AVX2) == "bf16"  # asked for explicitly: the user's choice
    assert resolve_precision("fp32", "cpu", flags=SAPPHIRE_RAPIDS) == "fp32"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp16", "cpu")
    assert resolve_precision("auto", "meta", flags=SAPPHIRE_RAPIDS) == "fp32"  # unprobed device types: fp32


def test_cpuinfo_parsing(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Fake\nflags\t\t: fpu avx2 amx_bf16 amx_tile\n\n"
                    "processor\t: 1\nflags\t\t: fpu avx2\n")
    assert cpu_flags(info) == frozenset({"fpu", "avx2", "amx_bf16", "amx_tile"})
    assert cpu_has_native_bf16(cpu_flags(info))
    assert cpu_flags(tmp_path / "missing") is None


def test_this_machine_agrees_with_torchs_cpuid_probe():
    """/proc/cpuinfo and torch's own CPUID probe name the same capability on the machine running the tests."""
    flags = cpu_flags()
    if flags is None or not hasattr(torch.cpu, "_is_avx512_bf16_supported"):
        pytest.skip("no /proc/cpuinfo or no torch CPUID probe here")
    torch_says = bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    assert cpu_has_native_bf16(flags) is torch_says


def test_auto_autocast_follows_the_machine():
    x = torch.randn(4, 8)
    w = torch.randn(8, 8)
    with inference_autocast("cpu", "auto"):
        y = x @ w
    assert y.dtype == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)


def test_lightning_auto_precision():
    from swin_maskrcnn.training.config import RuntimeConfig
    from swin_maskrcnn.training.train import lightning_precision

    assert RuntimeConfig(precision="auto").precision == "auto"
    assert lightning_precision("auto", "cpu", flags=EPYC_AVX2) == "32-true"
    assert lightning_precision("auto", "cpu", flags=SAPPHIRE_RAPIDS) == "bf16-mixed"
    assert lightning_precision("16-mixed", "cpu", flags=SAPPHIRE_RAPIDS) == "16-mixed"
    if not torch.cuda.is_available():
        assert lightning_precision("auto", "auto", flags=COOPER_LAKE) == "bf16-mixed"  # auto accelerator: the CPU
