"""swin_maskrcnn.runtime.keep_freed_memory: freed large tensors are reused without page faults."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from swin_maskrcnn.apps.cli import build_parser

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

PROBE = r"""
import json, resource, sys, torch
from swin_maskrcnn.runtime import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
a, b = torch.ones(25 * 2**20), torch.ones(25 * 2**20)  # 100 MiB each
def step():  # two fresh 100 MiB results, freed again, as the large activations of a forward pass
    c = a + b
    d = c * 2
    del c, d
for _ in range(10):  # warm up: the heap grows to a working set that fits every allocation (a few steps)
    step()
f0 = faults()
for _ in range(10):
    step()
print(json.dumps({"applied": applied, "faults": faults() - f0}))
"""


def run_probe(mode: str, **env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **env}, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc_only
def test_keep_freed_memory_removes_the_page_faults_of_reallocating_large_tensors() -> None:
    default = run_probe("system")
    kept = run_probe("keep")
    assert kept["applied"] is True
    # 10 x 200 MiB of fresh 4 KiB pages is ~512,000 faults with glibc's defaults; reused heap memory: ~none
    assert default["faults"] > 250_000, default
    assert kept["faults"] < default["faults"] / 20, (kept, default)


@glibc_only
def test_opt_out_variable_leaves_malloc_alone() -> None:
    res = run_probe("keep", SWIN_MASKRCNN_SYSTEM_MALLOC="1")
    assert res["applied"] is False
    assert res["faults"] > 250_000, res


def test_cli_flag_and_training_option() -> None:
    from swin_maskrcnn.training.config import RuntimeConfig

    assert build_parser().parse_args(["--system-malloc", "demo"]).system_malloc is True
    assert build_parser().parse_args(["demo"]).system_malloc is False
    assert RuntimeConfig().keep_freed_memory is True
