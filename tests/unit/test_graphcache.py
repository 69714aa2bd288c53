"""Exported scoring graphs kept between runs: reused for the same detector, never for another one,
replaced when damaged, bounded in number, and never a reason for a run to fail."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from anomaly_ae.config import DetectorConfig, ModelConfig, ScoreConfig, TrainConfig
from anomaly_ae.detector import AutoencoderDetector

pytest.importorskip("onnxruntime", reason="onnxruntime (a dev dependency) runs the exported graphs")

from anomaly_ae import backends, export, graphcache  # noqa: E402

TRAIN = TrainConfig(epochs=1, min_steps_per_epoch=2, allow_collapsed=True, device="cpu")


def _detector(kind="ae", method="topk", seed=0) -> AutoencoderDetector:
    cfg = DetectorConfig(model=ModelConfig(kind=kind, latent_dim=8, base_channels=8, max_channels=16),
                         train=dataclasses.replace(TRAIN, seed=seed), score=ScoreConfig(method=method))
    images = np.random.default_rng(0).integers(0, 256, (40, 20, 20, 1), dtype=np.uint8)
    det = AutoencoderDetector(cfg).fit(images[:30])
    det.calibrate(images[30:])
    return det


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(graphcache.CACHE_ENV, str(tmp_path / "cache"))
    exports = []
    real = export.to_onnx_bytes

    def counted(det):
        exports.append(det)
        return real(det)

    monkeypatch.setattr(export, "to_onnx_bytes", counted)
    return tmp_path / "cache" / "graphs", exports


def test_the_same_detector_reuses_its_graph_and_another_gets_its_own(cache):
    folder, exports = cache
    det = _detector()
    first, cached = graphcache.graph_bytes(det)
    assert not cached and len(exports) == 1 and len(list(folder.glob("*.onnx"))) == 1
    again, cached = graphcache.graph_bytes(det)
    assert cached and again == first and len(exports) == 1
    # The same model loaded in another process state: a copy of the detector digests the same.
    assert graphcache.digest(det) == graphcache.digest(_detector())
    # Other weights, another score method, another kind: each its own graph.
    others = [_detector(seed=1), _detector(method="mse"), _detector(kind="vae")]
    digests = {graphcache.digest(d) for d in [det, *others]}
    assert len(digests) == 4
    for d in others:
        assert not graphcache.graph_bytes(d)[1]
    assert len(exports) == 4 and len(list(folder.glob("*.onnx"))) == 4


def test_a_recalibrated_threshold_keeps_the_graph_but_changed_weights_do_not(cache):
    _, exports = cache
    det = _detector()
    graphcache.graph_bytes(det)
    det.calibrate(np.random.default_rng(5).integers(0, 256, (10, 20, 20, 1), dtype=np.uint8))  # (the threshold is not in the graph)
    assert graphcache.graph_bytes(det)[1]
    with __import__("torch").no_grad():
        next(det.model_.parameters()).add_(0.01)
    assert not graphcache.graph_bytes(det)[1] and len(exports) == 2


def _damaged(folder):
    """A detector whose graph is in the cache, damaged; and the cached file."""
    det = _detector()
    graphcache.graph_bytes(det)
    [path] = folder.glob("*.onnx")
    path.write_bytes(b"not a graph")
    return det, path


def test_a_damaged_cached_graph_is_exported_afresh_and_scores_like_torch(cache):
    folder, exports = cache
    det, path = _damaged(folder)
    scorer = backends.with_backend(det, "onnxruntime")
    images = np.random.default_rng(3).integers(0, 256, (12, 20, 20, 1), dtype=np.uint8)
    np.testing.assert_allclose(scorer.score_samples(images), det.score_samples(images), rtol=export.PARITY_RTOL)
    assert len(exports) == 2 and path.read_bytes() == scorer._graph  # the cache's copy replaced


def test_the_cache_keeps_the_newest_graphs_only(cache, monkeypatch):
    folder, _ = cache
    monkeypatch.setattr(graphcache, "MAX_GRAPHS", 2)
    dets = [_detector(seed=s) for s in range(3)]
    for k, d in enumerate(dets):
        graphcache.graph_bytes(d)
        for p in folder.glob("*.onnx"):  # (file times a second apart, oldest first)
            os.utime(p, (p.stat().st_atime, p.stat().st_mtime - 10))
    kept = {p.stem for p in folder.glob("*.onnx")}
    assert kept == {graphcache.digest(d) for d in dets[1:]}


def test_no_cache_or_an_unwritable_one_only_costs_the_export(tmp_path, monkeypatch):
    det = _detector()
    monkeypatch.setenv(graphcache.CACHE_ENV, "off")
    assert graphcache.folder() is None
    graph, cached = graphcache.graph_bytes(det)
    assert not cached and graph
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv(graphcache.CACHE_ENV, str(blocker))
    assert graphcache.graph_bytes(det) == (graph, False)
    assert backends.name(backends.with_backend(det, "onnxruntime")) == "onnxruntime"


def test_the_default_folder_follows_xdg_and_home(monkeypatch, tmp_path):
    monkeypatch.delenv(graphcache.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert graphcache.folder() == tmp_path / "xdg" / "anomaly-ae" / "graphs"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert graphcache.folder() == tmp_path / "home" / ".cache" / "anomaly-ae" / "graphs"


def test_auto_exports_a_damaged_cached_graph_once_for_every_runtime(cache):
    folder, exports = cache
    det, path = _damaged(folder)
    assert backends.name(backends.with_backend(det, "auto")) in ("torch", *backends.RUNTIMES)
    assert len(exports) == 2 and path.read_bytes() != b"not a graph"


def test_pruning_touches_only_the_caches_own_files(cache, monkeypatch):
    folder, _ = cache
    folder.mkdir(parents=True)
    foreign = folder / "my-model.onnx"
    foreign.write_bytes(b"a user's own file")
    stale = folder / f".{'0' * 64}.onnx.tmp-host-1-abc"  # left by a process killed while it wrote
    fresh = folder / f".{'1' * 64}.onnx.tmp-host-2-def"  # (another process writing now)
    for p in (stale, fresh):
        p.write_bytes(b"half a graph")
    os.utime(stale, (1, 1))
    monkeypatch.setattr(graphcache, "MAX_BYTES", 1)  # past the newest, nothing fits
    dets = [_detector(seed=s) for s in range(2)]
    for d in dets:
        graphcache.graph_bytes(d)
    assert {p.name for p in folder.iterdir()} == {foreign.name, fresh.name, graphcache.digest(dets[1]) + ".onnx"}


def test_no_home_folder_or_a_read_only_cache_never_fails_a_run(cache, monkeypatch):
    from pathlib import Path

    folder, exports = cache
    det = _detector()
    graphcache.graph_bytes(det)
    monkeypatch.setattr(graphcache.os, "utime", lambda *a: (_ for _ in ()).throw(PermissionError("read-only")))
    assert graphcache.graph_bytes(det)[1] and len(exports) == 1  # read, though its time cannot be set

    def no_home(cls):
        raise RuntimeError("Could not determine home directory.")

    for name in (graphcache.CACHE_ENV, "XDG_CACHE_HOME", "HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(Path, "home", classmethod(no_home))
    assert graphcache.graph_bytes(det)[1] is False
    assert backends.name(backends.with_backend(det, "onnxruntime")) == "onnxruntime"
