"""Take the console screenshots that README.md and docs/console.md show.

    python docs/console_screenshot.py [--out docs/img]

Runs the demo pipeline's steps (the bundled MNIST digits, digit 0 normal) into a temporary output
folder, scores the test split three times (a short history), starts `anomaly-ae ui` on it, and
has headless Chromium (Debian's /usr/bin/chromium, driven by Playwright) review three items with
the keyboard and draw the runs page, a run page with the heat maps on, and the model page.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> None:
    from playwright.sync_api import sync_playwright

    from anomaly_ae import steps
    from anomaly_ae.config import DetectorConfig, ModelConfig, ThresholdConfig, TrainConfig

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    args = p.parse_args(argv)
    out = Path(tempfile.mkdtemp(prefix="anomaly-ae-console-")) / "mnist-demo"
    steps.ingest("sample:mnist5k", out / "dataset")
    cfg = DetectorConfig(model=ModelConfig(latent_dim=32, base_channels=16, max_channels=128),
                         train=TrainConfig(epochs=6, patience=3), threshold=ThresholdConfig(target_fpr=0.02))
    steps.train(out / "dataset", out / "model", normal=["0"], config=cfg)
    for k in range(3):
        steps.score(out / "dataset", out / "model", out / "runs" / f"run-{k + 1}", split="test")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ui = subprocess.Popen([str(Path(sys.executable).with_name("anomaly-ae")), "ui", "--root", str(out.parent),
                           "--port", str(port)])
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        url = f"http://127.0.0.1:{port}"
        args.out.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1280, "height": 820})
            page.goto(url + "/")
            page.screenshot(path=str(args.out / "console-runs.png"))
            page.locator("a.run-link").first.click()
            page.select_option("select[name=class]", "0")
            page.locator("form.filters button[type=submit]").click()
            page.wait_for_load_state("networkidle")
            for key in ("f", "f", "d"):
                with page.expect_response(lambda r: r.url.endswith("/reviews")):
                    page.keyboard.press(key)
            page.check("#overlay")
            page.wait_for_function("Array.from(document.images).every(i => i.src.includes('overlay=1') && i.complete"
                                   " && i.naturalWidth > 0)")
            page.screenshot(path=str(args.out / "console-run.png"))
            page.goto(page.url.split("?")[0] + "/model")
            page.set_viewport_size({"width": 1280, "height": 1100})
            page.screenshot(path=str(args.out / "console-model.png"))
            browser.close()
    finally:
        ui.terminate()
        ui.wait(timeout=20)
    print(f"screenshots of {url} -> {args.out}")


if __name__ == "__main__":
    main()
