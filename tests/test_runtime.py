"""swin_maskrcnn.runtime.keep_freed_memory: freed large tensors are reused without page faults; the CLI's
one rule for it (swin_maskrcnn.apps.cli.apply_malloc_setting), each switch checked by its effect: the page
faults of reallocating large tensors in the process the command ran in."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_tiny_coco, tiny_train_config
from swin_maskrcnn.training.config import save_config

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

FAULTS = r"""
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
reallocation_faults = faults() - f0
"""
PROBE = r"""
import json, resource, sys, torch
from swin_maskrcnn.runtime import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
""" + FAULTS + r"""
print(json.dumps({"applied": applied, "faults": reallocation_faults}))
"""
# runs the CLI in this process, then measures (the malloc settings are process-wide and stay)
CLI_PROBE = r"""
import json, resource, sys, torch
from swin_maskrcnn.apps.cli import main
rc = main(sys.argv[1:])
""" + FAULTS + r"""
print("PROBE " + json.dumps({"rc": rc, "faults": reallocation_faults}))
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


def run_cli(args: list[str], tmp_path: Path, **env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CLI_PROBE, *args], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1", **env}, timeout=300, cwd=tmp_path)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("PROBE ")]
    assert lines, out.stderr[-3000:]
    return json.loads(lines[-1][len("PROBE "):])


KEPT_MAX, DEFAULT_MIN = 12_500, 250_000  # see the first test: ~512,000 faults with glibc's defaults, ~none kept


@pytest.fixture(scope="module")
def train_yaml(tmp_path_factory) -> Path:
    """A one-step CPU training config on the tiny data set."""
    root = tmp_path_factory.mktemp("malloc")
    ann, imgs = make_tiny_coco(root / "data", n_images=2)
    cfg = tiny_train_config(ann, imgs, root / "runs", "one_step", max_steps=1, probe_every_n_steps=0,
                            checkpoint_every_n_steps=100)
    path = root / "train.yaml"
    save_config(cfg, path)
    return path


@glibc_only
@pytest.mark.parametrize("extra, env, kept", [
    ([], {}, True),  # runtime.keep_freed_memory defaults to true
    (["runtime.keep_freed_memory=false"], {}, False),  # the config decides for training
    (["--system-malloc"], {}, False),
    ([], {"SWIN_MASKRCNN_SYSTEM_MALLOC": "1"}, False),
], ids=["default", "config-false", "system-malloc-flag", "opt-out-variable"])
def test_train_command_follows_config_flag_and_variable(train_yaml, tmp_path, extra, env, kept) -> None:
    flags = [a for a in extra if a.startswith("--")]
    overrides = [a for a in extra if not a.startswith("--")]
    res = run_cli([*flags, "train", "--config", str(train_yaml), *overrides], tmp_path, **env)
    assert res["rc"] == 0, res
    assert (res["faults"] < KEPT_MAX) if kept else (res["faults"] > DEFAULT_MIN), res


@glibc_only
@pytest.mark.parametrize("extra, env, kept", [
    ([], {}, True),
    (["--system-malloc"], {}, False),
    ([], {"SWIN_MASKRCNN_SYSTEM_MALLOC": "1"}, False),
], ids=["default", "system-malloc-flag", "opt-out-variable"])
def test_other_commands_keep_freed_memory_unless_opted_out(tmp_path, extra, env, kept) -> None:
    # the setting is applied before the command runs: an export of a missing checkpoint (exit 2) shows it
    res = run_cli([*extra, "export", "--format", "safetensors", "--checkpoint", "missing.pt", "--out", "m.st"],
                  tmp_path, **env)
    assert res["rc"] == 2, res
    assert (res["faults"] < KEPT_MAX) if kept else (res["faults"] > DEFAULT_MIN), res
