"""Export to ONNX and the graph scoring backends (ONNX Runtime, OpenVINO): the same scores as anomaly-ae's own, for
every model kind, tiled and not, gray and RGB; the flagged decisions at the threshold too."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from anomaly_ae import steps
from anomaly_ae.config import DetectorConfig, ModelConfig, ScoreConfig, TrainConfig
from anomaly_ae.detector import AutoencoderDetector
from anomaly_ae.errors import ConfigError, DataError

pytest.importorskip("onnxruntime", reason="onnxruntime (a dev dependency) runs the exported graphs")

from anomaly_ae.export import PARITY_RTOL, run_onnx, to_onnx_bytes  # noqa: E402

TRAIN = TrainConfig(epochs=1, min_steps_per_epoch=2, allow_collapsed=True, device="cpu")
CASES = [  # (kind, image shape, tile, score method)
    ("ae", (28, 28, 1), 0, "topk"),
    ("ae", (28, 28, 1), 0, "mse"),
    ("vae", (24, 24, 3), 0, "topk"),
    ("denoising", (28, 28, 1), 0, "ssim"),
    ("ae", (64, 48, 1), 16, "topk"),
    ("ae", (40, 40, 3), 16, "ssim"),
    ("draem", (48, 48, 1), 0, "topk"),
    ("draem", (32, 32, 3), 0, "topk"),
    ("geometric", (32, 32, 3), 0, "mse"),  # 8 turns and flips
    ("geometric", (24, 40, 1), 0, "mse"),  # not square: 4
    ("nearest", (28, 28, 1), 0, "topk"),  # no network: the nearest training image
    ("nearest", (24, 40, 3), 0, "ssim"),
]


def _images(shape, n, seed=0):
    rng = np.random.default_rng(seed)
    h, w, c = shape
    yy, xx = np.mgrid[0:h, 0:w]
    base = 120 + 60 * np.sin(xx / 4.0)[..., None] * np.cos(yy / 5.0)[..., None]
    return np.clip(base + rng.normal(0, 20, (n, h, w, c)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("kind, shape, tile, method", CASES, ids=[f"{k}-{'x'.join(map(str, s))}-t{t}-{m}"
                                                                   for k, s, t, m in CASES])
def test_exported_scores_and_decisions_equal_the_detectors(kind, shape, tile, method):
    _check_parity(kind, shape, tile, method)


def test_a_nearest_model_comparing_shrunk_images_exports_the_same_scores(monkeypatch):
    from anomaly_ae import nearest

    monkeypatch.setattr(nearest, "MAX_BANK_VALUES", 40 * 35 * 33)  # 71x67 images fit it only shrunk by 2
    det = _check_parity("nearest", (71, 67, 1), 0, "topk")
    assert det.model_.factor == 2 and det.model_.bank.shape[1] == 35 * 33


def _check_parity(kind, shape, tile, method) -> AutoencoderDetector:
    cfg = DetectorConfig(model=ModelConfig(kind=kind, tile=tile, latent_dim=16, base_channels=8, max_channels=32),
                         train=TRAIN, score=ScoreConfig(method=method))
    normal = _images(shape, 40)
    det = AutoencoderDetector(cfg).fit(normal[:30])
    det.calibrate(normal[30:])
    batch = np.concatenate([_images(shape, 30, seed=1), np.random.default_rng(2).integers(0, 256, (10, *shape),
                                                                                           dtype=np.uint8)])
    ours, our_recon, our_maps = det.score_with_maps(batch)
    scores, maps, recon = run_onnx(to_onnx_bytes(det), batch)
    np.testing.assert_allclose(scores, ours, rtol=PARITY_RTOL, atol=0)
    np.testing.assert_allclose(maps, our_maps, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(recon, our_recon, rtol=1e-4, atol=1e-5)
    threshold = float(np.median(ours))  # half the batch flagged: many decisions near the threshold
    near = np.abs(ours - threshold) <= PARITY_RTOL * abs(threshold)
    assert np.array_equal((scores > threshold)[~near], (ours > threshold)[~near])
    if _has("openvino"):  # the same graph in the other runtime
        from anomaly_ae.backends import GraphScorer

        ov_scores, ov_recon, ov_maps = GraphScorer(det, to_onnx_bytes(det), "openvino").score_with_maps(batch)
        np.testing.assert_allclose(ov_scores, ours, rtol=PARITY_RTOL, atol=0)
        np.testing.assert_allclose(ov_maps, our_maps, rtol=1e-4, atol=1e-6)
        assert np.array_equal((ov_scores > threshold)[~near], (ours > threshold)[~near])
    return det


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_export_command_writes_the_graph_and_what_a_scorer_needs(mnist_model, mnist_images, tmp_path):
    out = tmp_path / "export"
    meta = steps.export(mnist_model, out)
    det = AutoencoderDetector.load(mnist_model, device="cpu")
    doc = json.loads((out / "model.json").read_text())
    assert doc["threshold"] == pytest.approx(det.threshold_) and doc["flag"] == "score > threshold"
    assert doc["calibration_scores"] == pytest.approx(det.calibration_scores_.tolist())
    assert doc["preprocess"] == det.meta_["preprocess"] and meta["parity_max_relative_gap"] <= PARITY_RTOL
    pixels = mnist_images[0][:200]
    np.testing.assert_allclose(run_onnx(out / "model.onnx", pixels)[0], det.score_samples(pixels), rtol=PARITY_RTOL)
    steps.export(mnist_model, out)  # an export folder is replaced
    with pytest.raises(DataError, match="is not a model export"):
        steps.export(mnist_model, mnist_model.parent)  # a folder holding anything else never is
    with pytest.raises(DataError, match="the model folder itself"):
        steps.export(mnist_model, mnist_model)
    with pytest.raises(DataError, match="lies inside the model folder"):
        steps.export(mnist_model, mnist_model / "onnx")
    assert not (mnist_model / "onnx").exists()
    with pytest.raises(DataError, match="is a model export .*; info reads a dataset or the model folder it was"):
        steps.info(out)
    with pytest.raises(ConfigError, match="Unknown export format"):
        steps.export(mnist_model, tmp_path / "x", fmt="tflite")


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_graph_backends_score_a_run_like_torch(mnist_ds, mnist_model, tmp_path, backend):
    import pyarrow.parquet as pq

    if not _has(backend):
        pytest.skip(f"{backend} is not installed")
    runs = {b: steps.score(mnist_ds, mnist_model, tmp_path / b, split="test", backend=b, report=False)
            for b in ("torch", backend)}
    a = pq.read_table(tmp_path / "torch" / "scores.parquet")
    b = pq.read_table(tmp_path / backend / "scores.parquet")
    assert a["image_id"].equals(b["image_id"])
    np.testing.assert_allclose(b["score"].to_numpy(), a["score"].to_numpy(), rtol=PARITY_RTOL)
    assert abs(runs["torch"]["flagged"] - runs[backend]["flagged"]) <= 1
    recorded = {k: json.loads((tmp_path / k / "run.json").read_text())["backend"] for k in runs}
    assert recorded == {"torch": "torch", backend: backend}


def test_auto_measures_on_large_runs_only_and_bad_backends_are_refused(mnist_ds, mnist_model, tmp_path, monkeypatch):
    from anomaly_ae import backends

    small = steps.score(mnist_ds, mnist_model, tmp_path / "small", split="test", report=False)  # 1,500 items
    assert json.loads((tmp_path / "small" / "run.json").read_text())["backend"] == "torch" and small["scored"]
    det = AutoencoderDetector.load(mnist_model, device="cpu")
    assert backends.name(backends.with_backend(det, "auto")) in ("torch", "onnxruntime", "openvino")
    with pytest.raises(ConfigError, match="Unknown scoring backend"):
        backends.with_backend(det, "tensorrt")
    # A runtime that cannot score the graph is left out of auto's choice, not fatal to the run.
    broken = type("Broken", (), {"__call__": lambda *a: (_ for _ in ()).throw(RuntimeError("no such op"))})()
    monkeypatch.setattr("anomaly_ae.export.onnx_session", lambda *a, **k: broken)
    monkeypatch.setattr("anomaly_ae.export.openvino_model", lambda *a, **k: broken)
    assert backends.name(backends.with_backend(det, "auto")) == "torch"
    with pytest.raises(ConfigError, match="backend: must be auto, torch, onnxruntime or openvino"):
        steps.score(mnist_ds, mnist_model, tmp_path / "bad", backend="tensorrt")


def _readme_snippet(model, folder, tmp_path) -> None:
    """The README's "Deploy without anomaly-ae" code, run as written on an export of `model` over
    `folder`: the same scores as anomaly-ae's to the parity bound, and the same flagged files."""
    import re
    from pathlib import Path

    import pyarrow.parquet as pq

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Deploy without anomaly-ae (ONNX)", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    steps.export(model, tmp_path / "export")
    env = {"EXPORT": str(tmp_path / "export") + "/", "FOLDER": str(folder) + "/"}
    namespace: dict = {**env, "__name__": "readme"}
    assert 'EXPORT, FOLDER = "export/", "images/"\n' in code
    code = code.replace('EXPORT, FOLDER = "export/", "images/"\n', "")  # the test's own folders instead
    assert len(code.strip().splitlines()) <= 22  # short enough to read at a glance
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102  (the README's own code)
    ours = steps.score(folder, model, tmp_path / "run", report=False, backend="torch")
    table = pq.read_table(tmp_path / "run" / "scores.parquet").to_pylist()
    expected = {r["path"]: r["score"] for r in table}
    got = {str(Path(p).relative_to(folder)): s for p, s in namespace["scores"].items()}
    assert set(got) == set(expected) and len(got) == ours["scored"]
    assert all(abs(got[k] - expected[k]) <= PARITY_RTOL * abs(expected[k]) for k in got)
    assert {str(Path(p).relative_to(folder)) for p in namespace["flagged"]} == {
        r["path"] for r in table if r["flagged"]}


def test_readme_snippet_scores_a_folder_like_anomaly_ae(mnist_model, mnist_folder, tmp_path):
    from PIL import Image

    folder = tmp_path / "folder"
    shutil.copytree(mnist_folder / "0", folder / "0")
    shutil.copytree(mnist_folder / "7", folder / "7")
    for k, src in enumerate(sorted((mnist_folder / "8").glob("*.png"))[:4]):  # see-through, upper-case names
        gray = Image.open(src).convert("L")
        Image.merge("LA", (gray, Image.new("L", gray.size, 128 + 40 * k))).save(folder / f"SEE{k}.PNG")
    _readme_snippet(mnist_model, folder, tmp_path)


def test_readme_snippet_cuts_the_region_and_reads_12_bit_images_as_anomaly_ae_does(tmp_path):
    from PIL import Image

    from tests.conftest import TINY

    rng, folder = np.random.default_rng(1), tmp_path / "cam"
    folder.mkdir()
    for k in range(24):
        raw = rng.normal(1500, 300, (30, 36)).clip(0, 4095)
        raw[8:12, 10:14] += 2000 * (k % 6 == 0)  # a bright blemish on a few
        Image.fromarray(raw.astype(np.uint16)).save(folder / f"{k:02d}.png")
    steps.ingest(str(folder), tmp_path / "ds", crop="4,6,20,24", bit_depth=12, size="16x20", resize="bicubic")
    steps.train(tmp_path / "ds", tmp_path / "m", config=TINY)
    _readme_snippet(tmp_path / "m", folder, tmp_path)


def test_auto_times_the_backends_with_the_threads_the_run_scores_with(mnist_model, mnist_folder, tmp_path,
                                                                      monkeypatch):
    import torch

    from anomaly_ae import backends
    from anomaly_ae.parallel import default_workers
    from anomaly_ae.steps import runs

    det = AutoencoderDetector.load(mnist_model, device="cpu")
    seen = []
    monkeypatch.setattr(backends, "_time", lambda d, images: seen.append(torch.get_num_threads()) or 1.0)
    before = torch.get_num_threads()
    backends.with_backend(det, "auto", threads=1)
    assert seen and set(seen) == {1} and torch.get_num_threads() == before  # measured on one, then restored
    # A folder scored beside decode workers: auto measures with the count scoring then sets.
    asked = []
    real = backends.with_backend
    monkeypatch.setattr(backends, "with_backend", lambda d, b, threads=None: asked.append(threads) or real(d, b, threads))
    monkeypatch.setattr(runs, "AUTO_MIN_ITEMS", 10)
    steps.score(mnist_folder, mnist_model, tmp_path / "run", report=False)
    assert asked == [max(1, min(before, default_workers() - 1))]
