"""report.html in a real headless browser: it loads with no console error and every image in it
resolves. Skipped where no Chromium is installed (CI installs Debian's ``chromium``)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from headless_browser import Page, find_browser

pytest.importorskip("matplotlib", reason="the report's plots need the [report] extra")
needs_browser = pytest.mark.skipif(find_browser() is None, reason="no headless Chromium installed")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from diagnostics.planted import SIZES, write  # noqa: E402

from swin_maskrcnn.apps.cli import main  # noqa: E402


@pytest.fixture
def report(tmp_path) -> Path:
    from PIL import Image

    gt, res = write(tmp_path, 3)
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    for i, (h, w) in SIZES.items():
        Image.fromarray(np.random.default_rng(i).integers(0, 90, (h, w, 3), dtype=np.uint8)).save(img_dir / f"{i:03d}.png")
    out = tmp_path / "out"
    assert main(["analyze", "--ann", str(gt), "--results", str(res), "--images", str(img_dir), "--out", str(out),
                 "--display-thr", "0.1"]) == 0
    return out / "report.html"


@needs_browser
def test_report_loads_without_errors_and_every_image_resolves(report):
    with Page(report.resolve().as_uri()) as page:
        images = page.evaluate("[...document.images].map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])")
        headings = page.evaluate("[...document.querySelectorAll('h2')].map(h => h.textContent)")
        if os.environ.get("SWIN_MASKRCNN_SCREENSHOT"):
            page.screenshot(Path(os.environ["SWIN_MASKRCNN_SCREENSHOT"]))
        assert page.errors == []
    # error chart, confusion matrix, curves, PR curves and the one image with errors
    assert [a for a, *_ in images][:4] == ["error breakdown", "confusion matrix",
                                           "precision, recall and F against the score", "precision-recall curves"]
    assert len(images) == 5 and images[4][0].startswith("001.png: 6 errors")
    assert all(complete and w > 0 and h > 0 for _, complete, w, h in images), images
    assert images[4][2] == 600  # the 200 px image drawn x3
    assert headings[:3] == ["COCO AP", "Errors (TIDE)", "Confusion matrix"]


@needs_browser
def test_a_broken_image_is_caught(report):
    """The check itself: a page whose image does not resolve fails it."""
    broken = report.with_name("broken.html")
    broken.write_text(report.read_text().replace('src="data:image/png;base64,', 'src="missing.png#', 1))
    with Page(broken.resolve().as_uri()) as page:
        images = page.evaluate("[...document.images].map(i => i.naturalWidth)")
        assert 0 in images and any("missing.png" in e for e in page.errors), page.errors
