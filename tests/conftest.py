"""Shared test helpers: fixture paths and the location of ../shared/data."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED_DATA = REPO.parent / "shared" / "data"

torch.set_num_threads(int(os.environ.get("SWIN_MASKRCNN_TEST_THREADS", "2")))


COCO128 = SHARED_DATA / "coco128_seg"
NUCLEI = SHARED_DATA / "dsb2018_nuclei"
needs_coco128 = pytest.mark.skipif(not COCO128.is_dir(), reason=f"coco128_seg not found under {SHARED_DATA}")
needs_nuclei = pytest.mark.skipif(not NUCLEI.is_dir(), reason=f"dsb2018_nuclei not found under {SHARED_DATA}")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA}")
    return SHARED_DATA
