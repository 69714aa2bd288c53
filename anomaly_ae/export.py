"""A trained model as one ONNX graph: uint8 images in, (score, anomaly map, reconstruction) out.

The graph holds the whole scoring head that `AutoencoderDetector` runs: the uint8 to [0, 1]
conversion, the network (tile by tile for tiled models, with the same overlapping tiles and
kept centres), the anomaly map (squared error, smoothed for ``topk``, 1 - SSIM, or the
discriminative kind's blurred defect probability) and the image score (mean, or the mean of the
top share). The batch size is dynamic; the image size is the model's. Beside it, ``model.json``
holds what a scorer needs to flag: the threshold, its target and guaranteed false-positive rates,
the calibration scores (for p-values) and their digest, the preprocessing policy, and versions.

Scores agree with the detector's to float32 rounding: see `PARITY_RTOL` and tests/unit/test_export.py.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from anomaly_ae.errors import ConfigError, DataError

OPSET = 17
FORMATS = ("onnx",)
PARITY_RTOL = 1e-5  # relative agreement of exported and native scores (measured: see the tests)
INPUT, OUTPUTS = "images", ("score", "anomaly_map", "reconstruction")
GRAPH_FILE, META_FILE = "model.onnx", "model.json"


class ScoringGraph(nn.Module):
    """The detector's scoring as one module of tensors: (n, h, w, c) uint8 -> score (n,),
    anomaly map (n, h, w) and reconstruction (n, h, w, c) in [0, 1]."""

    def __init__(self, det):
        super().__init__()
        self.model = det.model_
        self.segments, self.orients = det._segments, det._orients
        self.tile = det.tile_ or det.shape_[:2]
        self.score = det.config.score
        self.area = det._score_area()

    def forward(self, images: torch.Tensor):
        from anomaly_ae.measures import anomaly_map, blur, image_scores

        x = images.permute(0, 3, 1, 2).float() / 255.0
        s = self.score
        if self.segments:
            recon, maps = self.model.reconstruct_and_segment(x)
            maps = blur(maps.float().unsqueeze(1), s.sigma).squeeze(1)
        else:
            recon = _reconstruct_sliced(self.model, x, *self.tile)
            maps = anomaly_map(x, recon, s.method, s.sigma)
        if self.orients:
            scores = self.model.image_scores(x, recon)
        else:
            scores = image_scores(maps, s.method, s.top_fraction, self.area)
        return scores, maps, recon.permute(0, 2, 3, 1)


class EnsembleGraph(nn.Module):
    """An `anomaly_ae.ensemble.Ensemble`'s scoring as one module: every member's `ScoringGraph`, the
    scores standardised, averaged and put through a softplus, the maps scaled and averaged."""

    def __init__(self, det):
        super().__init__()
        self.members = nn.ModuleList(ScoringGraph(m) for m in det.members_)
        self.shrinks, self.combine, self.size = list(det.shrinks_), det.combine_, tuple(det.shape_[:2])
        for name in ("centres", "scales", "map_scales"):
            self.register_buffer(name, torch.tensor(getattr(det, name + "_"), dtype=torch.float32))

    def forward(self, images: torch.Tensor):
        from torch.nn import functional as F

        from anomaly_ae.shrink import grow_tensor, shrink_tensor

        x = images.float()  # uint8 values: the shrunk members' pixels are computed exactly
        outs = [g(shrink_tensor(x, k) if k > 1 else images) for g, k in zip(self.members, self.shrinks)]
        z = torch.stack([(o[0].float() - self.centres[i]) / self.scales[i] for i, o in enumerate(outs)])
        z = z.amax(0) if self.combine == "max" else z.mean(0)
        maps = torch.stack([grow_tensor(o[1].float(), k, *self.size) / self.map_scales[i]
                            for i, (o, k) in enumerate(zip(outs, self.shrinks))]).mean(0)
        return F.softplus(z), maps, outs[0][2]


def scoring_graph(det) -> nn.Module:
    """The module that scores as `det` does: an `EnsembleGraph` for an ensemble, else a `ScoringGraph`."""
    return EnsembleGraph(det) if hasattr(det, "members_") else ScoringGraph(det)


def _reconstruct_sliced(model: nn.Module, x: torch.Tensor, th: int, tw: int) -> torch.Tensor:
    """`tiles.reconstruct` with the tiles cut by slices at fixed offsets instead of `unfold`, which
    ONNX cannot express when the batch is dynamic: the same tiles, in the same order, the same
    kept centres."""
    from torch.nn import functional as F

    from anomaly_ae.tiles import _layout

    n, c, h, w = x.shape
    if (th, tw) == (h, w):
        return model(x)
    sh, mh, kh, ph = _layout(h, th)
    sw, mw, kw, pw = _layout(w, tw)
    pads = (mw, pw - w - mw, mh, ph - h - mh)
    mode = "reflect" if max(pads[:2]) < w and max(pads[2:]) < h else "replicate"
    xp = F.pad(x, pads, mode=mode) if any(pads) else x
    tiles = torch.stack([xp[:, :, i * sh: i * sh + th, j * sw: j * sw + tw] for i in range(kh) for j in range(kw)], 1)
    out = model(tiles.reshape(-1, c, th, tw))[:, :, mh: mh + sh, mw: mw + sw]
    out = out.reshape(-1, kh, kw, c, sh, sw).permute(0, 3, 1, 4, 2, 5).reshape(-1, c, kh * sh, kw * sw)
    return out[:, :, :h, :w]


def export(det, out: str | Path, fmt: str = "onnx", sample: np.ndarray | None = None) -> dict:
    """Write `det` as ``out/model.onnx`` and ``out/model.json`` (atomically); returns the metadata.

    `sample` (uint8 images of the model's shape) checks the exported scores against the detector's
    before anything is written; without it a few generated images do.

    Raises:
        ConfigError: an unknown format.
        DataError: the exported graph's scores differ from the detector's beyond PARITY_RTOL.
    """
    from anomaly_ae.fsio import atomic_dir

    if fmt not in FORMATS:
        raise ConfigError(f"Unknown export format {fmt!r}: one of {', '.join(FORMATS)}.")
    graph = to_onnx_bytes(det)
    gap = parity_gap(det, graph, sample)
    if not gap <= PARITY_RTOL:
        raise DataError(f"The exported model's scores differ from the detector's by {gap:.2g} (relative), more "
                        f"than {PARITY_RTOL:g}: the export is not kept. Report this with the model's kind and size.")
    meta = metadata(det, graph, gap)
    with atomic_dir(out, overwrite=True, kind="export") as tmp:
        (tmp / GRAPH_FILE).write_bytes(graph)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def parity_gap(det, graph: bytes, sample: np.ndarray | None = None, scores_of=None) -> float:
    """Largest relative difference between the graph's scores and the detector's on `sample`
    (default: a few generated images of the model's shape). The graph runs in ONNX Runtime, or in
    `scores_of` (images -> scores) when given: another runtime of the same graph."""
    sample = sample if sample is not None else _sample_images(det.shape_)
    theirs = scores_of(sample) if scores_of is not None else run_onnx(graph, sample)[0]
    ours = det.score_samples(sample)
    return float(np.max(np.abs(theirs - ours) / np.maximum(np.abs(ours), 1e-12)))


def to_onnx_bytes(det) -> bytes:
    """The detector's scoring graph (`scoring_graph`) as ONNX (opset OPSET, dynamic batch), on the CPU in float32."""
    import copy
    import io
    import warnings

    def on_cpu(d):  # a copy on the CPU: the detector stays where it is
        if d.device_.type == "cpu":
            return d
        d = copy.copy(d)
        if hasattr(d, "members_"):
            d.members_ = [on_cpu(m) for m in d.members_]
        else:
            d.model_ = copy.deepcopy(d.model_).cpu().float()
        d.device_ = torch.device("cpu")
        return d

    cpu = on_cpu(det)
    graph = scoring_graph(cpu).eval()
    h, w, c = cpu.shape_
    example = torch.zeros(2, h, w, c, dtype=torch.uint8)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's notes on traced shapes: the batch axis is declared dynamic
        torch.onnx.export(graph, (example,), buf, input_names=[INPUT], output_names=list(OUTPUTS),
                          dynamic_axes={INPUT: {0: "batch"}, **{o: {0: "batch"} for o in OUTPUTS}},
                          opset_version=OPSET, dynamo=False)
    return buf.getvalue()


def run_onnx(graph: bytes | str | Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores, maps, reconstructions) of `images` by an exported graph, with ONNX Runtime."""
    session = onnx_session(graph)
    return tuple(session.run(None, {INPUT: np.ascontiguousarray(images)}))


def onnx_session(graph: bytes | str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session on an exported graph (bytes or a file).

    Raises:
        ConfigError: onnxruntime is not installed.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError("ONNX Runtime is not installed: pip install 'anomaly-ae[onnx]' "
                          "(or onnxruntime).") from None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    source = graph if isinstance(graph, bytes) else str(graph)
    return ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])


def openvino_model(graph: bytes, threads: int | None = None):
    """An OpenVINO model compiled for the CPU from an exported graph (bytes); its outputs come in
    the graph's order (OUTPUTS), though not always under their names.

    Raises:
        ConfigError: openvino is not installed.
    """
    try:
        import openvino as ov
    except ImportError:
        raise ConfigError("OpenVINO is not installed: pip install 'anomaly-ae[openvino]' (or openvino).") from None
    core = ov.Core()
    # Full precision: on CPUs with bf16 units (AMX, AVX-512 BF16) OpenVINO otherwise computes in
    # bf16, and scores move by 0.1% to 100% from the model's own, far outside the parity bound.
    options = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
               **({"INFERENCE_NUM_THREADS": threads} if threads else {})}
    return core.compile_model(core.read_model(model=graph), "CPU", options)


def metadata(det, graph: bytes, gap: float) -> dict:
    """What a scorer needs beside the graph to flag and explain: threshold, calibration, policy."""
    from anomaly_ae.checkpoint import versions

    cal = np.asarray(det.calibration_scores_, dtype=np.float64)
    return {
        "format": "onnx", "opset": OPSET, "graph": GRAPH_FILE,
        "graph_sha256": hashlib.sha256(graph).hexdigest(),
        "input": {"name": INPUT, "dtype": "uint8", "shape": ["batch", *map(int, det.shape_)],
                  "layout": "NHWC, the model's image size, preprocessed as `preprocess` says"},
        "outputs": {"score": "(batch,) higher = more anomalous",
                    "anomaly_map": "(batch, height, width)", "reconstruction": "(batch, height, width, channels) in [0, 1]"},
        "threshold": float(det.threshold_), "flag": "score > threshold",
        "threshold_info": det.threshold_info_,
        "calibration_scores": cal.tolist(),
        "calibration_sha256": hashlib.sha256(cal.tobytes()).hexdigest(),
        "preprocess": det.meta_["preprocess"], "kind": det.kind, "members": getattr(det, "labels", None),
        "score": {"method": det.score_method,
                  "top_fraction": det.config.score.top_fraction,
                  "sigma": det.config.score.sigma},
        "tile": list(det.tile_) if det.tile_ else None, "normal_classes": det.meta_.get("normal_classes"),
        "parity_max_relative_gap": gap, "versions": versions(),
    }


def _sample_images(shape) -> np.ndarray:
    """A few generated images of `shape` (h, w, c): smooth, noisy and flat, for the parity check."""
    h, w, c = map(int, shape)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = (127 + 100 * np.sin(xx / max(w, 1) * 6.28) * np.cos(yy / max(h, 1) * 6.28))[..., None]
    imgs = [np.repeat(smooth, c, axis=2), rng.integers(0, 256, (h, w, c)), np.full((h, w, c), 30)]
    return np.clip(np.stack(imgs), 0, 255).astype(np.uint8)
