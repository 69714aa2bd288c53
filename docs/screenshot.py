"""Take the screenshot of a pipeline's flow run page that docs/orchestration.md shows.

    python docs/screenshot.py [--out docs/img/flow-run.png]

Starts a local Prefect server (as `anomaly-ae serve` does), runs the demo pipeline twice against
it with tiny training settings (the second run shows the skipped steps), and has headless Chromium
(Debian's /usr/bin/chromium) draw the second run's page: its graph and its logs.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> None:
    from anomaly_ae.configfile import dump_toml
    from flows.entry import run
    from flows.serve import local_server

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "flow-run.png")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="anomaly-ae-screenshot-"))
    doc = tomllib.loads((ROOT / "pipelines" / "mnist-demo.toml").read_text())
    doc["output"] = {"folder": str(work / "out")}
    doc["train"] = {"epochs": 2}
    pipeline = work / "mnist-demo.toml"
    pipeline.write_text(dump_toml(doc))
    with local_server() as url:
        run(str(pipeline))
        second = run(str(pipeline))
        page = f"{url.removesuffix('/api')}/runs/flow-run/{second['flow_run_id']}"
        args.out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([args.chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--window-size=1400,1100", "--virtual-time-budget=20000", f"--screenshot={args.out}", page],
                       check=True, capture_output=True, timeout=300)
    print(f"{page} -> {args.out}")


if __name__ == "__main__":
    main()
