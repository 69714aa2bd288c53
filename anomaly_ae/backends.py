"""Where a run's scoring executes: the detector's own PyTorch code, or its exported ONNX graph
(`anomaly_ae.export`) in ONNX Runtime or OpenVINO, which give the same scores (to float32
rounding, checked before they are used) faster on a CPU.

``auto`` picks by measurement: on the CPU, PyTorch and every installed graph runtime score the
same few generated images (after one warm-up call each) and the fastest scores the run.
"""

from __future__ import annotations

import contextlib
import logging
import time

import numpy as np

from anomaly_ae.errors import ConfigError, DataError

log = logging.getLogger(__name__)

RUNTIMES = ("onnxruntime", "openvino")  # graph runtimes, in the order `auto` tries them
BACKENDS = ("auto", "torch", *RUNTIMES)
TRIAL_PIXELS = 2**21  # pixels per timing batch of `auto` (e.g. 2,600 digits, or 32 images of 256x256)


class GraphScorer:
    """A detector whose scoring (score_samples, score_with_maps) runs its exported graph in a graph
    runtime (`backend`: onnxruntime or openvino); every other attribute is the detector's
    (threshold, p-values, metadata).

    The runtime starts on first use with as many threads as PyTorch has then, and starts again if
    that count changes: scoring a folder leaves a core to the decoders (`scoring._model_threads`),
    and the graph must not take it back unless scoring gives it back (decoding found cheap).
    """

    def __init__(self, det, graph: bytes, backend: str = "onnxruntime"):
        self._det, self._graph, self.backend = det, graph, backend
        self._runner, self._threads = None, None

    def __getattr__(self, name):
        return getattr(self._det, name)

    def _run(self, images: np.ndarray) -> dict:
        """{output name: array} of the graph on `images`."""
        import torch

        from anomaly_ae.export import INPUT, OUTPUTS, onnx_session, openvino_model

        if self._runner is None or self._threads != torch.get_num_threads():
            self._threads = torch.get_num_threads()
            make = onnx_session if self.backend == "onnxruntime" else openvino_model
            self._runner = make(self._graph, threads=self._threads)
        images = np.ascontiguousarray(images)
        if self.backend == "onnxruntime":
            return dict(zip(OUTPUTS, self._runner.run(list(OUTPUTS), {INPUT: images})))
        # By position: OpenVINO keeps the graph's output order, not always every output's name.
        result = self._runner(images)
        return {name: np.asarray(result[i]) for i, name in enumerate(OUTPUTS)}

    def score_samples(self, images: np.ndarray) -> np.ndarray:
        from anomaly_ae.detector import SCORE_BATCH

        parts = [self._run(images[i: i + SCORE_BATCH])["score"] for i in range(0, len(images), SCORE_BATCH)]
        return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)

    def score_with_maps(self, images: np.ndarray):
        if not len(images):
            return self._det.score_with_maps(images)
        out = self._run(images)
        return out["score"].astype(np.float64), out["reconstruction"], out["anomaly_map"]


def with_backend(det, backend: str = "auto", threads: int | None = None):
    """`det`, or a `GraphScorer` of it, as `backend` asks (``auto``: the fastest, measured here).
    `threads`: torch's thread count while the run scores (`scoring.model_threads`), when it sets
    one: the backends are then checked and timed with it (their ranking on one thread is not their
    ranking on two), and a runtime starts with the count it will score with.

    Raises:
        ConfigError: an unknown backend, or a graph runtime asked for but not installed or on a GPU run.
        DataError: the exported graph's scores differ from the detector's (see `export.PARITY_RTOL`).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"Unknown scoring backend {backend!r}: one of {', '.join(BACKENDS)}.")
    if backend == "torch":
        return det
    with _torch_threads(threads):
        return _with_runtime(det, backend)


@contextlib.contextmanager
def _torch_threads(threads: int | None):
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _with_runtime(det, backend: str):
    """`with_backend` for a graph runtime or ``auto``, with torch's thread count already set."""
    on_cpu = det.device_.type == "cpu"
    if backend != "auto" and not on_cpu:
        raise ConfigError(f"The {backend} backend scores on the CPU; this run uses the GPU. Pass --device cpu, "
                          "or --backend torch (or auto).")
    from anomaly_ae import graphcache

    if backend != "auto":
        return _checked_scorer(det, backend, list(graphcache.graph_bytes(det)))
    runtimes = [r for r in RUNTIMES if _installed(r)] if on_cpu else []
    if not runtimes:
        return det
    graph, scorers = list(graphcache.graph_bytes(det)), {"torch": det}
    for runtime in runtimes:
        try:  # auto never fails a run that PyTorch can score: a runtime that cannot is left out
            scorers[runtime] = _checked_scorer(det, runtime, graph)
        except Exception as exc:  # noqa: BLE001 - a runtime's own errors (unsupported operator, parity)
            log.warning("scoring backend %s left out: %s", runtime, exc)
    trial = _trial_images(det.shape_)
    seconds = {name: _time(d, trial) for name, d in scorers.items()}
    chosen = min(seconds, key=seconds.get)
    log.info("scoring backend: %s (%s on %d generated images)", chosen,
             ", ".join(f"{k} {len(trial) / v:.0f} img/s" for k, v in seconds.items()), len(trial))
    return scorers[chosen]


def name(det) -> str:
    """The backend a (possibly wrapped) detector scores with."""
    return getattr(det, "backend", "torch")


def _installed(runtime: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(runtime) is not None


def _checked_scorer(det, runtime: str, graph: list) -> GraphScorer:
    """`_graph_scorer` of `graph` = [the graph's bytes, whether they came from the cache]; a graph
    from the cache that fails (a damaged file, say) is exported afresh (the cache's copy replaced)
    before giving up, and `graph` then holds the fresh one, for the next runtime to try."""
    from anomaly_ae import graphcache

    if graph[1]:
        try:
            return _graph_scorer(det, runtime, graph[0])
        except Exception as exc:  # noqa: BLE001 - whatever the cached graph did, a fresh export decides
            log.debug("the cached graph failed in %s (%s): exported afresh", runtime, exc)
        graph[:] = graphcache.graph_bytes(det, refresh=True)
    return _graph_scorer(det, runtime, graph[0])


def _graph_scorer(det, runtime: str, graph: bytes) -> GraphScorer:
    """A `GraphScorer` of `det`'s exported `graph` in `runtime`, its scores checked against `det`'s."""
    from anomaly_ae.export import PARITY_RTOL, parity_gap

    scorer = GraphScorer(det, graph, runtime)
    gap = parity_gap(det, graph, scores_of=scorer.score_samples)
    if not gap <= PARITY_RTOL:
        raise DataError(f"The ONNX graph of this model scores {gap:.2g} (relative) away from PyTorch in {runtime}, "
                        f"more than {PARITY_RTOL:g}: score with --backend torch, and report this with the model's "
                        "kind and size.")
    return scorer


def _trial_images(shape) -> np.ndarray:
    h, w, c = map(int, shape)
    n = int(max(2, min(2048, TRIAL_PIXELS // (h * w))))
    return np.random.default_rng(0).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def _time(det, images: np.ndarray) -> float:
    det.score_with_maps(images[:2])  # warm-up: allocations, kernels chosen
    t0 = time.perf_counter()
    det.score_with_maps(images)
    return time.perf_counter() - t0
