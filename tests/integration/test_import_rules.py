"""The import rules that keep inference light.

* ``import swin_maskrcnn``, ``swin_maskrcnn.load_model(path)`` and ``model.predict(...)`` import none
  of the training / evaluation / plotting stacks. Checked in a fresh interpreter (``sys.modules``),
  for our own checkpoint format and for an mmdet checkpoint.
* ``swin_maskrcnn/modeling`` imports only the standard library, torch, torchvision, numpy, pydantic
  and itself: never ``data/``, ``training/``, ``checkpoint/``, ``apps/``, Lightning or pycocotools.
  Checked statically on every import statement (also the ones inside functions).
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from swin_maskrcnn.checkpoint.native import save_checkpoint
from swin_maskrcnn.modeling.config import tiny_model_config
from swin_maskrcnn.modeling.detector import SwinMaskRCNN

from conftest import FIXTURES, REPO

#: top-level packages that inference must not import
HEAVY = ("lightning", "pytorch_lightning", "pycocotools", "matplotlib", "tensorboard")

#: Runs in a fresh interpreter: for each checkpoint, load it with the public API and predict; report
#: which heavy packages are imported by then. Last, as a control that the check can see an import,
#: import the Lightning module and report again.
CHILD = r"""
import json, sys
import numpy as np
import swin_maskrcnn

HEAVY = set(json.loads(sys.argv[1]))
def heavy():
    return sorted({m.split(".")[0] for m in sys.modules} & HEAVY)

image = np.random.default_rng(0).integers(0, 256, size=(90, 120, 3), dtype=np.uint8)
report = {}
for path in sys.argv[2:]:
    model = swin_maskrcnn.load_model(path)
    (result,) = model.predict([image])
    report[path] = {"keys": sorted(result), "training": model.training, "heavy": heavy()}
import swin_maskrcnn.training.module
report["control"] = heavy()
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def native_checkpoint(tmp_path_factory) -> Path:
    cfg = tiny_model_config(num_classes=3)
    model = SwinMaskRCNN(cfg)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    return save_checkpoint(path, model, cfg, ["a", "b", "c"], None)


#: a checkpoint mmdet 3.3 itself wrote (``{'state_dict', 'meta'}``, mmdet key names)
MMDET_CHECKPOINT = FIXTURES / "mmdet_tiny_seed11" / "checkpoint.pth"


def test_load_model_and_predict_import_no_training_stack(native_checkpoint):
    paths = [str(native_checkpoint), str(MMDET_CHECKPOINT)]
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(HEAVY), *paths],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    for path in paths:  # our format, then mmdet's
        assert report[path]["keys"] == ["boxes", "labels", "masks", "scores"], path
        assert report[path]["training"] is False, path
        assert report[path]["heavy"] == [], f"load_model({path}) + predict imported {report[path]['heavy']}"
    assert "lightning" in report["control"]  # the check does see a heavy import


#: the predict command's path: Predictor, results formatting and the atomic JSON write; then, as a
#: control, the evaluation module
PREDICT_JSON_CHILD = r"""
import json, sys
import numpy as np
from swin_maskrcnn.apps.predict import Predictor, to_coco_results
from swin_maskrcnn.coco_results import save_results_json

def loaded():
    return sorted(m for m in sys.modules if m.split(".")[0] in ("pycocotools", "lightning"))
image = np.random.default_rng(0).integers(0, 256, size=(90, 120, 3), dtype=np.uint8)
(result,) = Predictor(sys.argv[1], device="cpu").predict([image])
entries = to_coco_results(result, "a.png", "a.png")
save_results_json(entries, sys.argv[2])
report = {"modules": loaded(), "n": len(entries)}
import swin_maskrcnn.evaluation
report["control"] = loaded()
print(json.dumps(report))
"""


def test_predict_writes_its_json_without_cocoeval(native_checkpoint, tmp_path):
    out = tmp_path / "preds.json"
    proc = subprocess.run([sys.executable, "-c", PREDICT_JSON_CHILD, str(native_checkpoint), str(out)],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(json.loads(out.read_text())) == report["n"]
    assert "pycocotools.mask" in report["modules"]  # the RLE encoder, and nothing else of pycocotools
    assert [m for m in report["modules"] if m.startswith(("pycocotools.coco", "lightning"))] == [], report
    assert "pycocotools.cocoeval" in report["control"]


# ------------------------------------------------------------------------------------------------
# static rule for modeling/
# ------------------------------------------------------------------------------------------------
PACKAGE = REPO / "swin_maskrcnn"
ALLOWED_THIRD_PARTY = {"torch", "torchvision", "numpy", "pydantic"}


def _imported_modules(source: str, package: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source``, a module of ``package``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module == "__future__":
                continue
            # ``from . import x`` / ``from .. import data``: the names may be modules themselves
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names] if not node.module else []
            found.append((node.lineno, module))
    return found


def _violations(source: str, package: str, name: str) -> list[str]:
    bad = []
    for line, module in _imported_modules(source, package):
        top = module.split(".")[0]
        if top == "swin_maskrcnn":
            ok = module == "swin_maskrcnn.modeling" or module.startswith("swin_maskrcnn.modeling.")
        else:
            ok = top in sys.stdlib_module_names or top in ALLOWED_THIRD_PARTY
        if not ok:
            bad.append(f"{name}:{line} imports {module}")
    return bad


def test_modeling_imports_only_torch_torchvision_and_itself():
    files = sorted((PACKAGE / "modeling").rglob("*.py"))
    assert len(files) >= 15, files  # the walk found the package
    bad = [
        v for f in files
        for v in _violations(f.read_text(), ".".join(f.relative_to(REPO).parts[:-1]), str(f.relative_to(REPO)))
    ]
    assert bad == [], "\n".join(bad)


def test_the_static_check_sees_forbidden_imports():
    """Control: each forbidden form is reported (relative, absolute, inside a function)."""
    source = (
        "from ...data.transforms import Resize\n"
        "from .. import config\n"
        "import lightning.pytorch as pl\n"
        "def f():\n"
        "    from pycocotools import mask\n"
        "    from swin_maskrcnn.training import train\n"
    )
    bad = _violations(source, "swin_maskrcnn.modeling.roi_heads", "probe.py")
    assert [b.split(" imports ")[1] for b in bad] == [
        "swin_maskrcnn.data.transforms", "lightning.pytorch", "pycocotools", "swin_maskrcnn.training",
    ]
