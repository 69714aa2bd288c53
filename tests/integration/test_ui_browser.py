"""The console as a reviewer uses it, in headless Chromium driven by Playwright (the system's
Chromium: nothing is downloaded): the runs page and its trend, a run's flagged list paged and
filtered, three items reviewed with the keyboard and still there after a reload; then
`anomaly-ae calibrate --reviews` moves the threshold by exactly those false alarms."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from anomaly_ae import steps

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def chromium_path(chromium):
    pytest.importorskip("playwright.sync_api", reason="playwright (a dev dependency) drives the browser")
    return chromium


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def console(mnist_ds, mnist_model, tmp_path_factory):
    """`anomaly-ae ui` on two runs of one pipeline, as a user starts it; yields its URL and root."""
    root = tmp_path_factory.mktemp("ui-browser")
    for name in ("run-1", "run-2"):  # at a loose operating point: normal digits among the flagged
        steps.score(mnist_ds, mnist_model, root / "line" / "runs" / name, split="test", report=False,
                    target_fpr=0.2)
    port = _free_port()
    exe = Path(sys.executable).with_name("anomaly-ae")
    proc = subprocess.Popen([str(exe), "ui", "--root", str(root), "--port", str(port), "--who", "browser-test"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"anomaly-ae ui exited: {proc.stdout.read()}")
            time.sleep(0.2)
    yield {"url": url, "root": root}
    proc.terminate()
    proc.wait(timeout=20)


def test_review_three_items_with_the_keyboard_then_calibrate(console, chromium_path, mnist_model, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(console["url"] + "/")
        expect(page.locator("section.pipeline")).to_have_count(1)
        expect(page.locator("svg.trend")).to_have_count(4)
        expect(page.locator("svg.trend circle").first).to_be_visible()
        page.locator("a.run-link").last.click()  # the older run
        expect(page.locator("tr.item")).to_have_count(50)
        first_page = page.locator("tr.item").first.get_attribute("data-item")

        page.locator("nav.pages a", has_text=re.compile(r"^\s*2\s*$")).click()
        expect(page).to_have_url(re.compile(r"page=2"))
        assert page.locator("tr.item").first.get_attribute("data-item") != first_page

        # The reviewer looks at the normal class only: flagged zeros are the false alarms.
        page.select_option("select[name=class]", "0")
        page.locator("form.filters button[type=submit]").click()
        expect(page).to_have_url(re.compile(r"class=0"))
        rows = page.locator("tr.item")
        assert rows.count() >= 3, "the model flags too few normal digits for this test"
        ids = [rows.nth(k).get_attribute("data-item") for k in range(3)]
        with page.expect_response(lambda r: r.url.endswith("/reviews") and r.status == 200):
            page.keyboard.press("d")  # first: defect confirmed (say the reviewer saw a real flaw)
        with page.expect_response(lambda r: r.url.endswith("/reviews") and r.status == 200):
            page.keyboard.press("f")  # the next item followed: false alarm
        page.keyboard.press("n")
        page.keyboard.type("smudge on the lens")
        page.keyboard.press("Enter")
        with page.expect_response(lambda r: r.url.endswith("/reviews") and r.status == 200):
            page.keyboard.press("f")
        expect(page.locator('[data-count="false_alarm"]')).to_have_text("2")

        page.reload()
        decided = {rows.nth(k).get_attribute("data-item"): rows.nth(k).locator("td.decision").inner_text().strip()
                   for k in range(3)}
        assert decided == {ids[0]: "defect", ids[1]: "false alarm", ids[2]: "false alarm"}
        assert page.locator(f'tr[data-item="{ids[2]}"] input.note').input_value() == "smudge on the lens"
        expect(page.locator('[data-count="precision"]')).to_have_text("0.33")

        # A note edited on a decided item is saved at once; on an undecided one the row says it waits.
        page.locator(f'tr[data-item="{ids[0]}"] td.n').first.click()
        page.keyboard.press("n")
        page.keyboard.type("a real scratch")
        with page.expect_response(lambda r: r.url.endswith("/reviews") and r.status == 200):
            page.keyboard.press("Enter")
        undecided = page.locator('tr.item[data-decision=""]')
        if undecided.count():
            undecided.first.locator("td.n").first.click()
            page.keyboard.press("n")
            page.keyboard.type("look again")
            page.keyboard.press("Enter")
            expect(undecided.first).to_have_class(re.compile(r"\bunsaved\b"))
        page.reload()
        assert page.locator(f'tr[data-item="{ids[0]}"] input.note').input_value() == "a real scratch"
        assert page.locator(f'tr[data-item="{ids[0]}"] td.decision').inner_text().strip() == "defect"
        browser.close()

    run = next(r for r in (console["root"] / "line" / "runs").iterdir()
               if (r / "reviews.parquet").exists())
    model = tmp_path / "model"
    shutil.copytree(mnist_model, model)
    from anomaly_ae.detector import AutoencoderDetector
    from anomaly_ae.threshold import conformal_threshold

    before = AutoencoderDetector.load(model)
    scores = {r["image_id"]: r["score"] for r in pq.read_table(run / "scores.parquet").to_pylist()}
    done = subprocess.run([str(Path(sys.executable).with_name("anomaly-ae")), "calibrate", str(model),
                           "--reviews", str(run), "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    after = AutoencoderDetector.load(model)
    expected = conformal_threshold(np.r_[before.calibration_scores_, scores[ids[1]], scores[ids[2]]],
                                   before.threshold_info_["target_fpr"])
    assert after.threshold_ == pytest.approx(expected["threshold"])
    assert len(after.calibration_scores_) == len(before.calibration_scores_) + 2
