"""The wheel ships the YAML recipes, so ``swin-maskrcnn demo`` works from an installed package.

Builds the wheel with pip (offline: the build backend comes from the local package index, as for
``make test``'s own install) and checks its file list against the repository's ``configs/``.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory) -> set[str]:
    out = tmp_path_factory.mktemp("wheel")
    src = tmp_path_factory.mktemp("src")  # build from a copy: setuptools writes build/ into the source tree
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for name in ("swin_maskrcnn", "configs"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-q", "-w", str(out)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"pip wheel failed:\n{proc.stdout}\n{proc.stderr}")
    wheels = list(out.glob("swin_maskrcnn-*.whl"))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as z:
        return set(z.namelist())


def test_wheel_contains_every_config(wheel_names):
    configs = sorted(p.relative_to(REPO / "configs").as_posix() for p in (REPO / "configs").rglob("*.yaml"))
    assert "demo.yaml" in configs and "losses/mmdet.yaml" in configs
    missing = [c for c in configs if f"swin_maskrcnn/configs/{c}" not in wheel_names]
    assert not missing, f"configs not in the wheel: {missing}"


def test_wheel_contains_the_package_and_the_cli(wheel_names):
    modules = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "swin_maskrcnn").rglob("*.py"))
    assert "swin_maskrcnn/apps/demo.py" in modules and "swin_maskrcnn/modeling/detector.py" in modules
    missing = [m for m in modules if m not in wheel_names]
    assert not missing, f"modules not in the wheel (a subpackage missing from pyproject.toml?): {missing}"
    entry = [n for n in wheel_names if n.endswith(".dist-info/entry_points.txt")]
    assert entry, "no entry_points.txt"
    assert not any(n.startswith("tests/") or n.startswith("benchmarks/") for n in wheel_names)


# ------------------------------------------------------------------------------------------------
# version ranges (pyproject.toml) vs the tested pins (constraints.txt)
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def requirements():
    """(core requirements, {extra: requirements}, {name: pinned version}) as parsed by ``packaging``."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = [Requirement(r) for r in project["dependencies"]]
    extras = {k: [Requirement(r) for r in v] for k, v in project["optional-dependencies"].items()}
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version.strip()
    return core, extras, pins


def test_dependencies_are_ranges_with_lower_bounds(requirements):
    core, extras, _ = requirements
    for req in core + [r for rs in extras.values() for r in rs if r.name != "swin-maskrcnn"]:
        ops = {s.operator for s in req.specifier}
        assert ops == {">="}, f"{req}: users install against a lower bound, the tested pin is in constraints.txt"
    names = {r.name for r in core}
    assert {"torch", "torchvision", "safetensors"} <= names
    # optional parts are extras, not core dependencies
    assert not names & {"matplotlib", "tensorboard", "onnx", "onnxruntime"}, names
    assert {r.name for r in extras["demo"]} == {"matplotlib"}
    assert {r.name for r in extras["tensorboard"]} == {"tensorboard"}
    assert {r.name for r in extras["export"]} == {"onnx", "onnxruntime"}
    assert {r.name for r in extras["openvino"]} == {"openvino"}
    assert {r.name for r in extras["fasteval"]} == {"faster-coco-eval"}
    assert not names & {"openvino", "faster-coco-eval"}, names
    # `make test` installs [all]: every other extra
    (everything,) = extras["all"]
    assert everything.extras == set(extras) - {"all"}


def test_constraints_pin_every_requirement_inside_its_range(requirements):
    from packaging.utils import canonicalize_name

    core, extras, pins = requirements
    reqs = core + [r for rs in extras.values() for r in rs if r.name != "swin-maskrcnn"]
    by_name = {canonicalize_name(r.name): r for r in reqs}
    assert set(pins) == set(by_name), "constraints.txt pins exactly the direct requirements"
    for name, version in pins.items():
        assert by_name[name].specifier.contains(version), f"{name}=={version} is outside {by_name[name]}"
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"


def test_make_and_ci_install_with_the_constraints():
    makefile = (REPO / "Makefile").read_text()
    assert "pip install -q -c constraints.txt -e '.[all]'" in makefile
    assert "make test" in (REPO / ".ci" / "run").read_text()
