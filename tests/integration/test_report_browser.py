"""The batch report as a browser shows it: headless Chromium renders it, on a laptop and a phone width."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly_ae import steps
from anomaly_ae.config import DetectorConfig, TrainConfig

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]

# Appended to a copy of the report: once everything has loaded, write what the page looks like
# into the DOM, where --dump-dom shows it.
PROBE = """<script>
window.addEventListener("load", function () {
  var broken = 0;
  for (var i = 0; i < document.images.length; i++) {
    var img = document.images[i];
    if (!img.complete || img.naturalWidth === 0) broken++;
  }
  var out = document.createElement("pre");
  out.id = "probe";
  out.textContent = "images=" + document.images.length + " broken=" + broken + " scroll_width=" +
    document.documentElement.scrollWidth + " viewport=" + window.innerWidth;
  document.body.appendChild(out);
});
</script>"""


@pytest.fixture(scope="module")
def report_html(tmp_path_factory):
    """The report of a real (small) scoring run: bundled 8x8 digits, digit 0 normal."""
    root = tmp_path_factory.mktemp("browser")
    steps.ingest("sample:digits", root / "ds")
    steps.train(root / "ds", root / "model", normal=["0"], config=DetectorConfig(train=TrainConfig(epochs=1)))
    steps.score(root / "ds", root / "model", root / "run", split="test")
    return root / "run" / "report.html"


def run_chromium(binary: str, tmp_path: Path, *args: str) -> str:
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
    done = subprocess.run([binary, *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=5000", *args],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def probe(binary: str, report: Path, tmp_path: Path, width: int) -> dict:
    page = tmp_path / f"probe-{width}.html"
    page.write_text(report.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = run_chromium(binary, tmp_path, f"--window-size={width},2000", "--dump-dom", page.as_uri())
    found = re.search(r'<pre id="probe">([^<]*)</pre>', dom)
    assert found, "the page's load event never fired"
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", found.group(1))}


@pytest.mark.parametrize("width", [1280, 390])
def test_no_broken_images_and_no_sideways_scrolling(chromium, report_html, tmp_path, width):
    seen = probe(chromium, report_html, tmp_path, width)
    # --dump-dom lays a page out at least 500 px wide; that is still below the phone breakpoint (600 px)
    assert (seen["viewport"] < 600) == (width < 600)
    assert seen["images"] == report_html.read_text(encoding="utf-8").count("<img ") > 20
    assert seen["broken"] == 0
    assert seen["scroll_width"] <= seen["viewport"] + 1  # tables scroll inside their own box, not the page


@pytest.mark.parametrize("width", [1280, 390])
def test_screenshot_is_not_blank(chromium, report_html, tmp_path, width):
    shot = tmp_path / f"shot-{width}.png"
    run_chromium(chromium, tmp_path, f"--window-size={width},3000", f"--screenshot={shot}", report_html.as_uri())
    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("RGB"))
    assert pixels.shape[:2] == (3000, width)
    assert (pixels < 240).any(axis=2).mean() > 0.05  # text, plots and thumbnails, not a white page
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200  # colour plots and images, not only text
