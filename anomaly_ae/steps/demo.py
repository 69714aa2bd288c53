"""The demo step: the whole pipeline on the bundled MNIST digits."""

from __future__ import annotations

from pathlib import Path

from anomaly_ae.steps.datasets import Progress, ingest
from anomaly_ae.steps.runs import score
from anomaly_ae.steps.training import train

DEMO_SOURCE = "sample:mnist5k"


def demo(workdir: str | Path = "data", *, normal: str = "0", device: str = "auto",
         progress: Progress | None = None) -> dict:
    """The whole pipeline on the bundled MNIST digits: ingest, train (one digit normal), calibrate,
    score the test split and report. Reruns reuse the dataset and model when up to date."""
    from anomaly_ae.parallel import leave_if_importing_script

    leave_if_importing_script()  # a worker importing a script without a main guard
    import dataclasses

    from anomaly_ae.config import DetectorConfig, TrainConfig

    workdir = Path(workdir)
    ds = ingest(DEMO_SOURCE, workdir / "datasets" / "mnist5k", progress=progress)
    # 30% held out: 105 calibration digits, enough for the 1% target to be guaranteed.
    cfg = DetectorConfig(train=dataclasses.replace(TrainConfig(), device=device, calib_fraction=0.3))
    model = train(ds["dataset"], workdir / "models" / f"mnist5k-{normal}", normal=[normal], config=cfg,
                  overwrite=True, progress=progress)
    run = score(ds["dataset"], model["model"], workdir / "runs" / f"mnist5k-{normal}-demo", split="test",
                overwrite=True, device=device, progress=progress)
    return {"dataset": ds, "model": model, "score": run}
