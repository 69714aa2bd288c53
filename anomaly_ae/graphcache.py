"""Exported scoring graphs kept between runs, so that scoring with a graph runtime does not export
the model again every time.

Exporting (`export.to_onnx_bytes`) traces the model and imports the onnx package: 1-2 seconds on
2 CPU cores for a digit model, paid by every `anomaly-ae score` run that uses ONNX Runtime or
OpenVINO (or measures them, with ``--backend auto``). The graph is a function of the detector's
tensors, its settings and the code that builds the graph, so it is kept under a digest of all three
(`digest`) in the cache folder (`folder`): a model retrained, recalibrated to another score, or
scored by another version of anomaly-ae gets a new digest and a fresh export. A cached graph is
still checked against PyTorch's scores before each use (`backends.with_backend`); one that fails
is exported afresh. The cache holds the newest `MAX_GRAPHS` graphs (at most `MAX_BYTES` in all) and
touches no file it did not name; anything that stops it from working (a read-only home, no home at
all, a full disk) only costs the export.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import time
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_ENV = "ANOMALY_AE_CACHE"  # the cache folder; "off" keeps nothing
MAX_GRAPHS = 16
MAX_BYTES = 256 * 2**20  # (a nearest-kind graph holds its memory of images: up to 16 MiB)
STALE_TEMP_SECONDS = 3600  # a temporary this old was left by a process killed while it wrote
SUFFIX = ".onnx"
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_OURS = re.compile(r"[0-9a-f]{64}" + re.escape(SUFFIX))
_TEMP = re.compile(r"\.[0-9a-f]{64}" + re.escape(SUFFIX) + r"\.tmp-.*")


def folder() -> Path | None:
    """Where graphs are kept: ``$ANOMALY_AE_CACHE/graphs``, else ``$XDG_CACHE_HOME/anomaly-ae/graphs``,
    else ``~/.cache/anomaly-ae/graphs``; None when ``ANOMALY_AE_CACHE=off``."""
    chosen = os.environ.get(CACHE_ENV, "").strip()
    if chosen.lower() == "off":
        return None
    if chosen:
        return Path(chosen).expanduser() / "graphs"
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or Path.home() / ".cache"
    return Path(base).expanduser() / "anomaly-ae" / "graphs"


def digest(det) -> str:
    """A digest of everything `det`'s exported graph is made from: every tensor of its scoring module
    (weights, buffers, a memory of images, tensors held as plain attributes), every module's
    settings (layer shapes, the score method and its parameters, tiles, how an ensemble combines),
    the image shape, the versions of torch and the exporter's opset, and the source of anomaly-ae
    itself."""
    import torch

    from anomaly_ae import export

    graph = export.scoring_graph(det)
    h = hashlib.sha256()
    h.update(repr((torch.__version__, export.OPSET, tuple(map(int, det.shape_)))).encode())
    tensors = dict(graph.state_dict())
    for name, module in graph.named_modules():
        settings = {k: v for k, v in vars(module).items() if not k.startswith("_") and k != "training"}
        tensors.update({f"{name}.{k}": v for k, v in settings.items() if isinstance(v, torch.Tensor)})
        settings = {k: v for k, v in settings.items() if not isinstance(v, torch.Tensor)}
        h.update(_ADDRESS.sub("", f"{name}|{type(module).__qualname__}|{sorted(settings.items())!r}").encode())
    for name, tensor in sorted(tensors.items()):
        t = tensor.detach().cpu().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    h.update(_source_digest().encode())
    return h.hexdigest()


_SOURCE: list[str] = []


def _source_digest() -> str:
    """A digest of anomaly-ae's own source files (once per process): a graph exported by other code
    is never taken for this code's."""
    if not _SOURCE:
        root = Path(__file__).resolve().parent
        h = hashlib.sha256()
        for path in sorted(root.rglob("*.py")):
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
        _SOURCE.append(h.hexdigest())
    return _SOURCE[0]


def graph_bytes(det, refresh: bool = False) -> tuple[bytes, bool]:
    """(`det`'s ONNX scoring graph, whether it came from the cache). `refresh` exports it afresh
    and replaces the cached copy (one that failed its check, say). No cache folder to be had (no
    home folder, say) only means no cache."""
    from anomaly_ae.export import to_onnx_bytes

    try:
        where = folder()
    except (OSError, RuntimeError) as exc:  # (Path.home() without a home folder raises RuntimeError)
        log.debug("no cache folder for exported graphs: %s", exc)
        where = None
    path = where / (digest(det) + SUFFIX) if where is not None else None
    if path is not None and not refresh:
        try:
            data = path.read_bytes()
        except OSError:
            data = b""
        if data:
            with contextlib.suppress(OSError):  # (kept among the newest where the cache allows it)
                os.utime(path)
            return data, True
    data = to_onnx_bytes(det)
    if path is not None:
        _keep(path, data)
    return data, False


def _keep(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically and drop the oldest graphs past MAX_GRAPHS or MAX_BYTES
    (only files named as this module names them), and temporaries left by a process killed while
    it wrote; a cache that cannot be written is left as it is (the graph was exported, nothing else
    is lost)."""
    from anomaly_ae.fsio import atomic_write_bytes

    try:
        atomic_write_bytes(path, data)
        stale, ours = time.time() - STALE_TEMP_SECONDS, []
        for p in path.parent.iterdir():
            if _OURS.fullmatch(p.name):
                ours.append((p, p.stat()))
            elif _TEMP.fullmatch(p.name) and p.stat().st_mtime < stale:
                p.unlink(missing_ok=True)
        ours.sort(key=lambda ps: ps[1].st_mtime, reverse=True)
        total = 0
        for k, (p, st) in enumerate(ours):
            total += st.st_size
            if k >= MAX_GRAPHS or (k and total > MAX_BYTES):
                p.unlink(missing_ok=True)
    except Exception as exc:  # noqa: BLE001 - a cache that cannot be written costs the next export, no more
        log.debug("exported graph not kept in %s: %s", path.parent, exc)
