"""Where a run's scoring executes: the detector's own PyTorch code, or its exported ONNX graph in
ONNX Runtime (`anomaly_ae.export`), which gives the same scores (to float32 rounding, checked
before it is used) faster on a CPU.

``auto`` picks by measurement: on the CPU with onnxruntime installed, both score the same few
generated images (after one warm-up call each) and the faster one scores the run.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from anomaly_ae.errors import ConfigError, DataError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnxruntime")
TRIAL_PIXELS = 2**21  # pixels per timing batch of `auto` (e.g. 2,600 digits, or 32 images of 256x256)


class OnnxScorer:
    """A detector whose scoring (score_samples, score_with_maps) runs in ONNX Runtime; every other
    attribute is the detector's (threshold, p-values, metadata).

    The session starts on first use with as many threads as PyTorch has then: scoring a folder
    leaves a core to the decoders (`scoring._model_threads`), and the graph must not take it back.
    """

    backend = "onnxruntime"

    def __init__(self, det, graph: bytes):
        self._det, self._graph, self._session, self._threads = det, graph, None, None

    def __getattr__(self, name):
        return getattr(self._det, name)

    def _run(self, outputs, images: np.ndarray):
        import torch

        from anomaly_ae.export import INPUT, onnx_session

        if self._session is None or self._threads != torch.get_num_threads():
            self._threads = torch.get_num_threads()
            self._session = onnx_session(self._graph, threads=self._threads)
        return self._session.run(outputs, {INPUT: np.ascontiguousarray(images)})

    def score_samples(self, images: np.ndarray) -> np.ndarray:
        from anomaly_ae.detector import SCORE_BATCH

        parts = [self._run(["score"], images[i: i + SCORE_BATCH])[0] for i in range(0, len(images), SCORE_BATCH)]
        return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)

    def score_with_maps(self, images: np.ndarray):
        if not len(images):
            return self._det.score_with_maps(images)
        scores, maps, recon = self._run(None, images)
        return scores.astype(np.float64), recon, maps


def with_backend(det, backend: str = "auto"):
    """`det`, or an `OnnxScorer` of it, as `backend` asks (``auto``: the faster, measured here).

    Raises:
        ConfigError: an unknown backend, or onnxruntime asked for but not installed or on a GPU run.
        DataError: the exported graph's scores differ from the detector's (see `export.PARITY_RTOL`).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"Unknown scoring backend {backend!r}: one of {', '.join(BACKENDS)}.")
    if backend == "torch":
        return det
    on_cpu = det.device_.type == "cpu"
    if backend == "onnxruntime" and not on_cpu:
        raise ConfigError("The onnxruntime backend scores on the CPU; this run uses the GPU. Pass --device cpu, "
                          "or --backend torch (or auto).")
    if backend == "auto" and (not on_cpu or not _ort_installed()):
        return det
    scorer = _onnx_scorer(det)
    if backend == "onnxruntime":
        return scorer
    trial = _trial_images(det.shape_)
    seconds = {name: _time(d, trial) for name, d in (("torch", det), ("onnxruntime", scorer))}
    chosen = min(seconds, key=seconds.get)
    log.info("scoring backend: %s (%s on %d generated images)", chosen,
             ", ".join(f"{k} {len(trial) / v:.0f} img/s" for k, v in seconds.items()), len(trial))
    return scorer if chosen == "onnxruntime" else det


def name(det) -> str:
    """The backend a (possibly wrapped) detector scores with."""
    return getattr(det, "backend", "torch")


def _ort_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def _onnx_scorer(det) -> OnnxScorer:
    from anomaly_ae.export import PARITY_RTOL, parity_gap, to_onnx_bytes

    graph = to_onnx_bytes(det)
    gap = parity_gap(det, graph)
    if not gap <= PARITY_RTOL:
        raise DataError(f"The ONNX graph of this model scores {gap:.2g} (relative) away from PyTorch, more than "
                        f"{PARITY_RTOL:g}: score with --backend torch, and report this with the model's kind and size.")
    return OnnxScorer(det, graph)


def _trial_images(shape) -> np.ndarray:
    h, w, c = map(int, shape)
    n = int(max(2, min(2048, TRIAL_PIXELS // (h * w))))
    return np.random.default_rng(0).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def _time(det, images: np.ndarray) -> float:
    det.score_with_maps(images[:2])  # warm-up: allocations, kernels chosen
    t0 = time.perf_counter()
    det.score_with_maps(images)
    return time.perf_counter() - t0
